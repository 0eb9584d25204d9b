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
from typing import TYPE_CHECKING, BinaryIO

from ..atomic import apply_umask
from ..errors import BackendUnavailable, InputError

if TYPE_CHECKING:
    import onnx
    from google.protobuf.message import Message

INPUT, OUTPUT, BATCH, MIN_OPSET = "input", "logits", "batch", 17
TENSORS_KEY, DIGEST_KEY = "resdsl.tensors", "resdsl.sha256"
PathLike = str | os.PathLike[str]
_FIX = "compile it again (resdsl compile SPEC --target onnx) or restore it from a good copy"


def need(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendUnavailable(f"the ONNX backend needs the Python package {name.split('.')[0]!r}, which cannot be "
                                 f"imported ({e}); it comes with resdsl: pip install {name.split('.')[0]} (or "
                                 "reinstall resdsl)") from None


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
    """Write ``proto`` to ``path`` with its digest, atomically, checked by onnx's full checker (a stale digest
    entry in ``proto`` is removed)."""
    commit(write_temporary(proto, path), path)


def write_temporary(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto`` stamped with its digest to a temporary file beside ``path``; :func:`commit` it next.

    The file is the model's canonical serialization followed by one more ``metadata_props`` record holding the
    sha256 of those bytes (protobuf's parsers merge concatenated messages, so it reads back as the model with
    the entry added). It is written a piece at a time (:func:`_write_canonical`), never the whole model at once.
    """
    _strip_digest(proto)
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(_stamp(_write_canonical(proto, f)))
            f.flush()
            os.fsync(f.fileno())
        apply_umask(Path(tmp))
        return Path(tmp)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write the ONNX model there ({e.strerror or e})") from None
        raise


def commit(tmp: Path, path: Path) -> None:
    """Check ``tmp`` with onnx's full checker, then rename it to ``path``; ``tmp`` is removed on any failure."""
    try:
        need("onnx").checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write the ONNX model there ({e.strerror or e})") from None
        raise


def _write_canonical(proto: onnx.ModelProto, f: BinaryIO) -> str:
    """Write ``proto.SerializeToString(deterministic=True)`` to ``f``; return its sha256.

    Serializing a whole model at once holds its bytes twice over (the encoder's growing buffer, then the bytes
    object), which for ResNet-152 was the export's peak memory. Protobuf writes fields in field-number order, so
    the same bytes come piece by piece: the model's fields before ``graph``, the graph's tag and length, the
    graph's fields before ``initializer``, each initializer, the graph's remaining fields, the model's remaining
    fields. ONNX models carry no map fields, so deterministic and plain serialization agree.
    """
    h = hashlib.sha256()

    def put(b: bytes) -> None:
        h.update(b)
        f.write(b)

    g = proto.graph
    lo, hi = _fields(g, 0, _INITIALIZER), _fields(g, _INITIALIZER + 1, 1 << 29)
    sizes = [t.ByteSize() for t in g.initializer]
    length = len(lo) + len(hi) + sum(1 + len(_varint(n)) + n for n in sizes)
    put(_fields(proto, 0, _GRAPH))
    if proto.HasField("graph"):
        put(_varint(_GRAPH << 3 | 2) + _varint(length) + lo)
        for t in g.initializer:
            body = t.SerializeToString(deterministic=True)
            put(_varint(_INITIALIZER << 3 | 2) + _varint(len(body)))
            put(body)
        put(hi)
    put(_fields(proto, _GRAPH + 1, 1 << 29))
    return h.hexdigest()


_GRAPH, _INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer


def _fields(msg: Message, lo: int, hi: int) -> bytes:
    """``msg`` serialized with only its fields numbered ``lo <= n < hi`` (protobuf writes them in that order)."""
    part = type(msg)()
    for fd, value in msg.ListFields():
        if not lo <= fd.number < hi:
            continue
        if fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED:  # protobuf < 5.28: label
            getattr(part, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(part, fd.name).CopyFrom(value)
        else:
            setattr(part, fd.name, value)
    return bytes(part.SerializeToString(deterministic=True))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _stamp(hexdigest: str) -> bytes:
    """The serialized ``metadata_props`` record that carries the digest (a fixed length for a sha256)."""
    ox = need("onnx")
    entry = ox.StringStringEntryProto(key=DIGEST_KEY, value=hexdigest)
    return bytes(ox.ModelProto(metadata_props=[entry]).SerializeToString())


def load_model(path: PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file; a missing, truncated or edited file raises InputError naming it."""
    proto, digest = _check(path, keep=True)
    if file_sha256(path) != digest:
        raise InputError(f"{path}: the file changed while it was being checked; load it again once nothing is "
                         "writing it")
    return proto


def check_file(path: PathLike) -> str:
    """Check ``path`` as :func:`load_model` does without keeping the model; return the sha256 of the file's
    bytes, for a caller that lets another library read the file to confirm that it read the same bytes."""
    return _check(path, keep=False)[1]


def file_sha256(path: PathLike) -> str:
    """The sha256 of the file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: PathLike, keep: bool) -> tuple[onnx.ModelProto, str]:
    """Parse, refuse external data, match the digest, run onnx's checker on the file. Returns the parsed model
    (empty unless ``keep``) and the sha256 of the bytes checked. At most two copies of the model are held at once
    (the file's bytes and the parsed model, then the checker's own two)."""
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
    digest = _intact(data, proto)
    if digest is None:
        raise InputError(f"{path}: the model was changed after resdsl wrote it (its sha256 no longer matches the "
                         f"one stored in it); {_FIX}")
    del data
    if not keep:
        proto = ox.ModelProto()
    try:
        ox.checker.check_model(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0]}); {_FIX}") from None
    return proto, digest


def _intact(data: bytes, proto: onnx.ModelProto) -> str | None:
    """The sha256 of the file's bytes ``data`` if it carries the digest of the rest (a file without resdsl's
    metadata is let through), else None.

    As :func:`write_temporary` writes it, the file is the canonical bytes followed by the digest record: that is
    checked on the bytes. Otherwise (a model re-saved by another tool) the digest is recomputed from ``proto``
    with the entry removed, canonically serialized; ``proto`` is left as it was.
    """
    n = len(_stamp("0" * 64))
    if len(data) > n:
        h = hashlib.sha256(memoryview(data)[:-n])  # a view: slicing the bytes would copy the whole model
        if data[-n:] == _stamp(h.hexdigest()):
            h.update(data[-n:])  # the whole file's digest from the body's: one pass over the bytes
            return h.hexdigest()
    try:  # an edited key may not even be a str
        ours = any(str(p.key).startswith("resdsl.") for p in proto.metadata_props)
        copy = type(proto)()
        copy.CopyFrom(proto)
        stamped, digest = _digest(copy)
        ok = stamped == [digest] if stamped else not ours
    except Exception:
        ok = False
    return hashlib.sha256(data).hexdigest() if ok else None


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


