"""The aoti target on CPU: compile, verify, reload through resdsl.runtime, and the refusals before loading.

Each compile runs Inductor's C++ build (about 40-60 s per net on 2 cores), so artefacts are compiled once
per session and shared (:func:`aoti_artefact`; tests/test_cpp_example.py uses the ResNet-20 one too).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from resdsl import InputError, build
from resdsl.backends import aoti
from resdsl.errors import BackendUnavailable, OptionError
from resdsl.manifest import read as read_manifest
from resdsl.options import AotiOptions
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.runtime import load as load_artefact

from .conftest import ROOT, SPECS

CIFAR = SPECS / "cifar" / "resnet20.yaml"
R18 = SPECS / "resnet18.yaml"
SCHEMA = json.loads((ROOT / "resdsl" / "schemas" / "manifest.schema.json").read_text())
_COMPILED: dict[Path, Path] = {}


def aoti_artefact(spec: Path, factory: pytest.TempPathFactory) -> Path:
    """Compile ``spec`` to an aoti CPU artefact with batch 1:1:4, once per test session."""
    if spec not in _COMPILED:
        out = factory.mktemp("aoti") / spec.stem
        compile_spec(spec, CompileOptions(target="aoti", out=out, batch="1:1:4", aoti=AotiOptions("cpu")))
        _COMPILED[spec] = out
    return _COMPILED[spec]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b.astype(np.float64)).max())


@pytest.mark.parametrize("spec", [CIFAR, R18], ids=["cifar/resnet20", "resnet18"])
def test_compile_verify_and_reload(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = aoti_artefact(spec, tmp_path_factory)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pt2"]
    m = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(m, SCHEMA)
    assert m["target"] == "aoti" and m["verification"]["passed"]
    assert m["aoti"]["device"] == "cpu" and m["aoti"]["torch"] == torch.__version__
    assert m["aoti"]["dynamic_batch"] is True and m["batch"] == {"min": 1, "opt": 1, "max": 4, "dynamic": True}
    assert sorted(c["batch"] for c in m["verification"]["checks"]) == [1, 3, 4]
    assert all(c["backend"] == "aoti" and c["rel"] <= 1e-4 for c in m["verification"]["checks"])

    art = load_artefact(out)
    model = build(spec, seed=0).eval()
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, *m["inputs"][0]["shape"][2:]), dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = art(x)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert _rel(got, ref) <= 1e-4, (n, _rel(got, ref))
    with pytest.raises(InputError, match="outside"):
        art(np.zeros((5, 3, *m["inputs"][0]["shape"][2:]), np.float32))


def _tampered(src: Path, dst: Path, **aoti_fields: object) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["aoti"].update(aoti_fields)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_refuses_other_torch_version_and_missing_gpu_before_loading(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    out = aoti_artefact(CIFAR, tmp_path_factory)

    def must_not_load(*a: object, **k: object) -> None:
        raise AssertionError("the package was opened before the manifest was checked")

    monkeypatch.setattr(torch._inductor, "aoti_load_package", must_not_load)
    old = _tampered(out, tmp_path / "old", torch="2.5.1+cu124")
    with pytest.raises(InputError, match=r"compiled by torch 2\.5\.1\+cu124 but this is torch") as e:
        load_artefact(old)
    assert "nothing was loaded" in str(e.value)
    # Another build of the same release (CPU vs CUDA wheel) shares the AOTI runtime and is accepted.
    other_build = read_manifest(out).with_(sections={"aoti": {"device": "cpu",
                                                              "torch": torch.__version__.split("+")[0] + "+cu999"}})
    assert aoti.check_compatible(other_build, out / "model.pt2") == "cpu"
    with pytest.raises(InputError, match="lacks the device or torch version"):
        load_artefact(_tampered(out, tmp_path / "bare", torch=""))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA GPU"):
            load_artefact(_tampered(out, tmp_path / "gpu", device="cuda", gpu="NVIDIA H100"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_gpu_is_backend_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--device cuda without a GPU names the flag and the real cause: a CPU-only torch, or a CUDA build of torch
    that sees no device (then installing a CUDA build of torch is not the fix)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailable, match=r"^--device cuda: this torch .* is a CPU-only build; install a CUDA"):
        aoti.resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(BackendUnavailable, match=r"built for CUDA 12\.6, but no NVIDIA GPU or working driver") as e:
        aoti.resolve_device("cuda")
    assert "install a CUDA build" not in str(e.value) and "--device cpu" in str(e.value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(BackendUnavailable, match="CUDA_VISIBLE_DEVICES='' hides every device"):
        aoti.resolve_device("cuda")
    assert aoti.resolve_device(None) == "cpu"


def test_missing_cxx_compiler_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.cpp_builder as cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def missing() -> str:
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(BackendUnavailable, match="no C\\+\\+ compiler"):
        aoti._check_toolchain()


def test_boundary_casts_fp16_inside_and_io_outside() -> None:
    model = build(CIFAR, seed=0).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32))
    with torch.no_grad():
        ref = model(x)
        half_in_fp32_out = aoti.boundary(model, "fp16", "fp32")(x)
        half_io = aoti.boundary(model, "fp16", "fp16")(x.half())
    assert half_in_fp32_out.dtype == torch.float32 and half_io.dtype == torch.float16
    assert _rel(half_in_fp32_out.numpy(), ref.numpy()) < 3e-2
    assert next(model.parameters()).dtype == torch.float32  # the reference module is left alone


def test_bench_times_the_package(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``resdsl bench`` on an aoti artefact: each requested batch within the range, host-to-host timing."""
    from resdsl.benchmark import bench
    from resdsl.options import BenchOptions

    out = aoti_artefact(CIFAR, tmp_path_factory)
    result = bench(out, BenchOptions(batches=(1, 4), warmup=1, iterations=3))
    assert result.backend == "aoti" and result.artefact["target"] == "aoti" and "host memory" in result.timing
    assert [r.batch for r in result.results] == [1, 4] and all(r.runs == 3 for r in result.results)
    assert all(r.min_ms <= r.p50_ms <= r.max_ms and r.images_per_s > 0 for r in result.results)
    with pytest.raises(OptionError, match=r"BenchOptions\.batches 5: outside"):
        bench(out, BenchOptions(batches=(5,), iterations=1))


BACKBONE_SIZES = "24x24:40x32:48x48"


def aoti_backbone(factory: pytest.TempPathFactory) -> Path:
    """conftest.TINY_BACKBONE (two outputs) compiled to an aoti CPU artefact over BACKBONE_SIZES with batch 1:1:2,
    once per test session (test_cpp_example runs it too)."""
    from .conftest import TINY_BACKBONE

    key = Path("TINY_BACKBONE")
    if key not in _COMPILED:
        root = factory.mktemp("aoti-backbone")
        (root / "bb.yaml").write_text(TINY_BACKBONE)
        compile_spec(root / "bb.yaml", CompileOptions(target="aoti", out=root / "bb", batch="1:1:2",
                                                      size=BACKBONE_SIZES, aoti=AotiOptions("cpu")))
        _COMPILED[key] = root / "bb"
    return _COMPILED[key]


def test_a_backbone_over_a_size_range(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Several outputs and dynamic height and width in one package: verified at the range's sizes, and at a size
    it was not verified at every output equals the module's; a size outside the range is refused."""
    out = aoti_backbone(tmp_path_factory)
    spec = out.parent / "bb.yaml"
    m = read_manifest(out)
    assert m.section("aoti")["size_range"] == [[24, 24], [48, 48]]
    assert {tuple(c["size"]) for c in m.verification["checks"]} == {(24, 24), (40, 32), (48, 48), (37, 37)}
    x = np.random.default_rng(3).standard_normal((2, 3, 45, 29)).astype(np.float32)
    with torch.no_grad():
        want = build(spec, seed=0).eval()(torch.from_numpy(x))
    got = load_artefact(out)(x)
    assert list(got) == ["conv3_x", "conv4_x"]
    for k, v in want.items():
        assert got[k].shape == tuple(v.shape) and _rel(got[k], v.numpy()) <= 1e-4, k
    with pytest.raises(InputError, match="outside"):
        load_artefact(out)(np.zeros((1, 3, 50, 30), np.float32))
