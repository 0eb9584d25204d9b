"""``resdsl train`` / ``resdsl plot`` on tiny datasets the tests write: learning, exact resume, crashes, kills,
two processes against one, bad data, and the checkpoint going through ``compile``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from resdsl.backends.torch import build
from resdsl.data import Sampler, augment
from resdsl.errors import BackendUnavailable, InputError
from resdsl.metrics import read as read_metrics
from resdsl.readers import load_dataset
from resdsl.spec import load
from resdsl.train import TrainOptions, lr_at, train
from resdsl.train_cli import add_train_commands, main, plot_runs
from resdsl.weights import load_into

from .conftest import ROOT

TINY = """resdsl: 1
name: tiny
input: {{channels: 3, size: {size}}}
block: basic
shortcut: A
stem:
  conv: {{channels: 8, kernel: 3, stride: 1}}
stages:
  - {{name: conv2_x, width: 8, blocks: 1}}
  - {{name: conv3_x, width: 16, blocks: 1, stride: 2}}
head: {{classes: {classes}}}
{train}"""
TRAIN = """train:
  batch: 16
  iterations: 30
  optimizer: {kind: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
  schedule: {kind: step, milestones: [20], gamma: 0.1}
"""
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def write_spec(d: Path, classes: int = 10, size: int = 32, train: str = TRAIN, name: str = "tiny.yaml") -> Path:
    p = d / name
    p.write_text(TINY.format(size=size, classes=classes, train=train))
    return p


def images(n: int, seed: int, classes: int = 10, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Noise plus a bright band whose channel and position give the class: learnable in a few steps."""
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    x = r.integers(0, 60, (n, 3, size, size)).astype(np.uint8)
    band = size // 4
    for i, c in enumerate(y):
        x[i, c % 3, (c // 3) * band:(c // 3 + 1) * band, :] += 150
    return x, y


def write_cifar(d: Path, per_batch: int = 16, test: int = 32) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k in range(1, 6):
        x, y = images(per_batch, k)
        (d / f"data_batch_{k}").write_bytes(pickle.dumps({b"data": x.reshape(len(x), -1), b"labels": y.tolist()}))
    x, y = images(test, 99)
    (d / "test_batch").write_bytes(pickle.dumps({b"data": x.reshape(len(x), -1), b"labels": y.tolist()}))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return write_spec(d), write_cifar(d / "cifar")


@pytest.fixture(scope="module")
def trained(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec, data = tiny
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainOptions(spec, data, out=out, eval_every=10))
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]  # type: ignore[no-any-return]


def test_loss_goes_down_and_checkpoint_loads_and_compiles(tiny: tuple[Path, Path], trained: Path,
                                                          tmp_path: Path) -> None:
    from resdsl.pipeline import CompileOptions, compile_spec

    rows = read_metrics(trained / "metrics.csv")
    assert [r["iteration"] for r in rows] == [10, 20, 30]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"] and rows[-1]["train_error"] < rows[0]["train_error"]
    assert [r["lr"] for r in rows] == [0.1, 0.1, pytest.approx(0.01)]  # milestone 20: updates 21..30 use 0.01
    ck = torch.load(trained / "last.pt", weights_only=True)
    assert ck["iteration"] == 30 and ck["resdsl"]["spec"] == "tiny" and ck["pixel_mean"].shape == (3, 32, 32)
    load_into(build(load(tiny[0])), trained / "last.pt")
    _, manifest = compile_spec(tiny[0], CompileOptions(target="torch", out=tmp_path / "art",
                                                         weights=trained / "last.pt"))
    assert manifest.verification is not None and manifest.verification["passed"]
    assert manifest.weights["format"] == "resdsl"


def test_crash_then_resume_equals_uninterrupted(tiny: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import resdsl.train as T

    spec, data = tiny
    kw = dict(iterations=8, eval_every=3, milestones=(5,))
    train(TrainOptions(spec, data, out=tmp_path / "a", **kw))  # type: ignore[arg-type]
    calls, step = [0], T.train_step

    def crashing(*a):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 8:
            raise RuntimeError("simulated crash")
        return step(*a)

    monkeypatch.setattr(T, "train_step", crashing)
    with pytest.raises(RuntimeError, match="simulated"):
        train(TrainOptions(spec, data, out=tmp_path / "b", **kw))  # type: ignore[arg-type]
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ck["iteration"] == 6 and ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    assert [f.name for f in (tmp_path / "b").iterdir() if f.name.startswith(".")] == []
    monkeypatch.setattr(T, "train_step", step)
    with pytest.raises(InputError, match="--resume"):
        train(TrainOptions(spec, data, out=tmp_path / "b", **kw))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="--batch 16, not 8"):
        train(TrainOptions(spec, data, out=tmp_path / "b", batch=8, resume=True))
    train(TrainOptions(spec, data, out=tmp_path / "b", resume=True))
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    oa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["optimizer"]["state"]
    ob = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"]) for k in oa)
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(tmp_path / "a" / "metrics.csv")]
    assert strip == [{k: v for k, v in r.items() if k != "images_per_s"}
                     for r in read_metrics(tmp_path / "b" / "metrics.csv")]
    with pytest.raises(InputError, match=r"no .*last.pt to continue"):
        train(TrainOptions(spec, data, out=tmp_path / "c", resume=True))
    s = train(TrainOptions(spec, data, out=tmp_path / "b", resume=True))  # already complete: nothing to do
    assert s["iteration"] == 8 and all(torch.equal(b[k], weights(tmp_path / "b" / "last.pt")[k]) for k in b)
    (tmp_path / "c").mkdir()
    torch.save(b, tmp_path / "c" / "last.pt")  # a plain state_dict: loadable weights, but no training state
    with pytest.raises(InputError, match="not a resdsl training checkpoint"):
        train(TrainOptions(spec, data, out=tmp_path / "c", resume=True))
    (tmp_path / "c" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        train(TrainOptions(spec, data, out=tmp_path / "c", resume=True))


def _wait_for(path: Path, proc: subprocess.Popen[str], rows: int, timeout: float = 60) -> None:
    t = time.monotonic()
    while not (path.is_file() and len(read_metrics(path)) >= rows):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t < timeout, "training did not reach its evaluations in time"
        time.sleep(0.05)


def test_killed_and_terminated_processes_leave_resumable_checkpoints(tiny: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    spec, data = tiny
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "resdsl.train_cli", "train", str(spec), "--data", str(data), "--out", str(out),
           "--iterations", "100000", "--eval-every", "1"]
    p = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "metrics.csv", p, 2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = torch.load(out / "last.pt", weights_only=True)["iteration"]  # complete, whenever the kill came
    assert killed_at >= 1  # metrics.csv is written just before last.pt
    load_into(build(load(spec)), out / "last.pt")
    p = subprocess.Popen([*cmd, "--resume"], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    _wait_for(out / "metrics.csv", p, killed_at + 2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted at iteration" in err and "Traceback" not in err, err
    ck = torch.load(out / "last.pt", weights_only=True)
    assert f"interrupted at iteration {ck['iteration']} " in err
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # the killed run's temp file was cleaned
    rows = read_metrics(out / "metrics.csv")
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))  # no gap, no duplicate


def test_two_processes_equal_one_process_with_the_combined_batch(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """BatchNorm statistics are synchronised over the processes (default), so the split is exact up to rounding."""
    spec, data = tiny
    args = ["train", str(spec), "--data", str(data), "--iterations", "4", "--eval-every", "2"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "resdsl.train_cli", *args, "--out", str(tmp_path / "two")],
                       env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    train(TrainOptions(spec, data, out=tmp_path / "one", iterations=4, eval_every=2))
    one, two = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["resdsl"]["world_size"] == 2


def test_batch_must_divide_over_processes(tiny: tuple[Path, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(InputError, match="batch 16 does not divide over 3 processes"):
        train(TrainOptions(tiny[0], tiny[1], out=tmp_path / "x"))


def write_folders(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from PIL import Image

    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                x, _ = images(1, 10 * c + i, classes, 24)
                suffix = ".jpg" if i == 0 else ".png"
                Image.fromarray(x[0].transpose(1, 2, 0)[:, :20]).save(d / f"{i}{suffix}")  # 24 x 20, not square
    return root


def test_image_folder_layout(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    root = write_folders(tmp_path / "folders")
    (root / "train" / "class0" / "notes.txt").write_text("ignored")
    spec = write_spec(tmp_path, classes=3, size=16, train=TRAIN.replace("batch: 16", "batch: 4"))
    # the images are 24x20: refused at the spec's 16x16 unless asked to resize, which is then said
    with pytest.raises(InputError, match=r"--data: image .*class0/0\.jpg is 24x20 \(HxW\) but the spec takes 16x16; "
                       r".*pass --resize"):
        load_dataset(root, classes=3, size=(16, 16), channels=3)
    with pytest.raises(InputError, match=r"is 24x20"):
        train(TrainOptions(spec, root, out=tmp_path / "refused", iterations=3))
    assert not (tmp_path / "refused").exists()
    ds = load_dataset(root, classes=3, size=(16, 16), channels=3, resize=True)
    assert ds.train_x.shape == (12, 3, 16, 16) and ds.test_x.shape == (6, 3, 16, 16) and ds.test_name == "val"
    assert ds.classes == ["class0", "class1", "class2"] and ds.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.resized is not None and "resized to 16x16" in ds.resized
    assert load_dataset(root, classes=3, size=(24, 20), channels=3).resized is None  # the images' own size
    s = train(TrainOptions(spec, root, out=tmp_path / "run", iterations=3, resize=True))
    assert s["iteration"] == 3 and (tmp_path / "run" / "last.pt").is_file()
    (root / "train" / "class1" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken.png"):
        load_dataset(root, classes=3, size=(16, 16), channels=3, resize=True)
    with pytest.raises(InputError, match=r"has 3 classes .* head has 10"):
        load_dataset(root, classes=10, size=(16, 16), channels=3)


def test_image_folder_without_pillow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'resdsl\[train\]'"):
        load_dataset(tmp_path, classes=1, size=(8, 8), channels=3)


def test_bad_data_dirs_are_refused_with_the_file_named(tmp_path: Path) -> None:
    kw = dict(classes=10, size=(32, 32), channels=3)
    with pytest.raises(InputError, match="no such directory"):
        load_dataset(tmp_path / "missing", **kw)  # type: ignore[arg-type]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither CIFAR batches, IDX files nor a train/"):
        load_dataset(tmp_path / "empty", **kw)  # type: ignore[arg-type]
    d = write_cifar(tmp_path / "c")
    with pytest.raises(InputError, match=r"has 10 classes .* head has 100"):
        load_dataset(d, **{**kw, "classes": 100})  # type: ignore[arg-type]
    (d / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="data_batch_3 is not a CIFAR python batch"):
        load_dataset(d, **kw)  # type: ignore[arg-type]

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch pwned",))

    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(InputError, match="data_batch_3"):
        load_dataset(d, **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(InputError, match=r"data_batch_3 has 'data' of uint8 \[2, 100\]"):
        load_dataset(d, **kw)  # type: ignore[arg-type]
    x, _ = images(2, 0)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": x.reshape(2, -1), b"labels": [0, 12]}))
    with pytest.raises(InputError, match="data_batch_3 has label 12"):
        load_dataset(d, **kw)  # type: ignore[arg-type]
    (d / "data_batch_3").unlink()
    (d / "test_batch").unlink()
    with pytest.raises(InputError, match="no test_batch"):
        load_dataset(d, **kw)  # type: ignore[arg-type]
    f = tmp_path / "f"
    (f / "train" / "a").mkdir(parents=True)
    (f / "val" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match=r"train/a has no \.png/\.jpg images"):
        load_dataset(f, **{**kw, "classes": 1})  # type: ignore[arg-type]


def test_cifar100_layout_and_resize(tmp_path: Path) -> None:
    x, _ = images(6, 1)
    fine = [0, 99, 5, 7, 42, 3]
    for name in ("train", "test"):
        (tmp_path / name).write_bytes(pickle.dumps({b"data": x.reshape(6, -1), b"fine_labels": fine,
                                                    b"coarse_labels": [0] * 6}))
    (tmp_path / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}))
    with pytest.raises(InputError, match=r"its images are 32x32 but the spec takes 24x24; .*pass --resize"):
        load_dataset(tmp_path, classes=100, size=(24, 24), channels=3)
    ds = load_dataset(tmp_path, classes=100, size=(24, 24), channels=3, resize=True)
    assert ds.layout == "cifar-100" and ds.train_y.tolist() == fine and ds.train_x.shape == (6, 3, 24, 24)
    assert ds.resized == "images resized from 32x32 to 24x24 (bilinear; --resize)"
    with pytest.raises(InputError, match="3 channels but the spec takes 1"):
        load_dataset(tmp_path, classes=100, size=(32, 32), channels=1)


def test_train_section_or_command_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    spec = write_spec(tmp_path, train="", name="notrain.yaml")
    with pytest.raises(InputError, match=r"no 'train' section.*--iterations, --batch and --lr"):
        train(TrainOptions(spec, tiny[1], out=tmp_path / "r", iterations=2))
    s = train(TrainOptions(spec, tiny[1], out=tmp_path / "r", iterations=2, batch=8, lr=0.05))
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert s["iteration"] == 2 and ck["config"]["optimizer"]["lr"] == 0.05 and ck["config"]["batch"] == 8


def test_spec_normalisation_is_trained_with_and_recorded(tiny: tuple[Path, Path], trained: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With input.mean/std every training input is (v / 255 - mean[c]) / std[c] for a whole v in 0..255 (or 0,
    the augmentation's padding); the checkpoint records the normalisation instead of a pixel mean, and compile
    refuses the per-pixel run's weights under the normalising spec."""
    import resdsl.train as T
    from resdsl.cli import main as resdsl_main

    mean, std = [0.5, 0.25, 0.125], [0.2, 0.4, 0.8]
    spec = tmp_path / "norm.yaml"
    spec.write_text(tiny[0].read_text().replace("input: {channels: 3, size: 32}",
                                                f"input: {{channels: 3, size: 32, mean: {mean}, std: {std}}}"))
    seen: list[torch.Tensor] = []
    real = T.train_step

    def step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(x.clone())
        return real(net, opt, x, y)

    monkeypatch.setattr(T, "train_step", step)
    train(TrainOptions(spec, tiny[1], out=tmp_path / "run", iterations=2, eval_every=2, progress=False))
    x = torch.cat(seen).double()
    v = (x * torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
         + torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) * 255  # the oracle's inverse: back to 0..255
    image = x != 0
    assert image.float().mean() > 0.8 and ((v - v.round()).abs()[image] < 1e-3).all()
    assert v[image].min() > -1e-3 and v[image].max() < 255 + 1e-3
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "pixel_mean" not in ck and ck["normalize"] == {"mean": mean, "std": std}
    assert resdsl_main(["compile", str(spec), "--target", "torch", "-o", str(tmp_path / "a"), "-q", "--weights",
                        str(tmp_path / "run" / "last.pt"), "--eval-data", str(tiny[1])]) == 0
    assert resdsl_main(["compile", str(spec), "--target", "torch", "-o", str(tmp_path / "b"), "-q", "--weights",
                        str(trained / "last.pt"), "--eval-data", str(tiny[1])]) == 2
    assert not (tmp_path / "b").exists()


def test_schedules(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    rec = {"iterations": 100, "optimizer": {"lr": 0.1}, "schedule": {"kind": "step", "milestones": [50, 75],
                                                                      "gamma": 0.1}}
    assert [lr_at(rec, i) for i in (0, 49, 50, 74, 75)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    rec["schedule"] = {"kind": "cosine"}
    assert [lr_at(rec, i) for i in (0, 50, 100)] == pytest.approx([0.1, 0.05, 0.0])
    plateau = TRAIN.replace("kind: step, milestones: [20], gamma: 0.1", "kind: plateau, gamma: 0.5, patience: 1")
    spec = write_spec(tmp_path, train=plateau.replace("lr: 0.1", "lr: 1.0e-6"), name="plateau.yaml")
    train(TrainOptions(spec, tiny[1], out=tmp_path / "p", iterations=4, eval_every=1))
    lrs = [r["lr"] for r in read_metrics(tmp_path / "p" / "metrics.csv")]
    assert lrs[0] == 1e-6 and lrs[-1] < 1e-6  # a frozen net's test error does not improve: the lr halves


def test_sampler_and_augmentation() -> None:
    s = Sampler(10, 4, seed=3)
    stream = torch.cat([s.indices(i) for i in range(5)])  # 20 samples: two epochs, one batch straddles them
    assert sorted(stream[:10].tolist()) == list(range(10)) == sorted(stream[10:].tolist())
    assert torch.equal(Sampler(10, 4, seed=3).indices(2), s.indices(2))
    x = torch.randn(5, 3, 8, 6)
    oy, ox = torch.tensor([0, 4, 2, 1, 3]), torch.tensor([4, 0, 2, 3, 1])
    flip = torch.tensor([True, False, True, False, True])
    got = augment(x, 2, oy, ox, flip)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for j in range(5):
        want = xp[j, :, oy[j]:oy[j] + 8, ox[j]:ox[j] + 6]
        assert torch.equal(got[j], want.flip(2) if flip[j] else want)


def test_plot_and_cli(trained: Path, tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_train_commands(p.add_subparsers(dest="command"))
    a = p.parse_args(["train", "s.yaml", "--data", "d", "--milestones", "100,200", "--no-sync-bn"])
    assert a.milestones == (100, 200) and not a.sync_bn and a.resume is False
    if importlib.util.find_spec("matplotlib"):
        png = plot_runs([trained, trained / "metrics.csv"], tmp_path / "fig" / "curves.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path)]) == 2 and "no metrics.csv" in capsys.readouterr().err
    assert main(["train", str(tiny[0]), "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'resdsl\[train\]'"):
        plot_runs([trained], tmp_path / "x.png")
