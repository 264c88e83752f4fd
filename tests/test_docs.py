"""The documentation builds offline without a single warning, and documents the whole API.

``sphinx-build -W --keep-going`` fails on any warning, including the API-coverage warning
that ``docs/_ext/subspace_docs.py`` emits for a public name with no entry in the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import subspace_docs  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # no network: intersphinx must use the shipped inventories
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / ".doctrees"),
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def _documented(built: Path) -> set[str]:
    with open(built / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", os.path.join)
    names: set[str] = set()
    for role, entries in inventory.items():
        if role.startswith("py:") and role != "py:module":
            names.update(entries)
    return names


def test_every_public_name_is_in_the_built_reference(built: Path) -> None:
    documented = _documented(built)
    assert "subspace_optim.SubspaceProjectedOptimizer" in documented
    assert subspace_docs.missing_public_names(documented) == []


def test_pages_exist_and_link_offline_to_torch(built: Path) -> None:
    for page in [
        "index",
        "guide/install",
        "guide/quickstart",
        "guide/concepts",
        "guide/eigensolvers",
        "guide/schedules",
        "guide/diagnostics",
        "guide/optimizers",
        "guide/checkpointing",
        "guide/distributed",
        "guide/reproducing",
        "examples",
        "api/index",
        "changelog",
    ]:
        assert (built / f"{page}.html").is_file(), page
    optim = (built / "api" / "optim.html").read_text(encoding="utf-8")
    # intersphinx resolved torch.optim.Optimizer from the local inventory
    assert "docs.pytorch.org/docs/stable/generated/torch.optim.Optimizer.html" in optim
    # the math is there for MathJax
    concepts = (built / "guide" / "concepts.html").read_text(encoding="utf-8")
    assert "mathjax" in concepts.lower() and r"\chi_k" in concepts


def test_every_example_is_shown_in_the_docs(built: Path) -> None:
    page = (built / "examples.html").read_text(encoding="utf-8")
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert script.name in page, script.name
        # the literal include carries the script's first docstring line
        first = script.read_text(encoding="utf-8").split('"""')[1].splitlines()[0]
        assert first.split(":")[0].replace("'", "&#39;") in page or first[:30] in page


def test_coverage_check_reports_an_undocumented_name() -> None:
    import subspace_optim as so

    everything = set(subspace_docs.public_names())
    assert subspace_docs.missing_public_names(everything) == []
    # drop every name under which Lanczos is exported: the check must name each of them
    lanczos = {name for name, obj in subspace_docs.public_names().items() if obj is so.Lanczos}
    assert "subspace_optim.Lanczos" in lanczos
    assert subspace_docs.missing_public_names(everything - lanczos) == sorted(lanczos)
    # documenting it under any one public path covers every re-export
    assert (
        subspace_docs.missing_public_names(everything - lanczos | {"subspace_optim.Lanczos"}) == []
    )


def test_generated_pages_are_optional(tmp_path: Path) -> None:
    assert subspace_docs.existing_generated_pages(tmp_path) == []
    (tmp_path / "performance.md").write_text("# Performance\n", encoding="utf-8")
    assert subspace_docs.existing_generated_pages(tmp_path) == ["performance"]
