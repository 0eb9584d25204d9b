"""Loading trained weights: resdsl checkpoints, plain state_dicts (torchvision's included) and safetensors files
(timm's).

Files are read with ``torch.load(weights_only=True)``, which unpickles tensors
and containers only, never code; safetensors files (recognised by their
header, whatever their name) with the safetensors library, which holds no
code at all. Keys and shapes are checked strictly before
anything is copied; the error lists the first missing, unexpected and
mis-shaped keys and names the specs whose layout the file does fit.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from .data import Trained
from .errors import BackendUnavailable, InputError
from .ir import Graph
from .layout import fits_hint, specs_fitting, state_layout

SHOW = 5


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over keys, dtypes, shapes and bytes, in order: equal weights, equal digests."""
    h = hashlib.sha256()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class WeightsFile:
    """A weights file read once: its state_dict, its format name, and what a training checkpoint records about
    its inputs (``trained``: the preprocessing evaluation and calibration must repeat; None for a plain
    state_dict)."""

    path: Path
    state: dict[str, torch.Tensor]
    format: str
    trained: Trained | None


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read a weights file; return the state_dict and its format name."""
    w = read_weights(path)
    return w.state, w.format


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header (timm's and Hugging Face's
    checkpoints, ``model.safetensors``)."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size


def _read_safetensors(path: Path) -> WeightsFile:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise BackendUnavailable(f"weights file {path} is a safetensors file, which needs the safetensors package: "
                                 "pip install safetensors") from None
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, ValueError, OSError) as e:
        raise InputError(f"cannot read weights file {path}: it starts like a safetensors file but "
                         f"{str(e).splitlines()[0][:200]}; the file is damaged or truncated, download it again") \
            from None
    return WeightsFile(path, {k.removeprefix("module."): v for k, v in state.items()}, "safetensors", None)


def read_weights(path: str | Path) -> WeightsFile:
    """Read a weights file (see :class:`WeightsFile`): a PyTorch or resdsl checkpoint, or a safetensors file."""
    path = Path(path)
    if path.is_file() and _is_safetensors(path):
        return _read_safetensors(path)
    try:
        if not hasattr(torch.serialization, "safe_globals"):  # torch 2.4 has only the process-wide list
            torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"weights file {path} does not exist; check the --weights path") from None
    except IsADirectoryError:
        raise InputError(f"--weights {path} is a directory; give the checkpoint file itself") from None
    except Exception as e:  # torch raises many kinds for a bad or hostile file
        # torch's UnpicklingError opens with advice to retry with weights_only=False, which resdsl never does
        why = ("it does not unpickle as tensors and plain containers (weights_only=True; pickled code is refused)"
               if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        raise InputError(f"cannot read weights file {path}: {why}. "
                         "It must be a PyTorch checkpoint (torch.save of a state_dict), a safetensors file or a resdsl "
                         "checkpoint") \
            from None
    trained = Trained.from_checkpoint(obj, path)
    obj, fmt = _unwrap(obj, path)
    state = {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel/DDP checkpoints
    return WeightsFile(path, state, fmt, trained)


#: Harmless classes that training checkpoints pickle beside the weights, allowed through torch's own safe-globals
#: list (``weights_only`` stays on): torchvision's reference scripts save their ``argparse.Namespace`` as ``args``.
SAFE_GLOBALS = (argparse.Namespace,)


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict inside an unpickled checkpoint, and the format's name: a plain state_dict, a resdsl
    checkpoint, ``{"state_dict": ...}`` (Lightning and others), or a torchvision reference-script checkpoint
    (``{"model": ..., "optimizer": ..., "epoch": ..., "args": ...}``; its ``model`` entry, else ``model_ema``)."""
    fmt = "state_dict"
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "resdsl" in obj:
        obj, fmt = obj["model"], "resdsl"
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, fmt = obj["state_dict"], "state_dict (nested under 'state_dict')"
    elif isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in ("model", "model_ema")):
        key = "model" if isinstance(obj.get("model"), dict) else "model_ema"
        other = " (it also holds 'model_ema', not used)" if key == "model" and "model_ema" in obj else ""
        fmt = f"training checkpoint, its '{key}' entry{other}"
        obj = {k: v for k, v in obj[key].items() if not (key == "model_ema" and k == "n_averaged")}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = (f" with the entries {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, dict) else "")
        raise InputError(f"weights file {path} holds a {type(obj).__name__}{keys}, not a state_dict of tensors, nor "
                         "a checkpoint with one under 'model', 'model_ema' or 'state_dict'; save "
                         "`model.state_dict()` with torch.save")
    return obj, fmt


#: torchvision's detection models keep their ResNet under this prefix (``backbone.body.layer1.0.conv1.weight``)
DETECTION_PREFIX = "backbone.body."
_TRAILING = re.compile(r"^(fc|bn_final|layer\d+)\.")


def for_backbone(state: dict[str, torch.Tensor], graph: Graph) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """A classification or detection checkpoint's state narrowed to what a backbone graph builds (one without
    logits): ``backbone.body.`` taken off when the keys carry it (the rest of a detector dropped), then the keys
    of the head and of stages the graph does not build dropped. Returns the state, the dropped keys and a note
    (empty when nothing was dropped). A classifier's graph gets the state unchanged: strict as ever."""
    if graph.has_head:
        return state, [], ""
    want = {k for k, _ in state_layout(graph)}
    dropped: list[str] = []
    note = ""
    if not any(k in want for k in state) and any(k.startswith(DETECTION_PREFIX) for k in state):
        inner = {k.removeprefix(DETECTION_PREFIX): v for k, v in state.items() if k.startswith(DETECTION_PREFIX)}
        dropped += [k for k in state if not k.startswith(DETECTION_PREFIX)]
        state, note = inner, f"took the backbone ({DETECTION_PREFIX}*) out of a detection checkpoint"
    beyond = [k for k in state if k not in want and _TRAILING.match(k)]
    if beyond:
        layers = sorted({k.split(".")[0] for k in beyond})
        note = "; ".join(x for x in (note, f"dropped {len(beyond)} keys of {', '.join(layers)}, which this backbone "
                                     "does not build") if x)
        drop = set(beyond)
        state = {k: v for k, v in state.items() if k not in drop}
        dropped += beyond
    return state, dropped, note


def load_into(model: torch.nn.Module, weights: str | Path | WeightsFile, spec_source: str | None = None
              ) -> dict[str, Any]:
    """Strictly load ``weights`` (a path, or a file :func:`read_weights` read) into ``model``; return the
    manifest's ``weights`` entry. A backbone (a graph without logits) takes a classifier's or a detector's
    checkpoint with the layers it does not build dropped (:func:`for_backbone`; said in the entry's ``note``),
    strict on everything else."""
    w = weights if isinstance(weights, WeightsFile) else read_weights(weights)
    path, fmt = w.path, w.format
    graph = cast(Graph, model.graph)  # a module built by resdsl.backends.torch carries the graph it lowers
    state, dropped, note = for_backbone(w.state, graph)
    want = dict(state_layout(graph))
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    misshaped = [f"{k} {list(have[k])} (spec needs {list(want[k])})" for k in want if k in have and have[k] != want[k]]
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:SHOW])}{more}")
        search = [Path(spec_source).parent] if spec_source else []
        search += [Path.cwd() / "specs"]
        hint = fits_hint(specs_fitting(have, search))
        raise InputError(f"weights file {path} does not fit spec '{graph.name}': {'; '.join(parts)}.{hint}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"weights file {path} has NaN or infinite values in {', '.join(bad[:SHOW])}; the "
                         "checkpoint is damaged")
    model.load_state_dict(state, strict=True)
    # the absolute path, so that the artefact verifies from any working directory; the hashes find a moved file
    entry: dict[str, Any] = {"kind": "file", "path": str(path.resolve()), "given": str(path), "format": fmt,
                             "file_sha256": _file_sha(path), "sha256": state_digest(model.state_dict())}
    if dropped:
        entry.update(dropped=len(dropped), note=note)
    return entry


def _file_sha(path: Path) -> str:
    from .manifest import sha256_file

    return sha256_file(path)


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """A resdsl checkpoint: ``{"resdsl": meta, "model": state_dict}``; ``--weights`` reads it back."""
    torch.save({"resdsl": meta, "model": model.state_dict()}, path)
