"""``resdsl.runtime.load(DIR)``: check an artefact, then return something to call.

The manifest is validated against its schema and every file's sha256 checked before any artefact byte is
deserialized (:func:`resdsl.manifest.read`); the target then checks what the artefact is tied to (an
engine's TensorRT version and GPU architecture, a package's torch release and device) before opening it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as mf
from .backends.base import Runner, get
from .errors import InputError


class Artefact:
    """A loaded artefact: ``art(x)`` takes a (N, C, H, W) numpy array or torch tensor, returns float32 logits."""

    def __init__(self, directory: Path, manifest: mf.Manifest, runner: Runner) -> None:
        self.directory = directory
        self.manifest = manifest
        self.target = manifest.target
        self.backend = runner.backend  # what runs it: "onnxruntime-cpu", "tensorrt", "aoti", "torch"
        self.runner = runner
        self._in_dtype = np.float16 if manifest.input.dtype == "float16" else np.float32

    @property
    def session(self) -> Any:
        """ONNX Runtime's session of an onnx artefact (None for other targets)."""
        return getattr(self.runner, "session", None)

    def __call__(self, x: Any) -> np.ndarray:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        want = self.manifest.input.shape
        if x.ndim != 4 or list(x.shape[1:]) != list(want[1:]):
            raise InputError(f"input of shape {list(x.shape)} does not fit {self.directory}: it takes "
                             f"{want} (batch first)")
        b = self.manifest.batch
        if not b.min <= x.shape[0] <= b.max:
            raise InputError(f"batch {x.shape[0]} is outside {self.directory}'s range {b.min}..{b.max}; "
                             "compile with a wider --batch MIN:OPT:MAX")
        return np.asarray(self.runner(np.ascontiguousarray(x, dtype=self._in_dtype)), dtype=np.float32)


def load(directory: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None) -> Artefact:
    """Check ``directory``'s manifest and hashes, then open the artefact it describes.

    ``threads`` sets ONNX Runtime's intra-op threads for an onnx artefact (default: one per core);
    the other targets take their threads from torch (``torch.set_num_threads``). ``providers`` chooses ONNX
    Runtime's execution providers for an onnx artefact, in order of preference ("cuda", "cpu", "tensorrt", ...
    or ONNX Runtime's full names); by default CUDA when this onnxruntime has it, else the CPU. One that is not
    installed raises BackendUnavailable naming the package.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads {threads!r}: must be at least 1 (or None: the runtime's default)")
    d = Path(directory)
    m = mf.read(d)
    return Artefact(d, m, get(m.target).open(d, m, threads, providers))
