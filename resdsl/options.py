"""Typed options of ``compile`` (and the limits ``verify`` and ``train`` share), parsed once at the edge.

Every option is validated here, when the dataclass is made, so the CLI and the Python API refuse the same
values with the same message. A message names an option by a ``{field}`` placeholder
(:class:`~resdsl.errors.OptionError`): the Python API shows ``CompileOptions.force``, the CLI ``--force``.
The defaults live here and nowhere else. No torch import: ``resdsl flops`` and the spec layer stay light.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import API_NAMES, OptionError

PRECISIONS = ("fp32", "fp16", "int8")
IO_DTYPES = ("fp32", "fp16")
QUANT_SCHEMES = ("ort", "trt")  # int8 ONNX for ONNX Runtime's fast CPU path, or TensorRT-legal symmetric Q/DQ
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: The default size limits admit every network in the papers with room to spare (the largest,
#: wide_resnet101_2, has 0.13e9 parameters and 22.8 GMACs).
DEFAULT_MAX_PARAMS = 2_000_000_000  # 8 GB of float32 weights
DEFAULT_MAX_GMACS = 2_000.0         # 2 TMACs for one image


#: the largest input side a spec (``input.size``, checked by resdsl.validate) or ``--size`` may give
MAX_SIDE = 16384


def parse_size(text: str) -> tuple[int, int]:
    """``--size HxW`` (``800x1216``) or ``N`` for a square: the input's height and width."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    size = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else None
    if size is None or not all(1 <= s <= MAX_SIDE for s in size):
        raise OptionError(f"{{size}} {text!r}: give the input's height and width as HxW (e.g. 800x1216), or one "
                          f"number for a square, each from 1 to {MAX_SIDE} pixels")
    return size


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an artefact serves: ``min <= opt <= max``, all >= 1 (TensorRT's optimisation profile)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        vals = (self.min, self.opt, self.max)
        if not all(_int(v) and v >= 1 for v in vals):
            raise OptionError(f"{{batch}}: batch sizes must be integers >= 1, got {vals}; give N or MIN:OPT:MAX, "
                              "e.g. 8 or 1:8:32")
        if not self.min <= self.opt <= self.max:
            raise OptionError(f"{{batch}} {self}: out of order; it needs MIN <= OPT <= MAX, e.g. 1:8:32")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``N`` (meaning ``N:N:N``) or ``MIN:OPT:MAX``."""
        parts = str(text).strip().split(":")
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts):
            raise OptionError(f"{{batch}} {text!r}: not a batch size; give N (one fixed batch size) or MIN:OPT:MAX "
                              "with positive integers, e.g. 8 or 1:8:32")
        nums = [int(p) for p in parts]
        return cls(*(nums * 3 if len(nums) == 1 else nums))

    @property
    def dynamic(self) -> bool:
        """Whether the batch axis is symbolic (MIN < MAX)."""
        return self.min != self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class SizeProfile:
    """The input sizes (height, width) an artefact serves: ``min <= opt <= max`` side by side. A range
    (``min != max``) gives the ONNX model symbolic height and width and TensorRT a profile over them."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def __post_init__(self) -> None:
        if not all(self.min[i] <= self.opt[i] <= self.max[i] for i in (0, 1)):
            raise OptionError(f"{{size}} {self}: out of order; it needs MIN <= OPT <= MAX in height and in width, "
                              "e.g. 320x320:800x1216:1344x1344")

    @classmethod
    def parse(cls, text: str) -> SizeProfile:
        """``HxW`` (or ``N``, a square) for one size, or ``MINHxMINW:OPTHxOPTW:MAXHxMAXW`` for a range."""
        parts = str(text).split(":")
        if len(parts) not in (1, 3):
            raise OptionError(f"{{size}} {text!r}: give one size HxW (e.g. 800x1216) or a range "
                              "MINHxMINW:OPTHxOPTW:MAXHxMAXW (e.g. 320x320:800x1216:1344x1344)")
        sizes = [parse_size(p) for p in parts]
        return cls(*(sizes * 3 if len(sizes) == 1 else sizes))

    @property
    def dynamic(self) -> bool:
        """Whether height and width are symbolic (the range is not one size)."""
        return self.min != self.max

    def odd(self) -> tuple[int, int]:
        """An odd size inside the range, away from its ends where it can be (ceil-mode pooling and padding bite
        there): the middle of each side, made odd within it."""
        def side(i: int) -> int:
            lo, hi = self.min[i], self.max[i]
            mid = (lo + hi) // 2
            return mid if mid % 2 else mid + 1 if mid + 1 <= hi else mid - 1 if mid - 1 >= lo else mid
        return side(0), side(1)

    def sizes(self) -> tuple[tuple[int, int], ...]:
        """What verification runs at: min, opt, max, and the odd size, each once."""
        return tuple(dict.fromkeys((self.min, self.opt, self.max, self.odd())))

    def __str__(self) -> str:
        text = [f"{h}x{w}" for h, w in (self.min, self.opt, self.max)]
        return text[0] if not self.dynamic and self.min == self.opt else ":".join(text)


@dataclass(frozen=True)
class Limits:
    """Size limits checked on the analytic counts, before any tensor is allocated (see :mod:`resdsl.limits`)."""

    max_params: int = DEFAULT_MAX_PARAMS
    max_gmacs: float = DEFAULT_MAX_GMACS

    def __post_init__(self) -> None:
        if not _int(self.max_params) or self.max_params < 1:
            raise OptionError(f"{{max_params}} {self.max_params!r}: give a whole number of parameters >= 1")
        if isinstance(self.max_gmacs, bool) or not isinstance(self.max_gmacs, (int, float)) or not self.max_gmacs > 0:
            raise OptionError(f"{{max_gmacs}} {self.max_gmacs!r}: give a number of GMACs > 0")


@dataclass(frozen=True)
class TrtOptions:
    """How TensorRT builds the engine (the ``trt`` target only)."""

    workspace_mib: int = 4096          # builder workspace limit
    opt_level: int = 3                 # builder optimisation level 0..5; TensorRT's default is 3
    timing_cache: Path | None = None   # a directory of timing caches, shared across builds
    tf32: bool = False                 # allow TF32 in fp32 engines (TensorRT's default is on; fp32 means fp32 here)
    version_compatible: bool = False   # build an engine that newer TensorRT runtimes can load

    def __post_init__(self) -> None:
        if not _int(self.workspace_mib) or self.workspace_mib < 1:
            raise OptionError(f"{{workspace_mib}} {self.workspace_mib!r}: the TensorRT workspace must be a whole "
                              "number of MiB >= 1, e.g. 4096")
        if not _int(self.opt_level) or not 0 <= self.opt_level <= 5:
            raise OptionError(f"{{opt_level}} {self.opt_level!r}: the TensorRT builder optimisation level is an "
                              "integer from 0 (fastest build) to 5 (slowest build, fastest engine); the default is 3")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
            if self.timing_cache.exists() and not self.timing_cache.is_dir():
                raise OptionError(f"{{timing_cache}} {self.timing_cache}: is a file; it names a directory that holds "
                                  "one timing cache per TensorRT version, GPU and precision")


@dataclass(frozen=True)
class AotiOptions:
    """How AOTInductor compiles the package (the ``aoti`` target only)."""

    device: str | None = None  # "cpu" or "cuda"; None: cuda when torch sees a GPU, else cpu

    def __post_init__(self) -> None:
        if self.device not in (None, "cpu", "cuda"):
            raise OptionError(f"{{device}} {self.device!r}: the aoti target compiles for cpu or cuda")


DEFAULT_LIMITS = Limits()

#: Option groups that belong to one target each; giving one to another target is refused.
TARGET_GROUPS = {"trt": "trt", "aoti": "aoti"}


#: How many points of top-1 on labelled images an artefact may lose against the fp32 module by default.
DEFAULT_MAX_DROP = {"fp32": 0.2, "fp16": 0.2, "int8": 1.0}


@dataclass(frozen=True)
class CompileOptions:
    """Everything ``compile`` takes besides the spec. ``batch`` may be given as text (``"1:8:32"``)."""

    target: str = "onnx"
    out: Path | None = None                # artefact directory; None: build/NAME
    weights: Path | None = None            # a resdsl checkpoint or a state_dict; None: random He init from seed
    precision: str = "fp32"                # computation inside the artefact
    io: str = "fp32"                       # dtype of the input and the logits
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 1, 32))
    size: SizeProfile | None = None        # input height and width (one, or a range); None: the spec's input.size
    opset: int = 18
    exporter: str = "ir"                   # ONNX writer: "ir" (from resdsl's graph) or "torch" (torch.onnx)
    force: bool = False                    # replace an existing output directory
    seed: int = 0                          # random init without weights, and the verification inputs
    verify_batches: tuple[int, ...] = ()   # batch sizes to verify at; (): see resdsl.verify.batches
    limits: Limits = field(default_factory=Limits)
    trt: TrtOptions | None = None          # trt target only; None: the defaults
    aoti: AotiOptions | None = None        # aoti target only; None: the defaults
    eval_data: Path | None = None          # labelled images: the artefact's top-1 is checked against the module's
    eval_max_drop: float | None = None     # with eval_data: the top-1 budget in points; None: DEFAULT_MAX_DROP
    calibration: Path | None = None        # int8: labelled images; the train split calibrates, the test split checks
    calibration_samples: int = 512         # int8: training images the scales are computed from
    calibration_method: str = "minmax"     # int8: minmax, percentile or entropy (ONNX Runtime's calibrators)
    quant_scheme: str | None = None        # int8: "ort" (uint8 activations, ONNX Runtime's CPU kernels) or "trt";
                                           # None: trt for the trt target, ort otherwise
    fallback: bool = True                  # int8: leave the costliest layers in float until the budget holds
    sensitivity_samples: int = 256         # int8: test images each layer's cost is ranked on; 0: no ranking
    resize: bool = False                   # eval/calibration images of another size are resized (else refused)
    random_weights_ok: bool = False        # accuracy check (eval_data, int8) on random weights, said to prove nothing
    #: Not an option: the labelled data (resdsl.data.Labelled, by path) compile_spec read and checked before the
    #: export, so that a target calibrates on it without reading it again; a path missing here is read when used.
    loaded: Mapping[Path, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.batch, (str, int)) and not isinstance(self.batch, bool):
            object.__setattr__(self, "batch", BatchProfile.parse(str(self.batch)))
        if isinstance(self.size, (str, int)) and not isinstance(self.size, bool):
            object.__setattr__(self, "size", SizeProfile.parse(str(self.size)))
        for name in ("out", "weights", "eval_data", "calibration"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not isinstance(self.batch, BatchProfile):
            raise OptionError(f"{{batch}} {self.batch!r}: give a BatchProfile, a size N or text MIN:OPT:MAX")
        if self.precision not in PRECISIONS:
            raise OptionError(f"{{precision}} {self.precision!r}: choose fp32, fp16 or int8")
        self._check_int8()
        if self.io not in IO_DTYPES or (self.io == "fp16" and self.precision != "fp16"):
            raise OptionError(f"{{io}} {self.io!r}: fp16 inputs and outputs need {{precision}} fp16; "
                              "the default is fp32")
        if not _int(self.opset) or self.opset < 17:
            raise OptionError(f"{{opset}} {self.opset!r}: resdsl exports ONNX opset 17 or newer")
        if self.exporter not in ("ir", "torch"):
            raise OptionError(f"{{exporter}} {self.exporter!r}: choose ir (resdsl writes the ONNX graph itself, the "
                              "default) or torch (torch.onnx traces the module, slower; a cross-check)")
        if not _int(self.seed):
            raise OptionError(f"{{seed}} {self.seed!r}: give an integer")
        if self.eval_max_drop is not None and ((self.eval_data is None and self.calibration is None)
                                               or not 0 <= self.eval_max_drop <= 100):
            raise OptionError(f"{{eval_max_drop}} {self.eval_max_drop}: a top-1 budget in points (0 to 100) for the "
                              "accuracy check, which needs {eval_data} (or {calibration})")
        if not all(_int(b) and b >= 1 for b in self.verify_batches):
            raise OptionError(f"{{verify_batches}} {self.verify_batches!r}: give batch sizes >= 1, like 1,3,8")
        outside = [b for b in self.verify_batches if not self.batch.min <= b <= self.batch.max]
        if outside:
            span = (f"only at {self.batch.min}" if not self.batch.dynamic else
                    f"at sizes from {self.batch.min} to {self.batch.max}")
            raise OptionError(f"{{verify_batches}} {','.join(map(str, outside))}: outside {{batch}} {self.batch}, so "
                              f"the artefact cannot run it; verify {span}, or widen {{batch}}")
        if self.accuracy_data is not None and self.weights is None and not self.random_weights_ok:
            asked = "{eval_data}" if self.eval_data is not None else "{precision} int8"
            raise OptionError(f"{asked} without {{weights}}: the accuracy check would run on random weights, where "
                              "every artefact is at chance level and int8 'keeps' it trivially, which proves "
                              "nothing; give the trained {weights} FILE, or pass {random_weights_ok} if that is "
                              "what you mean")
        for group, owner in TARGET_GROUPS.items():
            if getattr(self, group) is not None and self.target != owner:
                given = [f.name for f in fields(getattr(self, group))
                         if getattr(getattr(self, group), f.name) != f.default]
                names = ", ".join(f"{{{n}}}" for n in given) or f"the {group} options"
                raise OptionError(f"{names}: only the {owner} target takes these, and {{target}} is "
                                  f"{self.target!r}; drop them or compile with {{target}} {owner}")

    def _check_int8(self) -> None:
        if (self.precision == "int8") != (self.calibration is not None):
            raise OptionError("{precision} int8 and {calibration} go together: int8 scales are computed from "
                              "labelled images (a layout resdsl train reads), and only int8 uses them")
        if self.quant_scheme not in (None, *QUANT_SCHEMES) or self.calibration_method not in CALIBRATION_METHODS:
            raise OptionError(f"{{quant_scheme}} {self.quant_scheme!r}, {{calibration_method}} "
                              f"{self.calibration_method!r}: choose a scheme from {', '.join(QUANT_SCHEMES)} and a "
                              f"method from {', '.join(CALIBRATION_METHODS)}")
        if self.precision != "int8" and (self.calibration_samples, self.calibration_method, self.quant_scheme,
                                         self.fallback, self.sensitivity_samples) != (512, "minmax", None, True, 256):
            raise OptionError("{calibration_samples}, {calibration_method}, {quant_scheme}, {fallback} and "
                              "{sensitivity_samples} apply to {precision} int8 only; drop them")
        if not _int(self.sensitivity_samples) or self.sensitivity_samples < 0:
            raise OptionError(f"{{sensitivity_samples}} {self.sensitivity_samples!r}: give a number of images >= 0 "
                              "(0: measure nothing, and no fallback)")
        if self.target == "trt" and self.quant_scheme == "ort":
            raise OptionError("{quant_scheme} ort: TensorRT takes symmetric int8 only; the trt target uses "
                              "{quant_scheme} trt (its default)")
        if not _int(self.calibration_samples) or self.calibration_samples < 1:
            raise OptionError(f"{{calibration_samples}} {self.calibration_samples!r}: give a number of images >= 1")

    @property
    def scheme(self) -> str:
        """The int8 quantization scheme in force."""
        return self.quant_scheme or ("trt" if self.target == "trt" else "ort")

    @property
    def accuracy_data(self) -> Path | None:
        """Where the accuracy check's images come from: ``eval_data``, else (int8) the calibration data, whose
        test split the scales never saw."""
        return self.eval_data if self.eval_data is not None else self.calibration

    @property
    def max_drop(self) -> float:
        """The top-1 budget of the accuracy check, in points."""
        return DEFAULT_MAX_DROP[self.precision] if self.eval_max_drop is None else self.eval_max_drop

    @property
    def trt_options(self) -> TrtOptions:
        """The TensorRT options in force (the defaults when none were given)."""
        return self.trt or TrtOptions()

    @property
    def aoti_options(self) -> AotiOptions:
        """The AOTInductor options in force (the defaults when none were given)."""
        return self.aoti or AotiOptions()


@dataclass(frozen=True)
class BenchOptions:
    """What ``resdsl bench`` measures: batch sizes (default: the profile's opt), ``warmup`` untimed runs, then
    ``iterations`` timed runs or runs for ``duration`` seconds (default 3 s); ``threads`` and ``providers`` as
    in :func:`resdsl.runtime.load`; ``cuda_graph``: a TensorRT engine replayed from a captured CUDA graph."""

    batches: tuple[int, ...] = ()
    warmup: int = 10
    iterations: int | None = None
    duration: float | None = None
    threads: int | None = None
    providers: tuple[str, ...] | None = None
    cuda_graph: bool = False
    bench_size: tuple[int, int] | None = None  # input height and width within the artefact's range; None: its opt

    def __post_init__(self) -> None:
        if isinstance(self.bench_size, str):
            object.__setattr__(self, "bench_size", parse_size(self.bench_size))
        if any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise OptionError(f"{{batches}} {self.batches}: batch sizes must be at least 1, e.g. 1,8,32")
        if self.warmup < 0 or (self.iterations is not None and self.iterations < 1):
            raise OptionError(f"{{warmup}} {self.warmup}, {{iterations}} {self.iterations}: warm-up runs are 0 or "
                              "more, timed iterations at least 1")
        if self.duration is not None and not 0 < self.duration <= 3600:
            raise OptionError(f"{{duration}} {self.duration}: give seconds between 0 and 3600")
        if self.iterations is not None and self.duration is not None:
            raise OptionError("{iterations} and {duration} both given: choose one")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"{{threads}} {self.threads}: must be at least 1")


@dataclass(frozen=True)
class EvalOptions:
    """``data``: a dataset directory; ``split``: test (or val) or train; ``batch_size``: images per call (default: up to
    64 within the artefact's range); ``limit``: the first N images only; ``max_drop``: top-1 budget in points."""

    data: str | Path
    split: str = "test"
    batch_size: int | None = None
    limit: int | None = None
    max_drop: float | None = None
    weights: Path | None = None
    threads: int | None = None
    providers: tuple[str, ...] | None = None
    resize: bool = False  # images of another size than the spec's are resized (else refused)

    def __post_init__(self) -> None:
        if self.split not in ("test", "train"):
            raise OptionError(f"{{split}} {self.split!r}: choose test (the dataset's test or val split) or train")
        for name in ("batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and (not _int(value) or value < 1):
                raise OptionError(f"{{{name}}} {value!r}: must be a whole number, at least 1")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise OptionError(f"{{max_drop}} {self.max_drop}: give points of top-1 between 0 and 100, e.g. 1")


#: How the Python API names each option in messages; the CLI has its own table of flags.
API_NAMES.update({
    **{f.name: f"CompileOptions.{f.name}" for f in fields(CompileOptions)},
    **{f.name: f"Limits.{f.name}" for f in fields(Limits)},
    **{f.name: f"TrtOptions.{f.name}" for f in fields(TrtOptions)},
    **{f.name: f"AotiOptions.{f.name}" for f in fields(AotiOptions)},
    **{f.name: f"BenchOptions.{f.name}" for f in fields(BenchOptions)},
    **{f: f"EvalOptions.{f}" for f in ("split", "limit", "max_drop", "batch_size", "resize")},
    "providers": "providers (of resdsl.runtime.load, verify_artefact, BenchOptions or EvalOptions)",
})
