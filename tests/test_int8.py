"""``compile --precision int8 --calibration DATA``: Q/DQ ONNX from ONNX Runtime's quantizer, in both schemes, on a
ResNet-20 trained on real images (tests/data/digits-resnet20.md); accuracy checked on images the scales never saw."""

from __future__ import annotations

import pickle
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from resdsl import build
from resdsl.manifest import read
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.runtime import load

from .conftest import ROOT, SPECS

CIFAR = SPECS / "cifar" / "resnet20.yaml"
DATA = ROOT / "tests" / "data"
WEIGHTS = DATA / "digits-resnet20.pt"
#: trained with the spec's own recipe (lr 0.1 throughout): tests/data/digits-resnet20-default.md
DEFAULT = DATA / "digits-resnet20-default.pt"


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
    """Scales from one black image: all int8, the test accuracy falls beyond the budget, compile exits 1 and writes
    nothing; with fallback, the layers that image cannot calibrate are left in float, named, within the budget."""
    data = tmp_path / "black"
    shutil.copytree(digits, data)
    (data / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}))
    args = ["compile", str(CIFAR), "--weights", str(WEIGHTS), "--precision", "int8", "--calibration", str(data),
            "--calibration-samples", "1", "--quant-scheme", "ort", "--sensitivity-samples", "64", "-q"]
    r = cli(*args, "--no-fallback", "-o", str(tmp_path / "out"))
    assert r.returncode == 1 and "more than the budget of 1 points; nothing was written" in r.stderr
    assert "No layer was left in float (--no-fallback)" in r.stderr and not (tmp_path / "out").exists()
    r = cli(*args, "-o", str(tmp_path / "fallback"))
    if r.returncode == 0:
        acc = read(tmp_path / "fallback").verification["accuracy"]  # type: ignore[index]
        assert acc["drop"] <= 1.0 and "left in float: " in r.stdout
    else:  # refused past half the layers, naming them
        assert r.returncode == 1 and "layers left in float" in r.stderr and not (tmp_path / "fallback").exists()


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
    assert seen and all(np.array_equal(s, seen[0]) for s in seen)  # every candidate model: the same images
    x = seen[0]
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


# --- Q/DQ where TensorRT fuses it, each layer's cost, and the layers left in float to keep the budget ---

#: Pools and reshapes: TensorRT propagates Q/DQ across them, so a tensor only they read is not quantized.
PASS_THROUGH = {"MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Reshape", "Flatten", "Squeeze",
                "Unsqueeze"}


def placement_problems(path: Path) -> list[str]:
    """Every way the graph breaks TensorRT's Q/DQ placement rules (an empty list when it keeps them all):
    Conv and Gemm take DQ(Q(x)) activations and DQ(int8) per-channel weights, nothing quantizes a Conv's or Gemm's
    output (but a projection shortcut's, as an Add's residual input), an Add's residual input is DQ(Q(x)) while
    the input a Conv computes reaches it directly, no Q sits on a tensor only pools and reshapes read, and every
    zero point is 0 in int8."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    readers: dict[str, list[Any]] = defaultdict(list)
    for n in m.graph.node:
        for t in n.input:
            readers[t].append(n)
    out: list[str] = []

    def dq_of_q(t: str) -> bool:
        d = prod.get(t)
        return d is not None and d.op_type == "DequantizeLinear" and prod.get(d.input[0]) is not None and \
            prod[d.input[0]].op_type == "QuantizeLinear"

    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            if not dq_of_q(n.input[0]):
                out.append(f"{n.name}: activation not quantized")
            w = prod.get(n.input[1])
            if w is None or w.op_type != "DequantizeLinear" or inits.get(w.input[0]) is None or \
                    inits[w.input[0]].dtype != np.int8:
                out.append(f"{n.name}: weights not int8 behind a DequantizeLinear")
            elif inits[w.input[1]].size != inits[w.input[0]].shape[0]:
                out.append(f"{n.name}: weight scales not per output channel")
            for q in (r for r in readers[n.output[0]] if r.op_type == "QuantizeLinear"):
                # allowed only as an Add's residual input (a projection shortcut's int8 output), else it blocks
                # TensorRT's fusion of the conv with what follows
                if not all(a.op_type == "Add" and list(a.input).index(d.output[0]) == 1
                           for d in readers[q.output[0]] for a in readers[d.output[0]]):
                    out.append(f"{n.name}: its output is quantized (blocks TensorRT's fusion)")
        if n.op_type == "Add":
            computed = [i for i, t in enumerate(n.input) if prod.get(t) is not None
                        and prod[t].op_type in ("Conv", "Gemm")]
            residual = [i for i in range(2) if i not in computed] or [1]
            if not all(dq_of_q(n.input[i]) for i in residual):
                out.append(f"{n.name}: residual input not quantized")
        if n.op_type == "QuantizeLinear":
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            if zp is None or zp.dtype != np.int8 or zp.any():
                out.append(f"{n.name}: zero point not int8 0")
            used = [r for d in readers[n.output[0]] for r in readers[d.output[0]]]
            if used and all(r.op_type in PASS_THROUGH for r in used):
                out.append(f"{n.name}: quantizes a tensor only pools and reshapes read")
    return out


def test_the_checker_catches_onnx_runtimes_own_placement(int8: dict[str, Path]) -> None:
    """The oracle is not vacuous: ONNX Runtime's default placement (the ort scheme) breaks the rules."""
    problems = placement_problems(int8["ort"] / "model.onnx")
    assert any("its output is quantized" in p for p in problems)


@pytest.mark.parametrize("net", ["resnet20", "se-d", "projection"])
def test_trt_scheme_places_qdq_where_tensorrt_fuses(net: str, tmp_path: Path, digits: Path, cli: Any) -> None:
    if net == "resnet20":
        spec, weights = CIFAR, DATA / "digits-resnet20.pt"
    elif net == "se-d":  # deep stem, average-pooled projections, SE: pool-conv-sigmoid-multiply
        spec, weights = DATA / "digits-resnet20-se.yaml", DATA / "digits-resnet20-se.pt"
    else:  # option B: projections, so an Add whose two inputs are both convolutions
        spec = tmp_path / "b.yaml"
        spec.write_text(CIFAR.read_text().replace("shortcut: A ", "shortcut: B ").replace("expect: {mparams: 0.27}",
                                                                                            "expect: {}"))
        weights = tmp_path / "b.pt"
        torch.save(build(spec).state_dict(), weights)
    args = ["compile", str(spec), "--weights", str(weights), "--precision", "int8", "--calibration", str(digits),
            "--quant-scheme", "trt", "-o", str(tmp_path / "out"), "--max-drop", "100", "--no-fallback", "-q",
            "--sensitivity-samples", "0"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert placement_problems(tmp_path / "out" / "model.onnx") == []
    q = read(tmp_path / "out").section("quantization")
    assert q["placement"].startswith("TensorRT's") and q["fallback"]["in_float"] == [] and q["sensitivity"] is None


def _skewed(tmp_path: Path, scale: float = 1000.0) -> Path:
    """The default-recipe net with one channel of layer2.1's inner activation scaled by ``scale`` and the next
    conv's weights on that channel by 1/scale: the same function (ReLU commutes with a positive scale, checked
    here), but one channel's range dwarfs the others, so per-tensor int8 on layer2.1.conv2's input rounds the
    rest away. A known culprit: the layer a correct sensitivity ranks first."""
    ck = torch.load(DEFAULT, weights_only=True)
    state = {k: v.clone() for k, v in ck["model"].items()}
    state["layer2.1.bn1.weight"][3] *= scale
    state["layer2.1.bn1.bias"][3] *= scale
    state["layer2.1.conv2.weight"][:, 3] /= scale
    a, b = build(CIFAR).eval(), build(CIFAR).eval()
    a.load_state_dict(ck["model"])
    b.load_state_dict(state)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert float((a(x) - b(x)).abs().max() / a(x).abs().max()) < 1e-5
    path = tmp_path / "skewed.pt"
    torch.save({**ck, "model": state}, path)
    return path


def _test_top1(art: Path, digits: Path) -> float:
    """The oracle: the artefact's top-1 on the digits' test batch, run and counted here."""
    import onnxruntime as ort

    ck = torch.load(DEFAULT, weights_only=True)
    batch = pickle.loads((digits / "test_batch").read_bytes())
    x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255
    x = (x - ck["pixel_mean"].numpy()).astype(np.float32)
    session = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    pred = np.concatenate([session.run(None, {"input": x[i:i + 32]})[0].argmax(1) for i in range(0, len(x), 32)])
    return 100.0 * float((pred == np.asarray(batch[b"labels"])).mean())


def test_sensitivity_finds_the_culprit_and_fallback_leaves_it_alone_in_float(tmp_path: Path, digits: Path,
                                                                             cli: Any) -> None:
    weights = _skewed(tmp_path)
    args = ["compile", str(CIFAR), "--weights", str(weights), "--precision", "int8", "--calibration", str(digits),
            "--quant-scheme", "trt", "--sensitivity-samples", "100"]
    r = cli(*args, "--no-fallback", "--sensitivity-samples", "0", "-o", str(tmp_path / "none"), "-q")
    assert r.returncode == 1 and "No layer was left in float (--no-fallback)" in r.stderr
    assert not (tmp_path / "none").exists()

    r = cli(*args, "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    q = read(tmp_path / "out").section("quantization")
    ranked = [c["layer"] for c in q["sensitivity"]["layers"]]
    assert ranked[0] == "layer2.1.conv2" and q["fallback"]["in_float"] == ["layer2.1.conv2"]
    assert q["sensitivity"]["layers"][0]["recovers"] > 10 * q["sensitivity"]["layers"][1]["recovers"]
    assert "costliest layers" in r.stderr and "left in float to keep the budget of 1 points: layer2.1.conv2" in r.stderr
    assert "left in float: layer2.1.conv2" in r.stdout
    # the graph: that conv reads float activations and float weights; every other conv stays int8
    model = onnx.load(tmp_path / "out" / "model.onnx")
    prod = {o: n.op_type for n in model.graph.node for o in n.output}
    convs = {n.name.rsplit("/", 1)[0]: n for n in model.graph.node if n.op_type == "Conv"}
    assert [k for k, c in convs.items() if prod.get(c.input[0]) != "DequantizeLinear"] == ["layer2.1.conv2"]
    assert prod.get(convs["layer2.1.conv2"].input[1]) != "DequantizeLinear"
    # the budget holds on test images calibration never saw, counted here
    module = 100.0 - torch.load(DEFAULT, weights_only=True)["resdsl"]["test_error"]
    assert module - _test_top1(tmp_path / "out", digits) <= 1.0


def test_sensitivity_is_recorded_for_every_quantized_layer(int8: dict[str, Path]) -> None:
    """Every Conv and Gemm (and, in the trt scheme, every Add) is measured on the accuracy check's images (the
    300 test digits: the fp32 top-1 there is what resdsl train measured), and ranked by the error each
    recovers."""
    module = 100.0 - torch.load(WEIGHTS, weights_only=True)["resdsl"]["test_error"]
    for scheme, adds in (("ort", 0), ("trt", 9)):
        s = read(int8[scheme]).section("quantization")["sensitivity"]
        assert (s["images"], s["ranked_on"]) == (300, 256) and s["fp32_top1"] == pytest.approx(module)
        layers = [c["layer"] for c in s["layers"]]
        assert len(layers) == 20 + adds and "fc" in layers and "conv1" in layers
        recovered = [c["recovers"] for c in s["layers"]]
        assert recovered == sorted(recovered, reverse=True)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_takes_any_number_of_images(method: str, digits: Path, tmp_path: Path,
                                                          cli: Any) -> None:
    """97 calibration images (not a multiple of any batch size): ONNX Runtime's histogram calibrators need equal
    batches, and used to fail on a shorter last one with a traceback."""
    r = cli("compile", str(CIFAR), "--weights", str(WEIGHTS), "--precision", "int8", "--calibration", str(digits),
            "--calibration-samples", "97", "--calibration-method", method, "--sensitivity-samples", "0",
            "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr
    q = read(tmp_path / "out").section("quantization")
    assert (q["method"], q["samples"]) == (method, 97) and q["sensitivity"] is None
