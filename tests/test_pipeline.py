"""compile / verify / runtime.load as a user drives them: artefacts, manifests, weights, refusals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from resdsl import InputError, build, load
from resdsl.manifest import read as read_manifest
from resdsl.manifest import sha256_file
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.runtime import load as load_artefact

from .conftest import ROOT, SPECS
from .golden import reference_weights

CIFAR = SPECS / "cifar" / "resnet20.yaml"
SCHEMA = json.loads((ROOT / "resdsl" / "schemas" / "manifest.schema.json").read_text())


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def torch_art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "r20"
    compile_spec(CIFAR, CompileOptions(target="torch", out=out))
    return out


def test_torch_artefact_layout_manifest_and_runtime(torch_art: Path) -> None:
    assert sorted(p.name for p in torch_art.iterdir()) == ["manifest.json", "model.pt"]
    m = json.loads((torch_art / "manifest.json").read_text())
    jsonschema.validate(m, SCHEMA)
    assert m["files"]["model.pt"]["sha256"] == sha256_file(torch_art / "model.pt")
    assert m["weights"]["kind"] == "random" and m["weights"]["seed"] == 0
    assert m["counts"]["params"] == 269722 and m["verification"]["passed"]
    assert m["verification"]["flops"]["traced_macs"] == m["counts"]["macs"]
    assert not any(p.name.startswith(".") for p in torch_art.parent.iterdir())  # no staging left behind
    art = load_artefact(torch_art)
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = build(CIFAR, seed=0).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(art(x), ref)
    np.testing.assert_array_equal(art(torch.from_numpy(x)), ref)


def test_verify_cli_ok_and_bad_inputs(torch_art: Path) -> None:
    r = cli("verify", str(torch_art))
    assert r.returncode == 0 and "verified" in r.stdout, r.stderr
    art = load_artefact(torch_art)
    with pytest.raises(InputError, match="does not fit"):
        art(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="outside"):
        art(np.zeros((33, 3, 32, 32), np.float32))


def test_second_compile_into_same_dir_is_refused_then_forced(torch_art: Path) -> None:
    before = (torch_art / "manifest.json").read_bytes()
    r = cli("compile", str(CIFAR), "--target", "torch", "-o", str(torch_art))
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr and "Traceback" not in r.stderr
    assert (torch_art / "manifest.json").read_bytes() == before
    r = cli("compile", str(CIFAR), "--target", "torch", "-o", str(torch_art), "--force", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert json.loads((torch_art / "manifest.json").read_text())["weights"]["seed"] == 3
    assert sorted(p.name for p in torch_art.iterdir()) == ["manifest.json", "model.pt"]
    load_artefact(torch_art)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_artefacts_are_refused_before_loading(torch_art: Path, tmp_path: Path) -> None:
    cases = {}
    d = _copy(torch_art, tmp_path / "flip")
    data = bytearray((d / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.pt").write_bytes(bytes(data))
    cases["flip"] = (d, "does not match the sha256")
    d = _copy(torch_art, tmp_path / "trunc")
    (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:1000])
    cases["trunc"] = (d, "truncated or replaced")
    d = _copy(torch_art, tmp_path / "extra")
    (d / "evil.so").write_bytes(b"\x7fELF")
    cases["extra"] = (d, "files its manifest does not list")
    d = _copy(torch_art, tmp_path / "escape")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["../model.pt"] = m["files"].pop("model.pt")
    (d / "manifest.json").write_text(json.dumps(m))
    cases["escape"] = (d, "files: '../model.pt' does not match")  # the schema allows plain file names only
    d = _copy(torch_art, tmp_path / "link")
    (d / "model.pt").unlink()
    os.symlink(torch_art / "model.pt", d / "model.pt")
    cases["link"] = (d, "symbolic link")
    d = _copy(torch_art, tmp_path / "version")
    m = json.loads((d / "manifest.json").read_text())
    m["schema"] = "resdsl.manifest/9"
    (d / "manifest.json").write_text(json.dumps(m))
    cases["version"] = (d, "reads 'resdsl.manifest/1'")
    d = _copy(torch_art, tmp_path / "noweights")  # hand-edited: every reader validates against the schema first
    m = json.loads((d / "manifest.json").read_text())
    del m["weights"]
    (d / "manifest.json").write_text(json.dumps(m))
    cases["noweights"] = (d, "does not follow the manifest schema.*'weights' is a required property")
    d = _copy(torch_art, tmp_path / "garbage")
    (d / "manifest.json").write_text("{not json")
    cases["garbage"] = (d, "not valid JSON")
    for name, (d, message) in cases.items():
        with pytest.raises(InputError, match=message):
            load_artefact(d)
        r = cli("verify", str(d))
        assert r.returncode == 2 and re.search(message, r.stderr) and "Traceback" not in r.stderr, name


def test_verify_exit_1_when_artefact_computes_another_function(torch_art: Path, tmp_path: Path) -> None:
    """Weights changed but hashes re-recorded: only the comparison with the spec + weights can notice."""
    d = _copy(torch_art, tmp_path / "wrong")
    ck = torch.load(d / "model.pt", weights_only=True)
    ck["model"]["layer2.1.conv2.weight"] *= 1.5
    torch.save(ck, d / "model.pt")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["model.pt"] = {"sha256": sha256_file(d / "model.pt"), "bytes": (d / "model.pt").stat().st_size}
    (d / "manifest.json").write_text(json.dumps(m))
    r = cli("verify", str(d))
    assert r.returncode == 1 and "FAILED" in r.stdout and "does not compute" in r.stderr


@pytest.fixture(scope="module")
def tv18_weights(tmp_path_factory: pytest.TempPathFactory, tv_layout: dict) -> Path:
    path = tmp_path_factory.mktemp("w") / "resnet18-reference.pth"
    torch.save(reference_weights(tv_layout["resnet18"]["state_dict"]), path)
    return path


def test_torchvision_state_dict_compiles_and_reproduces_golden_logits(tv18_weights: Path, tmp_path: Path,
                                                                      tv_logits: dict) -> None:
    out = tmp_path / "r18"
    compile_spec(SPECS / "torchvision" / "resnet18.yaml", CompileOptions(target="torch", out=out,
                                                                         weights=tv18_weights))
    m = read_manifest(out).to_dict()
    assert m["weights"]["kind"] == "file" and m["weights"]["file_sha256"] == sha256_file(tv18_weights)
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64).numpy()
    art = load_artefact(out)
    # the artefact takes 224x224; run the module at 64x64 as the golden logits were made
    assert art.manifest.input.shape == ["batch", 3, 224, 224]
    model = build(SPECS / "torchvision" / "resnet18.yaml")
    from resdsl.weights import load_into

    load_into(model, tv18_weights)
    with torch.no_grad():
        y = model.eval()(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(y, np.array(tv_logits["resnet18"]), rtol=1e-4, atol=1e-5)
    assert cli("verify", str(out)).returncode == 0


def test_wrong_weights_name_the_keys_and_the_spec_that_fits(tv18_weights: Path, tmp_path: Path) -> None:
    r = cli("compile", "specs/torchvision/resnet50.yaml", "--weights", str(tv18_weights), "-o",
            str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "does not fit spec 'resnet50-tv'" in r.stderr and "missing: layer1.0.conv3.weight" in r.stderr
    assert "mis-shaped: layer1.0.conv1.weight [64, 64, 3, 3] (spec needs [64, 64, 1, 1])" in r.stderr
    assert "specs/resnet18.yaml" in r.stderr and "specs/torchvision/resnet18.yaml" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content,message", [(b"garbage bytes", "cannot read weights file"),
                                              (None, "does not exist")])
def test_unreadable_weights(tmp_path: Path, content: bytes | None, message: str) -> None:
    w = tmp_path / "w.pth"
    if content is not None:
        w.write_bytes(content)
    r = cli("compile", str(CIFAR), "--target", "torch", "--weights", str(w), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_nan_weights_and_pickled_code_are_refused(tmp_path: Path) -> None:
    model = build(CIFAR)
    sd = model.state_dict()
    sd["fc.bias"][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    r = cli("compile", str(CIFAR), "--target", "torch", "--weights", str(tmp_path / "nan.pth"), "-o",
            str(tmp_path / "o1"))
    assert r.returncode == 2 and "NaN or infinite values in fc.bias" in r.stderr

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    r = cli("compile", str(CIFAR), "--target", "torch", "--weights", str(tmp_path / "evil.pth"), "-o",
            str(tmp_path / "o2"))
    assert r.returncode == 2 and "cannot read weights file" in r.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the permission check cannot fail")
def test_unwritable_output(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = cli("compile", str(CIFAR), "--target", "torch", "-o", str(ro / "out"))
    assert r.returncode == 2 and "permission denied" in r.stderr


def test_output_path_that_is_a_file_or_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = cli("compile", str(CIFAR), "--target", "torch", "-o", str(f / "out"))
    assert r.returncode == 2 and "cannot create" in r.stderr and "Traceback" not in r.stderr
    r = cli("compile", str(CIFAR), "--target", "torch", "-o", str(f), "--force")
    assert r.returncode == 2 and "not a directory" in r.stderr and f.read_text() == "x"


@pytest.mark.parametrize("args,message", [(["--batch", "8:4:2"], "MIN <= OPT <= MAX"),
                                          (["--batch", "x"], "give N (one fixed batch size) or MIN:OPT:MAX"),
                                          (["--io", "fp16"], "need --precision fp16"),
                                          (["--opset", "11"], "opset 17 or newer"),
                                          (["--workspace", "100"], "--target is 'onnx'; drop them"),
                                          (["--target", "torch", "--workspace", "100"],
                                           "--workspace: only the trt target takes these, and --target is 'torch'"),
                                          (["--target", "trt", "--workspace", "0"],
                                           "--workspace 0: the TensorRT workspace must be a whole number of MiB"),
                                          (["--device", "cpu"], "--device: only the aoti target takes these"),
                                          (["--target", "torch", "--precision", "fp16"],
                                           "--precision fp16: the torch target writes fp32 only")])
def test_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    r = cli("compile", str(CIFAR), "-o", str(tmp_path / "o"), *args)
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "o").exists()


def test_trt_target_without_tensorrt_exits_3_with_instructions(tmp_path: Path) -> None:
    r = cli("compile", str(CIFAR), "--target", "trt", "-o", str(tmp_path / "o"))
    assert r.returncode == 3 and "resdsl[trt]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_spec_digest_in_manifest_matches_loaded_spec(torch_art: Path) -> None:
    m = read_manifest(torch_art).to_dict()
    assert m["spec"]["sha256"] == load(CIFAR).digest()


@pytest.mark.parametrize("error,message", [(PermissionError(13, "Permission denied"), "permission denied"),
                                           (OSError(28, "No space left on device"), "no space left")])
def test_unwritable_or_full_disk_is_a_clean_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  error: OSError, message: str) -> None:
    """Root ignores permissions, so the failure is injected where the staging directory is made."""
    import tempfile

    def fail(*a: object, **k: object) -> str:
        raise error

    monkeypatch.setattr(tempfile, "mkdtemp", fail)
    with pytest.raises(InputError, match=message):
        compile_spec(CIFAR, CompileOptions(target="torch", out=tmp_path / "o"))
    assert list(tmp_path.iterdir()) == []


def test_python_api_errors_name_the_option_fields(tmp_path: Path) -> None:
    """The same refusal names CompileOptions' fields in Python and the flags on the command line."""
    from resdsl.options import TrtOptions

    with pytest.raises(InputError, match=r"TrtOptions.workspace_mib: only the trt target takes these, and "
                                         r"CompileOptions.target is 'torch'"):
        CompileOptions(target="torch", trt=TrtOptions(workspace_mib=100))
    with pytest.raises(InputError, match=r"TrtOptions.workspace_mib 0: the TensorRT workspace"):
        TrtOptions(workspace_mib=0)
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(InputError, match=r"already exists; pass CompileOptions.force to replace it"):
        compile_spec(CIFAR, CompileOptions(target="torch", out=out))


def test_limits_are_checked_once_with_the_callers_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raising a limit must raise it: nothing downstream re-checks with the defaults."""
    import resdsl.limits
    from resdsl.options import Limits

    calls: list[Limits] = []
    real = resdsl.limits.check
    monkeypatch.setattr(resdsl.limits, "check", lambda r, s, lim: (calls.append(lim), real(r, s, lim))[1])
    import resdsl.pipeline
    import resdsl.verify

    monkeypatch.setattr(resdsl.pipeline, "check", resdsl.limits.check)
    mine = Limits(max_params=300_000, max_gmacs=0.05)  # resnet20: 269,722 parameters, 0.0406 GMACs
    compile_spec(CIFAR, CompileOptions(target="torch", out=tmp_path / "a", limits=mine))
    assert calls == [mine]
    calls.clear()
    resdsl.verify.verify_artefact(tmp_path / "a", limits=mine)
    assert calls == [mine]
    with pytest.raises(InputError, match=r"269,722 parameters.*limit of 200,000; shrink the spec or raise "
                                         r"Limits.max_params"):
        compile_spec(CIFAR, CompileOptions(target="torch", out=tmp_path / "b", limits=Limits(max_params=200_000)))


def test_fp16_conversion_refusal_is_a_clean_error(tmp_path: Path) -> None:
    """Weights beyond float16's range: the fp16 pass refuses, exit 2 naming the file, nothing written."""
    state = build(CIFAR).state_dict()
    state["fc.bias"][0] = 1e6
    torch.save(state, tmp_path / "big.pt")
    r = cli("compile", str(CIFAR), "--target", "onnx", "--precision", "fp16", "--weights", str(tmp_path / "big.pt"),
            "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "cannot be converted to float16" in r.stderr and "--precision fp32" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_progress_lines_in_a_pipe_and_none_with_quiet(tmp_path: Path) -> None:
    """stderr is not a terminal here: one line per step all the same, and nothing with -q."""
    r = cli("compile", str(CIFAR), "--target", "torch", "-o", str(tmp_path / "a"))
    steps = [line for line in r.stderr.splitlines() if line.startswith("resdsl: ") and " ..." in line]
    assert r.returncode == 0 and [s.split(" ...")[0] for s in steps] == [
        "resdsl: building the PyTorch module", "resdsl: saving model.pt",
        "resdsl: verifying torch against the module at batch 1, 3"]
    q = cli("compile", str(CIFAR), "--target", "torch", "-o", str(tmp_path / "b"), "-q")
    assert q.returncode == 0 and q.stderr == ""


def test_reference_module_is_released_and_rebuilt_with_the_same_weights() -> None:
    """Verifying the last target frees the module's weights first; localising afterwards rebuilds it, identical."""
    import gc
    import weakref

    from resdsl.verify import Reference

    ref = Reference(lambda: build(load(CIFAR), seed=3).eval())
    first = ref.module
    state = {k: v.clone() for k, v in first.state_dict().items()}
    weight = weakref.ref(first.conv1.weight)
    del first
    ref.release()
    gc.collect()
    assert weight() is None
    again = ref.module
    assert again.conv1.weight.device.type == "cpu" and state.keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
