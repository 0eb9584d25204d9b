"""``resdsl.runtime.load(DIR)``: check an artefact, then return something to call.

The manifest and every file's sha256 are checked before any artefact byte is
deserialized (:func:`resdsl.manifest.read_checked`); an engine's TensorRT
version and GPU architecture too, because an engine is executable code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .manifest import read_checked


class Artefact:
    """A loaded artefact: ``art(x)`` takes a (N, C, H, W) numpy array or torch tensor, returns float32 logits."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: int | None = None) -> None:
        self.directory = directory
        self.threads = threads  # ONNX Runtime's intra-op threads (onnx target); None: its default, one per core
        self.session: Any = None  # the onnxruntime.InferenceSession, for the onnx target
        self.manifest = manifest
        self.target: str = manifest["target"]
        io = manifest.get("inputs", [{}])[0].get("dtype", "float32")
        self._in_dtype = np.float16 if io == "float16" else np.float32
        self.backend = self.target
        self._run = self._open()

    def _open(self) -> Any:
        d, m = self.directory, self.manifest
        if self.target == "torch":
            import torch

            from .backends.torch import ResNet
            from .expand import expand
            from .spec import from_resolved
            from .weights import read_state

            model = ResNet(expand(from_resolved(m["spec"]["resolved"], str(d / "manifest.json"))))
            state, _ = read_state(d / "model.pt")
            model.load_state_dict(state, strict=True)
            model.eval()

            def run(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return np.asarray(model(torch.from_numpy(x)).numpy())

            self.backend = "torch"
            return run
        if self.target == "onnx":
            from .backends import onnx as ob

            sess = self.session = ob.session(d / "model.onnx", threads=self.threads)
            self.backend = "onnxruntime-" + ("cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu")
            return lambda x: ob.run(sess, x)
        if self.target == "trt":
            from .backends import trt

            trt.check_engine_compatible(m["trt"], trt.environment())
            runner = trt.TrtRunner(d / "model.engine", sha256=m["files"]["model.engine"]["sha256"],
                                   allow_host_code=bool(m["trt"].get("options", {}).get("version_compatible")))
            self.backend = "tensorrt"
            return runner
        if self.target == "aoti":
            from .backends import aoti

            self.backend = "aoti"
            return aoti.load(d / "model.pt2", m)
        raise InputError(f"{d / 'manifest.json'}: unknown target {self.target!r}; this resdsl cannot run it")

    def __call__(self, x: Any) -> np.ndarray:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        want = self.manifest["inputs"][0].get("shape")
        if x.ndim != 4 or (want and list(x.shape[1:]) != list(want[1:])):
            raise InputError(f"input of shape {list(x.shape)} does not fit {self.directory}: it takes "
                             f"{want} (batch first)")
        b = self.manifest.get("batch")
        if b and not b["min"] <= x.shape[0] <= b["max"]:
            raise InputError(f"batch {x.shape[0]} is outside {self.directory}'s range {b['min']}..{b['max']}; "
                             "compile with a wider --batch MIN:OPT:MAX")
        return np.asarray(self._run(np.ascontiguousarray(x, dtype=self._in_dtype)), dtype=np.float32)


def open_artefact(directory: Path, manifest: dict[str, Any]) -> Artefact:
    """Open a directory being compiled (no hash check: its manifest is not written yet)."""
    return Artefact(Path(directory), {"inputs": [{}], **manifest})


def load(directory: str | Path, *, threads: int | None = None) -> Artefact:
    """Check ``directory``'s manifest and hashes, then open the artefact it describes.

    ``threads`` sets ONNX Runtime's intra-op threads for an onnx artefact (default: one per core);
    the other targets take their threads from torch (``torch.set_num_threads``).
    """
    d = Path(directory)
    return Artefact(d, read_checked(d), threads)
