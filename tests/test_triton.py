"""``resdsl triton``: Triton Inference Server model repositories (resdsl/triton.py, resdsl/triton_cli.py), and
examples/triton/client.py.

Every config.pbtxt written is parsed by protobuf's own text-format parser into Triton's ``ModelConfig``
(``tritonclient.grpc.model_config_pb2``, the schema tritonserver reads), then compared field by field with
what the config was made from: the manifest, the files in the artefact, the ONNX graph itself, and the
optimisation profile recorded in the engine. trt artefacts are built against tests/fake_tensorrt.py (the
TensorRT stand-in of tests/test_trt_backend.py), so everything here runs without a GPU. Triton itself is not
run: there is no server, and no GPU, on the development machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from resdsl import manifest as manifest_io
from resdsl import triton
from resdsl.backends import trt_build
from resdsl.commands import dispatch
from resdsl.errors import InputError, OptionError
from resdsl.manifest import Batch, Manifest, Tensor
from resdsl.options import BatchProfile, CompileOptions, TrtOptions
from resdsl.triton import TritonOptions, model_config, write_repository
from resdsl.triton_cli import add_triton_command

from . import fake_tensorrt
from .conftest import ROOT, TINY_BACKBONE
from .test_trt_backend import GPU

SCHEMA_REASON = "Triton's config schema (model_config_pb2) ships with tritonclient: pip install 'tritonclient[grpc]'"
CLIENT = ROOT / "examples" / "triton" / "client.py"
SPEC = ("resdsl: 1\nname: NAME\ninput: {channels: 3, size: 16}\nblock: basic\nshortcut: A\n"
        "stem: {conv: {channels: 4, kernel: 3, stride: 1}}\nstages: [{width: 4, blocks: 1}]\nhead: {classes: 10}\n")
#: Triton platform -> the file its backend loads from the version directory (Triton's default model file names).
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
#: manifest dtype -> Triton's DataType enum name.
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


# --------------------------------------------------------------------------- artefacts and the schema


def _as_trt(onnx_dir: Path, out: Path) -> Path:
    """The onnx artefact turned into a trt one the way the trt target does it: an engine built from model.onnx
    (by the TensorRT stand-in) and the manifest's target, files and ``trt`` section, written and validated by
    resdsl.manifest.write."""
    m = manifest_io.read(onnx_dir)
    shutil.copytree(onnx_dir, out)
    (out / manifest_io.NAME).unlink()
    b = m.batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trt_build, "_import_trt", lambda: fake_tensorrt)
        mp.setattr(trt_build, "_require_gpu", lambda: GPU)
        info = trt_build.build_engine(out / "model.onnx", out / "model.engine", BatchProfile(b.min, b.opt, b.max),
                                      TrtOptions(workspace_mib=256), precision=m.precision, io="fp32")
    engine = manifest_io.file_entry(out / "model.engine")
    manifest_io.write(out, m.with_(name=f"{m.name}-trt", target="trt", files={**m.files, "model.engine": engine},
                                   sections={**m.sections, "trt": info}))
    return out


@pytest.fixture(scope="module")
def arts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny spec compiled to ONNX twice (``--batch 1:4:8`` and ``--batch 2``), and trt artefacts from both."""
    from resdsl.pipeline import compile_spec

    root = tmp_path_factory.mktemp("triton-artefacts")
    out = {}
    for key, batch in (("dyn", "1:4:8"), ("fix", "2")):
        spec = root / f"tiny-{key}.yaml"
        spec.write_text(SPEC.replace("NAME", f"tiny-{key}"))
        out[f"onnx-{key}"], _ = compile_spec(spec, CompileOptions(target="onnx", out=root / f"onnx-{key}",
                                                                   batch=batch, verify_batches=(2,)))
        out[f"trt-{key}"] = _as_trt(out[f"onnx-{key}"], root / f"trt-{key}")
    return {k: Path(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def schema() -> Any:
    pytest.importorskip("grpc", reason=SCHEMA_REASON)
    return pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=SCHEMA_REASON)


def parse(schema: Any, model_dir: Path) -> Any:
    from google.protobuf import text_format

    return text_format.Parse((model_dir / "config.pbtxt").read_text(encoding="utf-8"), schema.ModelConfig())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_model(schema: Any, model_dir: Path, artefact: Path) -> tuple[Any, Manifest]:
    """Parse ``model_dir``'s config against Triton's schema and check it against the artefact's manifest; return
    the parsed config and the manifest for further checks."""
    cfg, m = parse(schema, model_dir), manifest_io.read(artefact)
    assert cfg.name == m.name == model_dir.name
    model_file = MODEL_FILES[cfg.platform]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == sorted([model_file, "manifest.json"])
    source = "model.engine" if m.target == "trt" else "model.onnx"
    assert {"trt": "tensorrt_plan", "onnx": "onnxruntime_onnx"}[m.target] == cfg.platform
    assert _sha256(model_dir / "1" / model_file) == m.files[source].sha256  # the hashes travel with the model
    assert (model_dir / "1" / "manifest.json").read_bytes() == (artefact / "manifest.json").read_bytes()
    assert cfg.max_batch_size == (m.batch.max if m.batch.dynamic else 0)
    for got, want in ((cfg.input, m.inputs), (cfg.output, m.outputs)):
        assert [t.name for t in got] == [t.name for t in want]
        assert [schema.DataType.Name(t.data_type) for t in got] == [TRITON_TYPES[t.dtype] for t in want]
        symbolic = [[-1 if isinstance(d, str) else d for d in t.shape] for t in want]  # a varying height/width
        assert [list(t.dims) for t in got] == [s[1:] if m.batch.dynamic else s for s in symbolic]
    if cfg.HasField("dynamic_batching"):
        preferred = list(cfg.dynamic_batching.preferred_batch_size)
        assert preferred and preferred == sorted(set(preferred))
        assert all(m.batch.min <= n <= m.batch.max and n <= cfg.max_batch_size for n in preferred)
    return cfg, m


def _hidden(repo: Path) -> list[str]:
    """What an interrupted or unfinished write leaves in REPO (Triton does not skip hidden directories)."""
    return sorted(p.name for p in repo.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- configs against the schema


def test_onnx_fixed_and_dynamic_batch(arts: dict[str, Path], schema: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    written = write_repository([arts["onnx-dyn"], arts["onnx-fix"]], repo, TritonOptions())
    assert written == [repo / "tiny-dyn", repo / "tiny-fix"]
    dyn, m = check_model(schema, repo / "tiny-dyn", arts["onnx-dyn"])
    assert (m.batch.min, m.batch.opt, m.batch.max) == (1, 4, 8)
    assert dyn.max_batch_size == 8 and list(dyn.input[0].dims) == [3, 16, 16] and list(dyn.output[0].dims) == [10]
    assert list(dyn.dynamic_batching.preferred_batch_size) == [4, 8]  # the profile's opt and max
    assert dyn.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, schema.ModelInstanceGroup.Kind.Name(g.kind)) for g in dyn.instance_group] == [(1, "KIND_CPU")]
    assert not dyn.HasField("optimization")
    fix, _ = check_model(schema, repo / "tiny-fix", arts["onnx-fix"])
    assert fix.max_batch_size == 0 and list(fix.input[0].dims) == [2, 3, 16, 16] and list(fix.output[0].dims) == [2, 10]
    assert not fix.HasField("dynamic_batching")
    # an onnx model's version directory is itself a complete artefact: manifest, file and hash
    assert manifest_io.read(repo / "tiny-dyn" / "1").files == m.files
    assert _hidden(repo) == []


def test_onnx_config_matches_the_onnx_graph(arts: dict[str, Path], schema: Any, tmp_path: Path) -> None:
    """The oracle here is the model file itself: names, element types and shapes of its graph's inputs and outputs
    (a symbolic batch axis for a batching model, the full static shape otherwise)."""
    import onnx

    elem = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
    repo = tmp_path / "repo"
    for model in write_repository([arts["onnx-dyn"], arts["onnx-fix"]], repo, TritonOptions()):
        cfg = parse(schema, model)
        graph = onnx.load(model / "1" / "model.onnx").graph
        for got, values in ((cfg.input, graph.input), (cfg.output, graph.output)):
            assert [t.name for t in got] == [v.name for v in values]
            assert [schema.DataType.Name(t.data_type) for t in got] == [elem[v.type.tensor_type.elem_type]
                                                                         for v in values]
            for t, v in zip(got, values, strict=True):
                dims = v.type.tensor_type.shape.dim
                if cfg.max_batch_size > 0:
                    assert dims[0].dim_param and not dims[0].HasField("dim_value")
                    assert list(t.dims) == [d.dim_value for d in dims[1:]]
                else:
                    assert list(t.dims) == [d.dim_value for d in dims]


def test_trt_fixed_and_dynamic_batch(arts: dict[str, Path], schema: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    opts = TritonOptions(instances=2, cuda_graphs=True, max_queue_delay_us=500)
    write_repository([arts["trt-dyn"], arts["trt-fix"]], repo, opts)
    for key, name in (("trt-dyn", "tiny-dyn-trt"), ("trt-fix", "tiny-fix-trt")):
        cfg, m = check_model(schema, repo / name, arts[key])
        assert [(g.count, schema.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(2, "KIND_GPU")]
        assert cfg.optimization.cuda.graphs is True
        # the engine's own optimisation profile (what TensorRT was handed) bounds the batch Triton may send
        engine = json.loads((repo / name / "1" / "model.plan").read_bytes())
        shapes = engine["profiles"][0]["input"]  # [min, opt, max] shapes of the input
        (lo, opt, hi), chw = (s[0] for s in shapes), shapes[0][1:]
        if m.batch.dynamic:
            assert (lo, opt, hi) == (1, 4, 8) and cfg.max_batch_size == hi and list(cfg.input[0].dims) == chw
            assert list(cfg.dynamic_batching.preferred_batch_size) == [opt, hi]
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        else:
            assert lo == opt == hi == 2 and cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [2, *chw]
            assert not cfg.HasField("dynamic_batching")


def test_kind_and_dynamic_batching_options(arts: dict[str, Path], schema: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository([arts["onnx-dyn"]], repo, TritonOptions(kind="gpu", dynamic_batching=False))
    cfg, _ = check_model(schema, repo / "tiny-dyn", arts["onnx-dyn"])
    assert schema.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    assert cfg.max_batch_size == 8 and not cfg.HasField("dynamic_batching")
    write_repository([arts["onnx-dyn"]], repo, TritonOptions(dynamic_batching=True, max_queue_delay_us=0))
    cfg, _ = check_model(schema, repo / "tiny-dyn", arts["onnx-dyn"])
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0


def test_names_are_escaped_for_the_text_format(arts: dict[str, Path], schema: Any) -> None:
    from google.protobuf import text_format

    m = manifest_io.read(arts["onnx-dyn"])
    odd = 'in"put\\ é\n'
    text = model_config(m.with_(inputs=[Tensor(odd, m.input.shape, "float16")]), TritonOptions())
    cfg = text_format.Parse(text, schema.ModelConfig())
    assert cfg.input[0].name == odd and schema.DataType.Name(cfg.input[0].data_type) == "TYPE_FP16"


# --------------------------------------------------------------------------- refusals: nothing written


def _retarget(art: Path, out: Path, **changes: Any) -> Path:
    """A copy of ``art`` whose manifest has ``changes`` (written and validated by resdsl.manifest.write)."""
    shutil.copytree(art, out)
    manifest_io.write(out, manifest_io.read(out).with_(**changes))
    return out


@pytest.mark.parametrize(("key", "good", "options", "error", "match"), [
    ("torch", "onnx-fix", {}, InputError, r"torch/manifest\.json: target is 'torch'; Triton serves .*--target onnx "
                                          r".*--target trt"),
    ("trt-dyn", "onnx-fix", {"kind": "cpu"}, OptionError, r"^TritonOptions\.kind cpu: \S+trt-dyn/manifest\.json is "
                                                          r"a trt artefact.*GPU only"),
    ("onnx-dyn", "trt-fix", {"cuda_graphs": True}, OptionError, r"^TritonOptions\.cuda_graphs: \S+onnx-dyn/manifest"
                                                                r"\.json is an onnx artefact.*--target trt"),
    ("onnx-fix", "onnx-dyn", {"dynamic_batching": True}, OptionError, r"^TritonOptions\.dynamic_batching: \S+onnx-fix"
                                                                      r"/manifest\.json: batch\.dynamic is false .*"
                                                                      r"--batch 1:2:32"),
    ("trt-min2", "onnx-fix", {}, InputError, r"trt-min2/manifest\.json: batch\.min is 2, .*--batch 1:4:8"),
    ("badname", "onnx-fix", {}, InputError, r"badname/manifest\.json: name '\.\./x' cannot name a Triton model"),
])
def test_refusals_write_nothing(arts: dict[str, Path], tmp_path: Path, key: str, good: str, options: dict[str, Any],
                                error: type[Exception], match: str) -> None:
    made = {"torch": lambda: _retarget(arts["onnx-dyn"], tmp_path / "torch", target="torch"),
            "trt-min2": lambda: _retarget(arts["trt-dyn"], tmp_path / "trt-min2", batch=Batch(2, 4, 8, True)),
            "badname": lambda: _retarget(arts["onnx-dyn"], tmp_path / "badname", name="../x")}
    art = made[key]() if key in made else arts[key]
    repo = tmp_path / "repo"
    model_config(manifest_io.read(arts[good]), TritonOptions(**options))  # the first artefact alone is accepted
    with pytest.raises(error, match=match):
        write_repository([arts[good], art], repo, TritonOptions(**options))
    assert not repo.exists()  # the good artefact given first was not written either


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"instances": 0}, r"TritonOptions\.instances 0: .*>= 1"), ({"instances": True}, r"TritonOptions\.instances"),
    ({"max_queue_delay_us": -1}, r"TritonOptions\.max_queue_delay_us -1: .*>= 0"),
    ({"max_queue_delay_us": 1.5}, r"TritonOptions\.max_queue_delay_us 1\.5"),
    ({"kind": "tpu"}, r"TritonOptions\.kind 'tpu': choose gpu or cpu"),
    ({"cuda_graphs": "yes"}, r"TritonOptions\.cuda_graphs"),
    ({"dynamic_batching": 1}, r"TritonOptions\.dynamic_batching"),
])
def test_option_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(OptionError, match=match):
        TritonOptions(**kwargs)


def test_duplicate_names_write_nothing(arts: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy = shutil.copytree(arts["onnx-dyn"], tmp_path / "elsewhere")
    with pytest.raises(InputError, match=r"onnx-dyn and \S+elsewhere both hold the model 'tiny-dyn' \(manifest\.json: "
                                         r"name\).*Nothing was written"):
        write_repository([arts["onnx-dyn"], arts["onnx-fix"], copy], repo, TritonOptions())
    assert not repo.exists()


@pytest.mark.parametrize("damage", ["schema", "hash", "missing"])
def test_damaged_artefact_writes_nothing(arts: dict[str, Path], tmp_path: Path, damage: str) -> None:
    bad = shutil.copytree(arts["onnx-fix"], tmp_path / "bad")
    if damage == "schema":
        doc = json.loads((bad / "manifest.json").read_text())
        del doc["batch"]
        (bad / "manifest.json").write_text(json.dumps(doc))
        match = r"bad/manifest\.json does not follow the manifest schema .*batch"
    elif damage == "hash":
        blob = bytearray((bad / "model.onnx").read_bytes())
        blob[-1] ^= 1
        (bad / "model.onnx").write_bytes(bytes(blob))
        match = r"bad/model\.onnx does not match the sha256"
    else:
        shutil.rmtree(bad)
        match = r"bad is not an artefact directory"
    repo = tmp_path / "repo"
    write_repository([arts["onnx-dyn"]], repo, TritonOptions())
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match=match):
        write_repository([arts["onnx-dyn"], bad], repo, TritonOptions(instances=4))
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before and _hidden(repo) == []


# --------------------------------------------------------------------------- replacing models in place


def _snapshot(model: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(model)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(model.rglob("*")) if p.is_file()}


def test_rewriting_a_model_replaces_it_and_keeps_the_others(arts: dict[str, Path], schema: Any,
                                                            tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository([arts["onnx-dyn"], arts["onnx-fix"]], repo, TritonOptions())
    (repo / "tiny-dyn" / "stale.txt").write_text("left by hand")  # a replaced model keeps nothing of the old one
    kept = _snapshot(repo / "tiny-fix")
    write_repository([arts["onnx-dyn"]], repo, TritonOptions(instances=3))
    cfg, _ = check_model(schema, repo / "tiny-dyn", arts["onnx-dyn"])
    assert cfg.instance_group[0].count == 3 and not (repo / "tiny-dyn" / "stale.txt").exists()
    assert _snapshot(repo / "tiny-fix") == kept
    assert sorted(p.name for p in repo.iterdir()) == ["tiny-dyn", "tiny-fix"]  # no .tmp-, .old- or .lock left


def test_a_failed_write_keeps_the_old_model(arts: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    write_repository([arts["onnx-dyn"]], repo, TritonOptions())
    old = _snapshot(repo / "tiny-dyn")

    def full_disk(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton, "_copy_checked", full_disk)
    with pytest.raises(InputError, match=r"no space left on the device while writing \S+tiny-dyn; nothing was written"):
        write_repository([arts["onnx-dyn"]], repo, TritonOptions(instances=5))
    assert _snapshot(repo / "tiny-dyn") == old and _hidden(repo) == []


# --------------------------------------------------------------------------- the command line


def _cli(*argv: str | Path) -> int:
    p = argparse.ArgumentParser(prog="resdsl")
    add_triton_command(p.add_subparsers(dest="command", required=True))
    return dispatch(p, [str(a) for a in argv])


def test_cli_writes_and_prints_one_line_per_model(arts: dict[str, Path], schema: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    assert _cli("triton", arts["trt-dyn"], arts["onnx-fix"], "-o", repo, "--instances", "2", "--cuda-graphs",
                "--max-queue-delay-us", "250") == 2  # --cuda-graphs refused for the onnx one
    err = capsys.readouterr().err
    assert err.startswith("resdsl: error: --cuda-graphs: ") and "Traceback" not in err and not repo.exists()
    assert _cli("triton", arts["trt-dyn"], arts["onnx-dyn"], "-o", repo, "--instances", "2",
                "--max-queue-delay-us", "250", "--no-dynamic-batching") == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{repo / 'tiny-dyn-trt'}: config.pbtxt, 1/model.plan, 1/manifest.json (from {arts['trt-dyn']})",
                   f"{repo / 'tiny-dyn'}: config.pbtxt, 1/model.onnx, 1/manifest.json (from {arts['onnx-dyn']})"]
    cfg, _ = check_model(schema, repo / "tiny-dyn-trt", arts["trt-dyn"])
    assert cfg.instance_group[0].count == 2 and not cfg.HasField("dynamic_batching")


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "cpu"], r"^resdsl: error: --kind cpu: \S+trt-dyn/manifest\.json is a trt artefact"),
    (["--dynamic-batching"], r"^resdsl: error: --dynamic-batching: \S+onnx-fix/manifest\.json: batch\.dynamic is "
                             r"false"),
    (["--instances", "0"], r"^resdsl: error: --instances 0: "),
    (["--max-queue-delay-us", "-5"], r"^resdsl: error: --max-queue-delay-us -5: "),
    (["MISSING"], r"^resdsl: error: \S+MISSING is not an artefact directory \(no such directory\)"),
])
def test_cli_bad_input_exits_2(arts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               args: list[str], message: str) -> None:
    repo = tmp_path / "repo"
    extra = [str(tmp_path / a) if a == "MISSING" else a for a in args]
    assert _cli("triton", arts["trt-dyn"], arts["onnx-fix"], *extra, "-o", repo) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not repo.exists()


def test_resdsl_cli_registers_triton(arts: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Through the installed command line: its one error handler names the flag, not the option's field."""
    from resdsl.cli import main, parser

    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "triton" in commands
    assert main(["triton", str(arts["onnx-fix"]), "--dynamic-batching", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--dynamic-batching" in err and "TritonOptions" not in err
    assert main(["triton", str(arts["onnx-fix"]), "-o", str(tmp_path / "r")]) == 0


# --------------------------------------------------------------------------- examples/triton/client.py


def test_client_help_runs_without_tritonclient_http() -> None:
    r = subprocess.run([sys.executable, str(CLIENT), "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "--url" in r.stdout and "--model" in r.stdout and "FILE" in r.stdout and "tritonclient[http]" in r.stdout


def _stand_in_http(schema: Any, repo: Path, calls: list[list[int]]) -> ModuleType:
    """``tritonclient.http`` as far as the client uses it, serving ``repo`` the way Triton does: the model's
    metadata and max_batch_size from its config.pbtxt, requests checked against that config (name, datatype,
    dims, batch), and 1/model.onnx run by ONNX Runtime."""
    import onnxruntime as ort

    datatypes = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16"}

    class InferInput:
        def __init__(self, name: str, shape: list[int], datatype: str) -> None:
            self.name, self.shape, self.datatype = name, shape, datatype

        def set_data_from_numpy(self, x: np.ndarray) -> None:
            assert list(x.shape) == self.shape
            self.data = x

    class InferRequestedOutput:
        def __init__(self, name: str) -> None:
            self.name = name

    class InferenceServerClient:
        def __init__(self, url: str) -> None:
            self.url = url

        def get_model_config(self, model: str) -> dict[str, Any]:
            return {"name": model, "max_batch_size": parse(schema, repo / model).max_batch_size}

        def get_model_metadata(self, model: str) -> dict[str, Any]:
            cfg = parse(schema, repo / model)
            lead = [-1] if cfg.max_batch_size > 0 else []
            io = [[{"name": t.name, "datatype": datatypes[schema.DataType.Name(t.data_type)],
                    "shape": lead + list(t.dims)} for t in ts] for ts in (cfg.input, cfg.output)]
            return {"name": model, "inputs": io[0], "outputs": io[1]}

        def infer(self, model: str, inputs: list[InferInput], outputs: list[InferRequestedOutput]) -> Any:
            cfg = parse(schema, repo / model)
            (x,), want = inputs, cfg.input[0]
            assert x.name == want.name and x.datatype == datatypes[schema.DataType.Name(want.data_type)]
            if cfg.max_batch_size > 0:
                assert 1 <= x.shape[0] <= cfg.max_batch_size and x.shape[1:] == list(want.dims)
            else:
                assert x.shape == list(want.dims)
            calls.append(x.shape)
            session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            result = dict(zip([o.name for o in outputs], session.run([o.name for o in outputs], {x.name: x.data}),
                              strict=True))
            return type("InferResult", (), {"as_numpy": lambda self, name: result[name]})()

    module = ModuleType("tritonclient.http")
    module.InferInput = InferInput  # type: ignore[attr-defined]
    module.InferRequestedOutput = InferRequestedOutput  # type: ignore[attr-defined]
    module.InferenceServerClient = InferenceServerClient  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(("key", "images", "requests"), [("onnx-fix", 3, [[2, 3, 16, 16]] * 2),
                                                         ("onnx-dyn", 10, [[8, 3, 16, 16], [2, 3, 16, 16]])])
def test_client_top5_against_the_artefact(arts: dict[str, Path], schema: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          key: str, images: int, requests: list[list[int]]) -> None:
    """The client, against a stand-in that honours the written config, prints each image's top-5 as the artefact
    itself computes it (resdsl.runtime.load, one image at a time)."""
    from resdsl.runtime import load

    repo = tmp_path / "repo"
    (model,) = write_repository([arts[key]], repo, TritonOptions())
    calls: list[list[int]] = []
    monkeypatch.setitem(sys.modules, "tritonclient.http", _stand_in_http(schema, repo, calls))
    spec = importlib.util.spec_from_file_location("triton_client_example", CLIENT)
    assert spec is not None and spec.loader is not None
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    x = np.random.default_rng(0).standard_normal((images, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert client.main(["--model", model.name, str(tmp_path / "x.npy")]) == 0
    assert calls == requests  # batches within max_batch_size; a fixed-batch model gets exactly its batch
    lines = [line for line in capsys.readouterr().out.splitlines()[1:] if not line.startswith("image ")]
    rows = np.array([line.split() for line in lines], dtype=float).reshape(images, 5, 2)
    net, lo = load(arts[key]), manifest_io.read(arts[key]).batch.min
    for k in range(images):
        want = net(np.repeat(x[k:k + 1], lo, axis=0))[0]
        order = np.argsort(-want, kind="stable")[:5]
        assert rows[k, :, 0].astype(int).tolist() == order.tolist()
        np.testing.assert_allclose(rows[k, :, 1], want[order], rtol=1e-4, atol=1e-5)


def test_client_refuses_a_wrong_shape(arts: dict[str, Path], schema: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    write_repository([arts["onnx-dyn"]], repo, TritonOptions())
    monkeypatch.setitem(sys.modules, "tritonclient.http", _stand_in_http(schema, repo, []))
    spec = importlib.util.spec_from_file_location("triton_client_example", CLIENT)
    assert spec is not None and spec.loader is not None
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    np.save(tmp_path / "x.npy", np.zeros((3, 32, 32), np.float32))
    assert client.main(["--model", "tiny-dyn", str(tmp_path / "x.npy")]) == 2
    assert "found shape (1, 3, 32, 32), but the model takes (C, H, W) = (3, 16, 16)" in capsys.readouterr().err




def test_a_backbone_over_a_size_range_gets_one_output_entry_each_with_symbolic_sides(schema: Any,
                                                                                      tmp_path: Path) -> None:
    """Several outputs and a size range: Triton's schema takes one output entry per feature map, with -1 for the
    height and width that vary (the ONNX model's own symbolic dims are the oracle)."""
    import onnx

    from resdsl.pipeline import compile_spec

    spec = tmp_path / "bb.yaml"
    spec.write_text(TINY_BACKBONE)
    art, _ = compile_spec(spec, CompileOptions(out=tmp_path / "bb", batch="1:2:4", size="24x24:32x32:48x48"))
    model = write_repository([art], tmp_path / "repo", TritonOptions())[0]
    cfg, _ = check_model(schema, model, art)
    graph = onnx.load(art / "model.onnx").graph
    assert [t.name for t in cfg.output] == [v.name for v in graph.output] == ["conv3_x", "conv4_x"]
    for t, v in zip([*cfg.input, *cfg.output], [*graph.input, *graph.output], strict=True):
        assert list(t.dims) == [d.dim_value if d.HasField("dim_value") else -1
                                for d in v.type.tensor_type.shape.dim[1:]]
    assert list(cfg.input[0].dims) == [3, -1, -1] and list(cfg.output[1].dims) == [16, -1, -1]
