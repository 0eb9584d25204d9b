"""Tests of the TensorRT backend.

Four kinds:

* the pure parts (``--batch`` parsing, option validation, the timing-cache key, the engine
  compatibility rules, the BackendUnavailable messages), which run everywhere;
* the API-surface test: every TensorRT name the backend uses must exist in the real TensorRT 11
  Python bindings (``pip install tensorrt_cu13_bindings==11.4.0.106``). Those bindings link against
  ``libnvinfer.so.11`` and friends, which only NVIDIA's index serves, so the test compiles stub
  libraries with those sonames and symbols (gcc), loads them RTLD_GLOBAL and imports the bindings
  in a subprocess (the stubs never enter the pytest process, where a real TensorRT may be wanted).
  The list of names is :data:`resdsl.backends.trt.TRT_API`; a second test parses ``trt.py`` with
  ``ast`` so that list cannot drift from the code;
* build_engine against tests/fake_tensorrt.py, a stand-in that records what TensorRT is handed (options,
  profile, flags, timing cache) and refuses as TensorRT documents, so the build logic runs here;
* end-to-end builds and runs, marked ``trt``, which need TensorRT's libraries and an NVIDIA GPU.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resdsl.backends import trt as backend
from resdsl.backends.trt import (
    TRT_API,
    TRT_OBJECTS,
    BatchProfile,
    BuildOptions,
    TrtEnvironment,
    check_engine_compatible,
    parse_batch,
    timing_cache_key,
)
from resdsl.errors import BackendUnavailable, InputError

TRT_SOURCE = Path(backend.__file__)
BINDINGS_DIST = "tensorrt_cu13_bindings"

# --------------------------------------------------------------------------- --batch


@pytest.mark.parametrize(("text", "expected"), [
    ("8", (8, 8, 8)), ("1", (1, 1, 1)), ("1:8:32", (1, 8, 32)), (" 2:2:4 ", (2, 2, 4)), ("4:4:4", (4, 4, 4)),
])
def test_parse_batch(text: str, expected: tuple[int, int, int]) -> None:
    p = parse_batch(text)
    assert (p.min, p.opt, p.max) == expected
    assert parse_batch(str(p)) == p


@pytest.mark.parametrize("text", ["", "a", "1.5", "8x", "1:8", "1:2:3:4", "1::3", "-1", "+3", "1:-2:3", "1e3", "٣"])
def test_parse_batch_rejects_non_integers(text: str) -> None:
    with pytest.raises(InputError, match=r"--batch .*N.*MIN:OPT:MAX"):
        parse_batch(text)


@pytest.mark.parametrize(("text", "match"), [
    ("0", ">= 1"), ("0:1:2", ">= 1"), ("8:1:32", "MIN <= OPT <= MAX"), ("1:32:8", "MIN <= OPT <= MAX"),
    ("4:2:2", "MIN <= OPT <= MAX"),
])
def test_parse_batch_rejects_bad_ranges(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_batch(text)


def test_batch_profile_rejects_non_ints() -> None:
    with pytest.raises(InputError):
        BatchProfile(True, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        BatchProfile(1, 2.0, 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- BuildOptions

PROFILE = BatchProfile(1, 8, 32)


def test_build_options_defaults() -> None:
    o = BuildOptions(PROFILE)
    assert (o.precision, o.workspace_mib, o.opt_level, o.timing_cache, o.tf32, o.version_compatible) == (
        "fp32", 4096, 3, None, False, False)
    assert BuildOptions(PROFILE, timing_cache="cache").timing_cache == Path("cache")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tf32 = True  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "int8"}, "--precision 'int8'.*fp32 or fp16"),
    ({"precision": "bf16"}, "--precision 'bf16'"),
    ({"precision": "FP16"}, "--precision 'FP16'"),
    ({"workspace_mib": 0}, "--workspace 0"),
    ({"workspace_mib": -5}, "--workspace -5"),
    ({"workspace_mib": 1.5}, "--workspace 1.5"),
    ({"workspace_mib": True}, "--workspace True"),
    ({"opt_level": 6}, "--opt-level 6.*0.*5"),
    ({"opt_level": -1}, "--opt-level -1"),
    ({"opt_level": "3"}, "--opt-level '3'"),
    ({"profile": (1, 8, 32)}, "BatchProfile"),
])
def test_build_options_validation(kwargs: dict[str, Any], match: str) -> None:
    args = {"profile": PROFILE, **kwargs}
    with pytest.raises(InputError, match=match):
        BuildOptions(**args)


@pytest.mark.parametrize("level", range(6))
def test_build_options_accepts_all_opt_levels(level: int) -> None:
    assert BuildOptions(PROFILE, opt_level=level).opt_level == level


# --------------------------------------------------------------------------- timing cache key

KEY_ENV = ("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0")


def _key(trt_version: str = KEY_ENV[0], gpu: str = KEY_ENV[1], cc: str = KEY_ENV[2], **options: Any) -> str:
    return timing_cache_key(BuildOptions(**{"profile": PROFILE, **options}), trt_version, gpu, cc)


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
    {"workspace_mib": 512}, {"opt_level": 5}, {"opt_level": 0}, {"profile": BatchProfile(4, 4, 4)},
    {"timing_cache": Path("/elsewhere")},
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
        backend.environment()
    _assert_install_hint(info.value)
    for call in (lambda: backend.build_engine("m.onnx", "m.engine", BuildOptions(PROFILE)),
                 lambda: backend.TrtRunner("m.engine")):
        with pytest.raises(BackendUnavailable):
            call()


def test_bindings_without_libraries_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this machine shows with ``tensorrt_cu13_bindings`` installed but no libnvinfer."""
    _block_tensorrt(monkeypatch, "libnvonnxparser.so.11: cannot open shared object file: No such file or directory")
    with pytest.raises(BackendUnavailable, match=r"bindings are installed but .*libnvonnxparser\.so\.11") as info:
        backend.environment()
    _assert_install_hint(info.value)


def test_missing_gpu_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(backend, "_import_trt", lambda: type("FakeTrt", (), {"__version__": "11.4.0.106"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match=r"needs an NVIDIA GPU.*driver") as info:
        backend.environment()
    assert info.value.exit_code == 3


# --------------------------------------------------------------------------- API surface vs TensorRT 11

_STUB_LIBS = {  # soname prefix -> C definitions of the symbols the bindings import from it
    "libnvinfer": [
        "void *createInferBuilder_INTERNAL(void *logger, int version) { return 0; }",
        "void *createInferRuntime_INTERNAL(void *logger, int version) { return 0; }",
        "void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return 0; }",
        "void *getPluginRegistry(void) { return 0; }",
        "void *getBuilderPluginRegistry(int capability) { return 0; }",
    ],
    "libnvinfer_plugin": ["int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }"],
    "libnvonnxparser": [
        "void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return 0; }",
        "void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return 0; }",
        "int getNvOnnxParserVersion(void) { return 0; }",
    ],
}

# Run in a fresh interpreter: load the stubs, import the bindings through the backend's own import
# path (with the ``tensorrt`` package blocked, so the ``tensorrt_bindings`` fallback is what runs),
# resolve every name, and check the logger subclass and the flag arithmetic the backend relies on.
_PROBE = r"""
import ctypes, json, os, sys
for lib in json.loads(sys.argv[1]):
    ctypes.CDLL(lib, mode=os.RTLD_GLOBAL)
sys.modules["tensorrt"] = None
from resdsl.backends import trt as backend
trt = backend._import_trt()
missing = []
for name in backend.TRT_API:
    obj = trt
    for part in name.split("."):
        if not hasattr(obj, part):
            missing.append(name)
            break
        obj = getattr(obj, part)
logger = backend._make_logger(trt)
assert isinstance(logger, trt.ILogger)
logger.log(trt.ILogger.Severity.ERROR, "boom")
assert logger.messages == ["boom"], logger.messages
assert 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) >= 1
print(json.dumps({"version": str(trt.__version__), "module": trt.__name__, "missing": missing}))
"""


@pytest.fixture(scope="session")
def trt_stubs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Stub ``libnvinfer.so.N`` etc. (N = the installed bindings' major version), built with gcc."""
    if importlib.util.find_spec("tensorrt_bindings") is None:
        pytest.skip(f"TensorRT's Python bindings are not installed: pip install '{BINDINGS_DIST}==11.4.0.106'")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to compile the stub TensorRT libraries the bindings link against")
    try:
        major = importlib.metadata.version(BINDINGS_DIST).split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"tensorrt_bindings is installed, but not from {BINDINGS_DIST} (the TensorRT 11 bindings)")
    out = tmp_path_factory.mktemp("trt-stubs")
    libs = []
    for stem, defs in _STUB_LIBS.items():
        soname = f"{stem}.so.{major}"
        src = out / f"{stem}.c"
        src.write_text("\n".join(defs) + "\n")
        subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}", str(src)],
                       check=True, capture_output=True, text=True)
        libs.append(str(out / soname))
    return libs


@pytest.fixture(scope="session")
def trt_probe(trt_stubs: list[str]) -> dict[str, Any]:
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(trt_stubs)], capture_output=True, text=True,
                          env=env, timeout=120)
    if proc.returncode != 0:
        pytest.fail("importing the TensorRT bindings over the stub libraries failed; if it names an undefined "
                    f"symbol, add it to _STUB_LIBS:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_trt_api_exists_in_tensorrt_bindings(trt_probe: dict[str, Any], record_property: Any) -> None:
    record_property("tensorrt_version", trt_probe["version"])
    assert trt_probe["module"] == "tensorrt_bindings"
    assert trt_probe["version"].split(".")[0] == "11", f"expected the TensorRT 11 bindings, got {trt_probe}"
    assert trt_probe["missing"] == [], (
        f"TensorRT {trt_probe['version']} lacks names resdsl/backends/trt.py uses: {trt_probe['missing']}")


def _chain(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]``; None for anything that is not a pure name/attribute chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _trt_object(node: ast.expr) -> str | None:
    """The TensorRT class of ``node`` when it is a variable (or ``self._variable``) named in TRT_OBJECTS."""
    if isinstance(node, ast.Name):
        return TRT_OBJECTS.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return TRT_OBJECTS.get(node.attr.lstrip("_"))
    return None


def _used_trt_names(source: str) -> set[str]:
    """Every TensorRT name trt.py uses: ``trt.X.Y`` chains, attributes of TensorRT objects, and
    methods overridden in subclasses of TensorRT classes."""
    tree = ast.parse(source)
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain and chain[0] == "trt":
                used.add(".".join(chain[1:]))
        if isinstance(node, ast.Attribute) and (cls := _trt_object(node.value)):
            used.add(f"{cls}.{node.attr}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                chain = _chain(base)
                if chain and chain[0] == "trt":
                    used.add(".".join(chain[1:]))
                    used.update(f"{'.'.join(chain[1:])}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef))
    return used


def test_trt_api_matches_the_source() -> None:
    used = _used_trt_names(TRT_SOURCE.read_text())
    declared = set(TRT_API)
    assert len(declared) == len(TRT_API), "TRT_API has duplicates"
    assert not used - declared, f"trt.py uses TensorRT names missing from TRT_API: {sorted(used - declared)}"
    assert not declared - used, f"TRT_API lists names trt.py no longer uses: {sorted(declared - used)}"


def test_trt_objects_are_held_only_in_declared_variables() -> None:
    """Results of TensorRT calls must land in TRT_OBJECTS variables, or their attribute uses escape the check."""
    plain_values = {"ok"}  # booleans returned by TensorRT calls
    tree = ast.parse(TRT_SOURCE.read_text())
    strays = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        from_trt = (isinstance(func, ast.Attribute) and ((_chain(func) or [""])[0] == "trt"
                                                          or _trt_object(func.value) is not None))
        for target in node.targets if from_trt else []:
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "?").lstrip("_")
            if name not in TRT_OBJECTS and name not in plain_values:
                strays.append(f"line {node.lineno}: {ast.unparse(target)}")
    assert not strays, f"TensorRT objects held outside TRT_OBJECTS' names: {strays}"


def test_surface_checker_sees_every_kind_of_use() -> None:
    """The AST checker itself: chains, object attributes, self attributes and overridden methods."""
    src = ("x = trt.BuilderFlag.TF32\nconfig.clear_flag(x)\nself._engine.num_io_tensors\n"
           "class L(trt.ILogger):\n    def log(self): pass\nother.thing\n")
    assert _used_trt_names(src) == {"BuilderFlag.TF32", "IBuilderConfig.clear_flag", "ICudaEngine.num_io_tensors",
                                    "ILogger", "ILogger.log"}


# --------------------------------------------------------------------------- real builds (GPU + TensorRT)


@pytest.fixture(scope="module")
def trt_env() -> TrtEnvironment:
    try:
        return backend.environment()
    except BackendUnavailable as exc:
        pytest.skip(f"needs TensorRT's libraries and an NVIDIA GPU: {exc}")


def _tiny_onnx(path: Path, dtype: Any = None) -> Any:
    """A 2-layer conv net exported to ONNX with resdsl's I/O names and a dynamic batch; returns the module."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, stride=2, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model = model.to(dtype or torch.float32)
    x = torch.randn(2, 3, 16, 16, dtype=dtype or torch.float32)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return model


@pytest.mark.trt
def test_build_and_run_fp32(trt_env: TrtEnvironment, tmp_path: Path) -> None:
    import torch

    model = _tiny_onnx(tmp_path / "m.onnx")
    opts = BuildOptions(parse_batch("1:2:4"), workspace_mib=256, opt_level=1, timing_cache=tmp_path / "cache")
    info = backend.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", opts)
    assert info["trt_version"] == trt_env.trt_version and info["compute_capability"] == trt_env.compute_capability
    assert info["options"]["tf32"] is False and info["options"]["profile"] == "1:2:4"
    assert info["timing_cache_status"] == "new" and Path(info["options"]["timing_cache"]).is_file()
    assert (tmp_path / "m.engine").stat().st_size == info["engine_bytes"]
    assert not [p for p in tmp_path.rglob("*.tmp")], "atomic writes left temporary files behind"
    check_engine_compatible(info, trt_env)

    again = backend.build_engine(tmp_path / "m.onnx", tmp_path / "m2.engine", opts)
    assert again["timing_cache_status"] == "reused"

    runner = backend.TrtRunner(tmp_path / "m.engine", sha256=info["engine_sha256"])
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
        backend.TrtRunner(tmp_path / "m.engine", sha256="0" * 64)


@pytest.mark.trt
def test_build_and_run_fp16(trt_env: TrtEnvironment, tmp_path: Path) -> None:
    import torch

    model = _tiny_onnx(tmp_path / "h.onnx", torch.float16)
    info = backend.build_engine(tmp_path / "h.onnx", tmp_path / "h.engine",
                                BuildOptions(parse_batch("2"), precision="fp16", workspace_mib=256))
    assert info["options"]["precision"] == "fp16"
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = model.float()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.TrtRunner(tmp_path / "h.engine")(x), want, rtol=2e-2, atol=2e-2)


@pytest.mark.trt
def test_build_refuses_mismatched_models_and_options(trt_env: TrtEnvironment, tmp_path: Path) -> None:
    _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="input is fp32, not fp16"):
        backend.build_engine(tmp_path / "m.onnx", tmp_path / "x.engine", BuildOptions(PROFILE, precision="fp16"))
    with pytest.raises(InputError, match="no such ONNX file"):
        backend.build_engine(tmp_path / "nope.onnx", tmp_path / "x.engine", BuildOptions(PROFILE))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="could not parse"):
        backend.build_engine(tmp_path / "garbage.onnx", tmp_path / "x.engine", BuildOptions(PROFILE))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file"):
        backend.build_engine(tmp_path / "m.onnx", tmp_path / "x.engine",
                             BuildOptions(PROFILE, timing_cache=tmp_path / "file"))
    assert not (tmp_path / "x.engine").exists()


# --------------------------------------------------------------------------- build path against a stand-in TensorRT
# tests/fake_tensorrt.py behaves as TensorRT documents for the calls build_engine makes and records what it was
# given, so these run build_engine's own logic (options, profile, timing cache, atomic writes, refusals) here.

GPU = ("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    from . import fake_tensorrt

    monkeypatch.setattr(backend, "_import_trt", lambda: fake_tensorrt)
    monkeypatch.setattr(backend, "_require_gpu", lambda: GPU)
    return fake_tensorrt


def _engine(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes()))


def test_build_engine_hands_the_options_to_tensorrt(fake_trt: Any, tmp_path: Path) -> None:
    import hashlib

    _tiny_onnx(tmp_path / "m.onnx")
    opts = BuildOptions(parse_batch("1:2:4"), workspace_mib=256, opt_level=1, timing_cache=tmp_path / "cache")
    info = backend.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", opts)
    engine = _engine(tmp_path / "m.engine")
    assert engine["strongly_typed"] and engine["pools"] == {"workspace": 256 << 20} and engine["opt_level"] == 1
    assert engine["builder_flags"] == []  # TF32 (on by default in TensorRT) cleared; not version-compatible
    assert engine["profiles"] == [{"input": [[1, 3, 16, 16], [2, 3, 16, 16], [4, 3, 16, 16]]}]
    assert engine["io"] == [["input", [-1, 3, 16, 16], "float32"], ["logits", [-1, 5], "float32"]]
    blob = (tmp_path / "m.engine").read_bytes()
    assert info["engine_sha256"] == hashlib.sha256(blob).hexdigest() and info["engine_bytes"] == len(blob)
    assert (info["trt_version"], info["gpu"], info["compute_capability"]) == (fake_trt.__version__, *GPU)
    assert info["options"]["profile"] == "1:2:4" and info["input_chw"] == [3, 16, 16]
    key = timing_cache_key(opts, fake_trt.__version__, *GPU)
    assert info["timing_cache_key"] == key and info["timing_cache_status"] == "new"
    cache_file = tmp_path / "cache" / f"{key}.timing-cache"
    assert info["options"]["timing_cache"] == str(cache_file)
    assert cache_file.read_bytes().startswith(fake_trt.CACHE_MAGIC)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "atomic writes left temporary files"
    check_engine_compatible(info, TrtEnvironment(fake_trt.__version__, *GPU))

    assert backend.build_engine(tmp_path / "m.onnx", tmp_path / "m2.engine", opts)["timing_cache_status"] == "reused"
    wide = dataclasses.replace(opts, tf32=True, version_compatible=True)
    info = backend.build_engine(tmp_path / "m.onnx", tmp_path / "m3.engine", wide)
    assert _engine(tmp_path / "m3.engine")["builder_flags"] == ["tf32", "version_compatible"]
    assert info["timing_cache_status"] == "new" and info["timing_cache_key"] != key  # its own cache file


@pytest.mark.parametrize("cache", [b"garbage", b"other device"])
def test_unusable_timing_cache_is_replaced(fake_trt: Any, tmp_path: Path, cache: bytes) -> None:
    _tiny_onnx(tmp_path / "m.onnx")
    opts = BuildOptions(PROFILE, timing_cache=tmp_path / "cache")
    cache_file = tmp_path / "cache" / f"{timing_cache_key(opts, fake_trt.__version__, *GPU)}.timing-cache"
    cache_file.parent.mkdir()
    cache_file.write_bytes(cache if cache == b"garbage" else fake_trt.ITimingCache("another GPU", {}).serialize())
    info = backend.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", opts)
    assert info["timing_cache_status"] == "discarded"
    assert json.loads(cache_file.read_bytes()[len(fake_trt.CACHE_MAGIC):])["device"] == fake_trt.DEVICE


def test_fp16_graph_builds_as_fp16(fake_trt: Any, tmp_path: Path) -> None:
    import onnx

    from resdsl.passes.fp16 import to_float16

    _tiny_onnx(tmp_path / "m.onnx")
    onnx.save(to_float16(onnx.load(tmp_path / "m.onnx"), keep_io_fp32=False), tmp_path / "h.onnx")
    with pytest.raises(InputError, match=r"input is fp16, not fp32.*--precision fp32"):
        backend.build_engine(tmp_path / "h.onnx", tmp_path / "x.engine", BuildOptions(PROFILE))
    backend.build_engine(tmp_path / "h.onnx", tmp_path / "h.engine", BuildOptions(PROFILE, precision="fp16"))
    assert [t[2] for t in _engine(tmp_path / "h.engine")["io"]] == ["float16", "float16"]
    assert not (tmp_path / "x.engine").exists()


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
    (tmp_path / "file").write_text("")
    cases = [
        ("m.onnx", BuildOptions(PROFILE, precision="fp16"), r"input is fp32, not fp16.*--precision fp16"),
        ("nope.onnx", BuildOptions(PROFILE), "no such ONNX file"),
        ("garbage.onnx", BuildOptions(PROFILE), r"could not parse this ONNX model: ModelImporter"),
        ("m.onnx", BuildOptions(PROFILE, timing_cache=tmp_path / "file"), "is a file"),
        ("static.onnx", BuildOptions(PROFILE), r"fixed at 2 .*--batch 1:8:32 cannot be served; use --batch 2"),
        ("renamed.onnx", BuildOptions(PROFILE), r"expected input 'input'.*found \[\('x'"),
        ("m.onnx", BuildOptions(PROFILE, workspace_mib=1), r"failed to build.*TensorRT said: .*workspace.*larger "
                                                           r"--workspace"),
    ]
    for name, opts, match in cases:
        with pytest.raises(InputError, match=match):
            backend.build_engine(tmp_path / name, tmp_path / "x.engine", opts)
        assert not (tmp_path / "x.engine").exists(), name
    backend.build_engine(tmp_path / "static.onnx", tmp_path / "s.engine", BuildOptions(parse_batch("2")))
    assert _engine(tmp_path / "s.engine")["profiles"] == [{"input": [[2, 3, 16, 16]] * 3}]
