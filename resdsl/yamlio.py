"""Read a YAML file into plain Python values plus the location of every key.

``yaml.safe_load`` loses positions and silently keeps the last of two
duplicate keys; a spec checker needs both. So we let PyYAML's safe composer
build its node tree (which knows line and column of everything) and turn that
tree into dicts, lists and scalars ourselves, refusing on the way:

- duplicate keys and non-string keys,
- any tag outside the safe YAML core schema (``!!python/object`` and friends),
- documents that expand into too many nodes (alias "billion laughs" bombs),
  nest too deeply, or are too large on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, SpecError

#: Limits that keep a hostile spec from costing memory or time. A real spec
#: has a few hundred nodes, is a few kB and nests four levels deep.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 32

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """``("stages", 2, "stride")`` -> ``stages[2].stride``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class Loc:
    """Where a key or value sits: file, 1-based line and column."""

    file: str
    line: int
    col: int


@dataclass
class Located:
    """A parsed document: ``value`` plus locations of keys and values by key path."""

    value: Any
    file: str
    key_locs: dict[KeyPath, Loc]
    value_locs: dict[KeyPath, Loc]


def display_name(path: Path) -> str:
    """The path as users want to see it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> Located:
    """Parse ``path``; raise :class:`SpecError` with a location for anything unreadable."""
    name = display_name(path)

    def fail(msg: str, line: int = 1, col: int = 1) -> SpecError:
        return SpecError(Problem(name, line, col, "", msg))

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise fail(f"file is {size} bytes, more than the {MAX_FILE_BYTES} a spec may have")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail("no such file; check the path") from None
    except IsADirectoryError:
        raise fail("is a directory, not a spec file") from None
    except PermissionError:
        raise fail("permission denied reading the spec") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise fail(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save the spec as UTF-8",
                   line) from None

    try:
        loader = yaml.SafeLoader(text)  # its reader already refuses control characters
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise fail(f"character #x{e.character:04x} is not allowed in YAML text; remove it", line) from None
    try:
        _check_depth(text, fail)  # PyYAML's composer recurses: bound the depth before it runs
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise fail(f"YAML syntax error: {e.problem or e.context}", line, col) from None
    except yaml.YAMLError as e:
        raise fail(f"YAML error: {e}") from None
    except RecursionError:
        raise fail(f"nested too deeply (more than {MAX_DEPTH} levels); a spec needs four") from None
    finally:
        loader.dispose()
    if root is None:
        raise fail("the file is empty; a spec starts with 'resdsl: 1'")
    return _Builder(name, loader).build(root)


_OPEN = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
         yaml.FlowSequenceStartToken)
_CLOSE = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def _check_depth(text: str, fail: Callable[..., SpecError]) -> None:
    """Scan tokens (iteratively) and refuse nesting deeper than MAX_DEPTH."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                mark = token.start_mark
                raise fail(f"nested more than {MAX_DEPTH} levels deep; a spec needs four", mark.line + 1,
                           mark.column + 1)
        elif isinstance(token, _CLOSE):
            depth -= 1


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


class _Builder:
    """Turns a composed node tree into Python values, recording locations."""

    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.count = 0
        self.key_locs: dict[KeyPath, Loc] = {}
        self.value_locs: dict[KeyPath, Loc] = {}

    def loc(self, node: yaml.Node) -> Loc:
        return Loc(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, node: yaml.Node, path: KeyPath, msg: str) -> SpecError:
        loc = self.loc(node)
        return SpecError(Problem(self.file, loc.line, loc.col, format_path(path), msg))

    def build(self, root: yaml.Node) -> Located:
        value = self.node(root, (), 0)
        return Located(value, self.file, self.key_locs, self.value_locs)

    def node(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.error(node, path, f"the document expands to more than {MAX_NODES} nodes "
                             "(YAML aliases that multiply, a 'billion laughs' bomb?); a spec needs a few hundred")
        if depth > MAX_DEPTH:
            raise self.error(node, path, f"nested more than {MAX_DEPTH} levels deep; a spec needs four")
        self.value_locs[path] = self.loc(node)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise self.error(node, path, f"tag {_tag(node.tag)} is not allowed in a spec")
            return [self.node(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, Any]:
        if node.tag != "tag:yaml.org,2002:map":
            raise self.error(node, path, f"tag {_tag(node.tag)} is not allowed in a spec")
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.error(key_node, path, "YAML merge keys ('<<') are not supported; use 'extends'")
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                raise self.error(key_node, path, f"keys must be strings, got {key!r}")
            sub = (*path, key)
            if key in out:
                raise self.error(key_node, sub, f"duplicate key '{key}' (first at line {first_line[key]}); "
                                 "keep one of them")
            first_line[key] = key_node.start_mark.line + 1
            self.key_locs[sub] = self.loc(key_node)
            out[key] = self.node(value_node, sub, depth + 1)
        return out

    def scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, path, "expected a plain value here, not a mapping or list")
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            msg = f"tag {_tag(node.tag)} is not allowed in a spec (only plain YAML values)"
            raise self.error(node, path, msg) from None
        except (ValueError, OverflowError) as e:
            raise self.error(node, path, f"cannot read value: {e}") from None
