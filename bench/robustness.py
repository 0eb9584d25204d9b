"""Throw bad input and faults at resdsl; print a table of what was tried and what happened.

    python bench/robustness.py [--mutants 400] [--kills 6] [--seed 0]

Every row must read "0 crashes": a crash is a traceback, a hang (> 10 s), a
partial output directory, or an artefact loaded that should have been refused.
The README's reliability table is this script's output.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resdsl import InputError, SpecError, load  # noqa: E402
from resdsl.runtime import load as load_artefact  # noqa: E402
from tests.test_reliability import HOSTILE  # noqa: E402


class Tally:
    def __init__(self, kind: str) -> None:
        self.kind, self.tried, self.clean, self.crashes, self.worst = kind, 0, 0, 0, 0.0
        self.notes: list[str] = []

    def row(self, outcome: str) -> str:
        result = outcome.format(clean=self.clean)
        return f"| {self.kind} | {self.tried} | {result} | {self.crashes} | {self.worst:.2f} s |"


def spec_attempt(t: Tally, path: Path) -> None:
    t.tried += 1
    start = time.perf_counter()
    try:
        load(path)
    except SpecError:
        t.clean += 1
    except Exception as e:  # a crash: anything but SpecError
        t.crashes += 1
        t.notes.append(f"{path.name}: {type(e).__name__}: {e}")
    else:
        t.clean += 1  # a valid mutant is a clean outcome too
    t.worst = max(t.worst, time.perf_counter() - start)


def mutate(doc: object, rng: random.Random) -> object:
    values = [None, True, -1, 0, 3, 10**9, 1.5, float("nan"), "", "x" * 50, [], {}, [1, 2], {"a": 1}, "A", "3x3"]
    if isinstance(doc, dict) and doc:
        k = rng.choice(list(doc))
        r = rng.random()
        if r < 0.2:
            doc.pop(k)
        elif r < 0.35:
            doc[k + rng.choice(["", "s", "_"])[::-1] or "x"] = doc.pop(k)
        elif r < 0.7:
            doc[k] = mutate(doc[k], rng)
        else:
            doc[k] = rng.choice(values)
    elif isinstance(doc, list) and doc:
        i = rng.randrange(len(doc))
        doc[i] = mutate(doc[i], rng) if rng.random() < 0.7 else rng.choice(values)
    else:
        return rng.choice(values)
    return doc


def hostile_specs(tmp: Path, mutants: int, rng: random.Random) -> list[Tally]:
    rows = []
    t = Tally("specs/invalid/ fixtures")
    for p in sorted((ROOT / "specs" / "invalid").glob("*.yaml")):
        spec_attempt(t, p)
    rows.append(t)
    t = Tally("hostile YAML (alias bombs, 50k-deep nesting, python tags, merge keys, absurd sizes)")
    for name, text in HOSTILE.items():
        (tmp / f"{name}.yaml").write_text(text)
        spec_attempt(t, tmp / f"{name}.yaml")
    big = tmp / "huge.yaml"
    with big.open("wb") as f:
        f.truncate(2 << 30)
    spec_attempt(t, big)
    for data in (b"\xff\xfe\x00garbage", b"resdsl: 1\nname: \x00\n", b"\t\t- - ["):
        (tmp / "bin.yaml").write_bytes(data)
        spec_attempt(t, tmp / "bin.yaml")
    rows.append(t)
    bases = [p for p in (ROOT / "specs").rglob("*.yaml") if "invalid" not in p.parts and "extends" not in p.read_text()]
    t = Tally("mutated valid specs (keys dropped, renamed, retyped)")
    for i in range(mutants):
        doc = yaml.safe_load(rng.choice(bases).read_text())
        for _ in range(rng.randint(1, 3)):
            doc = mutate(doc, rng)
        p = tmp / f"m{i}.yaml"
        p.write_text(yaml.safe_dump(doc) if not isinstance(doc, float) else "x: .nan\n")
        spec_attempt(t, p)
    rows.append(t)
    t = Tally("random bytes")
    for i in range(mutants):
        p = tmp / f"r{i}.yaml"
        p.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        spec_attempt(t, p)
    rows.append(t)
    return rows


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def hostile_artefacts(tmp: Path, rng: random.Random) -> list[Tally]:
    rows = []
    for target, fname in (("torch", "model.pt"), ("onnx", "model.onnx")):
        good = tmp / f"good-{target}"
        r = cli("compile", "specs/cifar/resnet20.yaml", "--target", target, "-o", str(good))
        assert r.returncode == 0, r.stderr
        t = Tally(f"damaged {fname} (bit flips, truncations), manifest edits (escaping paths, symlinks, extra "
                  "files, other schema, bad JSON)")
        size = (good / fname).stat().st_size
        cases = [("flip", rng.randrange(size)) for _ in range(40)] + [("trunc", rng.randrange(size)) for _ in range(10)]
        cases += [("escape", 0), ("symlink", 0), ("extra", 0), ("schema", 0), ("json", 0)]
        for kind, pos in cases:
            d = tmp / f"bad-{target}"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(good, d)
            f, m = d / fname, json.loads((d / "manifest.json").read_text())
            if kind == "flip":
                b = bytearray(f.read_bytes())
                b[pos] ^= 1 << rng.randrange(8)
                f.write_bytes(bytes(b))
            elif kind == "trunc":
                f.write_bytes(f.read_bytes()[:pos])
            elif kind == "escape":
                m["files"]["../" + fname] = m["files"].pop(fname)
            elif kind == "symlink":
                f.unlink()
                f.symlink_to(good / fname)
            elif kind == "extra":
                (d / "payload.so").write_bytes(b"\x7fELF")
            elif kind == "schema":
                m["schema"] = "resdsl.manifest/0"
            if kind in ("escape", "schema"):
                (d / "manifest.json").write_text(json.dumps(m))
            if kind == "json":
                (d / "manifest.json").write_text("{")
            t.tried += 1
            start = time.perf_counter()
            try:
                load_artefact(d)
                t.crashes += 1
                t.notes.append(f"{target} {kind}@{pos}: loaded")
            except InputError:
                t.clean += 1
            except Exception as e:
                t.crashes += 1
                t.notes.append(f"{target} {kind}@{pos}: {type(e).__name__}")
            t.worst = max(t.worst, time.perf_counter() - start)
        rows.append(t)
    return rows


def _complete(out: Path) -> bool:
    from resdsl import ResdslError
    from resdsl.manifest import read

    try:
        read(out)
    except ResdslError:
        return False
    return True


def faults(tmp: Path, kills: int, rng: random.Random) -> list[Tally]:
    rows = []
    for sig in (signal.SIGKILL, signal.SIGINT):
        t = Tally(f"compile interrupted by {sig.name} at a random moment, then compiled again")
        for i in range(kills):
            out = tmp / f"k{sig.name}{i}" / "art"
            out.parent.mkdir()
            cmd = [sys.executable, str(ROOT / "cli.py"), "compile", "specs/resnet50.yaml", "--target", "onnx", "-o",
                   str(out)]
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(2.0, 20.0))
            p.send_signal(sig)
            _, err = p.communicate()
            t.tried += 1
            # killed after the rename (the process was still shutting down), the directory is whole: only a
            # directory whose manifest or files do not check out is partial
            partial = out.exists() and not _complete(out)
            tb = "Traceback" in err
            r = cli("compile", "specs/cifar/resnet20.yaml", "--target", "torch", "-o", str(out), "--force")
            leftovers = [x.name for x in out.parent.iterdir() if x.name != "art"]
            if partial or tb or r.returncode != 0 or leftovers:
                t.crashes += 1
                t.notes.append(f"{sig.name} #{i}: partial={partial} traceback={tb} next={r.returncode} {leftovers}")
            else:
                t.clean += 1
        rows.append(t)
    t = Tally("two compiles into one directory at once")
    for i in range(3):
        out = tmp / f"c{i}"
        ps = [subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "compile", "specs/resnet18.yaml", "--target",
                                "torch", "-o", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
        codes = sorted((p.wait(), p.stderr.read() if p.stderr else "")[0] for p in ps)
        t.tried += 1
        if codes == [0, 2] and cli("verify", str(out)).returncode == 0:
            t.clean += 1
        else:
            t.crashes += 1
            t.notes.append(f"pair {i}: exit codes {codes}")
    rows.append(t)
    return rows


def _bad_calibration_sets(tmp: Path) -> dict[str, Path]:
    """Calibration/evaluation directories a user might point at by mistake, made from the digits."""
    import pickle

    import numpy as np

    from experiments.degradation import write_digits

    arrays = np.load(ROOT / "tests" / "data" / "digits.npz")
    good = write_digits(tmp / "digits", images=arrays["images"], targets=arrays["targets"])
    sets = {"missing directory": tmp / "nowhere", "empty directory": tmp / "empty"}
    sets["empty directory"].mkdir()

    def variant(name: str, batch: bytes | None = None, meta: bytes | None = None) -> None:
        d = tmp / name.replace(" ", "-")
        shutil.copytree(good, d)
        if batch is not None:
            (d / "data_batch_1").write_bytes(batch)
        if meta is not None:
            (d / "batches.meta").write_bytes(meta)
        sets[name] = d

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pickled code ran",))

    variant("truncated pickle", batch=(good / "data_batch_1").read_bytes()[:1000])
    variant("hostile pickle (code)", batch=pickle.dumps({b"data": Evil(), b"labels": [0]}))
    variant("images of another size", batch=pickle.dumps({b"data": np.zeros((4, 3 * 16 * 16), np.uint8),
                                                          b"labels": [0, 1, 2, 3]}))
    variant("labels outside the head's classes", batch=pickle.dumps({b"data": np.zeros((4, 3072), np.uint8),
                                                                      b"labels": [0, 1, 2, 11]}))
    variant("fewer images than --calibration-samples", batch=pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}))
    return sets


def bad_calibration(tmp: Path) -> list[Tally]:
    """``compile --precision int8 --calibration DIR`` on each bad DIR: exit 2, one line, nothing written."""
    t = Tally("bad calibration data for int8 (missing or empty directory, truncated or hostile pickle, images of "
              "another size, labels outside the head's classes, fewer images than --calibration-samples)")
    weights = ROOT / "tests" / "data" / "digits-resnet20.pt"
    for name, data in _bad_calibration_sets(tmp / "calib").items():
        out = tmp / "calib-out"
        t.tried += 1
        start = time.perf_counter()
        r = cli("compile", "specs/cifar/resnet20.yaml", "--weights", str(weights), "--precision", "int8",
                "--calibration", str(data), "--calibration-samples", "8", "-o", str(out), "-q")
        t.worst = max(t.worst, time.perf_counter() - start)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        if (r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr and not out.exists()
                and "pickled code ran" not in r.stdout + r.stderr):
            t.clean += 1
        else:
            t.crashes += 1
            t.notes.append(f"calibration {name}: exit {r.returncode}, {lines[-1:] or 'no message'}")
    return [t]


def _idx_file(a: Any) -> bytes:
    """An IDX file of unsigned bytes (the MNIST family's format), written from its definition."""
    import struct

    return bytes([0, 0, 8, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.astype("uint8").tobytes()


def _bad_idx_sets(tmp: Path) -> dict[str, Path]:
    """IDX directories broken one way each: truncated, wrong magic number, image and label counts that disagree,
    a header claiming absurd sizes, a file longer than its header says, garbage behind a .gz name."""
    import gzip
    import struct

    import numpy as np

    r = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": r.integers(0, 256, (40, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(40) % 10,
              "t10k-images-idx3-ubyte": r.integers(0, 256, (20, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(20) % 10}
    sets = {}

    def variant(name: str, file: str, data: bytes, gz: bool = False) -> None:
        d = tmp / name.replace(" ", "-")
        d.mkdir(parents=True)
        for n, a in arrays.items():
            (d / n).write_bytes(_idx_file(a))
        if gz:
            (d / file).unlink()
            file += ".gz"
        (d / file).write_bytes(data)
        sets[name] = d

    images = _idx_file(arrays["train-images-idx3-ubyte"])
    variant("truncated", "train-images-idx3-ubyte", images[:-100])
    variant("longer than its header", "train-images-idx3-ubyte", images + b"\0")
    variant("wrong magic number", "train-images-idx3-ubyte", images[:2] + b"\x0d" + images[3:])
    variant("counts disagree", "train-labels-idx1-ubyte", _idx_file(np.zeros(39)))
    variant("hostile sizes", "train-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">III", *[2**32 - 1] * 3))
    variant("labels outside the head", "t10k-labels-idx1-ubyte", _idx_file(np.full(20, 11)))
    variant("not gzip", "t10k-images-idx3-ubyte", b"\x1f\x8bgarbage", gz=True)
    variant("gzip cut short", "t10k-labels-idx1-ubyte",
            gzip.compress(_idx_file(arrays["t10k-labels-idx1-ubyte"]), mtime=0)[:-12], gz=True)
    return sets


def bad_idx(tmp: Path) -> list[Tally]:
    """``compile --eval-data DIR`` and ``train --data DIR`` on each broken IDX directory: exit 2, one line, nothing
    written."""
    t = Tally("bad IDX files (MNIST family: truncated, longer than the header, wrong magic number, image and label "
              "counts that disagree, hostile sizes, labels outside the head, corrupt or cut-short .gz)")
    for name, data in _bad_idx_sets(tmp / "idx").items():
        for args in (["compile", "specs/fashion/resnet20.yaml", "--eval-data", str(data), "--random-weights",
                      "-o", str(tmp / "idx-out"), "-q"],
                     ["train", "specs/fashion/resnet20.yaml", "--data", str(data), "--out", str(tmp / "idx-out"),
                      "--iterations", "1"]):
            t.tried += 1
            start = time.perf_counter()
            r = cli(*args)
            t.worst = max(t.worst, time.perf_counter() - start)
            lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("resdsl: note")]
            if r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr and \
                    not (tmp / "idx-out").exists():
                t.clean += 1
            else:
                t.crashes += 1
                t.notes.append(f"IDX {name} ({args[0]}): exit {r.returncode}, {lines[-1:] or 'no message'}")
    return [t]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=400)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        spec_rows = hostile_specs(tmp, a.mutants, rng)
        art_rows = hostile_artefacts(tmp, rng)
        fault_rows = faults(tmp, a.kills, rng)
        calib_rows = bad_calibration(tmp)
        idx_rows = bad_idx(tmp)
    print("| bad input or fault | tried | outcome | crashes | slowest |")
    print("|---|---|---|---|---|")
    for t in spec_rows:
        print(t.row("{clean} refused with a located SpecError (or valid), exit 2"))
    for t in art_rows:
        print(t.row("{clean} refused by runtime.load / verify before loading, exit 2"))
    for t in fault_rows:
        print(t.row("{clean} left no partial directory; the next compile succeeded"))
    for t in calib_rows:
        print(t.row("{clean} refused with a one-line error naming the directory, exit 2, nothing written"))
    for t in idx_rows:
        print(t.row("{clean} refused with a one-line error naming the file, exit 2, nothing written (compile "
                    "--eval-data and train --data each)"))
    notes = [n for t in spec_rows + art_rows + fault_rows + calib_rows + idx_rows for n in t.notes]
    for n in notes:
        print(f"CRASH: {n}")
    sys.exit(1 if notes else 0)


if __name__ == "__main__":
    main()
