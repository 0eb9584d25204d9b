"""The spec: loading a file into the frozen dataclasses of :mod:`resdsl.spec_types` (re-exported here).

``load(path)`` reads YAML (see :mod:`resdsl.yamlio`), resolves ``extends``,
applies defaults and validates everything, collecting *all* problems before
raising one :class:`~resdsl.errors.SpecError`. The format (every key, its
type, default and bounds, ``extends`` and the errors) is documented in
``docs/spec-format.md``; :mod:`resdsl.validate` enforces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import Problem, SpecError
from .spec_types import (
    ATTENTIONS,
    BLOCKS,
    LOGITS,
    SHORTCUTS,
    STEM,
    Attention,
    ConvCfg,
    Expect,
    Normalize,
    PoolCfg,
    Spec,
    Stage,
    Stem,
    Train,
)
from .validate import validate
from .yamlio import KeyPath, Loc, Located, display_name, read_yaml

__all__ = ["ATTENTIONS", "BLOCKS", "LOGITS", "SHORTCUTS", "STEM", "Attention", "ConvCfg", "Expect", "Normalize",
           "PoolCfg", "Spec", "Stage", "Stem", "Train", "from_resolved", "load", "loads", "spec_tree"]

MAX_EXTENDS_DEPTH = 16


def load(path: str | Path, root: Path | None = None) -> Spec:
    """Load, merge (``extends``) and validate a spec file; raise SpecError listing every problem.

    ``extends`` may only reach files under ``root`` (default: :func:`spec_tree`
    of the spec, which depends on where the spec lies, never on the working
    directory), so a spec from elsewhere cannot make resdsl read arbitrary files.
    """
    path = Path(path)
    return validate(_load_merged(path, [], root or spec_tree(path)))


#: What marks the top of a project, and so of the spec tree: a version-control root or a Python project.
TREE_MARKERS = (".git", "pyproject.toml")


def spec_tree(path: str | Path) -> Path:
    """The tree ``extends`` may reach from the spec at ``path``: the nearest directory at or above the spec's own
    that holds ``.git`` or ``pyproject.toml`` (the project it belongs to); outside any project, the outermost
    directory named ``specs`` above it (a copy of resdsl's specs/); else the spec's own directory. It depends only
    on where the spec lies, so ``resdsl check`` gives the same answer from any working directory."""
    here = Path(path).resolve().parent
    named = None
    for d in (here, *here.parents):
        if any((d / marker).exists() for marker in TREE_MARKERS):
            return d
        if d.name == "specs":
            named = d
    return named or here


def from_resolved(doc: dict[str, Any], source: str = "<manifest>") -> Spec:
    """Rebuild a Spec from its resolved mapping (as stored in a manifest); validated like a file."""
    return validate(Located(doc, source, {}, {}))


def loads(text: str, name: str = "spec.yaml") -> Spec:
    """Load a spec from a string (tools, tests); it cannot use ``extends``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        p.write_text(text, encoding="utf-8")
        return load(p)


def _load_merged(path: Path, chain: list[Path], root: Path) -> Located:
    doc = read_yaml(path)
    if not isinstance(doc.value, dict):
        raise SpecError(Problem(doc.file, 1, 1, "", "a spec is a mapping of keys (resdsl: 1, name: ..., ...)"))
    parent_ref = doc.value.get("extends")
    if parent_ref is None:
        return doc
    loc = doc.value_locs[("extends",)]
    if not isinstance(parent_ref, str) or not parent_ref:
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends", "must be a path to another spec"))
    parent_path = (path.parent / parent_ref).resolve()
    here = path.resolve()
    if parent_path in chain or parent_path == here:
        cycle = " -> ".join(p.name for p in [*chain, here, parent_path])
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends", f"cycle: {cycle}; remove one link"))
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends", f"more than {MAX_EXTENDS_DEPTH} levels"))
    if not parent_path.is_relative_to(root.resolve()):
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends",
                                f"'{parent_ref}' lies outside the spec tree {display_name(root)}; keep a spec and "
                                "the specs it extends in one project (a directory holding .git or pyproject.toml), "
                                "or under the spec's own directory"))
    if not parent_path.is_file():
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends",
                                f"no such file '{parent_ref}' (looked for {display_name(parent_path)}); the path is "
                                "relative to this spec's directory"))
    parent = _load_merged(parent_path, [*chain, here], root)
    return _merge(parent, doc)


def _merge(base: Located, over: Located) -> Located:
    """Mappings merge key by key; lists and scalars replace whole (docs/spec-format.md).

    As in JSON Merge Patch (RFC 7386), a ``null`` in the extending file removes
    the key it inherited: ``expect: {params: null}`` drops the parent's count.
    """
    key_locs = dict(base.key_locs)
    value_locs = dict(base.value_locs)

    def drop(prefix: KeyPath) -> None:
        for table in (key_locs, value_locs):
            for k in [k for k in table if k[: len(prefix)] == prefix]:
                del table[k]

    def merge(a: Any, b: Any, path: KeyPath) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                sub = (*path, k)
                if v is None:
                    drop(sub)
                    out.pop(k, None)
                elif k in out and isinstance(out[k], dict) and isinstance(v, dict):
                    out[k] = merge(out[k], v, sub)
                else:
                    drop(sub)
                    out[k] = v
                    _copy_locs(over, sub, key_locs, value_locs)
            return out
        return b

    value = merge(base.value, over.value, ())
    value.pop("extends", None)
    return Located(value, over.file, key_locs, value_locs)


def _copy_locs(src: Located, prefix: KeyPath, key_locs: dict[KeyPath, Loc], value_locs: dict[KeyPath, Loc]) -> None:
    for table_in, table_out in ((src.key_locs, key_locs), (src.value_locs, value_locs)):
        for k, v in table_in.items():
            if k[: len(prefix)] == prefix:
                table_out[k] = v
