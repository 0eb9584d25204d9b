"""The ONNX file as resdsl writes and reads it: self-contained, checked, stamped with a digest.

Files have input ``input`` and output ``logits``, batch axis ``batch``. ``metadata_props`` keep the map from
module path to tensor name (``resdsl.tensors``) and a sha256 of the rest (``resdsl.sha256``), checked on every
load, so an edited or damaged file is refused before ONNX Runtime or TensorRT parses it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..atomic import apply_umask
from ..errors import BackendUnavailable, InputError

if TYPE_CHECKING:
    import onnx

INPUT, OUTPUT, BATCH, MIN_OPSET = "input", "logits", "batch", 17
TENSORS_KEY, DIGEST_KEY = "resdsl.tensors", "resdsl.sha256"
PathLike = str | os.PathLike[str]
_FIX = "compile it again (resdsl compile SPEC --target onnx) or restore it from a good copy"


def need(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendUnavailable(f"the ONNX backend needs the Python package {name.split('.')[0]!r}, which cannot be "
                                 f"imported ({e}); install it with: pip install 'resdsl[onnx]'") from None


def _strip_digest(proto: onnx.ModelProto) -> list[str]:
    """Remove the digest entries from ``proto``; return their values."""
    kept = [p for p in proto.metadata_props if p.key != DIGEST_KEY]
    stamped = [p.value for p in proto.metadata_props if p.key == DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return stamped


def _digest(proto: onnx.ModelProto) -> tuple[list[str], str]:
    """Remove the digest entries from ``proto``; return them and the sha256 of what is left, serialized canonically."""
    stamped = _strip_digest(proto)
    return stamped, hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Stamp the digest, write a temporary file beside ``path``, check it, then ``os.replace`` it.

    The model is serialized once: the digest entry is appended to the canonical bytes as one more
    ``metadata_props`` record, which protobuf's parsers merge into the repeated field (concatenated
    messages merge), so the file reads back as ``proto`` with the entry added.
    """
    ox = need("onnx")
    _strip_digest(proto)  # an entry already there would be stale (and a duplicate key)
    body = proto.SerializeToString(deterministic=True)
    stamp = ox.ModelProto(metadata_props=[ox.StringStringEntryProto(key=DIGEST_KEY,
                                                                    value=hashlib.sha256(body).hexdigest())])
    proto.metadata_props.extend(stamp.metadata_props)
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(stamp.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        apply_umask(Path(tmp))
        ox.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write the ONNX model there ({e.strerror or e})") from None
        raise


def load_model(path: PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file; a missing, truncated or edited file raises InputError naming it."""
    return read_checked(path)[0]


def read_checked(path: PathLike) -> tuple[onnx.ModelProto, bytes]:
    """:func:`load_model`, also returning the file's bytes (checked; handed to ONNX Runtime as they are)."""
    ox = need("onnx")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the ONNX model ({e.strerror})") from None
    try:
        proto: onnx.ModelProto = ox.load_model_from_string(data)
    except Exception:
        raise InputError(f"{path}: not a readable ONNX model: it does not parse (truncated or corrupted); {_FIX}") \
            from None
    external = [t.name for t in _tensors(proto) if t.data_location == 1]  # TensorProto.EXTERNAL
    if external:  # resdsl's files are self-contained; external data could name any file on the machine
        raise InputError(f"{path}: tensors {external[:3]} point at external data files; resdsl artefacts hold "
                         f"their weights inside model.onnx, so this file was not made by resdsl; {_FIX}")
    try:  # a file with resdsl's metadata must carry the digest of the rest (an edited key may not even be a str)
        stamped, digest = _digest(proto)
        ours = any(str(p.key).startswith("resdsl.") for p in proto.metadata_props)
        intact = stamped == [digest] if stamped else not ours
    except Exception:
        intact = False
    if not intact:
        raise InputError(f"{path}: the model was changed after resdsl wrote it (its sha256 no longer matches the "
                         f"one stored in it); {_FIX}")
    try:
        ox.checker.check_model(data)
    except Exception as e:
        raise InputError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0]}); {_FIX}") from None
    return proto, data


def _tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and the tensors held in node attributes (Constant values)."""
    out = list(proto.graph.initializer)
    for node in proto.graph.node:
        out += [a.t for a in node.attribute if a.HasField("t")]
        out += [t for a in node.attribute for t in a.tensors]
    return out


def tensor_map(path: PathLike) -> dict[str, str]:
    """The ``module path -> tensor name`` map stored in a file :func:`export` wrote."""
    for p in load_model(path).metadata_props:
        if p.key == TENSORS_KEY:
            return dict(json.loads(p.value))
    raise InputError(f"{path}: has no {TENSORS_KEY} entry, so resdsl did not export it; re-export it")


