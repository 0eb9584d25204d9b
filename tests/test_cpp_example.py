"""examples/cpp/aoti: build it with CMake against the torch wheel's libtorch, run it on a ResNet-20 aoti artefact,
and compare its top-5 with resdsl.runtime.load on the same input. Building takes about 25 s on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from resdsl.runtime import load as load_artefact

from .conftest import ROOT, SPECS
from .test_aoti import aoti_artefact

EXAMPLE = ROOT / "examples" / "cpp" / "aoti"
CIFAR = SPECS / "cifar" / "resnet20.yaml"


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (apt-get install cmake, or pip install cmake)")
    if _compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) is installed")
    build = tmp_path_factory.mktemp("cpp-aoti")
    configure = subprocess.run(["cmake", "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                               capture_output=True, text=True, timeout=600)
    if configure.returncode != 0 and torch.version.cuda and "CUDA" in configure.stdout + configure.stderr:
        pytest.skip("this CUDA build of torch needs the CUDA toolkit for its CMake files: " + configure.stderr[-500:])
    if configure.returncode != 0 and "nlohmann-json3-dev libssl-dev" in configure.stderr:
        pytest.skip("nlohmann/json or OpenSSL's headers are missing (apt-get install nlohmann-json3-dev libssl-dev; "
                    "`make test` installs them where it may)")
    assert configure.returncode == 0, configure.stdout + configure.stderr
    made = subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout[-5000:] + made.stderr[-5000:]
    exe = build / "resdsl_aoti"
    assert exe.is_file()
    return exe


def _run(exe: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


def _top5(stdout: str) -> tuple[list[int], np.ndarray]:
    rows = [line.split() for line in stdout.strip().splitlines()]
    assert len(rows) == 5 and all(len(r) == 2 for r in rows), stdout
    return [int(r[0]) for r in rows], np.array([float(r[1]) for r in rows])


@pytest.mark.parametrize("image", [False, True], ids=["linspace", "image-file"])
def test_cpp_top5_equals_python(program: Path, image: bool, tmp_path: Path,
                                tmp_path_factory: pytest.TempPathFactory) -> None:
    art = aoti_artefact(CIFAR, tmp_path_factory)
    n = 3 * 32 * 32
    if image:
        x = np.random.default_rng(7).standard_normal((1, 3, 32, 32), dtype=np.float32)
        x.tofile(tmp_path / "image.bin")
        r = _run(program, art, tmp_path / "image.bin")
    else:
        x = torch.linspace(-1, 1, n).reshape(1, 3, 32, 32).numpy()  # the program's default input
        r = _run(program, art)
    assert r.returncode == 0, r.stderr
    idx, scores = _top5(r.stdout)
    ref = load_artefact(art)(x)[0]
    want = np.argsort(-ref, kind="stable")[:5]
    assert idx == want.tolist()
    np.testing.assert_allclose(scores, ref[want], rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_cpp_refuses_tampered_package_wrong_torch_and_bad_input(program: Path, tmp_path: Path,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    art = aoti_artefact(CIFAR, tmp_path_factory)
    changed = shutil.copytree(art, tmp_path / "changed")
    with (changed / "model.pt2").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = _run(program, changed)
    assert r.returncode == 1 and "does not match the sha256" in r.stderr, r.stderr

    other = shutil.copytree(art, tmp_path / "other")
    m = json.loads((other / "manifest.json").read_text())
    m["aoti"]["torch"] = "2.5.1+cu124"
    (other / "manifest.json").write_text(json.dumps(m))
    r = _run(program, other)
    assert r.returncode == 1 and "compiled by torch 2.5.1+cu124" in r.stderr, r.stderr

    (tmp_path / "short.bin").write_bytes(b"\0" * 12)
    r = _run(program, art, tmp_path / "short.bin")
    assert r.returncode == 1 and "12288 bytes" in r.stderr, r.stderr
    r = _run(program)
    assert r.returncode == 2 and "usage" in r.stderr


def test_cpp_prints_every_feature_map_of_a_backbone(program: Path, tmp_path_factory: pytest.TempPathFactory
                                                    ) -> None:
    """A backbone package (two outputs, height and width over a range): one line per output at the range's opt
    size, equal to the torch module's feature maps (built from the spec and the seed)."""
    from resdsl import build

    from .test_aoti import aoti_backbone

    art = aoti_backbone(tmp_path_factory)
    spec = art.parent / "bb.yaml"
    r = _run(program, art)
    assert r.returncode == 0, r.stderr
    x = torch.linspace(-1, 1, 3 * 40 * 32).reshape(1, 3, 40, 32)  # the program's default input, at the opt size
    with torch.no_grad():
        want = build(spec, seed=0).eval()(x)
    lines = [line.split() for line in r.stdout.strip().splitlines()]
    assert [row[0] for row in lines] == list(want)
    for row, (name, f) in zip(lines, want.items(), strict=True):
        assert row[1] == "x".join(map(str, f.shape[1:])), name
        assert float(row[3]) == pytest.approx(float(f.mean()), rel=1e-4, abs=1e-6)
        assert float(row[5]) == pytest.approx(float(f.max()), rel=1e-4)


def _header_dir(name: str, *candidates: str | None) -> Path | None:
    return next((Path(c) for c in candidates if c and (Path(c) / name).is_file()), None)


def test_trt_example_type_checks_against_tensorrt_s_headers() -> None:
    """examples/cpp/trt compiles (-fsyntax-only) against the installed TensorRT and CUDA headers; skipped where
    they are not installed (the pip wheels carry no headers)."""
    trt = _header_dir("NvInfer.h", os.environ.get("TENSORRT_ROOT") and f"{os.environ['TENSORRT_ROOT']}/include",
                      "/usr/include/x86_64-linux-gnu", "/usr/include", "/usr/local/include")
    cuda = _header_dir("cuda_runtime_api.h", os.environ.get("CUDA_HOME") and f"{os.environ['CUDA_HOME']}/include",
                       "/usr/local/cuda/include", "/usr/include")
    if trt is None or cuda is None or _compiler() is None:
        pytest.skip("needs TensorRT's and CUDA's C++ headers (NvInfer.h, cuda_runtime_api.h) and a C++ compiler; "
                    "set TENSORRT_ROOT and CUDA_HOME where they are not in a standard place")
    r = subprocess.run([_compiler() or "c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-deprecated-declarations",
                        f"-I{trt}", f"-I{cuda}", f"-I{ROOT / 'examples' / 'cpp' / 'common'}",
                        str(ROOT / "examples" / "cpp" / "trt" / "main.cpp")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
