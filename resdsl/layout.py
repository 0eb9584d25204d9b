"""The state_dict layout a graph lowers to, computed without torch.

Used to check weights files before loading them and to say which spec a
mismatched checkpoint would fit: a torchvision checkpoint names its spec.
"""

from __future__ import annotations

from pathlib import Path

from .expand import expand
from .ir import Graph
from .spec import load

Layout = list[tuple[str, tuple[int, ...]]]


def state_layout(graph: Graph) -> Layout:
    """``[(key, shape), ...]`` in the order ``module.state_dict()`` gives them."""
    out: Layout = []
    for n in graph.nodes:
        a = n.attrs
        if n.op == "conv":
            out.append((f"{n.name}.weight", (a["out_channels"], a["in_channels"] // a["groups"], a["kernel"],
                                             a["kernel"])))
        elif n.op == "bn":
            c = (a["channels"],)
            out += [(f"{n.name}.weight", c), (f"{n.name}.bias", c), (f"{n.name}.running_mean", c),
                    (f"{n.name}.running_var", c), (f"{n.name}.num_batches_tracked", ())]
        elif n.op == "se":
            c, r = a["channels"], a["reduced"]
            out += [(f"{n.name}.fc1.weight", (r, c, 1, 1)), (f"{n.name}.fc1.bias", (r,)),
                    (f"{n.name}.fc2.weight", (c, r, 1, 1)), (f"{n.name}.fc2.bias", (c,))]
        elif n.op == "eca":
            out.append((f"{n.name}.conv.weight", (1, 1, a["kernel"])))
        elif n.op == "fc":
            out += [(f"{n.name}.weight", (a["out_features"], a["in_features"])), (f"{n.name}.bias",
                                                                                 (a["out_features"],))]
    return out


def specs_fitting(layout: dict[str, tuple[int, ...]], search: list[Path]) -> list[str]:
    """Spec files under ``search`` whose layout equals ``layout`` exactly (keys and shapes)."""
    hits: list[str] = []
    seen: set[Path] = set()
    for root in search:
        for path in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
            if "invalid" in path.parts or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                mine = dict(state_layout(expand(load(path))))
            except Exception:  # a spec that does not load cannot fit; keep looking
                continue
            if mine == layout:
                hits.append(str(path))
    return hits
