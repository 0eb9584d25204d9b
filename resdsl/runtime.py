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
    """A loaded artefact: ``art(x)`` takes a (N, C, H, W) numpy array or torch tensor and returns float32 logits,
    or, for a net with several outputs (a backbone's feature maps), a dict of float32 arrays by output name in
    the spec's order. ``outputs`` lists the names."""

    def __init__(self, directory: Path, manifest: mf.Manifest, runner: Runner) -> None:
        self.directory = directory
        self.manifest = manifest
        self.target = manifest.target
        self.backend = runner.backend  # what runs it: "onnxruntime-cpu", "tensorrt", "aoti", "torch"
        self.runner = runner
        self._in_dtype = np.float16 if manifest.input.dtype == "float16" else np.float32
        self.outputs = [t.name for t in manifest.outputs]
        lo, _, hi = manifest.size_range()
        self._sizes = (lo, hi)

    @property
    def session(self) -> Any:
        """ONNX Runtime's session of an onnx artefact (None for other targets)."""
        return getattr(self.runner, "session", None)

    def __call__(self, x: Any) -> Any:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        want = self.manifest.input.shape
        fits = x.ndim == 4 and all(not isinstance(d, int) or d == s for d, s in zip(want[1:], x.shape[1:], strict=True))
        if not fits:
            raise InputError(f"input of shape {list(x.shape)} does not fit {self.directory}: it takes "
                             f"{want} (batch first)")
        (h0, w0), (h1, w1) = self._sizes  # a fixed size passed the shape check already
        if not (h0 <= x.shape[2] <= h1 and w0 <= x.shape[3] <= w1):
            raise InputError(f"input size {x.shape[2]}x{x.shape[3]} is outside {self.directory}'s range "
                             f"{h0}x{w0} to {h1}x{w1}; compile with a wider --size MIN:OPT:MAX")
        b = self.manifest.batch
        if not b.min <= x.shape[0] <= b.max:
            raise InputError(f"batch {x.shape[0]} is outside {self.directory}'s range {b.min}..{b.max}; "
                             "compile with a wider --batch MIN:OPT:MAX")
        out = self.runner(np.ascontiguousarray(x, dtype=self._in_dtype))
        if isinstance(out, dict):
            return {name: np.asarray(out[name], dtype=np.float32) for name in self.outputs}
        return np.asarray(out, dtype=np.float32)


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
