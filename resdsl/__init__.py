"""resdsl: ResNet architectures written as YAML, compiled into verified artefacts.

Public API (torch is imported only by the functions that need it)::

    spec = resdsl.load("specs/resnet50.yaml")     # validated Spec
    graph = resdsl.expand(spec)                   # backend-neutral IR
    report = resdsl.count(graph)                  # analytic GMACs and params
    model = resdsl.build(spec)                    # trainable torch.nn.Module
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailable, InputError, ResdslError, SpecError, VerificationError
from .expand import expand
from .flops import FlopReport, count
from .ir import Graph, Node
from .spec import Spec, load, loads
from .version import __version__

if TYPE_CHECKING:
    from .backends.torch import ResNet


def build(spec: Spec | str, **kwargs: Any) -> ResNet:
    """Build the trainable ``nn.Module`` of a spec (path or Spec); see :func:`resdsl.backends.torch.build`."""
    from .backends.torch import build as _build

    return _build(spec, **kwargs)


__all__ = ["BackendUnavailable", "FlopReport", "Graph", "InputError", "Node", "ResdslError", "Spec", "SpecError",
           "VerificationError", "__version__", "build", "count", "expand", "load", "loads"]
