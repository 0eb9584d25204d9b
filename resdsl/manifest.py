"""manifest.json: what an artefact is, typed, with one writer and one reader.

The manifest is the only thing the runtime needs to know about how an artefact was made. Its JSON Schema
ships as ``resdsl/schemas/manifest.schema.json``; :func:`read` validates the file against it before any other
check reads a key, then refuses (before any artefact byte is deserialized) files that escape the directory,
symlinks, extra or missing files, and hash mismatches. :func:`write` validates what it writes the same way.

Validation uses the ``jsonschema`` library: importing it and compiling the schema costs about 0.08 s per
process (measured on the development machine), small beside opening any runtime, and a hand-written
checker of the same rules would be a second copy of the schema.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError
from .version import __version__

SCHEMA = "resdsl.manifest/1"
NAME = "manifest.json"
#: Sections a target owns, keyed by the section's name in the file.
SECTIONS = ("preprocessing", "size", "export", "quantization", "trt", "aoti")


@dataclass(frozen=True)
class FileEntry:
    """One file of the artefact."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Tensor:
    """An input or output: name, shape (``"batch"`` for a symbolic batch axis, ``"height"``/``"width"`` and
    ``"<output>_height"``/``"<output>_width"`` for sizes that vary), dtype, and an output feature map's stride
    relative to the input (None for the input and the logits)."""

    name: str
    shape: list[int | str]
    dtype: str  # "float32" or "float16"
    stride: int | None = None


@dataclass(frozen=True)
class Batch:
    """The batch sizes the artefact serves."""

    min: int
    opt: int
    max: int
    dynamic: bool


@dataclass(frozen=True)
class Counts:
    """Analytic multiply-adds and parameters of the network."""

    macs: int
    gmacs: float
    params: int
    depth: int


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` holds. ``verification`` is None only while the artefact is being compiled."""

    name: str
    target: str
    created: str
    spec: dict[str, Any]        # source, sha256, resolved (the spec after extends)
    weights: dict[str, Any]     # kind random|file, sha256 of the state_dict, seed or path and file_sha256
    files: dict[str, FileEntry]
    inputs: list[Tensor]
    outputs: list[Tensor]
    batch: Batch
    precision: str
    counts: Counts
    versions: dict[str, str]
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # SECTIONS: target-owned
    verification: dict[str, Any] | None = None

    @property
    def input(self) -> Tensor:
        return self.inputs[0]

    def size_range(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The input heights and widths the artefact serves, (min, opt, max): its ``size`` section (compiled with
        ``--size``), else the input's one size three times."""
        r = self.sections.get("size")
        sides = [r["min"], r["opt"], r["max"]] if r else [self.input.shape[2:]] * 3
        if not all(isinstance(d, int) for side in sides for d in side):
            raise InputError(f"manifest of {self.name!r}: the input's height and width are symbols "
                             f"{self.input.shape[2:]} but there is no 'size' range; the manifest was edited or "
                             "damaged: compile the artefact again")
        (h0, w0), (h1, w1), (h2, w2) = ((int(h), int(w)) for h, w in sides)
        return (h0, w0), (h1, w1), (h2, w2)

    def section(self, key: str) -> dict[str, Any]:
        """A target's section (empty when absent)."""
        return self.sections.get(key, {})

    def with_(self, **changes: Any) -> Manifest:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the schema's order."""
        doc = {"schema": SCHEMA, **{k: v for k, v in asdict(self).items() if k not in ("sections", "verification")}}
        doc.update(self.sections)
        if self.verification is not None:
            doc["verification"] = self.verification
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Manifest:
        """Build from a document that passed the schema."""
        return cls(name=doc["name"], target=doc["target"], created=doc["created"], spec=doc["spec"],
                   weights=doc["weights"], files={k: FileEntry(**v) for k, v in doc["files"].items()},
                   inputs=[Tensor(**t) for t in doc["inputs"]], outputs=[Tensor(**t) for t in doc["outputs"]],
                   batch=Batch(**doc["batch"]), precision=doc["precision"], counts=Counts(**doc["counts"]),
                   versions=doc["versions"], sections={k: doc[k] for k in SECTIONS if k in doc},
                   verification=doc.get("verification"))


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(resources.files("resdsl").joinpath("schemas/manifest.schema.json").read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema)


def schema_problems(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the schema, as ``key.path: message`` (empty when it is valid)."""
    out = []
    for e in sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        out.append(f"{where}: {e.message}")
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256_file(path), path.stat().st_size)


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the packages that made the artefact (absent ones are left out)."""
    from importlib import metadata

    out = {"resdsl": __version__, "python": platform.python_version()}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` into a staging directory (atomicity comes from the directory's rename)."""
    doc = manifest.to_dict()
    problems = schema_problems(doc)
    if problems:  # what resdsl writes must be what it reads back
        raise RuntimeError(f"resdsl bug: the manifest breaks its own schema: {'; '.join(problems[:5])}")
    (directory / NAME).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def read(directory: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read and check an artefact directory's manifest; raise InputError naming the problem and the fix."""
    d = Path(directory)
    doc = _read_json(d)
    problems = schema_problems(doc)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InputError(f"{d / NAME} does not follow the manifest schema ({SCHEMA}): {'; '.join(problems[:3])}"
                         f"{more}. The manifest was edited or damaged; compile the artefact again")
    m = Manifest.from_dict(doc)
    _check_files(d, m, verify_hashes)
    return m


def _read_json(d: Path) -> Any:
    if not d.is_dir():
        raise InputError(f"{d} is not an artefact directory (no such directory); compile one with `resdsl compile`")
    path = d / NAME
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; an artefact's files must be regular files inside it")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{d} has no {NAME}; it is not a resdsl artefact (compile one with `resdsl compile`)") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); the artefact is damaged: compile it again") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{path}: schema is {got!r}, this resdsl {__version__} reads {SCHEMA!r}; "
                         "compile the artefact again with this version")
    return doc


def _check_files(d: Path, m: Manifest, verify_hashes: bool) -> None:
    path, root = d / NAME, d.resolve()
    for name in m.files:
        f = d / name
        if f.is_symlink():
            raise InputError(f"{f} is a symbolic link; refusing to load it (an artefact holds regular files only)")
        if "/" in name or "\\" in name or name in (".", "..") or (f.resolve().parent != root):
            raise InputError(f"{path}: files.{name}: points outside the artefact directory; refusing to load it")
        if not f.is_file():
            raise InputError(f"{path}: files.{name}: the file is missing from {d}; compile again")
    extra = sorted(p.name for p in d.iterdir() if p.name != NAME and p.name not in m.files)
    if extra:
        raise InputError(f"{d} holds files its manifest does not list ({', '.join(extra)}); remove them or "
                         "compile again")
    if not verify_hashes:
        return
    for name, entry in m.files.items():
        f = d / name
        size = f.stat().st_size
        if size != entry.bytes:
            raise InputError(f"{f} is {size} bytes but the manifest says {entry.bytes}: the file was truncated or "
                             "replaced; compile again")
        if sha256_file(f) != entry.sha256:
            raise InputError(f"{f} does not match the sha256 in {path}: the file was changed after it was "
                             "compiled; compile again (nothing was loaded)")
