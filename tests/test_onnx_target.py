"""Every spec compiles to ONNX and verifies (the deeper ones in `make test-all`: COVERED_BY); torchvision's golden
logits through ONNX Runtime."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resdsl.errors import InputError
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.runtime import load as load_artefact
from resdsl.spec import load as load_spec

from .conftest import DEEP, ROOT, SPECS, VALID_SPECS, spec_id
from .golden import reference_weights

#: Specs whose full-size sweep runs in `make test-all` only (marked slow), each with the spec that checks the same
#: configuration at full size in the default run (`make test`): the same block, shortcut, stride placement,
#: inner-width rule, stem and attention, only fewer blocks (or a CIFAR stem), so the same ONNX ops, names and
#: export path. A pair of specs stands in for a net whose features are checked apart (seresnext50_32x4d: ResNeXt's
#: grouped convs and SE; resnet50d: ecaresnet50d's deep stem and shortcut D, and a bottleneck without attention):
#: each part of its configuration is that of one of the pair.
#: With the ONNX file written from the IR (a second or two), a full-size compile's time is its verification: the
#: torch module and ONNX Runtime at 224x224, batch 1 and 3 (ResNet-152: about 8 s of a 10 s compile on 2 cores),
#: which is what keeps these deep and wide nets out of the default run. Their lowering is checked there all the
#: same, against torch's exporter at reduced depth and size (tests/test_onnx_emit.py, every spec in make test-all).
COVERED_BY = {
    "resnet34.yaml": "resnet18.yaml",
    "resnet101.yaml": "resnet50.yaml",
    "resnet152.yaml": "resnet50.yaml",
    "plain18.yaml": "cifar/plain20.yaml",
    "plain34.yaml": "cifar/plain20.yaml",
    "resnet34-a.yaml": "cifar/resnet20.yaml",
    "torchvision/resnet18.yaml": "resnet18.yaml",  # the same graph as the paper's (basic blocks have no stride choice)
    "torchvision/resnet34.yaml": "resnet18.yaml",
    "torchvision/resnet101.yaml": "torchvision/resnet50.yaml",
    "torchvision/resnet152.yaml": "torchvision/resnet50.yaml",
    "torchvision/resnext101_32x8d.yaml": "torchvision/resnext50_32x4d.yaml",
    "torchvision/resnext101_64x4d.yaml": "torchvision/resnext50_32x4d.yaml",
    "torchvision/wide_resnet50_2.yaml": "torchvision/resnext50_32x4d.yaml",
    "torchvision/wide_resnet101_2.yaml": "torchvision/resnext50_32x4d.yaml",
    "cifar/resnet32.yaml": "cifar/resnet20.yaml",
    "cifar/resnet44.yaml": "cifar/resnet20.yaml",
    "cifar/resnet56.yaml": "cifar/resnet20.yaml",
    "cifar/resnet110.yaml": "cifar/resnet20.yaml",
    "cifar/plain56.yaml": "cifar/plain20.yaml",
    "fashion/resnet56.yaml": "fashion/resnet20.yaml",
    "timm/resnet34d.yaml": "timm/resnet18d.yaml",
    "timm/resnet26d.yaml": ("timm/ecaresnet50d.yaml", "torchvision/resnet50.yaml"),
    "timm/resnet50d.yaml": ("timm/ecaresnet50d.yaml", "torchvision/resnet50.yaml"),
    "timm/resnet101d.yaml": ("timm/ecaresnet50d.yaml", "torchvision/resnet50.yaml"),
    "timm/resnet152d.yaml": ("timm/ecaresnet50d.yaml", "torchvision/resnet50.yaml"),
    "timm/resnet50c.yaml": ("torchvision/resnet50.yaml", "timm/ecaresnet50d.yaml"),
    "timm/resnet50s.yaml": ("torchvision/resnet50.yaml", "timm/ecaresnet50d.yaml"),
    "timm/seresnext50_32x4d.yaml": ("torchvision/resnext50_32x4d.yaml", "timm/seresnet50.yaml"),
}
#: backbones (several outputs, dilated stages) are compiled in the default run by tests/test_backbones.py, at
#: small sizes against torchvision's and timm's own feature maps; here at full size in make test-all only
SWEEP = [pytest.param(p, marks=pytest.mark.slow)
         if p.name in DEEP or spec_id(p) in COVERED_BY or p.parent.name == "backbones" else p
         for p in VALID_SPECS]


def _configuration(rel: str) -> tuple[object, ...]:
    """What decides a net's ONNX graph apart from its depth and widths: its block, shortcut and stride placement,
    grouped or wide convs, a deep stem, and its attention."""
    s = load_spec(SPECS / rel)
    return ((s.block, s.shortcut, s.downsample if s.bottleneck else None), (s.groups, s.width_per_group) != (1, 64),
            len(s.stem.conv.widths) > 1, s.attention)


def _covered(slow: str, reps: str | tuple[str, ...]) -> bool:
    """Each part of ``slow``'s configuration is that of one of ``reps`` (all of it, for a single stand-in)."""
    mine, theirs = _configuration(slow), [_configuration(r) for r in ((reps,) if isinstance(reps, str) else reps)]
    return all(any(part == t[i] for t in theirs) for i, part in enumerate(mine))


def test_every_slow_sweep_spec_is_covered_in_the_default_run() -> None:
    """Each spec in COVERED_BY has a stand-in of the same configuration that the default run sweeps at full size."""
    default = {spec_id(p) for p in VALID_SPECS if p.name not in DEEP and spec_id(p) not in COVERED_BY}
    assert set(COVERED_BY) <= {spec_id(p) for p in VALID_SPECS}
    for slow, reps in COVERED_BY.items():
        assert set((reps,) if isinstance(reps, str) else reps) <= default and _covered(slow, reps), (slow, reps)
    # one full-size net per family stays in the default run: paper layout, torchvision, ResNeXt/wide, CIFAR, preact,
    # and timm's deep stems, pooled projections and attention
    assert {"resnet50.yaml", "torchvision/resnet50.yaml", "torchvision/resnext50_32x4d.yaml", "cifar/resnet20.yaml",
            "preact/resnet164.yaml", "timm/resnet18d.yaml", "timm/seresnet50.yaml", "timm/ecaresnet50d.yaml"} <= default


@pytest.mark.parametrize("path", SWEEP, ids=spec_id)
def test_every_spec_compiles_to_onnx_and_verifies(path: Path, tmp_path: Path, onnx_artefact: Any) -> None:
    if path.name in DEEP:  # random weights overflow in torch itself at this depth: refused cleanly, nothing written
        from resdsl import InputError

        with pytest.raises(InputError, match="overflow to inf/NaN"):
            compile_spec(path, CompileOptions(target="onnx", out=tmp_path / "a"))
        assert not (tmp_path / "a").exists()
        return
    out, manifest = onnx_artefact(path)  # compiled once per session: test_broken_onnx_artefacts_are_refused shares it
    m = manifest.to_dict()
    v = m["verification"]
    assert v["passed"] and v["flops"]["passed"]
    outputs = [t["name"] for t in m["outputs"]]
    assert outputs == list(load_spec(path).outputs)
    assert [c["batch"] for c in v["checks"]] == [1] * len(outputs) + [3] * len(outputs)  # batch 1 and 3, same file
    assert [c["output"] for c in v["checks"]] == outputs * 2                                  # every output each time
    assert m["inputs"][0]["shape"][0] == "batch" and m["batch"]["dynamic"]
    assert all(c["rel"] <= 1e-4 and c["top1_agree"] == 1.0 for c in v["checks"])
    import onnx

    proto = onnx.load(out / "model.onnx", load_external_data=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param            # symbolic batch
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == outputs
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.fixture(scope="module")
def golden_tree(tmp_path_factory: pytest.TempPathFactory, tv_layout: dict) -> Path:
    """specs/ copied, plus resnet50-tv at the 64x64 input the golden logits were made with."""
    root = tmp_path_factory.mktemp("golden")
    shutil.copytree(SPECS, root / "specs")
    (root / "specs" / "golden50.yaml").write_text(
        "resdsl: 1\nextends: torchvision/resnet50.yaml\nname: golden50\ninput: {size: 64}\nexpect: null\n")
    torch.save(reference_weights(tv_layout["resnet50"]["state_dict"]), root / "resnet50-reference.pth")
    return root


def test_resnet50_torchvision_golden_logits_through_onnxruntime(golden_tree: Path, tv_logits: dict,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(golden_tree)
    out, m = compile_spec("specs/golden50.yaml", CompileOptions(target="onnx", out=Path("art"),
                                                                weights=Path("resnet50-reference.pth")))
    assert m.weights["kind"] == "file"
    art = load_artefact(out)
    assert art.backend.startswith("onnxruntime")
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64).numpy()
    gold = np.array(tv_logits["resnet50"])
    np.testing.assert_allclose(art(x)[0], gold, rtol=1e-4, atol=1e-4 * np.abs(gold).max())
    # threads= reaches ONNX Runtime (an application sharing the cores) and changes nothing in the numbers
    one = load_artefact(out, threads=1)
    assert one.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(one(x)[0], gold, rtol=1e-4, atol=1e-4 * np.abs(gold).max())
    with pytest.raises(InputError, match="threads 0: must be at least 1"):
        load_artefact(out, threads=0)


# ResNet-20 has every layer kind ResNet-56 has (same blocks, 3x fewer), so it shows the fp16 graph, fp32 input and
# 3e-2 tolerance as well; ResNet-56, with its longer fp16 accumulation, runs in `make test-all`.
@pytest.mark.parametrize("spec", [SPECS / "cifar" / "resnet20.yaml",
                                  pytest.param(SPECS / "cifar" / "resnet56.yaml", marks=pytest.mark.slow)],
                         ids=spec_id)
def test_fp16_onnx_compiles_verifies_and_keeps_fp32_io(spec: Path, tmp_path: Path) -> None:
    out, m = compile_spec(spec, CompileOptions(target="onnx", out=tmp_path / "h", precision="fp16"))
    import onnx

    proto = onnx.load(out / "model.onnx")
    assert m.precision == "fp16" and m.verification is not None and m.verification["tolerance"]["rel"] == 3e-2
    assert {t.data_type for t in proto.graph.initializer if t.data_type in (1, 10)} == {10}  # all float16
    assert proto.graph.input[0].type.tensor_type.elem_type == 1                           # float32 input


def test_fp16_onnx_with_fp16_io(tmp_path: Path) -> None:
    out2, m2 = compile_spec(SPECS / "cifar" / "resnet20.yaml",
                            CompileOptions(target="onnx", out=tmp_path / "h2", precision="fp16", io="fp16"))
    assert m2.input.dtype == "float16"
    y = load_artefact(out2)(np.zeros((2, 3, 32, 32), np.float32))
    assert y.dtype == np.float32 and y.shape == (2, 10)


def test_broken_onnx_artefacts_are_refused(tmp_path: Path, onnx_artefact: Any) -> None:
    out, _ = onnx_artefact(SPECS / "cifar" / "resnet20.yaml")  # the sweep's compile; damaged only in copies below
    from resdsl import InputError

    for name, damage in (("trunc", lambda b: b[: len(b) // 2]), ("flip", lambda b: b[:100] + bytes([b[100] ^ 1])
                                                                   + b[101:])):
        d = tmp_path / name
        shutil.copytree(out, d)
        (d / "model.onnx").write_bytes(damage((d / "model.onnx").read_bytes()))
        with pytest.raises(InputError, match=r"model\.onnx"):
            load_artefact(d)
    # hashes re-recorded by an attacker: the file is still refused if it points at external data
    import onnx

    d = tmp_path / "external"
    shutil.copytree(out, d)
    proto = onnx.load(d / "model.onnx")
    init = proto.graph.initializer[0]
    init.data_location = onnx.TensorProto.EXTERNAL
    init.ClearField("raw_data")
    entry = init.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    from resdsl.backends import onnx_file

    onnx_file._digest(proto)  # an attacker can re-stamp the sha256 inside the file and the manifest's too
    proto.metadata_props.add(key=onnx_file.DIGEST_KEY, value=onnx_file._digest(proto)[1])
    (d / "model.onnx").write_bytes(proto.SerializeToString())
    from resdsl.manifest import file_entry

    m = json.loads((d / "manifest.json").read_text())
    m["files"]["model.onnx"] = dataclasses.asdict(file_entry(d / "model.onnx"))
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="external"):
        load_artefact(d)


def test_verification_names_the_first_diverging_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Corrupt one layer of the exported file: compile fails (exit 1) naming that layer, writes nothing."""
    from resdsl import VerificationError
    from resdsl.backends import onnx as ob
    from resdsl.backends import onnx_file

    real = ob.export

    def export_then_damage(model, path, **kw):  # type: ignore[no-untyped-def]
        info = real(model, path, **kw)
        import onnx

        proto = onnx.load(path)
        w = next(t for t in proto.graph.initializer if t.name.startswith("layer2.1.conv2"))
        arr = onnx.numpy_helper.to_array(w) * 1.5
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        onnx_file._digest(proto)  # drop the old stamp; save stamps the new content, so the file still loads
        onnx_file.save(proto, Path(path))
        return info

    monkeypatch.setattr(ob, "export", export_then_damage)
    with pytest.raises(VerificationError, match=r"first diverging layer: layer2\.1\.conv2 \(conv3_x\.1\.conv2\)"):
        compile_spec(SPECS / "cifar" / "resnet20.yaml", CompileOptions(target="onnx", out=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_onnx_verify_command_and_runtime(tmp_path: Path) -> None:
    import subprocess
    import sys

    # a pre-activation net (its own lowering) small enough to compile in seconds; the sweep above does resnet164
    small = tmp_path / "preact20.yaml"
    small.write_text((SPECS / "preact" / "resnet164.yaml").read_text().replace("blocks: 18", "blocks: 2")
                     .replace("name: preact-resnet164-cifar", "name: preact-small")
                     .replace("expect: {mparams: 1.7, mparams_tol: 0.05, params: 1703258}", ""))
    out, _ = compile_spec(small, CompileOptions(target="onnx", out=tmp_path / "p"))
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "verify", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "onnxruntime-cpu batch 3" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "classify.py"), str(out)],
                       capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 6
