"""``compile --precision int8 --calibration DATA``: Q/DQ ONNX from ONNX Runtime's quantizer, in both schemes, on a
ResNet-20 trained on real images (tests/data/digits-resnet20.md); accuracy checked on images the scales never saw."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from resdsl.manifest import read
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.runtime import load

from .conftest import ROOT, SPECS

CIFAR = SPECS / "cifar" / "resnet20.yaml"
WEIGHTS = ROOT / "tests" / "data" / "digits-resnet20.pt"


@pytest.fixture(scope="module")
def int8(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("int8")
    return {scheme: compile_spec(CIFAR, CompileOptions(target="onnx", out=d / scheme, weights=WEIGHTS,
                                                       precision="int8", calibration=digits, quant_scheme=scheme,
                                                       calibration_samples=256))[0]
            for scheme in ("ort", "trt")}


def _qdq(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[onnx.NodeProto]]:
    model = onnx.load(path / "model.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return model, inits, [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


@pytest.mark.parametrize("scheme", ["ort", "trt"])
def test_within_a_point_of_the_module_on_held_out_images(int8: dict[str, Path], scheme: str) -> None:
    m = read(int8[scheme])
    acc = m.verification["accuracy"]  # type: ignore[index]
    assert m.precision == "int8" and acc["passed"] and acc["images"] == 300 and acc["split"] == "test"
    assert acc["module"]["top1"] == pytest.approx(92.0)  # the fp32 module: what resdsl train measured
    assert acc["drop"] <= 1.0 and acc["max_drop"] == 1.0 and acc["agreement"] >= 95.0
    q = m.section("quantization")
    assert (q["scheme"], q["method"], q["samples"]) == (scheme, "minmax", 256)
    assert len(q["calibration"]["images_sha256"]) == 64 and "training checkpoint" in q["calibration"]["preprocessing"]
    onnx.checker.check_model(str(int8[scheme] / "model.onnx"), full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32) * 0.3
    assert load(int8[scheme])(x).shape == (3, 10)


def test_ort_scheme_has_uint8_activations(int8: dict[str, Path]) -> None:
    _, inits, qdq = _qdq(int8["ort"])
    acts = [inits[n.input[2]] for n in qdq if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert acts and all(z.dtype == np.uint8 for z in acts)


def test_trt_scheme_is_what_tensorrt_accepts(int8: dict[str, Path]) -> None:
    """Every zero point 0 and int8, weights per output channel, biases float, opset >= 13."""
    model, inits, qdq = _qdq(int8["trt"])
    zero_points = [inits[n.input[2]] for n in qdq if len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    weight_dq = {n.output[0]: n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 19  # 6n+2 = 20 weighted layers: 19 convs (option A: no projections) and the fc
    assert all(c.input[1] in weight_dq for c in convs)
    for c in convs:
        dq = weight_dq[c.input[1]]
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
        assert all(len(c.input) < 3 or (c.input[2] in inits and inits[c.input[2]].dtype == np.float32) for c in [c])
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13


def test_same_data_same_bytes(int8: dict[str, Path], digits: Path, tmp_path: Path) -> None:
    again, _ = compile_spec(CIFAR, CompileOptions(target="onnx", out=tmp_path / "again", weights=WEIGHTS,
                                                  precision="int8", calibration=digits, quant_scheme="trt",
                                                  calibration_samples=256))
    first, second = read(int8["trt"]), read(again)
    assert first.files["model.onnx"].sha256 == second.files["model.onnx"].sha256
    assert first.section("quantization") == second.section("quantization")


def test_a_broken_calibration_is_caught_and_nothing_written(digits: Path, tmp_path: Path, cli: Any) -> None:
    """Scales from one black image: the held-out accuracy collapses, compile exits 1, writes nothing."""
    data = tmp_path / "black"
    shutil.copytree(digits, data)
    (data / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}))
    r = cli("compile", str(CIFAR), "-o", str(tmp_path / "out"), "--weights", str(WEIGHTS), "--precision", "int8",
            "--calibration", str(data), "--calibration-samples", "1", "-q")
    assert r.returncode == 1 and "more than the budget of 1 points; nothing was written" in r.stderr
    assert not (tmp_path / "out").exists()


def test_refusals(digits: Path, tmp_path: Path, cli: Any) -> None:
    base = ["compile", str(CIFAR), "-o", str(tmp_path / "o"), "--weights", str(WEIGHTS), "-q"]
    for extra, message in [
        (["--precision", "int8"], "--precision int8 and --calibration go together"),
        (["--calibration", str(digits)], "--precision int8 and --calibration go together"),
        (["--quant-scheme", "trt"], "apply to --precision int8 only"),
        (["--precision", "int8", "--calibration", str(digits), "--calibration-samples", "5000"],
         "has 1497 images, fewer than --calibration-samples 5000"),
        (["--precision", "int8", "--calibration", str(tmp_path / "none")], "no such directory"),
        (["--precision", "int8", "--calibration", str(digits), "--target", "trt", "--quant-scheme", "ort"],
         "TensorRT takes symmetric int8 only"),
        (["--precision", "int8", "--calibration", str(digits), "--target", "torch"], "writes fp32 only"),
    ]:
        r = cli(*base, *extra)
        assert r.returncode == 2 and message in r.stderr, (extra, r.stderr)
    assert not (tmp_path / "o").exists()


def test_trt_scheme_reaches_tensorrt_as_a_strongly_typed_int8_build(int8: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the TensorRT stand-in (tests/fake_tensorrt.py): the Q/DQ file is parsed into a strongly typed
    network with fp32 I/O, and no precision flag is set (TensorRT 11 has none; the types come from Q/DQ)."""
    import json

    from resdsl.backends import trt_build
    from resdsl.options import BatchProfile, TrtOptions

    from . import fake_tensorrt

    monkeypatch.setattr(trt_build, "_import_trt", lambda: fake_tensorrt)
    monkeypatch.setattr(trt_build, "_require_gpu", lambda: ("NVIDIA H100 80GB HBM3", "9.0"))
    info = trt_build.build_engine(int8["trt"] / "model.onnx", tmp_path / "m.engine", BatchProfile.parse("1:16:64"),
                                  TrtOptions(), precision="int8", io="fp32")
    engine = json.loads((tmp_path / "m.engine").read_bytes())
    assert engine["strongly_typed"] and engine["builder_flags"] == []
    assert [t[2] for t in engine["io"]] == ["float32", "float32"]
    assert info["options"]["precision"] == "int8" and "-int8-" in info["timing_cache_key"]


def test_verify_says_what_it_checked(int8: dict[str, Path], cli: Any) -> None:
    """Random inputs only check an int8 artefact's shapes and finite values: verify says so, with the accuracy
    compile measured."""
    r = cli("verify", str(int8["trt"]), "-q")
    assert r.returncode == 0, r.stderr
    acc = read(int8["trt"]).verification["accuracy"]  # type: ignore[index]
    assert "right shape and finite logits on random inputs: ok (int8 values are judged by top-1 on labelled " \
        "images, not here)" in r.stdout
    assert "random inputs check only the shapes and finite logits of an int8 artefact" in r.stdout
    assert "rel err" not in r.stdout and "decisive" not in r.stdout
    assert f"at compile: top-1 {acc['artefact']['top1']:.2f}% against the module's 92.00%" in r.stdout


# --- calibration preprocessing, and bad data refused before the export ---


@pytest.mark.parametrize("normalize", [True, False])
def test_calibration_preprocesses_as_the_spec_says_and_reads_the_data_once(
        normalize: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration images are the training images, (x / 255 - mean) / std per channel with the spec's
    input.mean/std, else x / 255 minus the per-pixel mean of the training split (random weights); the data
    directory is read once for calibration and the accuracy check, and the weights are not read for it."""
    import resdsl.readers
    import resdsl.weights
    from resdsl.backends import onnx_quant

    from .test_evaluate import numpy_inputs, write_tiny_data, write_tiny_spec

    data, train, _ = write_tiny_data(tmp_path / "data")
    seen: list[np.ndarray] = []
    real_reader, real_load = onnx_quant._Reader, resdsl.readers.load_dataset
    reads: list[Path] = []

    def reader(base: type, images: np.ndarray) -> Any:
        seen.append(images)
        return real_reader(base, images)

    def load_dataset(root: Path, **kw: Any) -> Any:
        reads.append(root)
        return real_load(root, **kw)

    monkeypatch.setattr(onnx_quant, "_Reader", reader)
    monkeypatch.setattr(resdsl.readers, "load_dataset", load_dataset)
    monkeypatch.setattr(resdsl.weights, "read_weights", lambda path: pytest.fail("the weights were read again"))
    _, m = compile_spec(write_tiny_spec(tmp_path, normalize), CompileOptions(
        target="onnx", out=tmp_path / "o", precision="int8", calibration=data, calibration_samples=24,
        eval_max_drop=100, random_weights_ok=True))
    assert reads == [data]
    (x,) = seen
    assert x.shape == (24, 3, 32, 32) and x.dtype == np.float32
    # pixel (0, 0), by hand: channel 0 is 0 or 204 (half each), channel 1 is 51 everywhere
    c0 = sorted(set(np.round(x[:, 0, 0, 0].astype(np.float64), 5).tolist()))
    assert c0 == pytest.approx([-2.5, 1.5] if normalize else [-0.4, 0.4]) and (x[:, 0, 0, 0] > 0).sum() == 12
    np.testing.assert_allclose(x[:, 1, 0, 0], -0.125 if normalize else 0.0, atol=1e-6)
    # every calibration image is one of the training images, preprocessed by the oracle (in the shuffle's order)
    oracle = numpy_inputs(train, train, normalize)
    match = [int(np.abs(oracle - xi).reshape(len(oracle), -1).max(1).argmin()) for xi in x]
    assert sorted(match) == list(range(24))
    np.testing.assert_allclose(x, oracle[match], atol=1e-6)
    q = m.section("quantization")["calibration"]
    assert ("from the spec's input" if normalize else "per-pixel mean of the data's training split") in \
        q["preprocessing"]
    assert m.verification["accuracy"]["preprocessing"] == q["preprocessing"]  # type: ignore[index]


def _bad_data(kind: str, tmp_path: Path) -> tuple[Path, str, list[str]]:
    """A copy of the tiny data broken one way; returns it, the file the message must name, and its words."""
    from .test_evaluate import write_tiny_data

    data, train, _ = write_tiny_data(tmp_path / kind)
    batch = data / "data_batch_1"
    if kind == "truncated":
        batch.write_bytes(batch.read_bytes()[:1000])
        return data, str(batch), ["is not a CIFAR python batch", "re-extract"]
    if kind == "hostile":
        import os

        batch.write_bytes(pickle.dumps({b"data": os.system, b"labels": [0]}))
        return data, str(batch), ["refusing to load", "re-extract"]
    if kind == "wrong-size":
        batch.write_bytes(pickle.dumps({b"data": train.reshape(24, -1)[:, :1000].copy(), b"labels": [0] * 24}))
        return data, str(batch), ["[24, 1000]", "uint8 data [N, 3072]"]
    if kind == "labels":
        batch.write_bytes(pickle.dumps({b"data": train.reshape(24, -1), b"labels": [7] * 24}))
        return data, str(batch), ["has label 7, outside 0..3"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "hostile", "wrong-size", "labels", "too-few", "channels", "eval-data"])
def test_bad_data_is_refused_before_the_export(kind: str, tmp_path: Path, cli: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad calibration (or --eval-data) data: exit 2, one line naming the file and the fix, nothing written, and
    neither the module nor the ONNX export ever started."""
    import resdsl.backends.onnx
    import resdsl.pipeline

    from .test_evaluate import write_tiny_data, write_tiny_spec

    monkeypatch.setattr(resdsl.pipeline, "_reference", lambda *a: pytest.fail("the module was built"))
    monkeypatch.setattr(resdsl.backends.onnx, "export", lambda *a, **k: pytest.fail("the export started"))
    spec = write_tiny_spec(tmp_path, True)
    args = ["--precision", "int8", "--calibration-samples", "8", "--random-weights"]
    if kind == "too-few":
        data, _, _ = write_tiny_data(tmp_path / kind)
        args, where, words = [*args[:2], "--calibration-samples", "25", "--random-weights"], str(data), [
            "has 24 images, fewer than --calibration-samples 25; lower it or add images"]
    elif kind == "channels":
        data, _, _ = write_tiny_data(tmp_path / kind)
        spec, where, words = write_tiny_spec(tmp_path, False, channels=1), str(data), ["set input.channels: 3"]
    elif kind == "eval-data":
        data, _, _ = write_tiny_data(tmp_path / "good")
        bad, where, words = _bad_data("truncated", tmp_path)
        args += ["--eval-data", str(bad)]
    else:
        data, where, words = _bad_data(kind, tmp_path)
    r = cli("compile", str(spec), "-o", str(tmp_path / "out"), "--calibration", str(data), *args, "-q")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and where in r.stderr and "Traceback" not in r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "out").exists()
