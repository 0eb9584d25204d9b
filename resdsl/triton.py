"""A Triton Inference Server model repository from compiled artefacts (``resdsl triton``).

Each onnx or trt artefact becomes ``REPO/NAME/config.pbtxt`` plus ``REPO/NAME/1/`` holding the model file
(``model.onnx``, or the engine as ``model.plan``) and the artefact's ``manifest.json``, so the hashes travel
with the model. Everything in the config comes from the typed manifest (:func:`resdsl.manifest.read`, which
checks the schema and every file's hash first) and from :class:`TritonOptions`; the protobuf text is written
by a small formatter here, so neither tritonclient nor protobuf is needed at run time (the tests parse the
output with Triton's own ``model_config_pb2``).

Every artefact is read and every config made before anything is written, so a bad directory, a refused
option or two artefacts with one name write nothing. Each model is then written atomically with
:func:`resdsl.atomic.staging_dir`: a hidden ``REPO/.NAME.tmp-*`` sibling renamed into place, an existing
``REPO/NAME`` swapped out; other models in REPO are left alone. No torch, onnx or tensorrt import.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeAlias

from . import manifest as manifest_io
from .atomic import staging_dir
from .errors import API_NAMES, InputError, OptionError
from .manifest import Manifest, Tensor

#: target -> (Triton platform, file name in the version directory, the artefact's file it is copied from)
PLATFORMS = {"trt": ("tensorrt_plan", "model.plan", "model.engine"),
             "onnx": ("onnxruntime_onnx", "model.onnx", "model.onnx")}
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
VERSION = "1"
#: A model name Triton and every file system take as a directory name.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_UINT64 = 2**64 - 1


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TritonOptions:
    """How the models are served. ``kind``: ``gpu`` or ``cpu`` (None: gpu for trt, cpu for onnx);
    ``dynamic_batching``: None turns Triton's dynamic batcher on exactly for dynamic-batch artefacts, True
    requires it (a fixed-batch artefact is refused), False leaves it out; ``cuda_graphs``: trt only."""

    max_queue_delay_us: int = 100
    instances: int = 1
    kind: str | None = None
    cuda_graphs: bool = False
    dynamic_batching: bool | None = None

    def __post_init__(self) -> None:
        if not _int(self.max_queue_delay_us) or not 0 <= self.max_queue_delay_us <= _UINT64:
            raise OptionError(f"{{max_queue_delay_us}} {self.max_queue_delay_us!r}: give a whole number of "
                              "microseconds >= 0 (Triton's dynamic_batching.max_queue_delay_microseconds), e.g. 100")
        if not _int(self.instances) or not 1 <= self.instances <= 2**31 - 1:
            raise OptionError(f"{{instances}} {self.instances!r}: give the number of model instances, a whole "
                              "number >= 1 (Triton's instance_group.count)")
        if self.kind is not None and self.kind not in KINDS:
            raise OptionError(f"{{kind}} {self.kind!r}: choose gpu or cpu (or leave it out: gpu for trt, cpu for "
                              "onnx)")
        if not isinstance(self.cuda_graphs, bool) or not isinstance(self.dynamic_batching, bool | None):
            raise OptionError("{cuda_graphs} and {dynamic_batching} take True or False ({dynamic_batching} also "
                              "None: on for dynamic-batch artefacts)")


API_NAMES.update({f.name: f"TritonOptions.{f.name}" for f in fields(TritonOptions)})

# --------------------------------------------------------------------------- config.pbtxt


class Ident(str):
    """An enum value (``TYPE_FP32``, ``KIND_GPU``): written without quotes."""


Value: TypeAlias = "str | int | bool | Mapping[str, Value] | list[Value]"


def model_config(manifest: Manifest, options: TritonOptions, source: str | Path | None = None) -> str:
    """The ``config.pbtxt`` text serving ``manifest``'s artefact (``source``: its directory, for messages)."""
    where = f"{source}/{manifest_io.NAME}" if source is not None else f"the artefact {manifest.name!r}"
    platform, kind = _check_target(manifest, options, where)
    batch, batcher = _batching(manifest, options, where)
    ranged = _ranged(manifest)
    fields_: dict[str, Value] = {
        "name": manifest.name, "platform": platform, "max_batch_size": batch,
        "input": [_tensor(t, batch > 0, where, "inputs", ranged) for t in manifest.inputs],
        "output": [_tensor(t, batch > 0, where, "outputs", ranged) for t in manifest.outputs],
    }
    if batcher is not None:
        fields_["dynamic_batching"] = batcher
    fields_["instance_group"] = [{"count": options.instances, "kind": Ident(KINDS[kind])}]
    if options.cuda_graphs:
        fields_["optimization"] = {"cuda": {"graphs": True}}
    b = manifest.batch
    head = (f"# {manifest.name}: a resdsl {manifest.target} artefact ({manifest.precision}, batch "
            f"{b.min}:{b.opt}:{b.max}); {VERSION}/{manifest_io.NAME} records how it was made and its files' sha256")
    return "\n".join([head, *_pbtxt(fields_)]) + "\n"


def _check_target(manifest: Manifest, options: TritonOptions, where: str) -> tuple[str, str]:
    """Triton's platform and the instance kind, or the refusal naming the fix."""
    if manifest.target not in PLATFORMS:
        raise InputError(f"{where}: target is {manifest.target!r}; Triton serves TensorRT plans and ONNX models, "
                         f"not a resdsl {manifest.target} artefact; compile the spec again with --target onnx "
                         "(ONNX Runtime, CPU or GPU) or --target trt (a TensorRT engine, GPU) and pass that directory")
    if not _MODEL_NAME.fullmatch(manifest.name):
        raise InputError(f"{where}: name {manifest.name!r} cannot name a Triton model directory (letters, digits, "
                         "'_', '.', '-', not starting with '.' or '-'); rename the spec (its 'name' key) and compile "
                         "again")
    kind = options.kind or ("gpu" if manifest.target == "trt" else "cpu")
    if manifest.target == "trt" and kind == "cpu":
        raise OptionError(f"{{kind}} cpu: {where} is a trt artefact, and a TensorRT engine runs on the GPU only; "
                          "leave {kind} out (or give gpu), or compile the spec with --target onnx to serve it on CPU")
    if manifest.target != "trt" and options.cuda_graphs:
        raise OptionError(f"{{cuda_graphs}}: {where} is an {manifest.target} artefact; Triton's CUDA graphs "
                          "(optimization.cuda.graphs) belong to the TensorRT backend; leave {cuda_graphs} out, or "
                          "compile the spec with --target trt")
    return PLATFORMS[manifest.target][0], kind


def _batching(manifest: Manifest, options: TritonOptions, where: str) -> tuple[int, dict[str, Value] | None]:
    """``max_batch_size`` and the ``dynamic_batching`` block (None: none)."""
    b = manifest.batch
    if not b.dynamic:
        if options.dynamic_batching:
            raise OptionError(f"{{dynamic_batching}}: {where}: batch.dynamic is false (the model takes exactly "
                              f"{b.max} images a call), so Triton cannot batch requests for it; leave "
                              "{dynamic_batching} out, or compile the spec again with a batch range, e.g. "
                              f"--batch 1:{b.max}:{max(b.max, 32)}")
        return 0, None
    if manifest.target == "trt" and b.min > 1:
        raise InputError(f"{where}: batch.min is {b.min}, but Triton sends a batching model any batch size from 1 "
                         f"to max_batch_size and a TensorRT engine refuses sizes outside its profile "
                         f"{b.min}:{b.opt}:{b.max}; compile the spec again with --batch 1:{b.opt}:{b.max}")
    if options.dynamic_batching is False:
        return b.max, None
    preferred: list[Value] = [n for n in sorted({b.opt, b.max}) if b.min <= n <= b.max]
    return b.max, {"preferred_batch_size": preferred, "max_queue_delay_microseconds": options.max_queue_delay_us}


def _ranged(manifest: Manifest) -> bool:
    """Whether the artefact serves a range of input sizes (its height and width, and its feature maps', are
    symbols in the manifest's shapes)."""
    return bool(manifest.sections.get("size", {}).get("dynamic"))


def _tensor(t: Tensor, batched: bool, where: str, key: str, ranged: bool = False) -> dict[str, Value]:
    """One ``input``/``output`` entry: dims without the batch axis when Triton batches, the full shape when not;
    a height or width that varies (``ranged``) is Triton's -1."""
    dims = t.shape[1:] if batched else t.shape
    fits = len(t.shape) >= 2 and isinstance(t.shape[0], str) == batched
    sizes: list[Value] = [d if isinstance(d, int) else -1 for d in dims
                          if (isinstance(d, int) and not isinstance(d, bool) and d >= 1)
                          or (ranged and isinstance(d, str) and d.endswith(("height", "width")))]
    if not fits or len(sizes) != len(dims):
        raise InputError(f"{where}: {key} {t.name!r} has shape {t.shape}, which does not fit batch.dynamic "
                         f"({str(batched).lower()}); the manifest was edited or damaged: compile the artefact again")
    if t.dtype not in DATA_TYPES:
        raise InputError(f"{where}: {key} {t.name!r} has dtype {t.dtype!r}; Triton configs are written for "
                         f"{', '.join(DATA_TYPES)}: compile the artefact again")
    return {"name": t.name, "data_type": Ident(DATA_TYPES[t.dtype]), "dims": sizes}


def _pbtxt(message: Mapping[str, Value], indent: int = 0) -> list[str]:
    """Protobuf text format of a message: nested messages in braces, repeated ones and lists in brackets."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", *_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                assert isinstance(item, Mapping)
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", *_pbtxt(item, indent + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _scalar(value: Value) -> str:
    if isinstance(value, Ident):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):  # bytes outside printable ASCII, quotes and backslashes as octal escapes
        return '"' + "".join(chr(c) if 0x20 <= c < 0x7F and chr(c) not in '"\\' else f"\\{c:03o}"
                             for c in value.encode("utf-8")) + '"'
    raise TypeError(f"resdsl bug: no protobuf text form for {value!r}")


# --------------------------------------------------------------------------- the repository


@dataclass(frozen=True)
class _Planned:
    source: Path
    manifest: Manifest
    config: str


def write_repository(artefacts: Sequence[Path], repo: Path, options: TritonOptions) -> list[Path]:
    """Write one Triton model per artefact into ``repo``; return the model directories, in order. Nothing is
    written unless every artefact is accepted; each model appears complete or not at all."""
    if not artefacts:
        raise InputError("no artefact directories given; pass one or more directories written by `resdsl compile "
                         "--target onnx` or `--target trt`")
    plans = [_plan(Path(d), options) for d in artefacts]
    seen: dict[str, Path] = {}
    for p in plans:
        if p.manifest.name in seen:
            raise InputError(f"{seen[p.manifest.name]} and {p.source} both hold the model {p.manifest.name!r} "
                             f"({manifest_io.NAME}: name), and a Triton repository serves one model per name; pass "
                             "one of them, or compile one from a spec with another 'name'. Nothing was written")
        seen[p.manifest.name] = p.source
    return [_write_model(p, Path(repo)) for p in plans]


def _plan(source: Path, options: TritonOptions) -> _Planned:
    m = manifest_io.read(source)  # schema and every file's hash, before anything is used
    return _Planned(source, m, model_config(m, options, source))


def _write_model(plan: _Planned, repo: Path) -> Path:
    dest = repo / plan.manifest.name
    _, filename, artefact_file = PLATFORMS[plan.manifest.target]
    with staging_dir(dest, force=True) as stage:
        (stage / "config.pbtxt").write_text(plan.config, encoding="utf-8")
        version = stage / VERSION
        version.mkdir()
        _copy_checked(plan.source / artefact_file, version / filename, plan.manifest.files[artefact_file].sha256)
        shutil.copyfile(plan.source / manifest_io.NAME, version / manifest_io.NAME)
    return dest


def _copy_checked(src: Path, dst: Path, sha256: str) -> None:
    """Copy ``src`` and check the copy against the manifest's sha256 (the artefact may change under us)."""
    shutil.copyfile(src, dst)
    if manifest_io.sha256_file(dst) != sha256:
        raise InputError(f"{src} changed while it was being copied: the copy does not match its sha256 in "
                         f"{src.parent / manifest_io.NAME}; let whatever writes it finish, then run again")
