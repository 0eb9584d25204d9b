"""Coverage-guided fuzzing of the spec loader with atheris (libFuzzer).

    pip install -e '.[fuzz]'        # atheris; no other extra installs it
    python fuzz/fuzz_spec.py fuzz/corpus -max_total_time=300

atheris publishes wheels for Linux x86_64 (CPython 3.10 to 3.13). Elsewhere pip
builds it from source, which needs a Clang with libFuzzer (see atheris' README).

Seeds come from specs/ (valid and invalid). Any exception other than
SpecError is a bug and stops the run with the input saved as crash-*.
The hypothesis tests in tests/test_spec.py run a short version of this on
every CI run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from resdsl.errors import SpecError
    from resdsl.expand import expand
    from resdsl.flops import count
    from resdsl.spec import load

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="resdsl-fuzz-"))
TARGET = WORK / "spec.yaml"
# a base for `extends` inside the tree, so the fuzzer can reach the merge code
shutil.copy(ROOT / "specs" / "resnet50.yaml", WORK / "resnet50.yaml")


def test_one_input(data: bytes) -> None:
    TARGET.write_bytes(data)
    try:
        spec = load(TARGET, root=WORK)
    except SpecError:
        return
    count(expand(spec))


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
    if corpus is not None and not corpus.exists():
        corpus.mkdir(parents=True)
        for p in (ROOT / "specs").rglob("*.yaml"):
            shutil.copy(p, corpus / f"{p.parent.name}-{p.name}")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
