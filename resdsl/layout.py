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


#: What a state_dict cannot show: keys of a spec that change the function but not one key or shape of the weights.
INVISIBLE = {"downsample": "where a bottleneck strides (1x1 or 3x3)", "shortcut": "the shortcut (option A's "
             "zero-padded identity or none: a plain net)", "stem": "the stem's stride or pool",
             "input": "the input size and normalisation",
             "output_stride": "output_stride (later stages dilated instead of strided)",
             "outputs": "which stages' feature maps the net returns"}


def fits_hint(fits: list[str]) -> str:
    """One or two sentences for an error: every spec the weights fit and, when several do, what weights cannot
    tell apart between them (the spec keys that differ without changing a key or a shape)."""
    if not fits:
        return " No spec in specs/ fits them; check block type, blocks per stage and the number of classes."
    if len(fits) == 1:
        return f" These weights fit {fits[0]} (by keys and shapes)."
    docs = {}
    for f in fits:
        try:
            docs[f] = load(f).resolved
        except Exception:  # listed by specs_fitting, so it loaded a moment ago
            continue
    differ = [what for key, what in INVISIBLE.items() if len({repr(d.get(key)) for d in docs.values()}) > 1]
    plain = [f for f, d in docs.items() if d.get("shortcut") == "none"]
    if plain and len(plain) < len(docs):
        differ = [w for w in differ if not w.startswith("the shortcut")] + ["residual or plain (no shortcuts)"]
    apart = "; ".join(differ) if differ else "nothing in the spec files' keys"
    return (f" These weights fit {len(fits)} specs by keys and shapes: {', '.join(fits)}. Weights alone cannot tell "
            f"them apart: they differ in {apart}, which change what the net computes but no weight. Use the spec the "
            "weights were trained with.")


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
