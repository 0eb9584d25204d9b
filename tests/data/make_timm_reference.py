"""Generate timm reference data for resdsl's timm-compatible ResNet variants.

Usage::

    python tests/data/make_timm_reference.py /path/to/timm-src [--git-dir DIR] [--out-dir DIR]

``/path/to/timm-src`` is an extracted source tree of huggingface/pytorch-image-models
(the directory holding ``timm/`` and ``results/``).  The commit sha and date are read
with git from ``--git-dir`` (or from ``timm-src/.git`` when the tree is a checkout).

timm is imported straight from that source tree.  torchvision is not installed beside
the CPU build of torch, and timm needs it only for data transforms, datasets and
FrozenBatchNorm2d, none of which the ResNet models use, so a stub package is put in
``sys.modules`` first (see ``install_torchvision_stub``).  timm's optional imports
(huggingface_hub, safetensors) are simply absent; no weights are downloaded.

The script writes, next to itself (or into ``--out-dir``):

``timm-resnet-reference.json``
    For each model of ``MODELS``: every state_dict entry in order with its shape,
    the trainable parameter count, the MACs at 1x3x224x224 (FlopCounterMode total / 2,
    i.e. multiply-adds of conv, conv1d and linear without biases), and timm's published
    figures: ``param_count`` from ``results/results-imagenet.csv`` and ``param_count`` /
    ``infer_gmacs`` from one benchmark csv (timm's benchmark counts GMACs with fvcore,
    which also counts batch norm and global pooling, so they sit slightly above ours).

``timm-golden-logits.json``
    The 1000 logits of some models in eval mode under the deterministic weights of
    ``tests/data/reference-README.md`` (see ``reference_weights``) and a linspace input.

Only small numbers of models are built, and FLOPs are counted on the meta device, so
the whole run takes well under a minute on two CPU cores.
"""
from __future__ import annotations

import argparse
import csv
import enum
import importlib.abc
import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.golden
from tests.golden import reference_weights

#: Models recorded in timm-resnet-reference.json (plain resnet50 is a control).
MODELS = [
    "resnet50",
    "resnet18d",
    "resnet26d",
    "resnet34d",
    "resnet50d",
    "resnet101d",
    "resnet152d",
    "resnet50c",
    "resnet50s",
    "resnet26t",
    "resnet50t",
    "seresnet50",
    "seresnext50_32x4d",
    "ecaresnet50d",
]

#: Models given golden logits at 64x64 (the brief's main case).
LOGIT_MODELS = ["resnet50d", "seresnet50", "ecaresnet50d", "resnet26t"]

#: Extra golden-logit cases: 224x224 (the ImageNet size), and 72x72, where the stage
#: inputs of layer3 and layer4 are 9x9 and 5x5, so the ceil_mode of the avg-pool
#: downsample (avg_down=True) changes the result.
EXTRA_CASES = [("resnet50d", 224), ("resnet50d", 72), ("resnet26t", 72), ("ecaresnet50d", 72)]

MACS_INPUT = [1, 3, 224, 224]
IMAGENET_CSV = "results/results-imagenet.csv"
BENCHMARK_CSV = "results/benchmark-infer-amp-nchw-pt291-cu130-5090.csv"


# --------------------------------------------------------------------------- stubs

class InterpolationMode(enum.Enum):
    """Stand-in for torchvision.transforms.InterpolationMode (timm maps it to strings)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


#: Sub-packages of the stub; any other attribute of a stub module is a dummy.
_STUB_SUBMODULES = {
    "torchvision": {"transforms", "ops", "datasets", "models", "utils", "io"},
    "torchvision.transforms": {"functional", "v2"},
    "torchvision.transforms.v2": {"functional"},
    "torchvision.ops": {"misc"},
    "torchvision.models": {"feature_extraction"},
}


def _stub_attr(module_name: str, name: str):
    """A dummy for ``module_name.name``: a class for CamelCase names, else a function."""
    if name == "InterpolationMode":
        return InterpolationMode
    if name[:1].isupper():
        return type(name, (), {"__module__": module_name, "__init__": lambda self, *a, **k: None})

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{module_name}.{name} is a stub: torchvision is not installed")

    unavailable.__name__ = name
    return unavailable


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _STUB_SUBMODULES.get(self.__name__, ()):
            value = importlib.import_module(f"{self.__name__}.{name}")
        else:
            value = _stub_attr(self.__name__, name)
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every ``import torchvision[.x.y]`` with an empty stub package."""

    imported: ClassVar[list[str]] = []

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+stub"
        self.imported.append(spec.name)
        return module

    def exec_module(self, module):
        pass


def install_torchvision_stub() -> _StubFinder:
    if "torchvision" in sys.modules:
        raise RuntimeError("a real torchvision is already imported")
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    return finder


def import_timm(src: Path):
    install_torchvision_stub()
    sys.path.insert(0, str(src))
    import timm  # imported from the source tree on purpose
    import timm.models.resnet

    if not Path(timm.__file__).resolve().is_relative_to(src.resolve()):
        raise RuntimeError(f"imported timm from {timm.__file__}, not from {src}")
    return timm


# --------------------------------------------------------------------------- weights

def linspace_input(size: int) -> torch.Tensor:
    return torch.linspace(-1, 1, 3 * size * size).reshape(1, 3, size, size)


def float32_list(t: torch.Tensor) -> list[float]:
    """Shortest decimal strings that round-trip each float32 value, as JSON numbers."""
    return [float(str(v)) for v in t.detach().to(torch.float32).numpy()]


# --------------------------------------------------------------------------- figures

def state_dict_layout(model: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def count_macs(timm, name: str) -> int:
    """FlopCounterMode total / 2 at MACS_INPUT, on the meta device (no real compute)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
        x = torch.empty(MACS_INPUT)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def published_rows(rows: list[dict], arch: str, **match) -> list[dict]:
    """Rows whose ``model`` is ``arch`` or ``arch.<pretrained tag>``."""
    out = []
    for row in rows:
        if row["model"].split(".")[0] != arch:
            continue
        if all(row.get(k) == v for k, v in match.items()):
            out.append(row)
    return out


def published_figures(src: Path, arch: str) -> dict:
    imagenet = published_rows(read_csv(src / IMAGENET_CSV), arch)
    counts = sorted({r["param_count"] for r in imagenet})
    if len(counts) > 1:
        raise RuntimeError(f"{arch}: rows disagree on param_count: {counts}")
    # the benchmark row at 224 if there is one, else the smallest size benchmarked
    bench = sorted(published_rows(read_csv(src / BENCHMARK_CSV), arch), key=lambda r: int(r["infer_img_size"]))
    bench = [r for r in bench if r["infer_img_size"] == "224"] or bench
    return {
        "published_param_count_m": counts[0] if counts else None,
        "published_source": (
            f"{IMAGENET_CSV} rows {', '.join(sorted({r['model'] for r in imagenet}))} "
            f"(column param_count)" if imagenet else f"{IMAGENET_CSV}: no row for {arch}"),
        "benchmark_param_count_m": bench[0]["param_count"] if bench else None,
        "benchmark_gmacs": bench[0]["infer_gmacs"] if bench else None,
        "benchmark_img_size": int(bench[0]["infer_img_size"]) if bench else None,
        "benchmark_source": (
            f"{BENCHMARK_CSV} row {bench[0]['model']},infer_img_size={bench[0]['infer_img_size']} "
            f"(columns param_count, infer_gmacs; fvcore count)" if bench else f"{BENCHMARK_CSV}: no row for {arch}"),
    }


# --------------------------------------------------------------------------- output

def dump(obj, indent: int = 0) -> str:
    """JSON with one key (or one list-of-lists item) per line and flat lists on one line."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and all(isinstance(v, (list, dict)) for v in obj):
        items = [f"{inner}{dump(v, indent + 1) if isinstance(v, dict) else json.dumps(v)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def git_commit(git_dir: Path) -> tuple[str, str]:
    def git(*args):
        return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                              capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "HEAD"), git("log", "-1", "--format=%cI", "HEAD")


def check_logits(name: str, y: torch.Tensor) -> None:
    if y.shape != (1000,) or not torch.isfinite(y).all() or float(y.std()) < 1e-3:
        raise RuntimeError(f"{name}: degenerate logits (std {float(y.std())})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("timm_src", type=Path, help="extracted pytorch-image-models tree")
    parser.add_argument("--git-dir", type=Path, help="git directory of the same commit (default: TIMM_SRC/.git)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    src = args.timm_src.resolve()
    commit, date = git_commit(args.git_dir or src / ".git")

    torch.manual_seed(0)
    timm = import_timm(src)
    print(f"timm {timm.__version__} from {src} at {commit} ({date})")
    print("torchvision stub modules imported:", ", ".join(_StubFinder.imported))

    layouts: dict[str, dict] = {}
    built: dict[str, torch.nn.Module] = {}
    for name in MODELS:
        model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
        entry = {
            "state_dict": state_dict_layout(model),
            "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "macs": count_macs(timm, name),
            **published_figures(src, name),
        }
        layouts[name] = entry
        if name in LOGIT_MODELS or any(name == m for m, _ in EXTRA_CASES):
            built[name] = model
        print(f"{name:20s} params {entry['num_params']:>10,d}  MACs {entry['macs']:>14,d}  "
              f"published {entry['published_param_count_m']}M / {entry['benchmark_gmacs']} GMACs "
              f"at {entry['benchmark_img_size']}")

    def case(name: str, size: int, with_features: bool = False) -> dict:
        model = built[name]
        model.load_state_dict(reference_weights(layouts[name]["state_dict"]), strict=True)
        with torch.no_grad():
            x = linspace_input(size)
            y = model(x)[0]
            features = model.forward_head(model.forward_features(x), pre_logits=True)[0]
        check_logits(name, y)
        print(f"{name} @{size}: logits mean {float(y.mean()):+.5f} std {float(y.std()):.5f} "
              f"range [{float(y.min()):+.4f}, {float(y.max()):+.4f}]")
        out = {"input_size": [size, size], "logits": float32_list(y)}
        if with_features:
            out["pre_logits"] = float32_list(features)
        return out

    golden = {
        "timm_commit": commit,
        "input": ("torch.linspace(-1, 1, 3*S*S).reshape(1, 3, S, S), float32, with S the case's input_size; "
                  "eval mode; weights: the deterministic formula of tests/data/reference-README.md applied "
                  "in timm's state_dict order (timm-resnet-reference.json); logits are the float32 outputs "
                  "written as shortest round-trip decimals"),
        "pre_logits": ("the globally average-pooled features that feed fc (model.forward_head(..., "
                       "pre_logits=True)) of the 64x64 cases; under the formula's fc weights logit c is "
                       "P*sin(0.37*C*c) + Q*cos(0.37*C*c) + fc.bias[c] (C = number of features) for two "
                       "numbers P, Q, so the logits alone pin down only two numbers of these features"),
        "models": {name: case(name, 64, with_features=True) for name in LOGIT_MODELS},
        "extra_cases": [{"model": name, **case(name, size)} for name, size in EXTRA_CASES],
    }
    reference = {
        "timm_commit": commit,
        "timm_commit_date": date,
        "timm_version": timm.__version__,
        "input": MACS_INPUT,
        "macs_convention": ("torch.utils.flop_counter.FlopCounterMode total / 2 at input: multiply-adds "
                            "of conv (2d and 1d) and linear, biases, BN, activations, pooling and adds "
                            "not counted"),
        "num_params_convention": "sum of numel of model.parameters() (BN running stats excluded)",
        "models": layouts,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "timm-resnet-reference.json").write_text(dump(reference) + "\n")
    (args.out_dir / "timm-golden-logits.json").write_text(dump(golden) + "\n")
    print("wrote", args.out_dir / "timm-resnet-reference.json", "and", args.out_dir / "timm-golden-logits.json")


if __name__ == "__main__":
    main()
