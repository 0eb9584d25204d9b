"""``resdsl draw``: valid PNG and SVG of sensible size, compact repeats, labels taken from the spec files (the
YAML is the oracle), deterministic bytes, atomic writes and clean errors, no torch import."""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from resdsl import cli
from resdsl.draw import picture, render, render_picture
from resdsl.expand import expand
from resdsl.flops import count
from resdsl.ir import Node
from resdsl.spec import load

from .conftest import ROOT, SPECS

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Main = Callable[..., tuple[int, str, str]]

#: A small net whose stage names, block counts and widths the tests read back from the picture.
TINY = """\
resdsl: 1
name: tiny-draw
input: {channels: 3, size: 32}
block: basic
shortcut: B
stem:
  conv: {channels: 16, kernel: 3, stride: 1}
stages:
  - {name: alpha, width: 16, blocks: 3}
  - {name: beta, width: 32, blocks: 5, stride: 2}
  - {name: gamma, width: 64, blocks: 1, stride: 2}
head: {classes: 10}
"""


@pytest.fixture
def main(capsys: pytest.CaptureFixture[str]) -> Main:
    """``main(*argv)`` -> (exit code, stdout, stderr) of the resdsl command line, in this process."""

    def run(*argv: str) -> tuple[int, str, str]:
        rc = cli.main(list(argv))
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must come first."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def svg_texts(data: bytes) -> list[str]:
    """Every text run of an SVG (which must parse as XML), in document order."""
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [t.strip() for el in root.iter() if el.tag.endswith("}text") for t in el.itertext() if t.strip()]


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def svg_of(path: Path) -> bytes:
    return render(load(path), "svg")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """ResNet-18, -152 and -1001 drawn through the command line as PNG, once for the module."""
    out = tmp_path_factory.mktemp("png")
    found = {}
    for spec in ("resnet18.yaml", "resnet152.yaml", "preact/resnet1001.yaml"):
        dest = out / (Path(spec).stem + ".png")
        assert cli.main(["draw", str(SPECS / spec), "-o", str(dest)]) == 0
        found[Path(spec).stem] = dest.read_bytes()
    return found


@pytest.mark.parametrize("name", ["resnet18", "resnet152", "resnet1001"])
def test_png_is_valid_and_sensibly_sized(pngs: dict[str, bytes], name: str) -> None:
    from PIL import Image

    width, height = png_size(pngs[name])
    assert 400 <= width <= 6000 and 400 <= height <= 6000, (width, height)
    with Image.open(io.BytesIO(pngs[name])) as im:
        assert im.format == "PNG" and im.size == (width, height)
        im.load()
        assert len(im.getcolors(1 << 20) or []) > 10  # a picture, not a blank page
        assert "date" not in {str(k).lower() for k in im.info}


def test_repeats_are_compact(pngs: dict[str, bytes]) -> None:
    """50 units (ResNet-152) and 333 (ResNet-1001) draw hardly taller than ResNet-18's 8."""
    h18, h152, h1001 = (png_size(pngs[n])[1] for n in ("resnet18", "resnet152", "resnet1001"))
    assert h152 < 1.6 * h18 and h1001 < 1.6 * h18


def test_svg_shows_the_stages_and_block_counts_of_the_spec_file() -> None:
    doc = yaml.safe_load((SPECS / "resnet152.yaml").read_text())
    texts = svg_texts(svg_of(SPECS / "resnet152.yaml"))
    joined = "\n".join(texts)
    assert texts[0] == doc["name"] == "resnet152"
    for stage in doc["stages"]:
        i = texts.index(stage["name"])
        assert texts[i + 1].startswith(f"{stage['blocks']} blocks"), texts[i:i + 3]
        assert f"×{stage['blocks'] - 1}" in texts  # the repeated unit, "x35" for conv4_x
        assert "GMACs" in texts[i + 2] and "params" in texts[i + 2]
    assert "conv1" in texts and "head" in texts and "units 2–36" in texts
    assert "1x1 conv, 1024, /2" in texts and "3x3 max pool, /2" in texts and "fc 1000" in texts
    assert "60.2M params" in joined and "152 layers" in joined  # the title's totals


def test_svg_of_a_written_spec(tmp_path: Path) -> None:
    texts = svg_texts(svg_of(write(tmp_path, TINY)))
    for name, blocks in (("alpha", "3 blocks"), ("beta", "5 blocks"), ("gamma", "1 block ")):
        i = texts.index(name)
        assert texts[i + 1].startswith(blocks), texts[i:i + 3]
    assert {"×2", "×4"} <= set(texts) and "×0" not in texts and not any(t.startswith("units 2–1") for t in texts)
    assert "3x3 conv, 64, /2" in texts and "1x1 conv, 64, /2" in texts and "fc 10" in texts


def test_shortcut_kinds_are_drawn_differently(tmp_path: Path) -> None:
    """B: a dotted projection and solid identities; A: a dashed zero-padding identity instead; C: every unit
    projects; none: no shortcut at all."""
    svgs = {k: svg_of(write(tmp_path, TINY.replace("shortcut: B", f"shortcut: {k}"), f"{k}.yaml"))
            for k in ("A", "B", "C", "none")}
    texts = {k: svg_texts(v) for k, v in svgs.items()}
    assert any("projection" in t for t in texts["B"]) and any("identity shortcut" in t for t in texts["B"])
    assert "zero-pad to 32 ch, /2" in texts["A"] and not any("projection" in t for t in texts["A"])
    assert any("option A" in t for t in texts["A"])
    assert texts["C"].count("1x1 conv, 16") == 2  # the first unit of alpha and its repeated unit
    assert not any("1x1 conv" in t for t in texts["none"]) and any("plain network" in t for t in texts["none"])
    assert len(set(svgs.values())) == 4


def test_changing_the_spec_changes_the_picture(tmp_path: Path) -> None:
    base = svg_of(write(tmp_path, TINY))
    assert svg_of(write(tmp_path, TINY.replace("blocks: 5", "blocks: 6"), "b.yaml")) != base
    assert svg_of(write(tmp_path, TINY.replace("shortcut: B", "shortcut: A"), "a.yaml")) != base
    assert svg_of(write(tmp_path, TINY.replace("width: 64", "width: 128"), "w.yaml")) != base


def test_same_spec_gives_identical_bytes(tmp_path: Path, main: Main) -> None:
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    assert main("draw", str(SPECS / "resnet18.yaml"), "-o", str(a))[0] == 0
    assert main("draw", str(SPECS / "resnet18.yaml"), "-o", str(b))[0] == 0
    assert a.read_bytes() == b.read_bytes() and b"<text" in a.read_bytes()
    assert b"<dc:date>" not in a.read_bytes()
    p1, p2 = render(load(SPECS / "resnet18.yaml"), "png", dpi=40), render(load(SPECS / "resnet18.yaml"), "png", dpi=40)
    assert p1 == p2 and png_size(p1)[0] == round(8.4 * 40)


def test_bad_suffix_exits_2_and_writes_nothing(tmp_path: Path, main: Main) -> None:
    for name in ("x.jpg", "x.pdf", "x"):
        rc, _, err = main("draw", str(SPECS / "resnet18.yaml"), "-o", str(tmp_path / name))
        assert rc == 2 and ".png" in err and ".svg" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_and_broken_specs_exit_2_and_leave_the_old_file(tmp_path: Path, main: Main,
                                                              in_root: Path) -> None:
    out = tmp_path / "net.png"
    out.write_bytes(b"old")
    rc, _, err = main("draw", "specs/nope.yaml", "-o", str(out))
    assert rc == 2 and "specs/nope.yaml:1:1: no such file" in err
    rc, _, err = main("draw", "specs/invalid/stride3.yaml", "-o", str(out))
    assert rc == 2 and "specs/invalid/stride3.yaml:8:37: stages[2].stride: must be 1 or 2, got 3" in err
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["net.png"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, main: Main, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    rc, _, err = main("draw", str(SPECS / "resnet18.yaml"), "-o", str(tmp_path / "net.svg"))
    assert rc == 2 and "nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_dpi_and_directory_output(tmp_path: Path, main: Main) -> None:
    rc, _, err = main("draw", str(SPECS / "resnet18.yaml"), "-o", str(tmp_path / "x.png"), "--dpi", "5")
    assert rc == 2 and "--dpi" in err
    (tmp_path / "d.png").mkdir()
    rc, _, err = main("draw", str(SPECS / "resnet18.yaml"), "-o", str(tmp_path / "d.png"))
    assert rc == 2 and "is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path, main: Main, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, _, err = main("draw", str(SPECS / "resnet18.yaml"), "-o", str(tmp_path / "x.png"))
    assert rc == 3 and "pip install 'resdsl[draw]'" in err and "\n" not in err.strip()
    assert list(tmp_path.iterdir()) == []


def test_unknown_ops_render_by_name() -> None:
    """An op this module does not know (the IR grows) is a box with its name, on either path."""
    spec = load(SPECS / "resnet18.yaml")
    graph = expand(spec)
    nodes: list[Node] = []
    for n in graph.nodes:
        nodes.append(n)
        if n.name == "layer2.0.bn2":
            nodes.append(Node("layer2.0.gizmo", "gizmo", (n.name,), n.shape, n.stage, "gizmo", {}, block=n.block))
        if n.name == "layer2.0.downsample.1":
            nodes.append(Node("layer2.0.downsample.2", "widget", (n.name,), n.shape, n.stage, "w", {}, block=n.block,
                              role="shortcut"))
    odd = dataclasses.replace(graph, nodes=tuple(nodes))
    texts = svg_texts(render_picture(picture(spec, odd, count(graph)), "svg"))
    assert "gizmo" in texts and any("widget" in t for t in texts)


def test_draw_imports_no_torch(tmp_path: Path) -> None:
    code = ("import sys; from resdsl.cli import main; "
            f"rc = main(['draw', {str(SPECS / 'resnet50.yaml')!r}, '-o', {str(tmp_path / 'x.svg')!r}]); "
            "assert rc == 0 and 'torch' not in sys.modules and 'onnx' not in sys.modules; print(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.svg").read_bytes().startswith(b"<?xml")


def _has_new_ir() -> bool:
    from resdsl.ir import OPS

    return "se" in OPS and "eca" in OPS


@pytest.mark.skipif(not _has_new_ir(), reason="the IR has no se/eca ops yet")
@pytest.mark.parametrize("attention", ["se", "eca"])
def test_deep_stem_shortcut_d_and_attention(tmp_path: Path, attention: str) -> None:
    """A deep stem draws one box per conv, shortcut D a dotted projection noting its average pool, channel
    attention a small box in every drawn unit."""
    stem = "conv: {channels: [32, 32, 64], kernel: 3, stride: 2}"
    text = (TINY.replace("shortcut: B", "shortcut: D").replace("conv: {channels: 16, kernel: 3, stride: 1}", stem)
            + f"attention: {{kind: {attention}}}\n")
    texts = svg_texts(svg_of(write(tmp_path, text)))
    assert [t for t in texts if t.startswith("3x3 conv, ")][:3] == ["3x3 conv, 32, /2", "3x3 conv, 32", "3x3 conv, 64"]
    assert any("avg pool" in t for t in texts) and "1x1 conv, 32" in texts  # beta's pooled projection
    assert any("projection" in t for t in texts) and "input 3×32×32" in texts
    label = "SE" if attention == "se" else "ECA"
    boxes = [t for t in texts if t.startswith(label + " ") or t.startswith(label + ",")]
    assert len(boxes) == 5  # alpha: first + repeated unit, beta: both, gamma: one
    if attention == "se":
        assert boxes[0] == "SE 16→8"  # 16 channels / 16, at least the divisor 8
    assert any(f"+ {label}" in t for t in texts)  # named in the subtitle


def test_help_lists_draw(main: Main) -> None:
    with pytest.raises(SystemExit):
        main("draw", "--help")
    with pytest.raises(SystemExit) as e:
        cli.main(["draw", str(SPECS / "resnet18.yaml")])  # -o is required
    assert e.value.code == 2
