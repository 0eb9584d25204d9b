"""The JSON Schema of spec files (``resdsl schema``) agrees with the loader: every shipped spec passes both, and
each invalid fixture the loader rejects for a key, type, range or choice is rejected by the schema too."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml

from resdsl import SpecError, loads
from resdsl.spec import load

from .conftest import ROOT, SPECS

SCHEMA = json.loads((ROOT / "resdsl" / "schemas" / "spec.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SHIPPED = sorted(p for p in SPECS.rglob("*.yaml") if "invalid" not in p.parts)
# Fixtures rejected for what a schema can express (keys, types, ranges, choices, required keys) ...
SCHEMA_REASONS = ["bad-name", "input-size", "missing-required", "misspelt-keys", "not-a-mapping", "stride3",
                  "unknown-values", "version-2", "wrong-types", "zero-blocks"]
# ... and for rules between keys or files, which only the loader checks.
LOADER_ONLY = ["downsample-on-basic", "duplicate-stage-names", "extends-cycle-a", "extends-cycle-b",
               "extends-missing", "extends-self", "groups-not-dividing", "groups-on-basic", "option-a-shrinks"]


def test_the_command_prints_the_shipped_draft_2020_12_schema() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "schema"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == SCHEMA
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(SPECS)))
def test_every_shipped_spec_passes_schema_and_loader(path: Any) -> None:
    assert not list(VALIDATOR.iter_errors(yaml.safe_load(path.read_text())))
    load(path)


@pytest.mark.parametrize("name", SCHEMA_REASONS)
def test_schema_rejects_what_the_loader_rejects_for_a_schema_reason(name: str) -> None:
    path = SPECS / "invalid" / f"{name}.yaml"
    with pytest.raises(SpecError):
        load(path)
    assert list(VALIDATOR.iter_errors(yaml.safe_load(path.read_text())))


def test_the_fixtures_are_all_classified() -> None:
    unparsable = {"alias-bomb", "duplicate-key", "python-tag", "syntax-error"}  # refused before any schema
    names = {p.stem for p in (SPECS / "invalid").glob("*.yaml")}
    assert names == set(SCHEMA_REASONS) | set(LOADER_ONLY) | unparsable
    for name in LOADER_ONLY:  # the schema cannot see these; the loader must
        with pytest.raises(SpecError):
            load(SPECS / "invalid" / f"{name}.yaml")


BASE = yaml.safe_load((SPECS / "resnet18.yaml").read_text())


@pytest.mark.parametrize(("path", "value"), [
    (("stages", 0, "blocks"), "2"), (("stages", 0, "blocks"), 2.5), (("stages", 1, "stride"), 4),
    (("input",), {"channels": 0}), (("input",), {"size": [32, 32, 3]}), (("head",), {"classes": True}),
    (("shortcut",), "E"), (("expect",), {"gflops": -1}), (("train",), {"optimizer": {"momentum": 1.5}}),
    (("stem",), {"conv": {"kernel": 7, "padding": 3}}), (("expansion",), 0), (("zero_init_residual",), "yes"),
    (("stem",), {"conv": {"channels": []}}), (("stem",), {"conv": {"channels": [32, 0, 64]}}),
    (("stem",), {"conv": {"channels": [32] * 9}}), (("attention",), {"kind": "cbam"}),
    (("attention",), {"reduction": 16}), (("attention",), {"kind": "se", "kernel": 3}),
    (("attention",), {"kind": "eca", "kernel": 4}), (("attention",), {"kind": "se", "reduction": 0}),
    (("input",), {"mean": [0.5, 0.5, 0.5]}), (("input",), {"std": [0.2, 0.2, 0.2]}),
    (("input",), {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0, 0.2]}),
    (("input",), {"mean": ["a", 0.5, 0.5], "std": [0.2, 0.2, 0.2]}),
])
def test_mutations_are_rejected_by_both(path: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(BASE)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(VALIDATOR.iter_errors(doc)), path
    with pytest.raises(SpecError):
        loads(yaml.safe_dump(doc))
