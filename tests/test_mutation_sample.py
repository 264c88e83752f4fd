"""A fixed sample of mutants, each of which the unit tests must kill (issue 26).

The full mutation run (``python -m benchmarks.mutation``, mutmut; page
``docs/mutation.md``) takes tens of minutes, too long for CI. This test applies a handful of
hand-listed mutants of the kinds that run finds, each a bug that leaves shapes and dtypes
intact (a flipped sign or comparison, an index off by one, swapped arguments), to a copy of
the package in a temporary folder, runs the tests that cover the mutated function against
the copy, and asserts that they fail. It needs no mutmut.

A mutant whose original text is no longer in the code fails the test with a message asking
for the sample to be updated, so the sample cannot silently go stale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (module, original text, mutated text, kind, tests that must fail)
SAMPLE = [
    (
        "subspace_optim/subspace.py",
        "return v - U @ (U.T @ v)",
        "return v + U @ (U.T @ v)",
        "flipped sign",
        ["tests/test_subspace.py::test_projector_identities"],
    ),
    (
        "subspace_optim/subspace.py",
        "return torch.where(cos > 0.7071, angles_sin, angles_cos)",
        "return torch.where(cos > 0.7071, angles_cos, angles_sin)",
        "swapped arguments",
        ["tests/test_subspace.py"],
    ),
    (
        "subspace_optim/optim/_update.py",
        "delta = a * dom + b * (delta_base - dom)",
        "delta = b * dom + a * (delta_base - dom)",
        "swapped arguments",
        ["tests/test_update_math.py::test_scaled_update_is_a_dom_plus_b_bulk"],
    ),
    (
        "subspace_optim/optim/_update.py",
        "parts.append((j + 1, float(eigenvalues[j]),",
        "parts.append((j + 1, float(eigenvalues[j - 1]),",
        "off-by-one index",
        [
            "tests/test_update_math.py::test_moved_eigenvalue_checks_damped_dominant_and_amplified_dominant_parts"
        ],
    ),
    (
        "subspace_optim/optim/_blockwise.py",
        "step.add_(d, alpha=b - 1.0)",
        "step.add_(d, alpha=1.0 - b)",
        "flipped sign",
        ["tests/test_sources.py::test_each_step_is_the_scaled_update_computed_by_hand"],
    ),
    (
        "subspace_optim/sources/_pca.py",
        "delta = lam[ell // 2] if ell >= 2 else lam[-1]",
        "delta = lam[ell // 2 - 1] if ell >= 2 else lam[-1]",
        "off-by-one index",
        ["tests/test_sources.py::test_frequent_directions_shrink_matches_the_svd_reference"],
    ),
    (
        "subspace_optim/bases.py",
        "out[o : o + m] = U @ (U.T @ piece)",
        "out[o : o + m] = U @ (U.T @ piece) * 0.5",
        "wrong constant",
        ["tests/test_sources.py::test_block_basis_equals_the_dense_block_diagonal_projector"],
    ),
    (
        "subspace_optim/schedules.py",
        "self.switched_at = step + 1",
        "self.switched_at = step",
        "off-by-one index",
        ["tests/test_schedules_switch.py"],
    ),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package and the tests, copied once."""
    base = tmp_path_factory.mktemp("pristine")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "subspace_optim", base / "subspace_optim", ignore=ignore)
    shutil.copytree(ROOT / "tests", base / "tests", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", base / "pyproject.toml")
    # the copy, not the installed (editable) package, must be the one the tests import
    where = subprocess.run(
        [sys.executable, "-c", "import subspace_optim; print(subspace_optim.__file__)"],
        cwd=base,
        env=_env(base),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(base.resolve()), where
    return base


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(
    ("module", "original", "mutated", "kind", "tests"),
    SAMPLE,
    ids=[f"{m.rsplit('/', 1)[1]}:{kind}:{i}" for i, (m, _, _, kind, _) in enumerate(SAMPLE)],
)
def test_sampled_mutant_is_killed(
    pristine: Path,
    tmp_path: Path,
    module: str,
    original: str,
    mutated: str,
    kind: str,
    tests: list[str],
) -> None:
    work = tmp_path / "copy"
    shutil.copytree(pristine, work, symlinks=True)
    path = work / module
    text = path.read_text()
    assert text.count(original) == 1, (
        f"{module} no longer holds {original!r} exactly once: update SAMPLE in this test"
    )
    path.write_text(text.replace(original, mutated))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-m",
            "not slow",
            *tests,
        ],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, (
        f"the mutant ({kind}: {original!r} -> {mutated!r}) survived {tests} "
        f"(pytest exit {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    )
