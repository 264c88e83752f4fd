"""Contract suite of the eigensolvers: one table of solvers with capability flags, checked
against dense float64 references (``torch.linalg.eigh``) on spectra chosen to be hard."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import subspace_optim as so
from subspace_optim import (
    LOBPCG,
    AutoEigensolver,
    BlockLanczos,
    DenseOperator,
    Eigensolver,
    EigensolverError,
    Eigh,
    Lanczos,
    PowerIteration,
    WarmRefresh,
    available_eigensolvers,
    resolve_eigensolver,
    subspace_distance,
    top_k_eigenpairs,
)
from subspace_optim.eigensolvers import ScipyEigsh, ScipyLOBPCG

F64 = torch.float64


@dataclass(frozen=True)
class Spec:
    name: str
    make: Callable[..., Eigensolver]  # make(tol=..., which=...)
    lm: bool = True  # supports which="LM"
    clusters: bool = True  # converges on tiny gaps within a small iteration budget
    warm: bool = True  # a warm start reduces matvecs


SOLVERS = [
    # Lanczos folds a block warm start into one vector: no saving is guaranteed
    Spec("lanczos", lambda **kw: Lanczos(max_iter=500, **kw), warm=False),
    Spec("block_lanczos", lambda **kw: BlockLanczos(**kw)),
    Spec("block_lanczos_b2", lambda **kw: BlockLanczos(block_size=2, **kw)),
    Spec("lobpcg", lambda **kw: LOBPCG(max_iter=1000, **kw)),
    Spec("power", lambda **kw: PowerIteration(max_iter=3000, **kw), clusters=False),
    Spec(
        "power_deflation",
        lambda **kw: PowerIteration(variant="deflation", max_iter=3000, **kw),
        clusters=False,
    ),
    Spec("warm", lambda **kw: WarmRefresh(max_iter=50, **kw)),
    Spec("auto", lambda **kw: AutoEigensolver(**kw), warm=False),
    Spec("eigh", lambda tol, **kw: Eigh(**kw), warm=False),
    Spec("scipy_eigsh", lambda **kw: ScipyEigsh(**kw), warm=False),
    Spec("scipy_lobpcg", lambda **kw: ScipyLOBPCG(max_iter=2000, **kw), lm=False, warm=False),
]
IDS = [s.name for s in SOLVERS]


def rotation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q


def spectrum(kind: str, n: int = 150) -> torch.Tensor:
    bulk = torch.linspace(-1.0, 2.0, n, dtype=F64)
    top = {
        "separated": [10.0, 8.0, 6.0, 5.0],
        "repeated": [6.0, 6.0, 6.0, 4.0],  # a triple eigenvalue inside the top k
        "negative": [5.0, 4.0, 3.5, 3.0, -30.0, -25.0],  # larger magnitude at the bottom
        "tiny_gap": [5.0, 4.99, 4.0, 3.999],  # tiny gaps inside the top k, clear gap after
    }[kind]
    lam = torch.cat([torch.tensor(top, dtype=F64), bulk[: n - len(top)]])
    return lam


def reference(lam: torch.Tensor, k: int, which: str = "LA") -> torch.Tensor:
    key = lam if which == "LA" else lam.abs()
    return lam[torch.argsort(key, descending=True)[:k]]


def check_pairs(op: DenseOperator, res, lam: torch.Tensor, k: int, tol: float, which="LA"):
    A = op.A.to(F64)
    V = res.eigenvectors.to(F64)
    theta = res.eigenvalues.to(F64)
    assert V.shape == (A.shape[0], k) and theta.shape == (k,)
    scale = lam.abs().max() if which == "LM" else reference(lam, 1, which).abs()[0]
    true_res = (A @ V - V * theta).norm(dim=0)
    # residual bound, recomputed from scratch (not the solver's bookkeeping)
    assert float(true_res.max()) <= 2 * tol * float(scale) + 1e-10
    # reported residuals are honest
    torch.testing.assert_close(
        res.residual_norms.to(F64), true_res, atol=1e-6 * float(scale), rtol=1e-2
    )
    # orthonormal columns
    ortho = 1e-8 if res.eigenvectors.dtype == F64 else 2e-5
    torch.testing.assert_close(V.T @ V, torch.eye(k, dtype=F64), atol=ortho, rtol=0)
    # eigenvalues: a Ritz value with residual r lies within r of an eigenvalue (and, for
    # converged extreme pairs, of the matching one)
    ref = reference(lam, k, which)
    assert float((theta - ref).abs().max()) <= 2 * tol * float(scale) + 1e-9


@pytest.mark.parametrize("kind", ["separated", "repeated", "negative", "tiny_gap"])
@pytest.mark.parametrize("spec", SOLVERS, ids=IDS)
def test_top_k_matches_dense_eigh(spec: Spec, kind: str) -> None:
    if kind == "tiny_gap" and not spec.clusters:
        pytest.skip("capability: no fast convergence inside tight clusters")
    lam = spectrum(kind)
    op = DenseOperator.from_spectrum(lam, rotation(lam.shape[0], 1))
    k, tol = 4, 1e-7
    res = spec.make(tol=tol).solve(op, k, generator=torch.Generator().manual_seed(3))
    assert res.converged, res.message
    check_pairs(op, res, lam, k, tol)
    # the top-4 subspace is well separated from the rest in every spectrum: rotation-
    # invariant check against the exact eigenvectors
    exact = torch.linalg.eigh(op.A).eigenvectors[
        :, torch.argsort(torch.linalg.eigh(op.A).eigenvalues, descending=True)[:k]
    ]
    assert float(subspace_distance(res.eigenvectors.to(F64), exact)) < 1e-5


@pytest.mark.parametrize(
    "spec", [s for s in SOLVERS if s.lm], ids=[s.name for s in SOLVERS if s.lm]
)
def test_largest_magnitude(spec: Spec) -> None:
    lam = spectrum("negative")
    op = DenseOperator.from_spectrum(lam, rotation(lam.shape[0], 2))
    res = spec.make(tol=1e-7, which="LM").solve(op, 3)
    assert res.converged, res.message
    check_pairs(op, res, lam, 3, 1e-7, which="LM")
    assert res.eigenvalues.tolist()[:2] == pytest.approx([-30.0, -25.0])


@pytest.mark.parametrize(
    "spec", [s for s in SOLVERS if s.clusters], ids=[s.name for s in SOLVERS if s.clusters]
)
def test_float32(spec: Spec) -> None:
    lam = spectrum("separated", 120)
    op64 = DenseOperator.from_spectrum(lam, rotation(120, 4))
    op = DenseOperator(op64.A.float())
    res = spec.make(tol=1e-4).solve(op, 3)
    assert res.eigenvalues.dtype == torch.float32 and res.eigenvectors.dtype == torch.float32
    assert res.converged, res.message
    check_pairs(op, res, lam, 3, 1e-4)


@pytest.mark.parametrize(
    "spec", [s for s in SOLVERS if s.warm], ids=[s.name for s in SOLVERS if s.warm]
)
def test_warm_start_reduces_matvecs(spec: Spec) -> None:
    lam = spectrum("separated", 200)
    Q = rotation(200, 5)
    op = DenseOperator.from_spectrum(lam, Q)
    solver = spec.make(tol=1e-6)
    cold = solver.solve(op, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    E = torch.randn(200, 200, generator=g, dtype=F64)
    moved = DenseOperator(op.A + 1e-3 * (E + E.T) / 2)
    if isinstance(solver, WarmRefresh):
        solver.reset()  # compare the same first call, cold vs warm, without kept guards
    re_cold = spec.make(tol=1e-6).solve(moved, 4, generator=torch.Generator().manual_seed(0))
    warm = solver.solve(
        moved, 4, init=cold.eigenvectors, generator=torch.Generator().manual_seed(0)
    )
    assert warm.converged and re_cold.converged
    assert warm.num_matvecs < re_cold.num_matvecs, (warm.num_matvecs, re_cold.num_matvecs)
    check_pairs(moved, warm, torch.linalg.eigvalsh(moved.A), 4, 1e-6)


# ------------------------------------------------------------------- properties
@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    top=st.lists(st.floats(1.0, 10.0), min_size=3, max_size=3),
    gap=st.floats(0.05, 1.0),
    negative=st.floats(0.0, 20.0),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_spectra(top: list[float], gap: float, negative: float, seed: int) -> None:
    """Random top-3 values (possibly repeated), a controlled gap to the bulk, and a negative
    end up to twice the top in magnitude: the block solvers (block Lanczos included) find the
    top 3, and so does single-vector Lanczos when the top values are simple (see the Lanczos
    note)."""
    n, k = 60, 3
    top_t = torch.tensor(sorted(top, reverse=True), dtype=F64)
    bulk_hi = float(top_t.min()) - gap * float(top_t.max())
    bulk = torch.linspace(-negative, bulk_hi, n - k, dtype=F64)
    lam = torch.cat([top_t, bulk])
    op = DenseOperator.from_spectrum(lam, rotation(n, seed))
    solvers: list[Eigensolver] = [
        LOBPCG(tol=1e-8, max_iter=2000),
        WarmRefresh(tol=1e-8),
        BlockLanczos(tol=1e-8),  # block of k columns: repeated top values are fine
    ]
    if float(torch.diff(top_t).abs().min()) > 1e-3:
        solvers.append(Lanczos(tol=1e-8))
    for solver in solvers:
        res = solver.solve(op, k, generator=torch.Generator().manual_seed(seed))
        assert res.converged, res.message
        check_pairs(op, res, lam, k, 1e-8)


# ------------------------------------------------------------- status, errors
@pytest.mark.parametrize("name", ["lanczos", "block_lanczos", "lobpcg", "power", "warm"])
def test_not_converged_returns_best_estimate_with_advice(name: str) -> None:
    lam = spectrum("tiny_gap", 300)
    op = DenseOperator.from_spectrum(lam, rotation(300, 6))
    solver = resolve_eigensolver(name, tol=1e-12, max_iter=1)
    if isinstance(solver, WarmRefresh):
        solver = WarmRefresh(tol=1e-12, max_iter=1, cold=Lanczos(tol=1e-12, max_iter=1))
        res = solver.solve(op, 4, init=torch.eye(300, dtype=F64)[:, :4])
    else:
        res = solver.solve(op, 4)
    assert not res.converged
    assert "not converged" in res.message and "raise max_iter" in res.message
    assert torch.isfinite(res.eigenvalues).all() and res.num_matvecs > 0
    assert res.relative_residuals().max() > 1e-12


@pytest.mark.parametrize("budget", [1, 2])
@pytest.mark.parametrize("spec", SOLVERS, ids=IDS)
def test_a_solve_stopped_early_still_returns_ritz_pairs(spec: Spec, budget: int) -> None:
    """Whatever the budget, a result's columns are orthonormal, its eigenvalues are their
    Rayleigh quotients (so they lie in the spectrum's range) and its residuals are theirs:
    an unconverged result is a worse estimate, never a meaningless one (ARPACK, which
    returns only its converged pairs, gets the others completed as Ritz pairs)."""
    lam = spectrum("tiny_gap")
    op = DenseOperator.from_spectrum(lam, rotation(150, 9))
    solver = spec.make(tol=1e-13)
    if hasattr(solver, "max_iter"):
        solver.max_iter = budget  # far too few for tol=1e-13
    res = solver.solve(op, 3, generator=torch.Generator().manual_seed(1))
    V, theta = res.eigenvectors.to(F64), res.eigenvalues.to(F64)
    torch.testing.assert_close(V.T @ V, torch.eye(3, dtype=F64), atol=1e-8, rtol=0)
    torch.testing.assert_close(theta, torch.diagonal(V.T @ op.A @ V), atol=1e-10, rtol=1e-10)
    assert float(lam.min()) - 1e-10 <= float(theta.min()) <= float(theta.max()) <= 5 + 1e-10
    true_res = (op.A @ V - V * theta).norm(dim=0)
    if spec.name == "power_deflation":  # the deflated operator's residual: a projection
        assert bool((res.residual_norms <= true_res + 1e-10).all())
    else:
        torch.testing.assert_close(res.residual_norms.to(F64), true_res, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("variant", ["block", "deflation"])
def test_power_iteration_spends_its_shift_only_when_it_takes_a_shifted_step(variant) -> None:
    """The ``which="LA"`` shift's ``shift_steps`` Lanczos products are spent at the first
    shifted step: a solve that stops at its first product (``max_iter=1``) spends none,
    and a longer solve gives the same bits as if they had been spent up front."""
    op = DenseOperator.from_spectrum(spectrum("separated"), rotation(150, 10))
    width = 6 if variant == "block" else 1  # columns of one iteration's product, per pair
    for max_iter, expected in [(1, 3 * width if variant == "deflation" else width), (2, None)]:
        solver = PowerIteration(variant=variant, block_size=6, max_iter=max_iter, tol=1e-13)
        unshifted = PowerIteration(
            variant=variant, block_size=6, max_iter=max_iter, tol=1e-13, shift_steps=0
        )
        res = solver.solve(op, 3, generator=torch.Generator().manual_seed(2))
        if expected is not None:
            assert res.num_matvecs == expected
        else:  # one shifted step: the estimate's 20 products, then the iterations' own
            plain = unshifted.solve(op, 3, generator=torch.Generator().manual_seed(2))
            assert res.num_matvecs == plain.num_matvecs + 20


def test_a_cold_solver_too_narrow_for_k_plus_extra_is_refused_at_construction() -> None:
    """WarmRefresh asks its cold solver for k + extra pairs: a cold block_size between k
    and k + extra fails when the optimizer is built, not at its first refresh."""
    model = torch.nn.Linear(6, 4).double()
    X, Y = torch.randn(8, 6, dtype=F64), torch.randn(8, 4, dtype=F64)
    op = so.HessianOperator(model, torch.nn.MSELoss(), (X, Y))
    for cold in (LOBPCG(block_size=12), PowerIteration(block_size=12)):
        with pytest.raises(ValueError, match=r"k \+ extra = 15 pairs.*lower extra"):
            so.SubspaceProjectedOptimizer(
                torch.optim.SGD(model.parameters(), lr=0.1),
                op,
                k=10,
                eigensolver=WarmRefresh(cold=cold),
            )
    WarmRefresh(cold=LOBPCG(block_size=15)).check_k(op.shape[0], 10)


def test_auto_takes_every_k_up_to_n() -> None:
    """k = n is within reach: AutoEigensolver hands a k too close to n to Eigh."""
    op = DenseOperator.from_spectrum(torch.tensor([1.0, 3.0, 2.0], dtype=F64))
    res = AutoEigensolver().solve(op, 3)
    assert res.eigenvalues.tolist() == pytest.approx([3.0, 2.0, 1.0])
    assert top_k_eigenpairs(op, 3).eigenvalues.tolist() == pytest.approx([3.0, 2.0, 1.0])


def test_the_scipy_adapters_take_one_pair_of_a_tiny_operator() -> None:
    """k=1 with n < 10 (scipy's LOBPCG then solves densely and returns arrays of negative
    stride, which torch refuses without a copy)."""
    op = DenseOperator.from_spectrum(torch.tensor([2.0, 1.0, 0.5, 3.0], dtype=F64))
    for solver in (ScipyLOBPCG(tol=1e-8), ScipyEigsh(tol=1e-8)):
        assert solver.solve(op, 1).eigenvalues.tolist() == pytest.approx([3.0])


def test_the_lower_end_estimate_is_tight_and_safe_on_full_and_low_rank_spectra() -> None:
    """PowerIteration's shift needs λ_min from below, and not far below: 20 Lanczos steps
    on a full spectrum land within 2% of its width under λ_min (the off-diagonals counted
    twice put it at -3.96 for λ_min = -1), and an operator of rank 3 is exhausted at step 4
    and gives its λ_min = 0 (noise fed into the recurrence after that gave -190)."""
    from subspace_optim.eigensolvers._common import lower_end

    g = torch.Generator().manual_seed(0)
    full = DenseOperator.from_spectrum(torch.linspace(-1, 5, 60, dtype=F64), rotation(60, 3))
    est = float(lower_end(full, 20, torch.randn(60, generator=g, dtype=F64)))
    assert -1.0 - 0.02 * 6 <= est <= -1.0
    lam = torch.cat([torch.tensor([3.0, 2.0, 1.0], dtype=F64), torch.zeros(37, dtype=F64)])
    low_rank = DenseOperator.from_spectrum(lam, rotation(40, 4))
    est = float(lower_end(low_rank, 20, torch.randn(40, generator=g, dtype=F64)))
    assert abs(est) <= 1e-10


def test_raise_on_failure() -> None:
    op = DenseOperator.from_spectrum(spectrum("tiny_gap"), rotation(150, 7))
    with pytest.raises(EigensolverError, match="not converged"):
        LOBPCG(tol=1e-12, max_iter=1, raise_on_failure=True).solve(op, 4)


def test_non_finite_operator_reports_instead_of_raising() -> None:
    A = torch.eye(50, dtype=F64)
    A[3, 4] = A[4, 3] = float("nan")
    op = DenseOperator(A, check_symmetric=False)
    for solver in (Lanczos(), BlockLanczos(), LOBPCG(), PowerIteration(), WarmRefresh()):
        res = solver.solve(op, 2)
        assert not res.converged
        assert "non-finite" in res.message


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LOBPCG(tol=-1.0), "tol"),
        (lambda: LOBPCG(block_size=0), "block_size"),
        (lambda: BlockLanczos(block_size=0), "block_size"),
        (lambda: BlockLanczos(ncv=1), "ncv"),
        (lambda: BlockLanczos(block_size=2.5), "block_size"),
        (lambda: WarmRefresh(extra=-1), "extra"),
        (lambda: WarmRefresh(cold=WarmRefresh()), "cold"),
        (lambda: WarmRefresh(cold=Lanczos(which="LM")), "which"),
        (lambda: PowerIteration(shift_steps=-1), "shift_steps"),
        (lambda: ScipyLOBPCG(which="LM"), "largest algebraic"),
        (lambda: resolve_eigensolver("nope"), "valid names"),
        (lambda: resolve_eigensolver("eigh", tol=1e-3), "does not accept"),
    ],
)
def test_bad_configuration_is_refused(make, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_calls_are_refused_before_any_matvec() -> None:
    op = DenseOperator.from_spectrum(spectrum("separated", 40))
    with pytest.raises(ValueError, match="block_size"):
        LOBPCG(block_size=2).solve(op, 3)
    with pytest.raises(ValueError, match="init must have shape"):
        LOBPCG().solve(op, 3, init=torch.ones(7, 2, dtype=F64))
    with pytest.raises(ValueError, match="too large"):
        WarmRefresh().solve(op, 40)
    assert op.num_matvecs == 0


def test_registry_and_top_k() -> None:
    assert {
        "auto",
        "lanczos",
        "block_lanczos",
        "lobpcg",
        "power",
        "eigh",
        "warm",
        "scipy_eigsh",
    } <= set(available_eigensolvers())
    small = DenseOperator.from_spectrum(spectrum("separated", 50))
    large = DenseOperator.from_spectrum(spectrum("separated", 2000))
    auto = AutoEigensolver()
    assert isinstance(auto.choose(small, 3), Eigh)
    assert isinstance(auto.choose(large, 3), Lanczos)
    assert isinstance(auto.choose(large, 3, torch.zeros(2000, 3, dtype=F64)), LOBPCG)
    res = top_k_eigenpairs(large, 2, tol=1e-8)
    assert res.eigenvalues.tolist() == pytest.approx([10.0, 8.0])
    assert top_k_eigenpairs(
        large, 1, solver="lobpcg", which="LM"
    ).eigenvalues.tolist() == pytest.approx([10.0])
    with pytest.raises(ValueError, match="instance"):
        top_k_eigenpairs(large, 1, solver=Lanczos(), tol=1e-4)
    block = resolve_eigensolver("Block_Lanczos", block_size=3, tol=1e-7)
    assert isinstance(block, BlockLanczos) and (block.block_size, block.tol) == (3, 1e-7)
    res = top_k_eigenpairs(large, 2, solver="block_lanczos", tol=1e-8)
    assert res.converged and res.eigenvalues.tolist() == pytest.approx([10.0, 8.0])


def test_results_do_not_depend_on_global_rng() -> None:
    op = DenseOperator.from_spectrum(spectrum("separated", 100), rotation(100, 8))
    torch.manual_seed(0)
    a = LOBPCG(tol=1e-3).solve(op, 3)
    torch.manual_seed(123)
    b = LOBPCG(tol=1e-3).solve(op, 3)
    assert torch.equal(a.eigenvectors, b.eigenvectors) and a.num_matvecs == b.num_matvecs


# ------------------------------------------------------------ block Lanczos
class CountingOperator(DenseOperator):
    """A dense operator that records the width of every block product it is asked for."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A)
        self.widths: list[int] = []

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.widths.append(V.shape[1])
        return super()._matmat(V)


def repeated_top(n: int = 300, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenvalue 10 with multiplicity 3, then 8, then a bulk in [-3, 5]."""
    lam = torch.cat(
        [torch.tensor([10.0, 10.0, 10.0, 8.0], dtype=F64), torch.linspace(-3, 5, n - 4)]
    )
    return lam, rotation(n, seed)


@pytest.mark.parametrize("block_size", [3, 4, None])
def test_block_lanczos_finds_every_copy_of_a_repeated_eigenvalue(block_size) -> None:
    """With b >= the multiplicity, the first block already sees the whole eigenspace, so all
    three copies of the top eigenvalue are returned (and the next one, 8, after them)."""
    lam, Q = repeated_top()
    op = DenseOperator.from_spectrum(lam, Q)
    tol = 1e-3
    res = BlockLanczos(block_size=block_size, tol=tol).solve(
        op, 4, generator=torch.Generator().manual_seed(0)
    )
    assert res.converged, res.message
    check_pairs(op, res, lam, 4, tol)
    assert res.eigenvalues.tolist() == pytest.approx([10.0, 10.0, 10.0, 8.0], abs=2 * tol * 10)
    exact = Q[:, :4]  # from_spectrum puts eigenvalue i on column i of Q
    assert float(subspace_distance(res.eigenvectors, exact)) < 0.1


def test_repeated_eigenvalue_case_defeats_single_vector_lanczos() -> None:
    """The case above discriminates: single-vector Lanczos (and BlockLanczos with b=1, the same
    method) stops at the same tolerance with only two copies of 10 and reports converged,
    because a single start vector sees one direction of the eigenspace (rounding brings the
    others in only slowly). If this ever fails, Lanczos has improved: keep the block test."""
    lam, Q = repeated_top()
    op = DenseOperator.from_spectrum(lam, Q)
    for solver in (Lanczos(tol=1e-3), BlockLanczos(block_size=1, tol=1e-3)):
        res = solver.solve(op, 4, generator=torch.Generator().manual_seed(0))
        copies = int(((res.eigenvalues - 10.0).abs() < 0.02).sum())
        assert copies < 3, (type(solver).__name__, res.eigenvalues.tolist())


def test_block_lanczos_applies_one_block_per_iteration() -> None:
    """Every product is one ``matmat`` of ``b`` columns; ``num_iterations`` counts them."""
    lam = spectrum("separated", 400)
    op = CountingOperator(DenseOperator.from_spectrum(lam, rotation(400, 9)).A)
    for b in (1, 3, 5):
        op.widths.clear()
        before = op.num_matvecs
        res = BlockLanczos(block_size=b, tol=1e-8).solve(op, 4)
        assert res.converged, res.message
        assert op.widths == [b] * res.num_iterations
        assert res.num_matvecs == op.num_matvecs - before == b * res.num_iterations


def test_block_lanczos_block_narrower_than_k_and_restarts() -> None:
    """b < k is allowed (the basis grows to k first); a small ncv forces thick restarts and
    memory stays bounded while the answer is unchanged."""
    lam = spectrum("tiny_gap", 300)
    op = DenseOperator.from_spectrum(lam, rotation(300, 10))
    solver = BlockLanczos(block_size=2, ncv=12, tol=1e-8, max_iter=2000)
    solver.check_k(300, 4)  # no "narrower than k" refusal
    res = solver.solve(op, 4)
    assert res.converged, res.message
    assert res.num_matvecs > 12  # more products than the basis holds: it restarted
    check_pairs(op, res, lam, 4, 1e-8)


@pytest.mark.parametrize("width", [1, 2, 4, 7])
def test_block_lanczos_warm_start_of_any_width(width: int) -> None:
    """A warm start narrower than b is padded with random columns, a wider one is kept whole;
    a start that spans the wanted pairs converges at once, with fewer matvecs than a cold
    solve (a narrower one only fixes some of them: no saving is promised)."""
    lam = spectrum("separated", 200)
    Q = rotation(200, 11)
    op = DenseOperator.from_spectrum(lam, Q)
    solver = BlockLanczos(block_size=4, tol=1e-6)
    cold = solver.solve(op, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    init = Q[:, :width] + 1e-4 * torch.randn(200, width, generator=g, dtype=F64)
    warm = solver.solve(op, 4, init=init, generator=torch.Generator().manual_seed(0))
    assert warm.converged and cold.converged
    check_pairs(op, warm, lam, 4, 1e-6)
    if width >= 4:  # the start spans the answer up to 1e-4: fewer matvecs than cold
        assert warm.num_matvecs < cold.num_matvecs, (warm.num_matvecs, cold.num_matvecs)
        # a start exact to rounding converges on the first product (the first b columns)
        exact = solver.solve(op, 4, init=Q[:, :width], generator=torch.Generator().manual_seed(0))
        assert exact.converged and exact.num_matvecs == 4 and exact.num_iterations == 1


def test_block_lanczos_rank_deficient_start_and_invariant_subspace() -> None:
    """A start block with repeated columns, and an operator with two distinct eigenvalues (its
    Krylov space is invariant after one step): lost columns are refilled at random, the block
    keeps its width and the five-fold top eigenvalue is found in full."""
    lam = torch.cat([torch.full((5,), 3.0, dtype=F64), torch.full((95,), 1.0, dtype=F64)])
    op = CountingOperator(DenseOperator.from_spectrum(lam, rotation(100, 12)).A)
    v = torch.randn(100, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    init = torch.cat([v, v, 2 * v, torch.zeros(100, 2, dtype=F64)], dim=1)
    res = BlockLanczos(block_size=5, tol=1e-10).solve(op, 6, init=init)
    assert res.converged, res.message
    assert res.eigenvalues.tolist() == pytest.approx([3.0] * 5 + [1.0])
    assert set(op.widths) == {5}
    check_pairs(op, res, lam, 6, 1e-10)


def test_block_lanczos_exhausts_a_tiny_space() -> None:
    """n = 9, k = 8: the basis spans the whole space and the answer is exact."""
    lam = torch.arange(9, 0, -1, dtype=F64)
    op = DenseOperator.from_spectrum(lam, rotation(9, 13))
    for b in (1, 4, None):
        res = BlockLanczos(block_size=b, tol=1e-10).solve(op, 8)
        assert res.converged, res.message
        assert res.eigenvalues.tolist() == pytest.approx(lam[:8].tolist())
        assert res.num_matvecs <= 9 + 4


def test_block_lanczos_is_stateless_and_prints_its_settings() -> None:
    solver = BlockLanczos(block_size=3, ncv=30, tol=1e-5, which="LM")
    assert solver.state_dict() == {}
    assert repr(solver) == (
        "BlockLanczos(block_size=3, ncv=30, tol=1e-05, max_iter=1000, which='LM')"
    )
    assert solver.supports_warm_start and solver.matrix_free


# --------------------------------------------------------------------------- outcomes
def test_every_outcome_has_a_message_and_only_convergence_is_ok() -> None:
    from subspace_optim import SolveStatus

    assert {s.name for s in SolveStatus} >= {
        "CONVERGED",
        "MAX_ITERATIONS",
        "BREAKDOWN",
        "NON_FINITE",
    }
    for status in SolveStatus:
        assert isinstance(status.message, str) and len(status.message) > 10
        assert status.ok is (status is SolveStatus.CONVERGED)


def test_results_carry_the_outcome_that_ended_them() -> None:
    from subspace_optim import SolveStatus

    lam = spectrum("tiny_gap", 300)
    op = DenseOperator.from_spectrum(lam, rotation(300, 6))
    done = Lanczos(tol=1e-6).solve(op, 2)
    assert done.outcome is SolveStatus.CONVERGED and done.converged
    capped = Lanczos(tol=1e-12, max_iter=1).solve(op, 4)
    assert capped.outcome is SolveStatus.MAX_ITERATIONS and not capped.converged
    A = torch.eye(50, dtype=F64)
    A[3, 4] = A[4, 3] = float("nan")
    for solver in (Lanczos(), BlockLanczos(), LOBPCG(), PowerIteration(), WarmRefresh()):
        res = solver.solve(DenseOperator(A, check_symmetric=False), 2)
        assert res.outcome is SolveStatus.NON_FINITE, type(solver).__name__
        assert SolveStatus.NON_FINITE.message in res.message
    # LOBPCG whose residuals lie in its own basis (a nilpotent block: not symmetric, so the
    # Rayleigh-Ritz step cannot make them vanish) cannot grow its search space
    J = torch.zeros(6, 6, dtype=F64)
    J[0, 1] = 1.0
    J[2:, 2:] = torch.diag(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    stuck = LOBPCG(block_size=2).solve(
        DenseOperator(J, check_symmetric=False), 1, init=torch.eye(6, dtype=F64)[:, :2]
    )
    assert stuck.outcome is SolveStatus.BREAKDOWN and not stuck.converged
    assert SolveStatus.BREAKDOWN.message in stuck.message
    with pytest.raises(EigensolverError) as info:
        LOBPCG(tol=1e-12, max_iter=1, raise_on_failure=True).solve(op, 4)
    assert info.value.outcome is SolveStatus.MAX_ITERATIONS


def test_a_result_says_how_it_ended_once() -> None:
    """``outcome`` is the one record of how a solve ended: ``converged`` is read from it, the
    message defaults to its text, and there is no deprecated ``status`` any more."""
    import dataclasses

    from subspace_optim import EigenResult, SolveStatus

    op = DenseOperator.from_spectrum(spectrum("tiny_gap", 100), rotation(100, 2))
    res = Lanczos(tol=1e-6).solve(op, 2)
    assert res.converged and res.outcome is SolveStatus.CONVERGED
    assert "converged" not in {f.name for f in dataclasses.fields(EigenResult)}
    assert not hasattr(res, "status")
    vals, vecs = res.eigenvalues, res.eigenvectors
    mine = EigenResult(vals, vecs, res.residual_norms, 0, 1, SolveStatus.MAX_ITERATIONS, "mine")
    assert not mine.converged and mine.message == "mine"
    bare = EigenResult(vals, vecs, res.residual_norms, 0, 1, SolveStatus.BREAKDOWN)
    assert bare.message == SolveStatus.BREAKDOWN.message and not bare.converged
    assert dataclasses.replace(bare, outcome=SolveStatus.CONVERGED).converged
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.converged = False  # type: ignore[misc]
    with pytest.raises(TypeError, match="SolveStatus"):
        EigenResult(vals, vecs, vals, 0, 1, "converged")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EigenResult(vals, vecs, vals, 0, 1, SolveStatus.CONVERGED, converged=True)  # type: ignore[call-arg]


def test_check_k_reads_the_block_size_the_base_class_declares() -> None:
    class Fixed(Eigensolver):
        def __init__(self) -> None:
            super().__init__()
            self.block_size = 2

        def _solve(self, op, k, init, generator):  # type: ignore[no-untyped-def]
            raise AssertionError("not reached")

    assert Eigensolver.block_size is None  # declared on the base, with its contract
    with pytest.raises(ValueError, match="block_size=2 of Fixed is narrower than k=3"):
        Fixed().check_k(100, 3)
    Lanczos().check_k(100, 3)  # no block: nothing to check


def test_an_eigen_result_with_nan_pairs_is_non_finite_whatever_the_solver_says():
    """A third-party solver that returns NaN eigenpairs and calls them converged: the result
    says NON_FINITE, so the wrapper's fault policy keeps the previous basis."""
    res = so.EigenResult(
        eigenvalues=torch.tensor([1.0, math.nan]),
        eigenvectors=torch.eye(3)[:, :2],
        residual_norms=torch.zeros(2),
        num_matvecs=1,
        num_iterations=1,
        outcome=so.SolveStatus.CONVERGED,
    )
    assert res.outcome is so.SolveStatus.NON_FINITE and not res.converged
