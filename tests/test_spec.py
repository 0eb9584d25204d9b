"""The spec language: every invalid spec fails with its exact message; extends; fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resdsl import SpecError, load
from resdsl.spec import loads

from .conftest import INVALID_SPECS, ROOT, SPECS, VALID_SPECS, spec_id


@pytest.mark.parametrize("path", INVALID_SPECS, ids=spec_id)
def test_invalid_spec_fails_with_its_message(path: Path, in_root: Path) -> None:
    expected = [line.removeprefix("# expect-error: ").rstrip("\n")
                for line in path.read_text().splitlines() if line.startswith("# expect-error: ")]
    assert expected, f"{path} has no '# expect-error:' lines"
    with pytest.raises(SpecError) as info:
        load(path.relative_to(ROOT))
    assert [str(p) for p in info.value.problems] == expected


def test_every_invalid_rule_of_the_issue_has_a_fixture() -> None:
    names = {p.stem for p in INVALID_SPECS}
    for needed in ("duplicate-key", "misspelt-keys", "wrong-types", "stride3", "zero-blocks", "downsample-on-basic",
                   "groups-not-dividing", "option-a-shrinks", "extends-cycle-a", "extends-missing"):
        assert needed in names


@pytest.mark.parametrize("path", VALID_SPECS, ids=spec_id)
def test_valid_specs_load(path: Path) -> None:
    spec = load(path)
    assert spec.name and spec.stages


def test_defaults_follow_the_format() -> None:
    s = loads("resdsl: 1\nname: d\nblock: bottleneck\nstages: [{width: 64, blocks: 1}]\n")
    assert (s.shortcut, s.downsample, s.expansion, s.groups, s.width_per_group) == ("B", "1x1", 4, 1, 64)
    assert (s.in_channels, s.in_size, s.classes, s.zero_init_residual) == (3, (224, 224), 1000, False)
    assert (s.stem.conv.channels, s.stem.conv.kernel, s.stem.conv.stride) == (64, 7, 2)
    assert s.stem.pool is not None and (s.stem.pool.kind, s.stem.pool.kernel, s.stem.pool.stride) == ("max", 3, 2)
    assert s.stages[0].name == "conv2_x" and s.stages[0].stride == 1
    basic = loads("resdsl: 1\nname: d\nblock: basic\nstages: [{width: 64, blocks: 1}]\ninput: {size: [32, 48]}\n")
    assert basic.expansion == 1 and basic.in_size == (32, 48)


def test_extends_merges_mappings_replaces_lists_and_null_removes(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "resdsl: 1\nname: base\nblock: bottleneck\nstem: {conv: {channels: 32, kernel: 3, stride: 1}}\n"
        "stages: [{width: 64, blocks: 3}, {width: 128, blocks: 4, stride: 2}]\nexpect: {gflops: 1.0, params: 5}\n")
    (tmp_path / "child.yaml").write_text(
        "resdsl: 1\nextends: base.yaml\nname: child\nstem: {conv: {channels: 48}}\n"
        "stages: [{width: 16, blocks: 1}]\nexpect: {params: null}\n")
    s = load(tmp_path / "child.yaml")
    assert s.name == "child" and s.block == "bottleneck"
    assert (s.stem.conv.channels, s.stem.conv.kernel) == (48, 3)  # merged key by key
    assert [(x.width, x.blocks) for x in s.stages] == [(16, 1)]   # list replaced whole
    assert s.expect.gflops == 1.0 and s.expect.params is None
    assert "extends" not in s.resolved


def test_error_in_parent_is_located_in_the_parent(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("resdsl: 1\nname: base\nblock: basic\nstages: [{width: 64, blocks: -1}]\n")
    (tmp_path / "child.yaml").write_text("resdsl: 1\nextends: base.yaml\nname: child\n")
    with pytest.raises(SpecError) as info:
        load(tmp_path / "child.yaml")
    (p,) = info.value.problems
    assert p.file.endswith("base.yaml") and (p.line, p.path) == (4, "stages[0].blocks")


def test_torchvision_specs_differ_from_the_paper_only_in_the_stride() -> None:
    paper, tv = load(SPECS / "resnet50.yaml"), load(SPECS / "torchvision" / "resnet50.yaml")
    assert (paper.downsample, tv.downsample) == ("1x1", "3x3")
    assert paper.stages == tv.stages and paper.stem == tv.stem


def test_digest_is_stable_and_sensitive() -> None:
    a, b = load(SPECS / "resnet50.yaml"), load(SPECS / "resnet50.yaml")
    assert a.digest() == b.digest() and a.digest() != load(SPECS / "resnet101.yaml").digest()


# --- property-based: mutate valid specs; anything but SpecError or success is a bug ---------------------------

_BASE = yaml.safe_load((SPECS / "resnet50.yaml").read_text())
_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-3, 600), max_size=3),
                    st.dictionaries(st.text(max_size=6), st.integers(-2, 5), max_size=3))


def _paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


_PATHS = _paths(_BASE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_specs_give_clean_spec_errors(data: st.DataObject, tmp_path: Path) -> None:
    import copy

    doc = copy.deepcopy(_BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_PATHS))
        target = doc
        try:
            for part in path[:-1]:
                target = target[part]
            action = data.draw(st.sampled_from(["set", "delete", "rename"]))
            if action == "set":
                target[path[-1]] = data.draw(_values)
            elif action == "delete" and isinstance(target, dict):
                target.pop(path[-1], None)
            elif isinstance(target, dict) and path[-1] in target:
                target[data.draw(st.text(min_size=1, max_size=8))] = target.pop(path[-1])
        except (KeyError, IndexError, TypeError):
            continue
    f = tmp_path / "mutant.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        spec = load(f)
    except SpecError as e:
        assert e.problems
        assert all(p.file.endswith("mutant.yaml") and p.line >= 1 and p.col >= 1 for p in e.problems)
        return
    # A mutant the loader accepts must count like the module torch builds from it.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from resdsl import build, count, expand

    report = count(expand(spec))
    blocks = sum(s.blocks for s in spec.stages)
    assert report.depth == (3 if spec.bottleneck else 2) * blocks + 2  # Table 1's depth: stem conv + units + fc
    if blocks > 64:  # thousands of blocks take minutes to instantiate, even on the meta device
        return
    model = build(spec, device="meta")
    with FlopCounterMode(display=False) as counter:
        y = model(torch.empty(1, spec.in_channels, *spec.in_size, device="meta"))
    assert tuple(y.shape) == (1, spec.classes)
    assert counter.get_total_flops() == 2 * report.macs
    assert sum(p.numel() for p in model.parameters()) == report.params


def _yaml_oracle(text: str) -> object:
    """What PyYAML's safe loader makes of ``text``; ``_REFUSED`` when it refuses it."""
    try:
        return yaml.safe_load(text)
    except Exception:  # YAMLError, or RecursionError on deep nesting
        return _REFUSED


_REFUSED = object()
#: YAML documents of every shape: scalars, lists, mappings (a few of them close to a spec)
_YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.text(max_size=8), st.sampled_from([1, "basic"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["resdsl", "name", "block", "stages", "width", "blocks",
                                                             "x"]), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(max_size=300), st.text(alphabet="-:?[]{},#&*!|>'\"% \n\tab1", max_size=40),
                     st.builds(yaml.safe_dump, _YAML_VALUES)))
def test_arbitrary_text_is_refused_with_located_problems(text: str) -> None:
    """Anything but a spec is a SpecError located inside the text; PyYAML is the oracle for what is YAML."""
    doc = _yaml_oracle(text)
    try:
        spec = loads(text)
    except SpecError as e:
        assert e.problems
        lines = len(text.splitlines()) + 1  # a superset of YAML's line breaks, plus the end of the stream
        for p in e.problems:
            assert p.file.endswith("spec.yaml") and 1 <= p.line <= lines and p.col >= 1, str(p)
        if not isinstance(doc, dict):  # not YAML, or YAML but not a mapping: one problem at the top
            assert len(e.problems) == 1, [str(p) for p in e.problems]
        return
    assert isinstance(doc, dict) and doc["resdsl"] == 1 and doc["name"] == spec.name
