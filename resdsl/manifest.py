"""manifest.json: what an artefact is, and the checks made before anything is loaded.

The manifest is the only thing the runtime needs to know about how an
artefact was made. Its JSON schema is ``resdsl/schemas/manifest.schema.json``.
:func:`read_checked` refuses, before any artefact byte is deserialized:
a missing or malformed manifest, another schema version, file entries that
escape the directory, symlinks, extra or missing files, and hash mismatches.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError

SCHEMA = "resdsl.manifest/1"
NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the packages that made the artefact."""
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


def write(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (the directory is a staging dir: atomicity comes from its rename)."""
    manifest = {"schema": SCHEMA, **manifest}
    (directory / NAME).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def read_checked(directory: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and check an artefact directory's manifest; raise InputError naming the problem."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d} is not an artefact directory (no such directory); compile one with `resdsl compile`")
    path = d / NAME
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; an artefact's files must be regular files inside it")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{d} has no {NAME}; it is not a resdsl artefact (compile one with `resdsl compile`)") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); the artefact is damaged: compile it again") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise InputError(f"{path}: schema is {got!r}, this resdsl {__version__} reads {SCHEMA!r}; "
                         "compile the artefact again with this version")
    for key in ("target", "files", "inputs", "outputs", "spec"):
        if key not in m:
            raise InputError(f"{path}: key '{key}' is missing; the manifest is damaged: compile again")
    files = m["files"]
    if not isinstance(files, dict) or not files:
        raise InputError(f"{path}: 'files' must list the artefact's files; compile again")
    root = d.resolve()
    for name, entry in files.items():
        f = d / name
        if f.is_symlink():
            raise InputError(f"{f} is a symbolic link; refusing to load it (an artefact holds regular files only)")
        if "/" in name or "\\" in name or name in (".", "..") or (f.resolve().parent != root):
            raise InputError(f"{path}: files.{name}: points outside the artefact directory; refusing to load it")
        if not f.is_file():
            raise InputError(f"{path}: files.{name}: the file is missing from {d}; compile again")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise InputError(f"{path}: files.{name}: no sha256 recorded; compile again")
    extra = sorted(p.name for p in d.iterdir() if p.name != NAME and p.name not in files)
    if extra:
        raise InputError(f"{d} holds files its manifest does not list ({', '.join(extra)}); remove them or "
                         "compile again")
    if verify_hashes:
        for name, entry in files.items():
            f = d / name
            size = f.stat().st_size
            if size != entry.get("bytes", size):
                raise InputError(f"{f} is {size} bytes but the manifest says {entry['bytes']}: the file was "
                                 "truncated or replaced; compile again")
            if sha256_file(f) != entry["sha256"]:
                raise InputError(f"{f} does not match the sha256 in {path}: the file was changed after it was "
                                 "compiled; compile again (nothing was loaded)")
    return m
