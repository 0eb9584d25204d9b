"""Helpers of the TensorRT API-surface tests in tests/test_trt_backend.py.

Two checks keep :data:`resdsl.backends.trt_build.TRT_API` honest:

* **against real bindings.** TensorRT's Python bindings (``tensorrt_cu13_bindings`` for 11,
  ``tensorrt_cu12_bindings`` for 10) install from PyPI without TensorRT's libraries, which only NVIDIA's
  index serves. The bindings link against ``libnvinfer.so.N``, ``libnvinfer_plugin.so.N`` and
  ``libnvonnxparser.so.N`` (N = the major version) and import a handful of factory symbols from them, so
  :func:`build_stubs` compiles stub libraries with those sonames and symbols (gcc), and :func:`probe`
  loads them RTLD_GLOBAL in a fresh interpreter, imports the bindings through the backend's own import
  path and resolves every name. The stubs never enter the pytest process, where a real TensorRT may be
  wanted. Releases that would shadow each other (both provide ``tensorrt_bindings``) are installed into
  folders of their own and put first on the probe's ``sys.path``.
* **against the source.** :func:`used_trt_names` parses a backend module with ``ast`` and lists every
  TensorRT name it uses, so the list cannot drift from the code.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from resdsl.backends.trt_build import TRT_OBJECTS

REPO = Path(__file__).resolve().parents[1]
#: Every module of the TensorRT backend: the API-surface checks read them all.
TRT_SOURCES = sorted((REPO / "resdsl" / "backends").glob("trt*.py"))

STUB_LIBS = {  # soname prefix -> C definitions of the symbols the bindings import from it (same in 10 and 11)
    "libnvinfer": [
        "void *createInferBuilder_INTERNAL(void *logger, int version) { return 0; }",
        "void *createInferRuntime_INTERNAL(void *logger, int version) { return 0; }",
        "void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return 0; }",
        "void *getPluginRegistry(void) { return 0; }",
        "void *getBuilderPluginRegistry(int capability) { return 0; }",
    ],
    "libnvinfer_plugin": ["int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }"],
    "libnvonnxparser": [
        "void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return 0; }",
        "void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return 0; }",
        "int getNvOnnxParserVersion(void) { return 0; }",
    ],
}

# Run in a fresh interpreter: load the stubs, put the bindings' folder (if any) first on the path, import
# the bindings through the backend's own import path (with the ``tensorrt`` package blocked, so the
# ``tensorrt_bindings`` fallback is what runs), resolve every name (a missing one is reported with the
# last part of it that exists), and check the logger subclass and the flag arithmetic the backend relies on.
_PROBE = r"""
import ctypes, json, os, sys
libs, where = json.loads(sys.argv[1]), sys.argv[2]
for lib in libs:
    ctypes.CDLL(lib, mode=os.RTLD_GLOBAL)
if where:
    sys.path.insert(0, where)
sys.modules["tensorrt"] = None
from resdsl.backends import trt_build as backend
trt = backend._import_trt()
missing = {}
for name in backend.TRT_API:
    obj, parts = trt, name.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            missing[name] = ".".join(["tensorrt", *parts[:i]])
            break
        obj = getattr(obj, part)
logger = backend._make_logger(trt)
assert isinstance(logger, trt.ILogger)
logger.log(trt.ILogger.Severity.ERROR, "boom")
assert logger.messages == ["boom"], logger.messages
assert 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) >= 1
print(json.dumps({"version": str(trt.__version__), "module": trt.__name__, "file": trt.__file__,
                  "missing": missing}))
"""


def build_stubs(gcc: str, out: Path, major: str) -> list[str]:
    """Compile ``libnvinfer.so.MAJOR`` and friends into ``out``; return their paths, in load order."""
    out.mkdir(parents=True, exist_ok=True)
    libs = []
    for stem, defs in STUB_LIBS.items():
        soname = f"{stem}.so.{major}"
        src = out / f"{stem}.c"
        src.write_text("\n".join(defs) + "\n")
        subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}", str(src)],
                       check=True, capture_output=True, text=True)
        libs.append(str(out / soname))
    return libs


def probe(libs: list[str], where: str) -> dict[str, Any]:
    """Import the bindings over the stub ``libs`` (from folder ``where`` first, when given) and resolve TRT_API.

    Returns ``{"version", "module", "file", "missing": {name: the deepest part of it that exists}}``;
    raises RuntimeError with the interpreter's stderr when the import itself fails.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(libs), where], capture_output=True, text=True,
                          env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError("importing the TensorRT bindings over the stub libraries failed; if it names an "
                           f"undefined symbol, add it to STUB_LIBS:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _chain(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]``; None for anything that is not a pure name/attribute chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _trt_object(node: ast.expr) -> str | None:
    """The TensorRT class of ``node`` when it is a variable (or ``self._variable``) named in TRT_OBJECTS."""
    if isinstance(node, ast.Name):
        return TRT_OBJECTS.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return TRT_OBJECTS.get(node.attr.lstrip("_"))
    return None


def used_trt_names(source: str) -> set[str]:
    """Every TensorRT name a module uses: ``trt.X.Y`` chains, attributes of TensorRT objects, and
    methods overridden in subclasses of TensorRT classes."""
    tree = ast.parse(source)
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain and chain[0] == "trt":
                used.add(".".join(chain[1:]))
        if isinstance(node, ast.Attribute) and (cls := _trt_object(node.value)):
            used.add(f"{cls}.{node.attr}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                chain = _chain(base)
                if chain and chain[0] == "trt":
                    used.add(".".join(chain[1:]))
                    used.update(f"{'.'.join(chain[1:])}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef))
    return used


def stray_trt_objects(source: str, plain_values: frozenset[str] = frozenset({"ok"})) -> list[str]:
    """Assignments of TensorRT call results to variables outside TRT_OBJECTS (whose attribute uses
    :func:`used_trt_names` would miss); ``plain_values`` name variables that hold booleans TensorRT returns."""
    strays = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        from_trt = (isinstance(func, ast.Attribute) and ((_chain(func) or [""])[0] == "trt"
                                                          or _trt_object(func.value) is not None))
        for target in node.targets if from_trt else []:
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "?").lstrip("_")
            if name not in TRT_OBJECTS and name not in plain_values:
                strays.append(f"line {node.lineno}: {ast.unparse(target)}")
    return strays
