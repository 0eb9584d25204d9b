"""Tests of the TensorRT backend (resdsl/backends/trt_build.py and trt_runtime.py).

Four kinds:

* the pure parts (the batch profile and TensorRT options, the timing-cache key, the engine
  compatibility rules, the BackendUnavailable messages, which TensorRT distributions are installed),
  which run everywhere;
* the API-surface tests: every TensorRT name the backend uses must exist in the real Python bindings of
  TensorRT 11 (``tensorrt_cu13_bindings``, from the dev extra) and of TensorRT 10 (``tensorrt_cu12_bindings``,
  installed by the Makefile into folders of their own), loaded over stub libraries; and the list of names
  must match the source of every ``trt*.py`` module (see tests/trt_surface.py);
* build_engine against tests/fake_tensorrt.py, a stand-in that records what TensorRT is handed (options,
  profile, flags, timing cache) and refuses as TensorRT documents, so the build logic runs here;
* end-to-end builds and runs, marked ``trt``, which need TensorRT's libraries and an NVIDIA GPU.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resdsl.backends import trt_build, trt_runtime
from resdsl.backends.trt_build import TRT_API, TrtEnvironment, installed_versions, timing_cache_key
from resdsl.backends.trt_runtime import check_engine_compatible
from resdsl.errors import BackendUnavailable, InputError, OptionError
from resdsl.options import BatchProfile, TrtOptions

from . import trt_surface
from .conftest import SPECS

# --------------------------------------------------------------------------- --batch (resdsl.options.BatchProfile)


@pytest.mark.parametrize(("text", "expected"), [
    ("8", (8, 8, 8)), ("1", (1, 1, 1)), ("1:8:32", (1, 8, 32)), (" 2:2:4 ", (2, 2, 4)), ("4:4:4", (4, 4, 4)),
])
def test_parse_batch(text: str, expected: tuple[int, int, int]) -> None:
    p = BatchProfile.parse(text)
    assert (p.min, p.opt, p.max) == expected
    assert BatchProfile.parse(str(p)) == p


@pytest.mark.parametrize("text", ["", "a", "1.5", "8x", "1:8", "1:2:3:4", "1::3", "-1", "+3", "1:-2:3", "1e3", "٣"])
def test_parse_batch_rejects_non_integers(text: str) -> None:
    with pytest.raises(OptionError, match=r"CompileOptions\.batch .*N .*MIN:OPT:MAX") as info:
        BatchProfile.parse(text)
    assert info.value.render({"batch": "--batch"}).startswith("--batch ")


@pytest.mark.parametrize(("text", "match"), [
    ("0", ">= 1"), ("0:1:2", ">= 1"), ("8:1:32", "MIN <= OPT <= MAX"), ("1:32:8", "MIN <= OPT <= MAX"),
    ("4:2:2", "MIN <= OPT <= MAX"),
])
def test_parse_batch_rejects_bad_ranges(text: str, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        BatchProfile.parse(text)


def test_batch_profile_rejects_non_ints() -> None:
    with pytest.raises(OptionError):
        BatchProfile(True, 1, 1)
    with pytest.raises(OptionError):
        BatchProfile(1, 2.0, 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TensorRT options (resdsl.options)

PROFILE = BatchProfile(1, 8, 32)


def test_trt_options_defaults() -> None:
    o = TrtOptions()
    assert (o.workspace_mib, o.opt_level, o.timing_cache, o.tf32, o.version_compatible) == (4096, 3, None, False, False)
    assert TrtOptions(timing_cache="cache").timing_cache == Path("cache")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tf32 = True  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workspace_mib": 0}, r"TrtOptions\.workspace_mib 0: .*MiB"),
    ({"workspace_mib": -5}, r"TrtOptions\.workspace_mib -5"),
    ({"workspace_mib": 1.5}, r"TrtOptions\.workspace_mib 1\.5"),
    ({"workspace_mib": True}, r"TrtOptions\.workspace_mib True"),
    ({"opt_level": 6}, r"TrtOptions\.opt_level 6: .*0 .*5"),
    ({"opt_level": -1}, r"TrtOptions\.opt_level -1"),
    ({"opt_level": "3"}, r"TrtOptions\.opt_level '3'"),
])
def test_trt_options_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(OptionError, match=match):
        TrtOptions(**kwargs)


def test_trt_options_refuse_a_file_as_timing_cache(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match=r"TrtOptions\.timing_cache .*file.*is a file"):
        TrtOptions(timing_cache=tmp_path / "file")


@pytest.mark.parametrize("level", range(6))
def test_trt_options_accept_all_opt_levels(level: int) -> None:
    assert TrtOptions(opt_level=level).opt_level == level


# --------------------------------------------------------------------------- timing cache key

KEY_ENV = ("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0")


def _key(trt_version: str = KEY_ENV[0], gpu: str = KEY_ENV[1], cc: str = KEY_ENV[2], precision: str = "fp32",
         **options: Any) -> str:
    return timing_cache_key(TrtOptions(**options), precision, TrtEnvironment(trt_version, gpu, cc))


def test_timing_cache_key_is_a_safe_file_name() -> None:
    key = _key(gpu="NVIDIA GeForce RTX 4090 / (weird) name")
    assert key.replace(".", "").replace("-", "").isalnum(), key
    assert "/" not in key and " " not in key
    assert _key() == "trt11.4.0.106-nvidia-h100-80gb-hbm3-sm90-fp32-notf32-novc"


@pytest.mark.parametrize("change", [
    {"trt_version": "11.3.0.99"}, {"trt_version": "10.16.1.11"}, {"gpu": "NVIDIA H100 PCIe"},
    {"gpu": "NVIDIA A100-SXM4-80GB", "cc": "8.0"}, {"cc": "9.0a"}, {"precision": "fp16"}, {"tf32": True},
    {"version_compatible": True},
])
def test_timing_cache_key_changes_with_what_changes_timings(change: dict[str, Any]) -> None:
    assert _key(**change) != _key()


@pytest.mark.parametrize("change", [
    {"workspace_mib": 512}, {"opt_level": 5}, {"opt_level": 0}, {"timing_cache": Path("/elsewhere")},
])
def test_timing_cache_key_ignores_what_does_not(change: dict[str, Any]) -> None:
    assert _key(**change) == _key()

# --------------------------------------------------------------------------- compatibility

ENV = TrtEnvironment("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0")


def _manifest(version: str = "11.4.0.106", cc: str = "9.0", vc: bool = False,
              gpu: str = ENV.gpu_name) -> dict[str, Any]:
    return {"trt_version": version, "gpu": gpu, "compute_capability": cc, "options": {"version_compatible": vc}}


def test_compatible_engine_is_accepted() -> None:
    check_engine_compatible(_manifest(), ENV)
    check_engine_compatible(_manifest(gpu="NVIDIA H100 PCIe"), ENV)  # same architecture, another SKU


@pytest.mark.parametrize("vc", [False, True])
def test_other_gpu_architecture_is_refused(vc: bool) -> None:
    with pytest.raises(InputError, match=r"compute capability 8\.0 .*is 9\.0.*rebuild"):
        check_engine_compatible(_manifest(cc="8.0", vc=vc, gpu="NVIDIA A100"), ENV)


@pytest.mark.parametrize("version", ["11.4.0.105", "11.3.0.99", "11.4.1.2", "10.16.1.11"])
def test_other_trt_version_is_refused(version: str) -> None:
    pattern = rf"built with TensorRT {re.escape(version)} but TensorRT 11\.4\.0\.106.*--version-compatible"
    with pytest.raises(InputError, match=pattern):
        check_engine_compatible(_manifest(version), ENV)


@pytest.mark.parametrize("version", ["11.0.0.114", "11.3.0.99", "11.4.0.106", "10.16.1.11", "10.13.2.6"])
def test_version_compatible_engine_runs_on_newer_runtime(version: str) -> None:
    check_engine_compatible(_manifest(version, vc=True), ENV)


@pytest.mark.parametrize(("built", "runtime"), [
    ("11.4.1.2", "11.4.0.106"), ("11.5.0.1", "11.4.0.106"), ("11.0.0.114", "12.0.0.1"), ("8.6.1.6", "11.4.0.106"),
    ("10.16.1.11", "10.13.2.6"),
])
def test_version_compatible_engine_is_refused_outside_its_range(built: str, runtime: str) -> None:
    env = dataclasses.replace(ENV, trt_version=runtime)
    with pytest.raises(InputError, match=f"version-compatible engine was built with TensorRT {built}"):
        check_engine_compatible(_manifest(built, vc=True), env)


def test_incomplete_manifest_is_refused() -> None:
    with pytest.raises(InputError, match="lacks trt_version, compute_capability"):
        check_engine_compatible({"gpu": "x"}, ENV)


# --------------------------------------------------------------------------- missing TensorRT / GPU


def _block_tensorrt(monkeypatch: pytest.MonkeyPatch, error: str | None = None) -> None:
    """Make ``import tensorrt`` fail, and ``import tensorrt_bindings`` fail (with ``error`` if given)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    if error is None:
        monkeypatch.setitem(sys.modules, "tensorrt_bindings", None)
        return
    monkeypatch.delitem(sys.modules, "tensorrt_bindings", raising=False)
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tensorrt_bindings":
            raise ImportError(error)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def _assert_install_hint(err: BackendUnavailable) -> None:
    msg = str(err)
    assert err.exit_code == 3
    assert "pip install 'resdsl[trt]'" in msg and "--extra-index-url https://pypi.nvidia.com" in msg
    assert "NVIDIA GPU" in msg and "\n" not in msg


def test_missing_tensorrt_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    _block_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailable, match="needs TensorRT, which is not installed") as info:
        trt_build.environment()
    _assert_install_hint(info.value)
    for call in (lambda: trt_build.build_engine("m.onnx", "m.engine", PROFILE, TrtOptions(), precision="fp32",
                                                io="fp32"),
                 lambda: trt_runtime.TrtRunner("m.engine")):
        with pytest.raises(BackendUnavailable):
            call()


def test_bindings_without_libraries_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this machine shows with ``tensorrt_cu13_bindings`` installed but no libnvinfer."""
    _block_tensorrt(monkeypatch, "libnvonnxparser.so.11: cannot open shared object file: No such file or directory")
    with pytest.raises(BackendUnavailable, match=r"needs TensorRT's libraries \(libnvonnxparser\.so\.11\), which are "
                       r"not installed here: only TensorRT's Python bindings are") as info:
        trt_build.environment()
    assert "Targets that run on this machine: torch, onnx, aoti." in str(info.value)
    _assert_install_hint(info.value)


def test_missing_gpu_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(trt_build, "_import_trt", lambda: type("FakeTrt", (), {"__version__": "11.4.0.106"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match=r"needs an NVIDIA GPU.*driver") as info:
        trt_build.environment()
    assert info.value.exit_code == 3


# --------------------------------------------------------------------------- which TensorRT is installed


class _Dist:
    """What ``importlib.metadata.distributions()`` yields, as far as installed_versions reads it."""

    def __init__(self, name: str, version: str) -> None:
        self.metadata, self.version = {"Name": name}, version


def test_installed_versions_finds_every_tensorrt_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    # Distribution names as NVIDIA publishes them on PyPI (spelled as their wheels' metadata may spell them).
    tensorrt = {"tensorrt": "11.4.0.106", "tensorrt-cu12": "10.16.1.11", "tensorrt-cu13": "11.4.0.106",
                "tensorrt_cu12_bindings": "10.16.1.11", "tensorrt_cu13_bindings": "11.4.0.106",
                "tensorrt-cu12-libs": "10.16.1.11", "tensorrt_cu13_libs": "11.4.0.106", "tensorrt_lean": "11.4.0.106",
                "tensorrt-dispatch": "11.4.0.106", "tensorrt-lean-cu13-bindings": "11.4.0.106",
                "tensorrt-dispatch-cu12-libs": "10.16.1.11", "tensorrt-cu11": "10.13.0.35",
                "TensorRT.Lean_CU12": "10.16.1.11"}
    others = {"tensorrt-rtx": "1.7.1.116", "tensorrt-rtx-cu13-bindings": "1.7.1.116", "tensorrt-llm": "1.2.1",
              "tensorrt-stubs": "10.13.0.35.1", "nvidia-tensorrt": "99.0.0", "torch-tensorrt": "2.9.0",
              "tensorrt-yolo": "4.3.1", "numpy": "2.3.0"}
    dists = [_Dist(n, v) for n, v in {**tensorrt, **others}.items()]
    dists.append(_Dist("tensorrt_cu13_bindings", "10.0.1"))  # further down the path: shadowed, not imported
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))
    assert installed_versions() == {
        "tensorrt": "11.4.0.106", "tensorrt-cu11": "10.13.0.35", "tensorrt-cu12": "10.16.1.11",
        "tensorrt-cu12-bindings": "10.16.1.11", "tensorrt-cu12-libs": "10.16.1.11", "tensorrt-cu13": "11.4.0.106",
        "tensorrt-cu13-bindings": "11.4.0.106", "tensorrt-cu13-libs": "11.4.0.106", "tensorrt-dispatch": "11.4.0.106",
        "tensorrt-dispatch-cu12-libs": "10.16.1.11", "tensorrt-lean": "11.4.0.106", "tensorrt-lean-cu12": "10.16.1.11",
        "tensorrt-lean-cu13-bindings": "11.4.0.106"}
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter([_Dist("numpy", "2.3.0")]))
    assert installed_versions() == {}


def test_installed_versions_sees_this_environment() -> None:
    try:
        want = importlib.metadata.version("tensorrt_cu13_bindings")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt_cu13_bindings is not installed (the dev extra installs it)")
    assert installed_versions()["tensorrt-cu13-bindings"] == want


# --------------------------------------------------------------------------- API surface vs TensorRT 10 and 11

# The releases checked. TensorRT 11's bindings come with the dev extra (site-packages); TensorRT 10's provide
# the same module, so the Makefile installs each into .venv/trt-bindings/VERSION, put first on the probe's path.
BINDINGS = [
    pytest.param("11.4.0.106", "tensorrt_cu13_bindings", False, id="11.4.0.106"),
    pytest.param("10.16.1.11", "tensorrt_cu12_bindings", True, id="10.16.1.11"),
    pytest.param("10.0.1", "tensorrt_cu12_bindings", True, id="10.0.1"),
]
# Where the Makefile installs them (CI=true, linux x86_64, Python 3.11), a missing release fails instead of skipping.
MUST_RUN = (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)
            and os.environ.get("CI", "").lower() in ("true", "1"))


def _unavailable(reason: str) -> None:
    (pytest.fail if MUST_RUN else pytest.skip)(reason)


def _bindings_folder(release: str, dist: str, own_folder: bool) -> str:
    """The sys.path entry to import ``release`` from ("" for this environment's own), or skip saying how to
    install it."""
    if not own_folder:
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found != release:
            _unavailable(f"TensorRT {release}'s Python bindings are not installed here (found {dist} {found}); "
                         f"pip install '{dist}=={release}' (the dev extra does)")
        return ""
    folder = Path(sys.prefix) / "trt-bindings" / release
    found_here = [d.version for d in importlib.metadata.distributions(path=[str(folder)])
                  if re.sub(r"[-_.]+", "_", str(d.metadata["Name"])).lower() == dist]
    if found_here != [release]:
        _unavailable(f"TensorRT {release}'s Python bindings are not installed in {folder} (found {found_here}); "
                     f"the Makefile's install step does (`rm .venv/.installed; make test`), or: "
                     f"pip install --no-deps --target {folder} "
                     f"'{dist}=={release}'")
    return str(folder)


@pytest.fixture(scope="session")
def trt_stubs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``major -> [stub libnvinfer.so.MAJOR, ...]``, compiled once per major version with gcc."""
    built: dict[str, list[str]] = {}

    def stubs(major: str) -> list[str]:
        gcc = shutil.which("gcc")
        if gcc is None:
            _unavailable("gcc is needed to compile the stub TensorRT libraries the bindings link against")
        if major not in built:
            built[major] = trt_surface.build_stubs(str(gcc), tmp_path_factory.mktemp(f"trt{major}-stubs"), major)
        return built[major]

    return stubs


def _missing_report(release: str, missing: dict[str, str]) -> str:
    """``{name: the deepest part of it that exists}`` as one line naming, for each name, what is missing where."""
    return f"TensorRT {release} lacks names the backend uses (TRT_API): " + "; ".join(
        f"{name} ({where} has no {name.split('.')[where.count('.')]!r})" for name, where in sorted(missing.items()))


@pytest.mark.parametrize(("release", "dist", "own_folder"), BINDINGS)
def test_trt_api_exists_in_tensorrt_bindings(release: str, dist: str, own_folder: bool, trt_stubs: Any,
                                             record_property: Any) -> None:
    where = _bindings_folder(release, dist, own_folder)
    probe = trt_surface.probe(trt_stubs(release.split(".")[0]), where)
    record_property("tensorrt_version", probe["version"])
    assert (probe["module"], probe["version"]) == ("tensorrt_bindings", release), probe
    assert not where or probe["file"].startswith(where), f"imported {probe['file']}, not the bindings in {where}"
    assert probe["missing"] == {}, _missing_report(release, probe["missing"])


def test_missing_names_are_reported_precisely() -> None:
    report = _missing_report("10.0.1", {"ITimingCache.query": "tensorrt.ITimingCache", "Foo.bar": "tensorrt"})
    assert report == ("TensorRT 10.0.1 lacks names the backend uses (TRT_API): Foo.bar (tensorrt has no 'Foo'); "
                      "ITimingCache.query (tensorrt.ITimingCache has no 'query')")


def test_trt_api_matches_the_source() -> None:
    assert {"trt.py", "trt_build.py", "trt_runtime.py"} <= {p.name for p in trt_surface.TRT_SOURCES}
    used = set().union(*(trt_surface.used_trt_names(p.read_text()) for p in trt_surface.TRT_SOURCES))
    declared = set(TRT_API)
    assert len(declared) == len(TRT_API), "TRT_API has duplicates"
    assert not used - declared, f"the backend uses TensorRT names missing from TRT_API: {sorted(used - declared)}"
    assert not declared - used, f"TRT_API lists names the backend no longer uses: {sorted(declared - used)}"


@pytest.mark.parametrize("source", trt_surface.TRT_SOURCES, ids=lambda p: p.name)
def test_trt_objects_are_held_only_in_declared_variables(source: Path) -> None:
    """Results of TensorRT calls must land in TRT_OBJECTS variables, or their attribute uses escape the check."""
    strays = trt_surface.stray_trt_objects(source.read_text())
    assert not strays, f"{source.name}: TensorRT objects held outside TRT_OBJECTS' names: {strays}"


def test_surface_checker_sees_every_kind_of_use() -> None:
    """The AST checker itself: chains, object attributes, self attributes and overridden methods."""
    src = ("x = trt.BuilderFlag.TF32\nconfig.clear_flag(x)\nself._engine.num_io_tensors\n"
           "class L(trt.ILogger):\n    def log(self): pass\nother.thing\ncache.combine(disk_cache, False)\n")
    assert trt_surface.used_trt_names(src) == {"BuilderFlag.TF32", "IBuilderConfig.clear_flag",
                                               "ICudaEngine.num_io_tensors", "ILogger", "ILogger.log",
                                               "ITimingCache.combine"}
    assert trt_surface.stray_trt_objects("plan = builder.build_serialized_network(network, config)\n"
                                         "blob = engine.serialize()\nok = context.execute_async_v3(0)\n") == [
        "line 2: blob"]


# --------------------------------------------------------------------------- shared by the builds below


def _tiny_onnx(path: Path, *, precision: str = "fp32", io: str = "fp32", size: int = 16) -> Any:
    """A 2-layer conv net exported to ONNX with resdsl's I/O names and a dynamic batch, made float16 inside by
    resdsl's own fp16 pass for ``precision="fp16"`` (float16 I/O too for ``io="fp16"``); returns the module."""
    import onnx
    import torch
    from torch import nn

    from resdsl.passes.fp16 import to_float16

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, stride=2, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    if precision == "fp16":
        onnx.save(to_float16(onnx.load(path), keep_io_fp32=io == "fp32"), path)
    return model


def _onnx_io_dtypes(path: Path) -> list[str]:
    """The ONNX file's own input and output element types, read with onnx (the oracle for the I/O dtype)."""
    import onnx

    graph = onnx.load(path).graph
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}
    return [names[v.type.tensor_type.elem_type] for v in (*graph.input, *graph.output)]


def _temporaries(root: Path) -> list[Path]:
    """Files left by an interrupted atomic write: resdsl.atomic.write_bytes_atomic writes ``.NAME.XXXXXXXX``
    beside ``NAME`` and renames it, so nothing hidden should remain."""
    return sorted(p for p in root.rglob(".*") if p.is_file())


def _build(onnx_path: Path, engine_path: Path, *, batch: str = "1:8:32", precision: str = "fp32", io: str = "fp32",
           **options: Any) -> dict[str, Any]:
    return trt_build.build_engine(onnx_path, engine_path, BatchProfile.parse(batch), TrtOptions(**options),
                                  precision=precision, io=io)


# --------------------------------------------------------------------------- real builds (GPU + TensorRT)


@pytest.fixture(scope="module")
def trt_env() -> TrtEnvironment:
    try:
        return trt_build.environment()
    except BackendUnavailable as exc:
        pytest.skip(f"needs TensorRT's libraries and an NVIDIA GPU: {exc}")


@pytest.mark.trt
def test_build_and_run_fp32(trt_env: TrtEnvironment, tmp_path: Path) -> None:
    import torch

    model = _tiny_onnx(tmp_path / "m.onnx")
    opts: dict[str, Any] = {"batch": "1:2:4", "workspace_mib": 256, "opt_level": 1, "timing_cache": tmp_path / "cache"}
    info = _build(tmp_path / "m.onnx", tmp_path / "m.engine", **opts)
    assert info["trt_version"] == trt_env.trt_version and info["compute_capability"] == trt_env.compute_capability
    assert info["options"]["tf32"] is False and info["options"]["profile"] == "1:2:4"
    assert info["timing_cache_status"] == "new" and Path(info["options"]["timing_cache"]).is_file()
    assert (tmp_path / "m.engine").stat().st_size == info["engine_bytes"]
    assert not _temporaries(tmp_path), "atomic writes left temporary files behind"
    check_engine_compatible(info, trt_env)

    again = _build(tmp_path / "m.onnx", tmp_path / "m2.engine", **opts)
    assert again["timing_cache_status"] == "reused"

    runner = trt_runtime.TrtRunner(tmp_path / "m.engine", sha256=info["engine_sha256"])
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = runner(x)
    assert got.shape == (3, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # TF32 off: fp32 accuracy
    np.testing.assert_allclose(runner(torch.from_numpy(x).cuda()), want, rtol=1e-4, atol=1e-4)
    for bad in (np.zeros((5, 3, 16, 16), np.float32), np.zeros((1, 3, 8, 8), np.float32)):
        with pytest.raises(InputError, match=r"N in 1\.\.4"):
            runner(bad)
    with pytest.raises(InputError, match="SHA-256"):
        trt_runtime.TrtRunner(tmp_path / "m.engine", sha256="0" * 64)


@pytest.mark.trt
@pytest.mark.parametrize("io", ["fp32", "fp16"])
def test_build_and_run_fp16(trt_env: TrtEnvironment, tmp_path: Path, io: str) -> None:
    """fp16 inside, with fp32 I/O (the default) or fp16 I/O: TensorRT takes both."""
    import torch

    model = _tiny_onnx(tmp_path / "h.onnx", precision="fp16", io=io)
    info = _build(tmp_path / "h.onnx", tmp_path / "h.engine", batch="2", precision="fp16", io=io, workspace_mib=256)
    assert (info["options"]["precision"], info["options"]["io"]) == ("fp16", io)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(trt_runtime.TrtRunner(tmp_path / "h.engine")(x), want, rtol=2e-2, atol=2e-2)


@pytest.mark.trt
def test_build_refuses_mismatched_models_and_options(trt_env: TrtEnvironment, tmp_path: Path) -> None:
    _tiny_onnx(tmp_path / "h.onnx", precision="fp16", io="fp16")
    with pytest.raises(OptionError, match=r"h\.onnx takes 'input' as fp16 and gives 'logits' as fp16"):
        _build(tmp_path / "h.onnx", tmp_path / "x.engine", precision="fp16", io="fp32")
    with pytest.raises(InputError, match="no such ONNX file"):
        _build(tmp_path / "nope.onnx", tmp_path / "x.engine")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"garbage\.onnx: TensorRT could not parse this ONNX model: "):
        _build(tmp_path / "garbage.onnx", tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()


# --------------------------------------------------------------------------- build path against a stand-in TensorRT
# tests/fake_tensorrt.py behaves as TensorRT documents for the calls build_engine makes and records what it was
# given, so these run build_engine's own logic (options, profile, I/O dtypes, timing cache, atomic writes,
# refusals) here. They assert on what resdsl does and says, not on the stand-in's own strings.

GPU = ("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    from . import fake_tensorrt

    monkeypatch.setattr(trt_build, "_import_trt", lambda: fake_tensorrt)
    monkeypatch.setattr(trt_build, "_require_gpu", lambda: GPU)
    return fake_tensorrt


def _engine(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes()))


def test_build_engine_hands_the_options_to_tensorrt(fake_trt: Any, tmp_path: Path) -> None:
    import hashlib

    _tiny_onnx(tmp_path / "m.onnx")
    opts: dict[str, Any] = {"batch": "1:2:4", "workspace_mib": 256, "opt_level": 1, "timing_cache": tmp_path / "cache"}
    info = _build(tmp_path / "m.onnx", tmp_path / "m.engine", **opts)
    engine = _engine(tmp_path / "m.engine")
    assert engine["strongly_typed"] and engine["pools"] == {"workspace": 256 << 20} and engine["opt_level"] == 1
    assert engine["builder_flags"] == []  # TF32 (on by default in TensorRT) cleared; not version-compatible
    assert engine["profiles"] == [{"input": [[1, 3, 16, 16], [2, 3, 16, 16], [4, 3, 16, 16]]}]
    blob = (tmp_path / "m.engine").read_bytes()
    assert info["engine_sha256"] == hashlib.sha256(blob).hexdigest() and info["engine_bytes"] == len(blob)
    env = TrtEnvironment(fake_trt.__version__, *GPU)
    assert (info["trt_version"], info["gpu"], info["compute_capability"]) == (env.trt_version, *GPU)
    assert info["options"] == {"workspace_mib": 256, "opt_level": 1, "tf32": False, "version_compatible": False,
                               "profile": "1:2:4", "precision": "fp32", "io": "fp32",
                               "timing_cache": str(tmp_path / "cache" / f"{timing_cache_key(TrtOptions(), 'fp32', env)}"
                                                                        ".timing-cache")}
    assert info["input_chw"] == [3, 16, 16] and info["timing_cache_status"] == "new"
    assert info["timing_cache_key"] == timing_cache_key(TrtOptions(), "fp32", env)
    assert Path(info["options"]["timing_cache"]).is_file()
    assert not _temporaries(tmp_path), "atomic writes left temporary files behind"
    check_engine_compatible(info, env)

    assert _build(tmp_path / "m.onnx", tmp_path / "m2.engine", **opts)["timing_cache_status"] == "reused"
    info = _build(tmp_path / "m.onnx", tmp_path / "m3.engine", **opts, tf32=True, version_compatible=True)
    assert _engine(tmp_path / "m3.engine")["builder_flags"] == ["tf32", "version_compatible"]
    assert info["timing_cache_status"] == "new" and info["timing_cache_key"].endswith("-tf32-vc")  # its own file


@pytest.mark.parametrize("cache", ["garbage", "other device", "other version"])
def test_unusable_timing_cache_is_replaced(fake_trt: Any, tmp_path: Path, cache: str) -> None:
    _tiny_onnx(tmp_path / "m.onnx")
    env = TrtEnvironment(fake_trt.__version__, *GPU)
    cache_file = tmp_path / "cache" / f"{timing_cache_key(TrtOptions(), 'fp32', env)}.timing-cache"
    cache_file.parent.mkdir()
    stale = {"garbage": None, "other device": fake_trt.ITimingCache("another GPU", {"old": "x"}),
             "other version": fake_trt.ITimingCache(fake_trt.DEVICE, {"old": "x"}, "10.16.1.11")}[cache]
    cache_file.write_bytes(b"garbage" if stale is None else stale.serialize())
    info = _build(tmp_path / "m.onnx", tmp_path / "m.engine", timing_cache=tmp_path / "cache")
    assert info["timing_cache_status"] == "discarded"
    written = fake_trt.read_cache(cache_file.read_bytes())
    assert (written.device, written.version) == (fake_trt.DEVICE, fake_trt.__version__) and "old" not in written.entries


@pytest.mark.parametrize(("precision", "io"), [("fp32", "fp32"), ("fp16", "fp32"), ("fp16", "fp16")])
def test_build_takes_the_models_io_dtype(fake_trt: Any, tmp_path: Path, precision: str, io: str) -> None:
    """``--precision fp16`` keeps fp32 inputs and outputs unless ``--io fp16``; each combination builds."""
    _tiny_onnx(tmp_path / "m.onnx", precision=precision, io=io)
    assert _onnx_io_dtypes(tmp_path / "m.onnx") == [io, io]  # what the stand-in's network will carry
    info = _build(tmp_path / "m.onnx", tmp_path / "m.engine", precision=precision, io=io)
    assert (info["options"]["precision"], info["options"]["io"]) == (precision, io)
    assert (tmp_path / "m.engine").stat().st_size == info["engine_bytes"]
    numpy_names = {"fp32": "float32", "fp16": "float16"}  # the stand-in's network carries the file's own types
    assert [t[2] for t in _engine(tmp_path / "m.engine")["io"]] == [numpy_names[io], numpy_names[io]]


def test_stand_in_combines_timing_caches_as_tensorrt_documents(fake_trt: Any) -> None:
    """ITimingCache.combine: appends the input's entries, skips conflicting ones, and combines nothing (returning
    False) across TensorRT versions, or across devices unless ignore_mismatch."""
    mine = fake_trt.ITimingCache(fake_trt.DEVICE, {"k1": "mine"})
    assert mine.combine(fake_trt.ITimingCache(fake_trt.DEVICE, {"k1": "theirs", "k2": "theirs"}), False)
    assert mine.entries == {"k1": "mine", "k2": "theirs"}
    assert not mine.combine(fake_trt.ITimingCache(fake_trt.DEVICE, {"k3": "x"}, "10.16.1.11"), True)
    assert not mine.combine(fake_trt.ITimingCache("another GPU", {"k4": "x"}), False)
    assert mine.combine(fake_trt.ITimingCache("another GPU", {"k4": "x"}), True)
    assert set(mine.entries) == {"k1", "k2", "k4"}


@pytest.mark.parametrize(("model_io", "io"), [("fp16", "fp32"), ("fp32", "fp16")])
def test_build_refuses_another_io_dtype(fake_trt: Any, tmp_path: Path, model_io: str, io: str) -> None:
    _tiny_onnx(tmp_path / "m.onnx", precision="fp16", io=model_io)
    with pytest.raises(OptionError) as info:
        _build(tmp_path / "m.onnx", tmp_path / "m.engine", precision="fp16", io=io)
    msg = info.value.render({"io": "--io"})
    assert msg == (f"--io {io}: {tmp_path / 'm.onnx'} takes 'input' as {model_io} and gives 'logits' as {model_io}, "
                   f"so it cannot make an engine with {io} inputs and outputs; the I/O dtype is fixed when the ONNX "
                   f"model is exported, so give --io {model_io} for this model, or export it again with --io {io}")
    assert str(info.value).startswith(f"CompileOptions.io {io}: ") and not (tmp_path / "m.engine").exists()


def test_build_checks_the_output_dtype_too(fake_trt: Any, tmp_path: Path) -> None:
    """A model whose input is fp32 but whose logits are fp16 serves neither I/O dtype."""
    import onnx

    _tiny_onnx(tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    last = next(n for n in proto.graph.node if "logits" in n.output)
    last.output[:] = ["logits_fp32"]
    proto.graph.node.append(onnx.helper.make_node("Cast", ["logits_fp32"], ["logits"], to=onnx.TensorProto.FLOAT16))
    proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(proto, tmp_path / "mixed.onnx")
    assert _onnx_io_dtypes(tmp_path / "mixed.onnx") == ["fp32", "fp16"]
    for io in ("fp32", "fp16"):
        with pytest.raises(OptionError) as info:
            _build(tmp_path / "mixed.onnx", tmp_path / "m.engine", precision="fp16", io=io)
        assert info.value.render({"io": "--io"}).endswith(
            "takes 'input' as fp32 and gives 'logits' as fp16, so it cannot make an engine with "
            f"{io} inputs and outputs; the I/O dtype is fixed when the ONNX model is exported, so export it "
            f"again with --io {io}")


def test_build_refuses_bad_precision_and_io(fake_trt: Any, tmp_path: Path) -> None:
    for kwargs, field in (({"precision": "int4"}, "precision"), ({"io": "bf16"}, "io"), ({"io": "int8"}, "io")):
        with pytest.raises(OptionError, match=rf"CompileOptions\.{field} '\w+'.*: the TensorRT backend builds"):
            _build(tmp_path / "m.onnx", tmp_path / "m.engine", **kwargs)


def test_build_engine_refusals(fake_trt: Any, tmp_path: Path) -> None:
    import onnx

    _tiny_onnx(tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a static batch of 2
    onnx.save(proto, tmp_path / "static.onnx")
    for node in proto.graph.node:
        node.input[:] = ["x" if i == "input" else i for i in node.input]
    proto.graph.input[0].name = "x"
    onnx.save(proto, tmp_path / "renamed.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
        ("nope.onnx", {}, InputError, r"nope\.onnx: no such ONNX file; export the model first"),
        ("garbage.onnx", {}, InputError, r"garbage\.onnx: TensorRT could not parse this ONNX model: (?!no details)"),
        ("static.onnx", {}, OptionError, r"CompileOptions\.batch 1:8:32: \S*static\.onnx fixes the batch size at 2, "
                                         r"so .*give CompileOptions\.batch 2"),
        ("renamed.onnx", {}, InputError, r"expected input 'input'.*found \[\('x'"),
        ("m.onnx", {"workspace_mib": 1}, InputError, r"m\.onnx: TensorRT failed to build an engine \(batch 1:8:32, "
                                                     r"workspace 1 MiB\); TensorRT said: .+; a larger workspace limit"),
    ]
    for name, options, error, match in cases:
        with pytest.raises(error, match=match):
            _build(tmp_path / name, tmp_path / "x.engine", **options)
        assert not (tmp_path / "x.engine").exists(), name
    _build(tmp_path / "static.onnx", tmp_path / "s.engine", batch="2")
    assert _engine(tmp_path / "s.engine")["profiles"] == [{"input": [[2, 3, 16, 16]] * 3}]


def test_unwritable_timing_cache_is_refused_before_building(fake_trt: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_onnx(tmp_path / "m.onnx")
    (tmp_path / "file").write_text("")  # a directory inside a file cannot be made
    builds: list[Any] = []
    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", lambda *a: builds.append(a))
    with pytest.raises(OptionError, match=r"TrtOptions\.timing_cache \S+file/cache: cannot write the timing cache "
                                          r"there \(Not a directory\); give a writable directory"):
        _build(tmp_path / "m.onnx", tmp_path / "m.engine", timing_cache=tmp_path / "file" / "cache")
    assert builds == [] and not (tmp_path / "m.engine").exists()


def test_concurrent_builds_keep_both_timing_cache_entries(fake_trt: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds sharing one timing-cache directory, both started before either finished: each must find
    the other's timing entries in the cache afterwards (locked read-combine-write), not just its own."""
    for name, size in (("a", 16), ("b", 8)):  # two input shapes: two different timing entries
        _tiny_onnx(tmp_path / f"{name}.onnx", size=size)
    alone = {}  # the oracle: the entries each build adds on its own
    for name in "ab":
        info = _build(tmp_path / f"{name}.onnx", tmp_path / f"{name}-alone.engine", timing_cache=tmp_path / name)
        alone[name] = set(fake_trt.read_cache(Path(info["options"]["timing_cache"]).read_bytes()).entries)
    assert alone["a"] and alone["b"] and alone["a"] != alone["b"]

    barrier = threading.Barrier(2, timeout=60)
    build, serialize = fake_trt.Builder.build_serialized_network, fake_trt.ITimingCache.serialize

    def build_together(self: Any, network: Any, config: Any) -> Any:
        barrier.wait()  # both builds have read the (still empty) cache directory before either writes back
        return build(self, network, config)

    def slow_serialize(self: Any) -> bytes:
        time.sleep(0.3)  # as serialising a large cache takes a while: any unlocked write-back would interleave
        return bytes(serialize(self))

    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", build_together)
    monkeypatch.setattr(fake_trt.ITimingCache, "serialize", slow_serialize)
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = _build(tmp_path / f"{name}.onnx", tmp_path / f"{name}.engine",
                                   timing_cache=tmp_path / "shared")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [results[n]["timing_cache_status"] for n in "ab"] == ["new", "new"]  # neither saw the other's cache
    cache_file = Path(results["a"]["options"]["timing_cache"])
    assert cache_file == Path(results["b"]["options"]["timing_cache"])
    assert set(fake_trt.read_cache(cache_file.read_bytes()).entries) == alone["a"] | alone["b"]
    assert not _temporaries(tmp_path)


def test_a_backbone_over_a_size_range_reaches_the_builder(fake_trt: Any, tmp_path: Path) -> None:
    """A backbone compiled with symbolic height and width: the one profile spans the batch range and the size
    range, every feature map is a network output, and a symbolic-size model without a range (or a fixed-size
    model with one) is refused naming --size."""
    from resdsl.backends import onnx as ob
    from resdsl.backends.torch import build
    from resdsl.options import SizeProfile
    from resdsl.spec import from_resolved, load

    base = load(SPECS / "backbones" / "timm-resnet50d-os16.yaml")
    doc = {**base.resolved, "stages": [{**s, "blocks": 1} for s in base.resolved["stages"]], "expect": None}
    model = build(from_resolved({k: v for k, v in doc.items() if v is not None}, base.source)).eval()
    ob.export(model, tmp_path / "bb.onnx", dynamic_size=True)
    size = SizeProfile.parse("320x320:800x1216:1344x1344")
    info = trt_build.build_engine(tmp_path / "bb.onnx", tmp_path / "bb.engine", BatchProfile.parse("1:2:4"),
                                  TrtOptions(), precision="fp32", io="fp32", size=size)
    engine = _engine(tmp_path / "bb.engine")
    assert engine["profiles"] == [{"input": [[1, 3, 320, 320], [2, 3, 800, 1216], [4, 3, 1344, 1344]]}]
    assert [(n, shape) for n, shape, _ in engine["io"]] == [
        ("input", [-1, 3, -1, -1]), ("conv2_x", [-1, 256, -1, -1]), ("conv3_x", [-1, 512, -1, -1]),
        ("conv4_x", [-1, 1024, -1, -1]), ("conv5_x", [-1, 2048, -1, -1])]
    assert info["options"]["size"] == "320x320:800x1216:1344x1344" and info["input_chw"] == [3, -1, -1]
    with pytest.raises(OptionError, match=r"CompileOptions.size not given: .* symbolic height and width"):
        trt_build.build_engine(tmp_path / "bb.onnx", tmp_path / "x.engine", BatchProfile.parse("1:2:4"),
                               TrtOptions(), precision="fp32", io="fp32")
    _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(OptionError, match=r"CompileOptions.size 320x320:800x1216:1344x1344: .* fixes the input at "
                                          r"16x16"):
        trt_build.build_engine(tmp_path / "m.onnx", tmp_path / "y.engine", BatchProfile.parse("1:2:4"),
                               TrtOptions(), precision="fp32", io="fp32", size=size)
    assert not (tmp_path / "x.engine").exists() and not (tmp_path / "y.engine").exists()
