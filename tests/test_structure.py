"""The house rules that keep one place for each thing, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "trainer", "converters", "benchmarks")


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


def test_every_package_error_derives_from_the_one_base():
    from benchmarks.errors import BenchmarkError
    from edge.errors import EdgeError

    bases = [BenchmarkError]
    try:
        from converters.errors import ConverterError
        from trainer.errors import TrainerError
        bases += [ConverterError, TrainerError]
    except ImportError:  # pragma: no cover - an edge-only environment
        pass
    for base in bases:
        assert issubclass(base, EdgeError), base


def test_exit_codes_are_defined_once_in_edge_errors():
    own = re.compile(r"^EX_[A-Z]+\s*=\s*\d+", re.M)
    defining = [str(p.relative_to(REPO)) for p in sources(*PACKAGES)
                if own.search(p.read_text(encoding="utf-8"))]
    assert defining == ["edge/errors.py"]


def test_files_are_written_through_edge_durable():
    """No module but edge.durable renames temporary files into place or makes its own
    temporary names: one implementation of the atomic write (the trainer and converters
    included). Scratch folders (tempfile.TemporaryDirectory / mkdtemp) are fine."""
    rename = re.compile(r"os\.(replace|rename)\(")
    own_temp = re.compile(r"tempfile\.(mkstemp|NamedTemporaryFile)\(")
    allowed_renames = {
        "edge/durable.py",
        "edge/claim.py",  # taking an input out of the inbox is a rename, not a write
        "edge/outbox.py",  # a damaged journal record moved aside
        # a received instance's spooled file moved aside, one temporary name to another
        # (pynetdicom removes the first), to be kept as its second link while in doubt
        "edge/network/receiver.py",
        "converters/pipeline.py",  # a refused model's whole report folder, renamed into place
    }
    offenders = []
    for path in sources(*PACKAGES):
        rel = str(path.relative_to(REPO))
        text = path.read_text(encoding="utf-8")
        if rename.search(text) and rel not in allowed_renames:
            offenders.append(f"{rel}: os.replace/os.rename")
        scratch = ("converters/export.py",  # TensorFlow's log, read back, not an output
                   "benchmarks/edge_env.py")  # a child process's measurement, read back
        if own_temp.search(text) and rel not in scratch:
            offenders.append(f"{rel}: its own temporary file")
    assert not offenders, offenders


def test_the_edge_package_never_imports_the_workstation_side():
    banned = ("tensorflow", "keras", "trainer", "converters", "benchmarks")
    offenders = []
    for path in sources("edge"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else [])
            for name in names:
                if name.split(".")[0] in banned and path.name != "runtime.py":
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, offenders


def test_the_cli_offers_exactly_the_registered_architectures():
    pytest.importorskip("click")
    from trainer.cli import ARCH_NAMES
    from trainer.registry import ARCHITECTURE_INFO

    assert tuple(ARCH_NAMES) == tuple(ARCHITECTURE_INFO)
