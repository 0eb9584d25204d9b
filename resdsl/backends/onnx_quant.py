"""int8 ONNX by explicit quantization: QuantizeLinear/DequantizeLinear (Q/DQ) nodes with scales calibrated on
labelled images, written by ONNX Runtime's quantizer (``onnxruntime.quantization.quantize_static``).

Two schemes, because the two runtimes want different models:

* ``ort``: activations asymmetric uint8, weights symmetric per-channel int8: the form ONNX Runtime's x86 CPU
  kernels (u8s8, VNNI where the CPU has it) run fastest.
* ``trt``: activations symmetric per-tensor int8 and weights symmetric per-channel int8, every zero point 0,
  biases left in float, opset >= 13: the only int8 TensorRT 10/11 accepts (a strongly typed network built from
  the Q/DQ graph).

BatchNorm is folded into the convolutions first (ONNX Runtime's pre-processing), so each conv, with its add and
ReLU, is one quantized unit. Calibration takes the first ``samples`` images of a fixed shuffle of the data's
training split, preprocessed as ``resdsl train`` does (:func:`resdsl.data.preprocessing`: the spec's
``input.mean``/``input.std``, else the per-pixel mean); the same data gives the same bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .onnx_file import INPUT, load_model, need, save

if TYPE_CHECKING:
    import onnx

    from ..options import CompileOptions
    from ..spec import Spec

_BATCH = 32  # images per calibration batch


def quantize(fp32: Path, out: Path, spec: Spec, options: CompileOptions) -> dict[str, Any]:
    """Write the int8 ``out`` from the checked ``fp32`` model; return the manifest's ``quantization`` section."""
    q = need("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images, preprocessing, data_sha = calibration_images(spec, options)
    scheme = options.scheme
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # folds BN into the convs
        methods = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                   "entropy": q.CalibrationMethod.Entropy}
        q.quantize_static(str(pre), str(raw), _Reader(q.CalibrationDataReader, images),
                          quant_format=q.QuantFormat.QDQ, per_channel=True, weight_type=q.QuantType.QInt8,
                          activation_type=q.QuantType.QUInt8 if scheme == "ort" else q.QuantType.QInt8,
                          calibrate_method=methods[options.calibration_method],
                          extra_options={"ActivationSymmetric": scheme == "trt", "WeightSymmetric": True,
                                         "CalibTensorRangeSymmetric": scheme == "trt",
                                         "QuantizeBias": scheme == "ort"})  # TensorRT takes float biases
        model = need("onnx").load_model(str(raw))
    model.metadata_props.add(key="resdsl.precision", value=f"int8 ({scheme} scheme)")
    save(model, out)
    load_model(out)  # the digest and onnx's checker, as every reader will
    return {"scheme": scheme, "method": options.calibration_method, "samples": len(images),
            "calibration": {"data": str(options.calibration), "images_sha256": data_sha,
                            "preprocessing": preprocessing},
            "activations": "uint8, per tensor" if scheme == "ort" else "int8 symmetric, per tensor",
            "weights": "int8 symmetric, per output channel", "scales_sha256": scales_digest(model),
            "quantizer": "onnxruntime.quantization.quantize_static (QDQ)"}


def calibration_images(spec: Spec, options: CompileOptions) -> tuple[np.ndarray, str, str]:
    """The preprocessed calibration images [N, C, H, W] (float32), how they were preprocessed (and where the
    normalisation came from), and the sha256 of the uint8 images chosen (the manifest's record of exactly what
    calibrated the scales). The data is the one ``compile_spec`` read and checked before the export, else read
    here."""
    from ..data import Labelled, calibration_sample, preprocessing
    from ..readers import load_dataset
    from ..weights import read_weights

    path = options.calibration
    assert path is not None
    data = options.loaded.get(path)
    if not isinstance(data, Labelled):
        ds = load_dataset(path, classes=spec.classes, size=spec.in_size, channels=spec.in_channels,
                          option="--calibration", resize=options.resize)
        trained = read_weights(options.weights).trained if options.weights is not None else None
        data = Labelled(path, ds, preprocessing(spec.normalize, ds, trained))
    chosen = calibration_sample(data.dataset, options.calibration_samples, path)
    x = data.preprocess.apply(chosen).numpy().astype(np.float32, copy=False)
    return x, data.dataset.describe(data.preprocess), hashlib.sha256(chosen.numpy().tobytes()).hexdigest()


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
    class Reader(base):  # type: ignore[misc]
        """Batches of calibration images, as ONNX Runtime's calibrators pull them."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter([images[i:i + _BATCH] for i in range(0, len(images), _BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT: batch}

    return Reader()
