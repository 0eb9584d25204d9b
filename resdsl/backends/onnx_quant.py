"""int8 ONNX by explicit quantization: QuantizeLinear/DequantizeLinear (Q/DQ) nodes with scales calibrated on
labelled images, written by ONNX Runtime's quantizer (``onnxruntime.quantization.quantize_static``), then checked
layer by layer and, where the net loses too much, mixed with float layers.

Two schemes, because the two runtimes want different models:

* ``ort``: activations asymmetric uint8, weights symmetric per-channel int8, Q/DQ wherever ONNX Runtime's
  quantizer puts them: the form its x86 CPU kernels (u8s8, VNNI where the CPU has it) run fastest.
* ``trt``: activations symmetric per-tensor int8 and weights symmetric per-channel int8, every zero point 0,
  biases left in float, placed where TensorRT fuses them (:mod:`resdsl.backends.onnx_placement`): on the inputs
  of every Conv and Gemm and on the residual input of every Add, never between a Conv and what follows it, never
  on a tensor only a pool or a reshape reads. The only int8 TensorRT 10/11 accepts (a strongly typed network built
  from the Q/DQ graph).

BatchNorm is folded into the convolutions first (ONNX Runtime's pre-processing). Calibration takes the first
``samples`` images of a fixed shuffle of the data's training split, preprocessed as ``resdsl train`` does
(:func:`resdsl.data.preprocessing`); the ranges are computed once and reused by every candidate model, and the
same data gives the same bytes. :mod:`resdsl.backends.onnx_sensitivity` then measures what each quantized layer
costs on the accuracy check's images (a test split calibration never saw) and leaves the costliest in float
until the budget holds.
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .onnx_file import INPUT, load_model, need, save

if TYPE_CHECKING:
    import onnx

    from ..options import CompileOptions
    from ..spec import Spec

_BATCH = 32  # images per calibration batch
#: The ops whose inputs the trt scheme quantizes (TensorRT's placement: ``onnx_placement``).
TRT_OPS = ("Conv", "Gemm", "Add")


@dataclass(frozen=True)
class Images:
    """What quantization works from: the calibration images, and the images the accuracy check will judge the
    artefact on (the test split of ``--eval-data``, else of ``--calibration``: images calibration never saw, with
    their labels), on which each layer's cost is measured and the fallback decided; and how they were made."""

    calibration: np.ndarray
    heldout: np.ndarray
    heldout_labels: np.ndarray
    heldout_from: str
    preprocessing: str
    sha256: str


class Quantizer:
    """Quantizes one BN-folded fp32 model under one scheme and calibration method, any set of its layers left in
    float; the activation ranges are calibrated on the first call and reused (ONNX Runtime's calibration cache)."""

    def __init__(self, pre: Path, images: np.ndarray, scheme: str, method: str, work: Path,
                 tensorrt_placement: bool = True) -> None:
        self.pre, self.images, self.scheme, self.method, self.work = pre, images, scheme, method, work
        #: the trt scheme's Q/DQ where TensorRT fuses it; False: wherever ONNX Runtime's quantizer puts them (how
        #: resdsl placed them before; kept for experiments/int8_study.py)
        self.placed = scheme == "trt" and tensorrt_placement
        self.q = need("onnxruntime.quantization")
        self.cache = work / "ranges.json"
        self.cached = "calibration_cache_path" in inspect.signature(self.q.quantize_static).parameters
        self.count = 0

    def layers(self) -> list[str]:
        """The nodes that get int8 weights or inputs, in graph order: what fallback can leave in float."""
        ops = TRT_OPS if self.placed else ("Conv", "Gemm")
        model = need("onnx").load_model(str(self.pre), load_external_data=False)
        return [n.name for n in model.graph.node if n.op_type in ops and n.name]

    def model(self, in_float: Sequence[str] = ()) -> onnx.ModelProto:
        """The int8 model with the nodes ``in_float`` left unquantized."""
        q = self.q
        self.count += 1
        raw = self.work / f"int8-{self.count}.onnx"
        methods = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                   "entropy": q.CalibrationMethod.Entropy}
        trt = self.scheme == "trt"
        extra: dict[str, Any] = {"ActivationSymmetric": trt, "WeightSymmetric": True, "CalibTensorRangeSymmetric": trt,
                 "QuantizeBias": not trt}  # TensorRT takes float biases
        if self.placed:  # Q/DQ on the inputs of TRT_OPS only; onnx_placement removes those on a Conv's output
            extra["OpTypesToExcludeOutputQuantization"] = list(TRT_OPS)
        kw: dict[str, Any] = {"calibration_cache_path": str(self.cache)} if self.cached else {}
        q.quantize_static(str(self.pre), str(raw), _Reader(q.CalibrationDataReader, self.images),
                          quant_format=q.QuantFormat.QDQ, per_channel=True, weight_type=q.QuantType.QInt8,
                          activation_type=q.QuantType.QInt8 if trt else q.QuantType.QUInt8,
                          op_types_to_quantize=list(TRT_OPS) if self.placed else None,
                          nodes_to_exclude=list(in_float), calibrate_method=methods[self.method],
                          extra_options=extra, **kw)
        model: onnx.ModelProto = need("onnx").load_model(str(raw))
        raw.unlink()
        if self.placed:
            from .onnx_placement import place_for_tensorrt

            place_for_tensorrt(model)
        return model


def quantize(fp32: Path, out: Path, spec: Spec, options: CompileOptions) -> dict[str, Any]:
    """Write the int8 ``out`` from the checked ``fp32`` model; return the manifest's ``quantization`` section."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx_sensitivity import search

    images = calibration_images(spec, options)
    scheme = options.scheme
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # folds BN into the convs
        quantizer = Quantizer(pre, images.calibration, scheme, options.calibration_method, Path(tmp))
        model, found = search(quantizer, images, options)
    model.metadata_props.add(key="resdsl.precision", value=f"int8 ({scheme} scheme)")
    save(model, out)
    load_model(out)  # the digest and onnx's checker, as every reader will
    return {"scheme": scheme, "method": options.calibration_method, "samples": len(images.calibration),
            "calibration": {"data": str(options.calibration), "images_sha256": images.sha256,
                            "preprocessing": images.preprocessing},
            "activations": "uint8, per tensor" if scheme == "ort" else "int8 symmetric, per tensor",
            "weights": "int8 symmetric, per output channel", "scales_sha256": scales_digest(model),
            "placement": ("ONNX Runtime's (every quantizable op)" if scheme == "ort" else
                          "TensorRT's: inputs of Conv and Gemm, the residual input of Add"),
            "quantizer": "onnxruntime.quantization.quantize_static (QDQ)", **found}


def calibration_images(spec: Spec, options: CompileOptions) -> Images:
    """The preprocessed calibration images [N, C, H, W] (float32), the accuracy check's images with their labels,
    how they were preprocessed (and where the normalisation came from), and the sha256 of the uint8 calibration
    images (the manifest's record of exactly what calibrated the scales). The data is what ``compile_spec`` read
    and checked before the export, else read here."""
    from ..data import calibration_sample

    path, judged = options.calibration, options.accuracy_data
    assert path is not None and judged is not None
    data = _labelled(spec, options, path, "--calibration")
    other = data if judged == path else _labelled(spec, options, judged, "--eval-data")
    chosen = calibration_sample(data.dataset, options.calibration_samples, path)

    def prep(x: Any, d: Any) -> np.ndarray:
        return np.asarray(d.preprocess.apply(x).numpy(), dtype=np.float32)

    ds = other.dataset
    return Images(prep(chosen, data), prep(ds.test_x, other), ds.test_y.numpy(), f"{judged} ({ds.test_name} split)",
                  data.dataset.describe(data.preprocess), hashlib.sha256(chosen.numpy().tobytes()).hexdigest())


def _labelled(spec: Spec, options: CompileOptions, path: Path, option: str) -> Any:
    """The labelled data at ``path`` as compile read it (a :class:`resdsl.data.Labelled`), else read now."""
    from ..data import Labelled, preprocessing
    from ..readers import load_dataset
    from ..weights import read_weights

    data = options.loaded.get(path)
    if isinstance(data, Labelled):
        return data
    ds = load_dataset(path, classes=spec.classes, size=spec.in_size, channels=spec.in_channels, option=option,
                      resize=options.resize)
    trained = read_weights(options.weights).trained if options.weights is not None else None
    return Labelled(path, ds, preprocessing(spec.normalize, ds, trained))


def scales_digest(model: onnx.ModelProto) -> str:
    """sha256 over every Q/DQ node's scale and zero point, in graph order: two models with equal scales match."""
    onnx = need("onnx")
    inits = {t.name: t for t in model.graph.initializer}
    h = hashlib.sha256()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input[1:]:
                if name in inits:
                    h.update(name.encode() + onnx.numpy_helper.to_array(inits[name]).tobytes())
    return h.hexdigest()


def _Reader(base: type, images: np.ndarray) -> Any:
    # Equal batches: ONNX Runtime's histogram calibrators (percentile, entropy) stack every batch's outputs into one
    # array, and a shorter last batch makes that fail. The largest batch size up to _BATCH that divides the count.
    size = max(d for d in range(1, _BATCH + 1) if len(images) % d == 0) if len(images) else 1

    class Reader(base):  # type: ignore[misc]
        """Batches of calibration images, as ONNX Runtime's calibrators pull them."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter([images[i:i + size] for i in range(0, len(images), size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT: batch}

    return Reader()
