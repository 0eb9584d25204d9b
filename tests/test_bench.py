"""``resdsl bench``: latency statistics, what a result says it measured, batch and provider refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from resdsl.benchmark import bench, stats, timed
from resdsl.errors import OptionError
from resdsl.options import BenchOptions
from resdsl.pipeline import CompileOptions, compile_spec

from .conftest import SPECS

CIFAR = SPECS / "cifar" / "resnet20.yaml"


def test_statistics_of_known_runs() -> None:
    """1..100 ms: the percentiles of linear interpolation are 50.5, 90.1 and 99.01 ms (worked out by hand)."""
    lat = stats(4, [i / 1e3 for i in range(100, 0, -1)])
    assert (lat.runs, lat.min_ms, lat.max_ms) == (100, pytest.approx(1.0), pytest.approx(100.0))
    assert (lat.mean_ms, lat.p50_ms, lat.p90_ms, lat.p99_ms) == (
        pytest.approx(50.5), pytest.approx(50.5), pytest.approx(90.1), pytest.approx(99.01))
    assert lat.images_per_s == pytest.approx(4 / 0.0505)


def test_iterations_or_duration_bound_the_timed_runs() -> None:
    calls: list[int] = []
    assert len(timed(lambda: calls.append(1), 3, 7, None)) == 7 and len(calls) == 10
    start = len(calls)
    runs = timed(lambda: calls.append(1), 0, None, 0.05)
    assert len(runs) == len(calls) - start >= 1 and sum(runs) <= 0.05 + max(runs) + 0.05


def test_onnx_artefact_json_says_what_it_measured(cli: Any, onnx_artefact: Any) -> None:
    directory, manifest = onnx_artefact(CIFAR)
    r = cli("bench", str(directory), "--batch", "1,3", "--iterations", "5", "--warmup", "1", "--threads", "1",
            "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --json: no progress lines
    doc = json.loads(r.stdout)
    assert doc["artefact"]["name"] == manifest.name and doc["artefact"]["gmacs"] == manifest.counts.gmacs
    assert doc["artefact"]["precision"] == "fp32" and doc["backend"] == "onnxruntime-cpu"
    assert doc["versions"]["onnxruntime"] == ort.__version__
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert doc["machine"]["cpu"] in cpuinfo and all(f" {f}" in cpuinfo for f in doc["machine"]["cpu_flags"])
    assert doc["peak"]["tops"] is None and "not known" in doc["peak"]["note"]
    rows = doc["results"]
    assert [row["batch"] for row in rows] == [1, 3] and all(row["runs"] == 5 for row in rows)
    for row in rows:
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["min_ms"] <= row["mean_ms"] <= row["max_ms"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1e3 / row["mean_ms"])
        assert row["h2d_ms"] is None and row["peak_fraction"] is None


def test_table_and_default_batch(cli: Any, onnx_artefact: Any) -> None:
    directory, manifest = onnx_artefact(CIFAR)
    r = cli("bench", str(directory), "--iterations", "3", "--warmup", "0")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{directory}: {manifest.name}, onnx, fp32") and "onnxruntime-cpu" in lines[0]
    assert lines[2].split()[:2] == ["batch", "runs"]
    assert lines[3].split()[:2] == [str(manifest.batch.opt), "3"]  # the profile's opt by default
    assert "resdsl: timing batch" in r.stderr  # progress, one line per step off a terminal


def test_timing_agrees_with_calling_the_artefact(onnx_artefact: Any) -> None:
    """The figure is what a caller of art(x) sees: the median of direct timings lies inside bench's range."""
    import time

    from resdsl.runtime import load

    directory, _ = onnx_artefact(CIFAR)
    art = load(directory, threads=1)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    for _ in range(3):
        art(x)
    direct = []
    for _ in range(15):
        t = time.perf_counter()
        art(x)
        direct.append(time.perf_counter() - t)
    lat = bench(directory, BenchOptions(batches=(2,), warmup=3, iterations=15, threads=1)).results[0]
    assert lat.min_ms / 3 <= float(np.median(direct)) * 1e3 <= lat.max_ms * 3


def test_refusals(cli: Any, onnx_artefact: Any, tmp_path: Path) -> None:
    directory, manifest = onnx_artefact(CIFAR)
    r = cli("bench", str(directory), "--batch", f"1,{manifest.batch.max + 1}")
    assert r.returncode == 2 and f"--batch {manifest.batch.max + 1}: outside" in r.stderr
    assert f"range {manifest.batch.min}..{manifest.batch.max}" in r.stderr
    r = cli("bench", str(directory), "--cuda-graph", "--iterations", "1")
    assert r.returncode == 2 and "--cuda-graph" in r.stderr and "TensorRT" in r.stderr
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        r = cli("bench", str(directory), "--provider", "cuda", "--iterations", "1")
        assert r.returncode == 3 and "onnxruntime-gpu" in r.stderr and "CUDAExecutionProvider" in r.stderr
    r = cli("bench", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(OptionError, match=r"BenchOptions\.iterations"):
        BenchOptions(iterations=0)
    with pytest.raises(OptionError, match=r"BenchOptions\.iterations and BenchOptions\.duration both given"):
        BenchOptions(iterations=3, duration=1.0)


def test_cpu_provider_is_honoured_and_other_targets_refuse_providers(cli: Any, onnx_artefact: Any,
                                                                     tmp_path: Path) -> None:
    from resdsl.runtime import load

    directory, _ = onnx_artefact(CIFAR)
    art = load(directory, providers=["cpu"])
    assert art.session.get_providers() == ["CPUExecutionProvider"] and art.backend == "onnxruntime-cpu"
    torch_art, _ = compile_spec(CIFAR, CompileOptions(target="torch", out=tmp_path / "t", batch=2))
    r = cli("bench", str(torch_art), "--iterations", "2", "--warmup", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "torch"
    r = cli("bench", str(torch_art), "--provider", "cpu")
    assert r.returncode == 2 and "--provider cpu" in r.stderr and "torch artefact" in r.stderr
    r = cli("verify", str(torch_art), "--provider", "cpu")
    assert r.returncode == 2 and "--provider cpu" in r.stderr
    r = cli("verify", str(directory), "--provider", "cpu")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime-cpu" in r.stdout


@pytest.mark.trt
def test_tensorrt_engine_timed_on_the_device(cli: Any, tmp_path: Path) -> None:
    """GPU + TensorRT only: compute timed with the input in device memory, with and without a CUDA graph, and
    the copies on their own; the GPU's peak fraction given when the GPU is in the table."""
    from resdsl.backends import trt_build
    from resdsl.errors import BackendUnavailable

    try:
        trt_build.environment()
    except BackendUnavailable as exc:
        pytest.skip(f"needs TensorRT's libraries and an NVIDIA GPU: {exc}")
    art, _ = compile_spec(CIFAR, CompileOptions(target="trt", out=tmp_path / "e", batch="1:4:8"))
    for graph in ([], ["--cuda-graph"]):
        r = cli("bench", str(art), "--batch", "1,8", "--iterations", "20", "--json", *graph)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["backend"] == "tensorrt" and doc["machine"]["gpu"] and "device memory" in doc["timing"]
        assert ("CUDA graph" in doc["timing"]) == bool(graph)
        for row in doc["results"]:
            assert row["h2d_ms"] > 0 and row["d2h_ms"] > 0 and row["min_ms"] <= row["p50_ms"] <= row["max_ms"]
            assert (row["peak_fraction"] is None) == (doc["peak"]["tops"] is None)
