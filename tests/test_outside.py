"""What trying resdsl from outside found (a fresh clone, the README alone, bad inputs), one test an item: artefacts
that verify from anywhere, data of the wrong size, accuracy checks on random weights, batch flags that disagree,
weights that fit several specs, torchvision's training checkpoints, messages that name the flag the user gave,
the plain install, the embedding example, and the README as a front page. Each assertion fails on the code
before its fix."""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resdsl import build
from resdsl.manifest import read

from .conftest import ROOT, SPECS

CIFAR = SPECS / "cifar" / "resnet20.yaml"
WEIGHTS = ROOT / "tests" / "data" / "digits-resnet20.pt"


def small_spec(d: Path, size: int = 32) -> Path:
    """A 10-class net (the digits' classes) small enough to compile in a second."""
    from .test_evaluate import write_tiny_spec

    return write_tiny_spec(d, False, size=size, classes=10)


# --- 1. an artefact verifies and evaluates from anywhere; extends does not depend on the working directory ---


def test_an_artefact_verifies_and_evaluates_from_another_directory_and_after_its_weights_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Any, digits: Path) -> None:
    work, elsewhere = tmp_path / "clone", tmp_path / "home"
    (work / "runs").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(WEIGHTS, work / "runs" / "last.pt")
    monkeypatch.chdir(work)
    r = cli("compile", str(CIFAR), "--target", "torch", "--weights", "runs/last.pt", "-o", "build/r20", "-q")
    assert r.returncode == 0, r.stderr
    art = work / "build" / "r20"
    w = read(art).weights
    assert w["path"] == str((work / "runs" / "last.pt").resolve()) and w["given"] == "runs/last.pt"

    monkeypatch.chdir(elsewhere)  # the user's home: no runs/ here
    r = cli("verify", str(art), "-q")
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", str(art), "--data", str(digits), "--limit", "16")
    assert r.returncode == 0, r.stderr

    (work / "runs").rename(tmp_path / "moved")
    r = cli("verify", str(art), "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(work / "runs" / "last.pt") in r.stderr and w["file_sha256"] in r.stderr
    assert "pass it with --weights FILE" in r.stderr
    r = cli("evaluate", str(art), "--data", str(digits), "--limit", "16")
    assert r.returncode == 2 and "no longer there" in r.stderr
    moved = str(tmp_path / "moved" / "last.pt")
    assert cli("verify", str(art), "--weights", moved, "-q").returncode == 0
    assert cli("evaluate", str(art), "--data", str(digits), "--limit", "16", "--weights", moved).returncode == 0

    ck = torch.load(moved, weights_only=True)
    ck["model"]["fc.bias"] += 1.0  # same keys and shapes, other weights
    torch.save(ck, tmp_path / "other.pt")
    r = cli("verify", str(art), "--weights", str(tmp_path / "other.pt"), "-q")
    assert r.returncode == 2 and "is not the one" in r.stderr and "its weights differ" in r.stderr


def test_extends_reaches_the_specs_project_from_any_working_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       cli: Any) -> None:
    from resdsl.errors import SpecError
    from resdsl.spec import load

    project = tmp_path / "project"
    mine = project / "specs" / "mine"
    mine.mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'nets'\n")
    shutil.copy(SPECS / "resnet18.yaml", project / "specs" / "resnet18.yaml")
    spec = mine / "r18-10.yaml"
    spec.write_text("resdsl: 1\nextends: ../resnet18.yaml\nname: r18-10\nhead: {classes: 10}\nexpect: null\n")
    for cwd, given in ((mine, "r18-10.yaml"), (project, "specs/mine/r18-10.yaml"), (tmp_path, str(spec))):
        monkeypatch.chdir(cwd)
        assert load(given).classes == 10
        r = cli("check", given)
        assert r.returncode == 0, r.stderr

    # a spec outside any project is confined to its own directory, whatever the working directory
    loose = tmp_path / "downloads" / "sub"
    loose.mkdir(parents=True)
    shutil.copy(SPECS / "resnet18.yaml", tmp_path / "downloads" / "base.yaml")
    (loose / "x.yaml").write_text("resdsl: 1\nextends: ../base.yaml\nname: x\n")
    for cwd in (tmp_path / "downloads", loose, tmp_path):
        monkeypatch.chdir(cwd)
        with pytest.raises(SpecError, match="outside the spec tree"):
            load(loose / "x.yaml")
    # a copy of resdsl's specs/ outside any project keeps its own cross-references (timm's extend torchvision's)
    shutil.copytree(SPECS, tmp_path / "copy" / "specs")
    monkeypatch.chdir(tmp_path / "copy" / "specs" / "timm")
    assert load("resnet50c.yaml").name == "resnet50c"


# --- 2. images of another size than the spec's are refused unless --resize, which is said ---


def test_images_of_another_size_are_refused_unless_resize_is_given(tmp_path: Path, cli: Any, digits: Path) -> None:
    spec = small_spec(tmp_path, 16)  # the digits are 32x32
    for flags, option in ((["--eval-data", str(digits)], "--eval-data"),
                          (["--precision", "int8", "--calibration", str(digits)], "--calibration")):
        out = tmp_path / option.strip("-")
        r = cli("compile", str(spec), "-o", str(out), "--random-weights", "-q", *flags)
        assert r.returncode == 2 and not out.exists()
        assert f"{option} {digits}: its images are 32x32 but the spec takes 16x16" in r.stderr
        assert "pass --resize" in r.stderr
    out = tmp_path / "resized"
    r = cli("compile", str(spec), "-o", str(out), "--random-weights", "--eval-data", str(digits), "--resize", "-q")
    assert r.returncode == 0, r.stderr
    assert "images resized from 32x32 to 16x16" in r.stdout
    acc = read(out).verification["accuracy"]  # type: ignore[index]
    assert acc["preprocessing"].startswith("images resized from 32x32 to 16x16 (bilinear; --resize); ")

    r = cli("evaluate", str(out), "--data", str(digits), "--limit", "8")
    assert r.returncode == 2 and "its images are 32x32 but the spec takes 16x16" in r.stderr
    r = cli("evaluate", str(out), "--data", str(digits), "--limit", "8", "--resize")
    assert r.returncode == 0 and "images resized from 32x32 to 16x16" in r.stdout


# --- 3. and 7. accuracy on random weights needs asking for; summaries say what was checked ---


def test_accuracy_checks_on_random_weights_must_be_asked_for_and_say_they_prove_nothing(
        tmp_path: Path, cli: Any, digits: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resdsl.pipeline

    spec = small_spec(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(resdsl.pipeline, "_reference", lambda *a: pytest.fail("the module was built"))
        r = cli("compile", str(spec), "-o", str(tmp_path / "a"), "--precision", "int8", "--calibration", str(digits))
        assert r.returncode == 2 and "--precision int8 without --weights" in r.stderr
        assert "proves nothing" in r.stderr and "--random-weights" in r.stderr
        r = cli("compile", str(spec), "-o", str(tmp_path / "b"), "--eval-data", str(digits))
        assert r.returncode == 2 and "--eval-data without --weights" in r.stderr
    assert not any(tmp_path.glob("[ab]"))

    r = cli("compile", str(spec), "-o", str(tmp_path / "int8"), "--precision", "int8", "--calibration",
            str(digits), "--calibration-samples", "64", "--random-weights", "-q")
    assert r.returncode == 0, r.stderr
    assert "right shapes and finite logits on random inputs at batch 1, 3" in r.stdout
    assert "the weights are random, so that accuracy is chance level and proves nothing" in r.stdout
    assert "rel err" not in r.stdout and "decisive" not in r.stdout
    assert read(tmp_path / "int8").verification["accuracy"]["untrained"] is True  # type: ignore[index]
    r = cli("evaluate", str(tmp_path / "int8"), "--data", str(digits), "--limit", "8", "--json")
    assert json.loads(r.stdout)["untrained"] is True

    r = cli("compile", str(spec), "-o", str(tmp_path / "fp32"), "-q")
    assert r.returncode == 0 and "equals the module on random inputs at batch 1, 3 (max rel err" in r.stdout


# --- 4. --verify-batch is checked against --batch before any work ---


def test_verify_batches_outside_the_batch_range_are_refused_before_any_work(
        tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import resdsl.pipeline

    monkeypatch.setattr(resdsl.pipeline, "_reference", lambda *a: pytest.fail("the module was built"))
    r = cli("compile", str(CIFAR), "-o", str(tmp_path / "a"), "--batch", "1:4:8", "--verify-batch", "16")
    assert r.returncode == 2
    assert "--verify-batch 16: outside --batch 1:4:8" in r.stderr and "from 1 to 8" in r.stderr
    r = cli("compile", str(CIFAR), "-o", str(tmp_path / "b"), "--batch", "4", "--verify-batch", "1,8")
    assert r.returncode == 2 and "--verify-batch 1,8: outside --batch 4:4:4" in r.stderr and "only at 4" in r.stderr
    assert "dynamic_batch" not in r.stderr and not any(tmp_path.iterdir())


def test_verify_refuses_batches_outside_the_artefacts_range(onnx_artefact: Any, cli: Any) -> None:
    directory, _ = onnx_artefact(CIFAR)  # batch 1:1:32
    r = cli("verify", str(directory), "--verify-batch", "1,64", "-q")
    assert r.returncode == 2 and "--verify-batch 64: outside" in r.stderr and "1..32" in r.stderr


# --- 5. weights that fit several specs: every one is named, with what weights cannot tell apart ---


def test_weights_that_fit_several_specs_name_all_and_what_weights_cannot_show(tmp_path: Path, cli: Any,
                                                                               in_root: Path) -> None:
    from resdsl.expand import expand
    from resdsl.layout import fits_hint, specs_fitting, state_layout
    from resdsl.spec import load

    tv50 = dict(state_layout(expand(load(SPECS / "torchvision" / "resnet50.yaml"))))
    fits = specs_fitting(tv50, [SPECS])
    assert {"specs/resnet50.yaml", "specs/torchvision/resnet50.yaml"} <= {str(Path(f).relative_to(ROOT))
                                                                          for f in fits}
    hint = fits_hint(fits)
    assert "Weights alone cannot tell them apart" in hint and "where a bottleneck strides (1x1 or 3x3)" in hint

    torch.save(build(CIFAR).state_dict(), tmp_path / "r20.pt")
    r = cli("compile", "specs/cifar/resnet56.yaml", "--weights", str(tmp_path / "r20.pt"), "-o",
            str(tmp_path / "o"), "--target", "torch")
    assert r.returncode == 2
    assert "specs/cifar/resnet20.yaml" in r.stderr and "specs/cifar/plain20.yaml" in r.stderr
    assert "residual or plain (no shortcuts)" in r.stderr


# --- 6. torchvision's reference-script checkpoints ---


def test_torchvision_training_checkpoints_load_their_model_entry(tmp_path: Path, cli: Any) -> None:
    from resdsl.errors import InputError
    from resdsl.weights import read_weights

    state = build(CIFAR, seed=3).state_dict()
    args = argparse.Namespace(model="resnet20", lr=0.1, epochs=90, data_path="/data", weights=None)
    ck = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "lr_scheduler": {},
          "epoch": 89, "args": args}
    torch.save(ck, tmp_path / "checkpoint.pth")
    w = read_weights(tmp_path / "checkpoint.pth")
    assert w.format == "training checkpoint, its 'model' entry" and w.state.keys() == state.keys()
    assert all(torch.equal(w.state[k], v) for k, v in state.items())

    ema = {"module." + k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({**ck, "model_ema": {**ema, "n_averaged": torch.tensor(5)}}, tmp_path / "both.pth")
    assert "also holds 'model_ema', not used" in read_weights(tmp_path / "both.pth").format
    torch.save({"model_ema": {**ema, "n_averaged": torch.tensor(5)}, "epoch": 1}, tmp_path / "ema.pth")
    w = read_weights(tmp_path / "ema.pth")
    assert w.format == "training checkpoint, its 'model_ema' entry"
    assert torch.equal(w.state["fc.weight"], state["fc.weight"] + 1)

    r = cli("compile", str(CIFAR), "--target", "torch", "--weights", str(tmp_path / "checkpoint.pth"), "-o",
            str(tmp_path / "art"), "-q")
    assert r.returncode == 0, r.stderr
    assert read(tmp_path / "art").weights["format"] == "training checkpoint, its 'model' entry"

    # weights_only stays on: any other class in the pickle is still refused
    torch.save({"model": state, "args": Path("/etc")}, tmp_path / "hostile.pth")
    with pytest.raises(InputError, match="does not unpickle as tensors and plain containers"):
        read_weights(tmp_path / "hostile.pth")
    torch.save({"optimizer": {}, "epoch": 3}, tmp_path / "nothing.pth")
    with pytest.raises(InputError, match="with the entries optimizer, epoch, not a state_dict"):
        read_weights(tmp_path / "nothing.pth")


# --- 8. and 10. messages name the flag the user gave ---


def test_messages_name_the_flag_that_was_given(tmp_path: Path, cli: Any, digits: Path, onnx_artefact: Any) -> None:
    directory, _ = onnx_artefact(CIFAR)
    r = cli("evaluate", str(directory), "--data", str(digits), "--limit", "0")
    assert r.returncode == 2 and "--limit 0: must be a whole number, at least 1" in r.stderr
    assert "--batch" not in r.stderr
    r = cli("compile", str(CIFAR), "-o", str(tmp_path / "o"), "--opset", "99")
    assert r.returncode == 2 and r.stderr.startswith("resdsl: error: --opset 99: the installed onnx")
    assert not (tmp_path / "o").exists()


def test_milestones_must_increase(tmp_path: Path, cli: Any, digits: Path) -> None:
    from resdsl.errors import SpecError
    from resdsl.spec import loads

    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(CIFAR), "--data", str(digits),
                        "--milestones", "5,1", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "milestones must increase" in r.stderr and "e.g. 1,5" in r.stderr
    assert not (tmp_path / "run").exists()
    text = CIFAR.read_text().replace("milestones: [32000, 48000]", "milestones: [48000, 32000]")
    assert "[48000, 32000]" in text
    with pytest.raises(SpecError, match=r"train\.schedule\.milestones\[1\]: 32000 does not come after 48000"):
        loads(text)


# --- 11. the plain install runs the default target ---


def test_the_plain_install_brings_what_the_default_target_needs() -> None:
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert block is not None
    core = {re.split(r"[<>=!~ ;\[]", d)[0] for d in re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)}
    assert {"onnx", "onnxruntime", "onnxscript", "torch", "numpy", "pyyaml"} <= core
    from resdsl.backends.base import get
    from resdsl.options import CompileOptions

    assert CompileOptions().target == "onnx" and get("onnx").NAME == "onnx"
    install = (ROOT / "docs" / "install.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install


# --- 12. the embedding example takes an image file and preprocesses it as the manifest says ---


def test_classify_example_reads_an_image_and_preprocesses_it_as_the_manifest_says(tmp_path: Path,
                                                                                   digits: Path) -> None:
    from PIL import Image

    from resdsl.pipeline import CompileOptions, compile_spec

    out, m = compile_spec(CIFAR, CompileOptions(target="onnx", out=tmp_path / "r20", weights=WEIGHTS, batch=1))
    prep = m.section("preprocessing")
    assert prep["per"] == "pixel" and len(prep["mean"]) == 3 * 32 * 32
    batch = pickle.loads((digits / "test_batch").read_bytes())
    image = np.asarray(batch[b"data"], dtype=np.uint8)[7].reshape(3, 32, 32)
    Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "seven.png")

    # the oracle: the checkpoint's module on the image minus the checkpoint's own pixel mean
    ck = torch.load(WEIGHTS, weights_only=True)
    model = build(CIFAR).eval()
    model.load_state_dict(ck["model"])
    with torch.no_grad():
        logits = model(torch.from_numpy(image).float()[None] / 255 - ck["pixel_mean"])[0].numpy()
    want = np.argsort(-logits, kind="stable")[:5]

    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "classify.py"), str(out),
                        str(tmp_path / "seven.png")], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [int(i) for i, _ in rows] == want.tolist()
    assert [float(s) for _, s in rows] == pytest.approx(logits[want].tolist(), abs=1e-4)

    Image.fromarray(image.transpose(1, 2, 0)).resize((64, 48)).save(tmp_path / "big.jpg")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "classify.py"), str(out),
                        str(tmp_path / "big.jpg")], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "is 64x48; scaled to 43x32 and centre-cropped to 32x32" in r.stderr


# --- 13. and 16. the README is a front page, the manual is a site that CI builds strictly ---


def test_the_readme_is_a_front_page_and_ci_runs_lint_and_the_docs() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 200 and max(len(line) for line in readme) <= 400
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", "\n".join(readme))
    assert links and all((ROOT / link).is_file() for link in links), links
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert all(page in nav for page in pages), "every docs page is in the site's navigation"
    assert "strict: true" in nav
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(f"make {t}" in ci for t in ("test", "lint", "docs"))


def test_the_docs_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """`make docs` runs mkdocs so that a warning fails it (mkdocs' --quiet would hide the failure): its exact
    command, on a copy of the site with one broken anchor, exits non-zero; on the real site, zero."""
    pytest.importorskip("mkdocs")
    line = subprocess.run(["make", "-n", "docs"], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    command = next(x for x in line if "mkdocs build" in x).split()
    command[0] = str(Path(sys.executable).parent / "mkdocs")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    ok = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    with (tmp_path / "docs" / "index.md").open("a") as f:
        f.write("\n[broken](commands.md#no-such-heading)\n")
    bad = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "no-such-heading" in bad.stderr
