"""Mutation testing with mutmut, and the page that reports it (docs/mutation.md).

One command, from the repository root (``pip install mutmut`` first; it takes a while, so run
it at low priority on a shared machine)::

    nice -n 19 python benchmarks/mutation_report.py

runs ``mutmut run`` with the configuration in ``pyproject.toml`` (``[tool.mutmut]``: which
modules are mutated, which tests are run) and writes the page from mutmut's results in
``mutants/``. ``--no-run`` only rewrites the page from the results already there;
``--max-children N`` sets mutmut's parallelism.

Plain mutmut 3 skips every decorated function (a decorator runs at import time, and
``@property`` breaks its trampolines). In the mutated modules most of the math carries
``@full_precision`` (an autocast guard that calls the function unchanged) and
``@torch.no_grad()``, so this script starts mutmut with those two decorators treated like
``@staticmethod``: mutmut's own operators, trampolines, runner and cache, with the decorated
functions mutated too. ``mutmut results`` / ``mutmut show NAME`` read the same cache.

Each surviving mutant needs a line in :data:`REASONS`, keyed by its mutmut name and the line
it changes (mutmut numbers the mutants of a function in order, so the line keeps a reason
from sticking to a different mutant after the code changes): why it is equivalent, or which
test was added to kill it (a killed mutant is no longer listed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "mutation.md"

#: decorators mutmut may look through: both call the function unchanged
TRANSPARENT_DECORATORS = ("full_precision", "torch.no_grad()")

#: mutmut's exit codes, as in ``mutmut.stats.status_by_exit_code`` (kept here so the page
#: can be rewritten without mutmut installed)
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
    None: "not checked",
}

#: (mutant name, changed line after mutation, stripped) -> one-line reason
REASONS: dict[tuple[str, str], str] = {
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_22",
        "nan_t = torch.full((), math.nan, dtype=None, device=g.device)",
    ): "equivalent: torch.stack promotes the float32 NaN to g's dtype, and NaN is NaN in either",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_26",
        "nan_t = torch.full((), math.nan, device=g.device)",
    ): "equivalent: torch.stack promotes the float32 NaN to g's dtype, and NaN is NaN in either",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_23",
        "nan_t = torch.full((), math.nan, dtype=g.dtype, device=None)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_27",
        "nan_t = torch.full((), math.nan, dtype=g.dtype, )",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_33",
        "nan_t if loss is None else loss.to(None),",
    ): "equivalent: the loss is read back as a Python float; torch.stack promotes it to g's dtype anyway, and a float32 value is exact in float64",
    (
        "subspace_optim.optim._update.x_moved_eigenvalue__mutmut_11",
        "parts.append((j + 1, float(eigenvalues[j]), threshold if (b == 1.0) and False else threshold / b))",
    ): "equivalent: for b == 1.0, threshold / b is threshold exactly",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_21",
        "weak = diag < 1e3 * torch.finfo(V.dtype).eps * scale",
    ): "equivalent in practice: a diagonal exactly equal to the tolerance has probability zero, and a zero column is weak under both",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_24",
        "weak = diag <= 1001.0 * torch.finfo(V.dtype).eps * scale",
    ): "equivalent in practice: a tolerance 0.1% larger; no test can place a column in that sliver above rounding",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_30",
        "if g is not None and g.device == V.device:",
    ): "equivalent on a CPU run: generator and block on the same device, and both branches then draw the same numbers",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_31",
        "fill = None",
    ): "unreachable on a CPU run: the branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_alignment__mutmut_13",
        "den >= 0, num / den.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(den)",
    ): "equivalent: for a zero column den = 0 and num = 0, and 0 / tiny is 0, the value of the other branch",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_8",
        "if U.shape[1] >= W.shape[1]:",
    ): "equivalent: principal angles are symmetric in the two bases, so swapping equal-width bases changes nothing",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_12",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(None, 1)",
    ): "equivalent: singular values are never negative, so the lower clamp at 0 is a no-op",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_13",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(0, None)",
    ): "equivalent: a cosine rounded above 1 only feeds arccos where torch.where takes the sine formula (cos > 0.7071)",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_15",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(0, )",
    ): "equivalent: a cosine rounded above 1 only feeds arccos where torch.where takes the sine formula (cos > 0.7071)",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_18",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(0, 2)",
    ): "equivalent: a cosine never exceeds 1 by more than rounding, so clamping at 2 instead of 1 only matters where the sine formula is taken",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_23",
        "sin = torch.linalg.svdvals(R).clamp(None, 1).flip(0)",
    ): "equivalent: singular values are never negative, so the lower clamp at 0 is a no-op",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_24",
        "sin = torch.linalg.svdvals(R).clamp(0, None).flip(0)",
    ): "equivalent: the sine formula is taken only where cos > 0.7071, i.e. sin < 0.7072, far below the clamp at 1",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_26",
        "sin = torch.linalg.svdvals(R).clamp(0, ).flip(0)",
    ): "equivalent: the sine formula is taken only where cos > 0.7071, i.e. sin < 0.7072, far below the clamp at 1",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_29",
        "sin = torch.linalg.svdvals(R).clamp(0, 2).flip(0)",
    ): "equivalent: the sine formula is taken only where cos > 0.7071, i.e. sin < 0.7072, far below the clamp at 1",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_41",
        "return torch.where(cos >= 0.7071, angles_sin, angles_cos)",
    ): "equivalent in practice: at exactly 45° both formulas are accurate to rounding",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_16",
        "None,",
    ): "equivalent: warnings.warn with category None warns a UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_19",
        "",
    ): "equivalent: warnings.warn's default category is UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_30",
        "None,",
    ): "equivalent: warnings.warn with category None warns a UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_33",
        "",
    ): "equivalent: warnings.warn's default category is UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁload_state_dict__mutmut_12",
        'self.forced = bool(state.get("forced", None))',
    ): "equivalent: bool(None) is False, the default it replaces",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁload_state_dict__mutmut_14",
        'self.forced = bool(state.get("forced", ))',
    ): "equivalent: dict.get without a default returns None, and bool(None) is False",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_15",
        "lam, W = torch.linalg.eigh((gram + gram.T) * 2)",
    ): "equivalent: scaling the Gram matrix scales every eigenvalue alike, and the shrink uses only their ratios (λ_i − δ)/λ_i",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_17",
        "lam, W = torch.linalg.eigh((gram + gram.T) / 3)",
    ): "equivalent: scaling the Gram matrix scales every eigenvalue alike, and the shrink uses only their ratios (λ_i − δ)/λ_i",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_27",
        "delta = lam[ell // 2] if (ell >= 2) or True else lam[-1]",
    ): "equivalent: ℓ = 1 is outside the contract (ℓ >= 2), and for ℓ = 1 lam[ℓ // 2] is lam[-1] anyway",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_30",
        "delta = lam[ell // 2] if ell > 2 else lam[-1]",
    ): "equivalent: for ℓ = 2, lam[-1] is lam[ℓ // 2]",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_31",
        "delta = lam[ell // 2] if ell >= 3 else lam[-1]",
    ): "equivalent: for ℓ = 2, lam[-1] is lam[ℓ // 2]",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_32",
        "delta = lam[ell // 2] if ell >= 2 else lam[+1]",
    ): "equivalent within the contract: the branch runs only for ℓ < 2, which the sketch never has (ℓ >= 2)",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_33",
        "delta = lam[ell // 2] if ell >= 2 else lam[-2]",
    ): "equivalent within the contract: the branch runs only for ℓ < 2, which the sketch never has (ℓ >= 2)",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_45",
        "scale = torch.where(lam >= 0, (shrunk / lam.clamp_min(1e-300)).sqrt(), torch.zeros_like(lam))",
    ): "equivalent: where λ = 0 the shrunk value is 0 too, and 0 / 1e-300 gives the other branch's 0",
    (
        "subspace_optim.optim._blockwise.x_block_statistics__mutmut_18",
        "if U is None and c is None:",
    ): "equivalent: scale_blocks gives coordinates exactly for the blocks with a basis, so c is None exactly when U is None",
    (
        "subspace_optim.sources._pca.x__centering__mutmut_4",
        "return torch.eye(m, dtype=dtype, device=None) - 1.0 / m",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.sources._pca.x__centering__mutmut_7",
        "return torch.eye(m, dtype=dtype, ) - 1.0 / m",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.optim._blockwise.x_scale_blocks__mutmut_26",
        "applied.append((1.0, 1.0) if (U is None) or True else (a, b))",
    ): "equivalent: this branch runs for a block without a basis (applied (1, 1) either way) or for the pair (1, 1) itself",
    (
        "subspace_optim.optim._blockwise.x_scale_blocks__mutmut_47",
        "p.add_(step.view_as(p).to(None))",
    ): "equivalent: an in-place add casts the float64 step to the parameter's dtype anyway",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_21",
        "stacklevel=3,",
    ): "killed in a plain test run (the warning must name the test file); under mutmut its trampoline adds a frame, so stacklevel 3 is the caller there",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_37",
        "stacklevel=3,",
    ): "killed in a plain test run (the warning must name the test file); under mutmut its trampoline adds a frame, so stacklevel 3 is the caller there",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_11",
        "J = _centering(m, torch.float64, None)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_40",
        "keep = int((lam[:k] >= RANK_TOL * top).sum())",
    ): "equivalent in practice: an eigenvalue exactly at the rank tolerance has probability zero",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_44",
        "W = W + W.mean(dim=0, keepdim=True)  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_45",
        "W = W - W.mean(dim=None, keepdim=True)  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_48",
        "W = W - W.mean(dim=0, )  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_50",
        "W = W - W.mean(dim=0, keepdim=False)  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_53",
        "coeff = (W * lam.sqrt()).to(work.dtype)",
    ): "equivalent: the columns Rᵀ J w_i are orthogonal, so scaling each by a positive number leaves the QR's Q (with the sign fix) unchanged",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_58",
        "Q = Q / torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 1.0)",
    ): "equivalent: the signs are ±1, so dividing by them is multiplying by them",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_66",
        "Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) == 0, 1.0)",
    ): "equivalent for every consumer: the basis is used only through projections U Uᵀ, which do not depend on its columns' signs (tests are sign-invariant by design)",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_67",
        "Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 1, 1.0)",
    ): "equivalent for every consumer: the basis is used only through projections U Uᵀ, which do not depend on its columns' signs (tests are sign-invariant by design)",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_68",
        "Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 2.0)",
    ): "equivalent: the fallback applies only where R's diagonal is exactly 0 (a column the QR found dependent, never produced here: keep drops those directions first)",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_4",
        "work = sketch if (sketch.dtype in (torch.float32, torch.float64)) or True else sketch.float()",
    ): "test added after this run: tests/test_sources.py::test_a_half_precision_sketch_is_shrunk_in_float32 compares the half-precision shrink bit for bit with the float32 one rounded once; the mutant applied by hand fails it",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_59",
        "out[ell + ell // 2 :] = 0",
    ): "equivalent: the shrink already makes those rows exactly zero (their scale is max(λ_i − λ_{ℓ/2}, 0) = 0 with λ sorted); the assignment is a safeguard",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_61",
        "out[ell - ell // 3 :] = 0",
    ): "equivalent: the shrink already makes those rows exactly zero (their scale is max(λ_i − λ_{ℓ/2}, 0) = 0 with λ sorted); the assignment is a safeguard",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_46",
        "fill = torch.randn(n, m, dtype=None, device=V.device, generator=g)",
    ): "equivalent within the contract: the fill is random directions, orthonormalized against the kept columns; drawing them in float32 or another stream changes which random directions, not a property the function promises (orthonormal, spanning the independent columns)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_51",
        "fill = torch.randn(n, m, device=V.device, generator=g)",
    ): "equivalent within the contract: the fill is random directions, orthonormalized against the kept columns; drawing them in float32 or another stream changes which random directions, not a property the function promises (orthonormal, spanning the independent columns)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_47",
        "fill = torch.randn(n, m, dtype=V.dtype, device=None, generator=g)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_52",
        "fill = torch.randn(n, m, dtype=V.dtype, generator=g)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_66",
        "for _ in range(3):",
    ): "equivalent: a third re-orthogonalization pass changes nothing after two (twice is enough)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_32",
        "fill = torch.randn(n, m, dtype=V.dtype, device=g.device, generator=g).to(None)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_33",
        "fill = torch.randn(None, m, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_34",
        "fill = torch.randn(n, None, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_35",
        "fill = torch.randn(n, m, dtype=None, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_36",
        "fill = torch.randn(n, m, dtype=V.dtype, device=None, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_37",
        "fill = torch.randn(n, m, dtype=V.dtype, device=g.device, generator=None).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_38",
        "fill = torch.randn(m, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_39",
        "fill = torch.randn(n, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_40",
        "fill = torch.randn(n, m, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_41",
        "fill = torch.randn(n, m, dtype=V.dtype, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_42",
        "fill = torch.randn(n, m, dtype=V.dtype, device=g.device, ).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
}


def _launch(argv: list[str]) -> int:
    """Run mutmut's command line with the transparent decorators let through."""
    import libcst as cst
    from libcst.metadata import PositionProvider
    from mutmut.mutation import file_mutation

    original = file_mutation.MutationVisitor._skip_node_and_children

    def skip(self, node):  # type: ignore[no-untyped-def]
        if (
            isinstance(node, cst.FunctionDef)
            and node.decorators
            and all(
                cst.Module([]).code_for_node(d.decorator) in TRANSPARENT_DECORATORS
                for d in node.decorators
            )
        ):
            position = self.get_metadata(PositionProvider, node, None)
            if position and position.start.line in self._ignored_node_lines:
                self.ignored_functions.add(node.name.value)
                return True
            return original(self, node.with_changes(decorators=()))
        return original(self, node)

    file_mutation.MutationVisitor._skip_node_and_children = skip
    from mutmut.__main__ import cli

    return cli.main(argv, prog_name="mutmut", standalone_mode=False) or 0


def run_mutmut(max_children: int | None) -> None:
    """``mutmut run``, then the mutants it did not kill once more by name.

    mutmut keeps a cached verdict until the mutated function changes, so a survivor stays a
    survivor after a test is added for it; naming it makes mutmut retest it with the tests
    as they are now (a killed mutant cannot come back to life by adding tests).
    """
    jobs = [] if max_children is None else ["--max-children", str(max_children)]
    subprocess.run([sys.executable, __file__, "--mutmut", "run", *jobs], cwd=ROOT, check=True)
    alive = [
        name
        for statuses in load_results().values()
        for name, status in statuses.items()
        if status in ("survived", "no tests", "suspicious")
    ]
    if alive:
        subprocess.run(
            [sys.executable, __file__, "--mutmut", "run", *jobs, *alive], cwd=ROOT, check=True
        )


def load_results() -> dict[str, dict[str, str]]:
    """module path -> mutant name -> status, from mutmut's ``.meta`` files."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        if not codes:
            continue
        module = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        out[module] = {k: STATUS.get(v, "suspicious") for k, v in codes.items()}
    return out


def changed_line(name: str, module: str) -> tuple[str, str]:
    """The line(s) a mutant removes and the line(s) it puts in their place (``mutmut show``)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    text = get_diff_for_mutant(name, path=module)
    minus = [ln[1:].strip() for ln in text.splitlines() if ln[:1] == "-" and ln[:3] != "---"]
    plus = [ln[1:].strip() for ln in text.splitlines() if ln[:1] == "+" and ln[:3] != "+++"]
    return (" / ".join(minus), " / ".join(plus))


def score(statuses: dict[str, str]) -> tuple[int, int]:
    """(detected, total) as mutmut's badge counts them: killed and timed out, out of all
    mutants less the skipped ones."""
    c = Counter(statuses.values())
    return c["killed"] + c["timeout"], sum(c.values()) - c["skipped"]


def write_page(results: dict[str, dict[str, str]]) -> str:
    lines = [
        "# Mutation testing",
        "",
        "Generated by `benchmarks/mutation_report.py` from mutmut's results; do not edit by hand.",
        "",
        "A mutant is a small change to the code (a flipped sign or comparison, an index off by one,",
        "a swapped or dropped argument, a changed constant) that the tests should notice. The",
        "modules below are the ones where such a change is silent: the result is still a tensor of",
        "the right shape, only wrong. [mutmut](https://github.com/boxed/mutmut) mutates them and",
        "runs the unit tests listed in `pyproject.toml` (`[tool.mutmut]`) that reach each mutated",
        "function.",
        "",
        "## Running it",
        "",
        "```bash",
        "pip install mutmut",
        "nice -n 19 python benchmarks/mutation_report.py   # mutmut run, then this page",
        "```",
        "",
        "The run copies the project into `mutants/` (ignored by git) and caches each mutant's",
        "result there, so a second run only retests what changed; `mutmut results` lists the",
        "survivors and `mutmut show NAME` shows one. `--no-run` rewrites the page from the cache.",
        "The full run takes tens of minutes, so CI runs `tests/test_mutation_sample.py` instead: a",
        "fixed sample of hand-applied mutants of the same kinds, every one of which must be killed.",
        "",
        "When you add a survivor's reason or a test that kills it, re-run the command; a survivor",
        "without a reason in the script's `REASONS` table is marked **unexplained** below.",
        "",
        "Plain mutmut 3 skips decorated functions. Most of the math here carries",
        "`@full_precision` or `@torch.no_grad()`, which call the function unchanged, so the script",
        "starts mutmut with those two decorators let through; everything else is mutmut's own.",
        "The score is mutmut's: killed plus timed out, out of all mutants (a mutant no listed",
        "test reaches counts as not killed).",
        "",
        "## Score per module",
        "",
        "| module | mutants | killed | timed out | survived | no tests | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    all_statuses: dict[str, str] = {}
    for module, statuses in results.items():
        all_statuses.update(statuses)
        c = Counter(statuses.values())
        det, tot = score(statuses)
        lines.append(
            f"| `{module}` | {tot} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['no tests']} | {100 * det / max(tot, 1):.1f}% |"
        )
    det, tot = score(all_statuses)
    lines.append(f"| **all** | {tot} | | | | | **{100 * det / max(tot, 1):.1f}%** |")
    unchecked = sum(1 for s in all_statuses.values() if s == "not checked")
    if unchecked:
        lines += ["", f"{unchecked} mutants were not checked (the run was interrupted)."]
    lines += [
        "",
        "## Survivors",
        "",
        "Every mutant that no test killed, with why.",
        "",
        "| mutant | change | reason |",
        "|---|---|---|",
    ]
    unexplained = 0
    for module, statuses in results.items():
        for name, status in statuses.items():
            if status not in ("survived", "no tests", "suspicious"):
                continue
            minus, plus = changed_line(name, module)
            reason = REASONS.get((name, plus))
            if reason is None:
                unexplained += 1
                reason = f"**unexplained** ({status})"
            short = name.split(".", 1)[1].replace("ǁ", ".")
            change = f"`{minus}` → `{plus}`".replace("|", "\\|")
            lines.append(f"| `{short}` | {change} | {reason} |")
    if unexplained:
        lines += ["", f"{unexplained} survivors are not explained yet."]
    PAGE.write_text("\n".join(lines) + "\n")
    return f"{det}/{tot} killed ({100 * det / max(tot, 1):.1f}%), {unexplained} unexplained"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="only rewrite the page")
    parser.add_argument("--max-children", type=int, default=None)
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # mutmut reads pyproject.toml and mutants/ from the working directory
    if not args.no_run:
        run_mutmut(args.max_children)
    print(write_page(load_results()))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--mutmut":
        sys.exit(_launch(sys.argv[2:]))
    sys.exit(main())
