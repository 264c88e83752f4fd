"""The warm refresh's sketched check (``WarmRefresh(probes=...)``): what it costs, when it
is attempted, and that what it accepts stays within the angle target of the exact top-k.

References are dense float64 eigendecompositions; angles are the sine of the largest
principal angle (rotation- and sign-invariant).
"""

from __future__ import annotations

import pytest
import torch

from subspace_optim import DenseOperator, WarmRefresh, orthonormalize, subspace_distance

F64 = torch.float64


def operator(n: int = 200, k: int = 6, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with ``k`` separated top eigenvalues above a bulk in ``[-0.5, 1]``."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    lam = torch.cat(
        [torch.linspace(20.0, 8.0, k, dtype=F64), torch.linspace(-0.5, 1.0, n - k, dtype=F64)]
    )
    return DenseOperator.from_spectrum(lam, Q).A


def nudge(A: torch.Tensor, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(A.shape, generator=g, dtype=F64)
    E = (E + E.T) / 2
    return A + size * E / torch.linalg.matrix_norm(E, 2)


def exact_top(A: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigh(A)[1].flip(1)[:, :k]


def settle(warm: WarmRefresh, A: torch.Tensor, k: int) -> torch.Tensor:
    """Cold start, then refreshes at ``A`` until one is accepted by the check."""
    U = warm.solve(DenseOperator(A), k).eigenvectors
    for _ in range(4):
        res = warm.solve(DenseOperator(A), k, init=U)
        U = res.eigenvectors
        if "sketch check" in res.message:
            return U
    raise AssertionError("the check never accepted an unchanged operator")


def test_unchanged_operator_costs_the_probes_only() -> None:
    """Once a refresh has left room below the targets, an unchanged operator costs exactly
    ``probes`` matvecs per call and the basis comes back as it went in."""
    k = 6
    A = operator(k=k)
    warm = WarmRefresh(probes=3)
    U = settle(warm, A, k)
    res = warm.solve(DenseOperator(A), k, init=U)
    assert res.converged and res.num_matvecs == 3 and res.num_iterations == 0
    assert torch.equal(res.eigenvectors, U)
    assert float(subspace_distance(res.eigenvectors, exact_top(A, k))) <= warm.sin_tol
    # without the check, the same call is a full block of k + extra columns
    off = WarmRefresh(probes=0)
    U0 = off.solve(DenseOperator(A), k).eigenvectors
    assert off.solve(DenseOperator(A), k, init=U0).num_matvecs >= k + off.extra


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drift_is_caught_and_refreshed(seed: int) -> None:
    """Along a slowly moving operator, the check keeps the basis while it is good and hands
    over to a full refresh when the drift has used up the room: every accepted basis is
    within the angle target of the exact top-k, and the check saved matvecs overall."""
    k = 6
    A = operator(k=k, seed=seed)
    warm, full = WarmRefresh(), WarmRefresh(probes=0)
    U, V = (
        warm.solve(DenseOperator(A), k).eigenvectors,
        full.solve(DenseOperator(A), k).eigenvectors,
    )
    kept = refreshed = spent = spent_full = 0
    for t in range(30):
        A = nudge(A, 0.2, 1000 * seed + t)
        res = warm.solve(DenseOperator(A), k, init=U)
        ref = full.solve(DenseOperator(A), k, init=V)
        assert res.converged, res.message
        U, V = res.eigenvectors, ref.eigenvectors
        spent, spent_full = spent + res.num_matvecs, spent_full + ref.num_matvecs
        if "sketch check" in res.message:
            kept += 1
        else:
            refreshed += 1
        assert float(subspace_distance(orthonormalize(U), exact_top(A, k))) <= 1.5 * warm.sin_tol
    assert kept > 0 and refreshed > 1, (kept, refreshed, spent, spent_full)  # both paths
    assert spent < 0.5 * spent_full, (spent, spent_full)


def test_check_verifies_the_pairs_it_is_given() -> None:
    """The check verifies ``(θ_i, init_i)`` as given: the same span with other columns
    (rotated) fails it and the full refresh runs; columns with flipped signs are the same
    eigenpairs and pass; a start without orthonormal columns is never accepted."""
    k = 6
    A = operator(k=k)
    warm = WarmRefresh()
    U = settle(warm, A, k)
    g = torch.Generator().manual_seed(5)
    Qk, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=F64))
    res = warm.solve(DenseOperator(A), k, init=U @ Qk)  # same span, other columns
    assert "sketch check" not in res.message and res.num_matvecs >= k + warm.extra
    U = settle(warm, A, k)
    signs = torch.tensor([1.0, -1.0] * (k // 2), dtype=F64)
    flipped = warm.solve(DenseOperator(A), k, init=U * signs)
    assert "sketch check" in flipped.message and torch.equal(flipped.eigenvectors, U * signs)
    U = settle(warm, A, k)
    scaled = warm.solve(DenseOperator(A), k, init=2 * U)
    assert "sketch check" not in scaled.message
    gram = scaled.eigenvectors.T @ scaled.eigenvectors
    assert float((gram - torch.eye(k, dtype=F64)).abs().max()) < 1e-8


def test_fast_moving_operator_backs_off() -> None:
    """When every check fails (the operator moves a lot at each call), the check is tried
    at calls 1, 2, 4, 7, 12, 21, 30 (skips of 0, 1, 2, 4, 8, 8), so it costs few matvecs."""
    k = 6
    A = operator(k=k)
    warm = WarmRefresh(probes=2)
    U = warm.solve(DenseOperator(A), k).eigenvectors
    checked = []
    for t in range(30):
        A = nudge(A, 3.0, t)
        before = warm.warm_state.skip
        res = warm.solve(DenseOperator(A), k, init=U)
        assert "sketch check" not in res.message
        checked.append(before == 0 and warm.warm_state.kept is not None)
        U = res.eigenvectors
    assert sum(checked) <= 8, checked


def test_state_dict_resumes_exactly() -> None:
    """A fresh object loaded with the state continues bit for bit (same decisions, same
    matvecs, same vectors); a state from before the check existed (guards only) loads."""
    k = 6
    A = operator(k=k)
    warm = WarmRefresh()
    U = settle(warm, A, k)
    state = warm.state_dict()
    twin = WarmRefresh()
    twin.load_state_dict(state)
    for t in range(6):
        A = nudge(A, 0.05, t)
        a = warm.solve(DenseOperator(A), k, init=U, generator=torch.Generator().manual_seed(t))
        b = twin.solve(DenseOperator(A), k, init=U, generator=torch.Generator().manual_seed(t))
        assert a.num_matvecs == b.num_matvecs and a.message == b.message
        assert torch.equal(a.eigenvectors, b.eigenvectors)
        U = a.eigenvectors
    old = WarmRefresh()
    old.load_state_dict({"guards": state["guards"]})
    assert "sketch check" not in old.solve(DenseOperator(A), k, init=U).message
    with pytest.raises(TypeError, match="kept"):
        WarmRefresh().load_state_dict({"guards": None, "kept": {"theta": 1.0}})
    assert set(state["kept"]) == {"theta", "targets"}


def test_probes_validated() -> None:
    with pytest.raises(ValueError, match="probes"):
        WarmRefresh(probes=-1)
    assert WarmRefresh().probes == 2 and "probes=2" in repr(WarmRefresh())


# ------------------------------------------------------------------ planted pairs
# The check's estimate, margin, back-off and targets against numbers worked out by hand
# (these kill the mutants of WarmRefresh._check, _targets and _meets; docs/mutation.md).


def planted(ratios: list[float], targets: list[float], n: int = 40):
    """A diagonal operator whose top eigenvectors are the first unit vectors, and kept
    pairs ``(θ_i, e_i)`` whose residuals are exactly ``ratios[i] · targets[i]``."""
    k = len(ratios)
    lam = torch.cat(
        [torch.linspace(10.0, 4.0, k, dtype=F64), torch.linspace(-1.0, 1.0, n - k, dtype=F64)]
    )
    t = torch.tensor(targets, dtype=F64)
    theta = lam[:k] + torch.tensor(ratios, dtype=F64) * t
    state = {"guards": None, "kept": {"theta": theta, "targets": t}, "backoff": 0, "skip": 0}
    return torch.diag(lam), torch.eye(n, dtype=F64)[:, :k], theta, t, state


@pytest.mark.parametrize(
    ("ratios", "accepted"), [([0.6, 0.2, 0.4, 0.2], True), ([1.2, 0.2, 0.4, 0.2], False)]
)
def test_the_estimate_is_the_root_mean_square_of_the_ratios(ratios, accepted) -> None:
    """With residuals planted at known fractions of unequal targets, the estimate is the
    root mean square of the fractions (0.387 here, accepted; 0.648, refreshed), the pairs
    come back unchanged and the reported residuals are the estimate times each target."""
    targets = [1.0, 0.5, 0.25, 0.125]
    A, X, theta, t, state = planted(ratios, targets)
    k = len(ratios)
    rms = (sum(r * r for r in ratios) / k) ** 0.5
    warm = WarmRefresh(probes=4096)
    warm.load_state_dict(state)
    res = warm.solve(DenseOperator(A), k, init=X)
    assert ("sketch check" in res.message) is accepted, res.message
    if not accepted:
        assert warm.warm_state.backoff == 1 and warm.warm_state.skip == 0
        return
    assert res.num_matvecs == 4096 and res.converged
    assert torch.equal(res.eigenvalues, theta) and torch.equal(res.eigenvectors, X)
    estimate = res.residual_norms / t
    assert torch.allclose(estimate, estimate[0].expand(k)), estimate
    assert abs(float(estimate[0]) / rms - 1) < 0.05, (float(estimate[0]), rms)
    assert f"{float(estimate[0]):.2f} of their targets" in res.message


def test_back_off_skips_0_1_2_4_8_8_and_a_pass_resets_it() -> None:
    """Every check fails (the operator moves a lot at each call): after each call the
    back-off and the skips left are exactly those of the schedule; then, at a fixed
    operator, the first check that passes resets the back-off."""
    k = 6
    A = operator(k=k)
    warm = WarmRefresh(probes=2)
    U = warm.solve(DenseOperator(A), k).eigenvectors
    expected = [(1, 0), (2, 1), (2, 0), (4, 2), (4, 1), (4, 0), (8, 4), (8, 3), (8, 2)]
    expected += [(8, 1), (8, 0), (8, 8), (8, 7)]  # skips of 0, 1, 2, 4, then 8 at most
    for t, state in enumerate(expected):
        A = nudge(A, 3.0, t)
        res = warm.solve(DenseOperator(A), k, init=U)
        assert "sketch check" not in res.message
        assert (warm.warm_state.backoff, warm.warm_state.skip) == state, t
        U = res.eigenvectors
    for _ in range(12):  # the skips run out, then the check passes at a fixed operator
        res = warm.solve(DenseOperator(A), k, init=U)
        U = res.eigenvectors
        if "sketch check" in res.message:
            break
    assert "sketch check" in res.message
    assert (warm.warm_state.backoff, warm.warm_state.skip) == (0, 0)


def test_a_start_in_another_dtype_is_refreshed_not_checked() -> None:
    """Pairs kept in float64 are not checked against a float32 operator (the full refresh
    runs, in float32), and a start with fewer than ``k`` columns is not checked either."""
    ratios, targets = [0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0]
    A, X, _, _, state = planted(ratios, targets)
    warm = WarmRefresh()
    warm.load_state_dict(state)
    res = warm.solve(DenseOperator(A.float()), 4, init=X.float())
    assert "sketch check" not in res.message and res.eigenvectors.dtype == torch.float32
    warm.load_state_dict(state)
    res = warm.solve(DenseOperator(A), 4, init=X[:, :3])
    assert "sketch check" not in res.message
    warm.load_state_dict(state)  # nearly orthonormal columns are not enough
    assert "sketch check" not in warm.solve(DenseOperator(A), 4, init=1.2 * X).message
    warm.load_state_dict(state)  # pairs kept for another k are not checked
    res = warm.solve(DenseOperator(A), 3, init=X)
    assert "sketch check" not in res.message and res.eigenvalues.shape == (3,)
    warm.load_state_dict(state)  # the same pairs with all k columns pass
    assert "sketch check" in warm.solve(DenseOperator(A), 4, init=X).message


def test_the_probes_come_from_the_solve_generator() -> None:
    """The estimate draws its probes from the generator of the call, never the global
    random state: the same generator gives the same estimate bit for bit."""
    A, X, _, _, state = planted([0.3, 0.1, 0.2, 0.1], [1.0, 0.5, 0.25, 0.125])
    estimates = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        warm = WarmRefresh(probes=3)
        warm.load_state_dict(state)
        res = warm.solve(DenseOperator(A), 4, init=X, generator=torch.Generator().manual_seed(7))
        assert "sketch check" in res.message
        estimates.append(res.residual_norms)
    assert torch.equal(estimates[0], estimates[1])


def test_targets_and_meets_by_hand() -> None:
    """The kept targets: ``sin_tol · (θ_i − θ_b)`` per pair (never below rounding), or
    ``tol · |θ_1|`` for every pair; a residual exactly at its target meets it."""
    theta = torch.tensor([10.0, 6.0, 5.0, 2.0], dtype=F64)
    by_angle = WarmRefresh(sin_tol=0.1)
    targets = by_angle._targets(theta, 2)
    assert torch.allclose(targets, torch.tensor([0.8, 0.4], dtype=F64), rtol=1e-12, atol=0)
    by_residual = WarmRefresh(tol=1e-3)
    assert torch.allclose(
        by_residual._targets(theta, 2), torch.tensor([0.01, 0.01], dtype=F64), rtol=1e-12, atol=0
    )
    by_magnitude = WarmRefresh(sin_tol=0.1, which="LM")  # gaps in magnitude
    signed = torch.tensor([-10.0, 6.0, -5.0, 2.0], dtype=F64)
    assert torch.allclose(
        by_magnitude._targets(signed, 2), torch.tensor([0.8, 0.4], dtype=F64), rtol=1e-12, atol=0
    )
    # a negative last value: algebraic gaps (LA, the default) differ from magnitude gaps
    below = torch.tensor([10.0, 6.0, 5.0, -3.0], dtype=F64)
    assert torch.allclose(
        by_angle._targets(below, 2), torch.tensor([1.3, 0.9], dtype=F64), rtol=1e-12, atol=0
    )
    flat = torch.ones(3, dtype=F64)  # no gap: the targets fall to the rounding floor
    floor = torch.full((2,), 10 * torch.finfo(F64).eps, dtype=F64)
    assert torch.allclose(by_angle._targets(flat, 2), floor, rtol=1e-12, atol=0)
    at = torch.cat([targets, torch.tensor([99.0, 99.0], dtype=F64)])  # beyond k: not counted
    assert by_angle._meets(theta, at, 2)
    for i in range(2):
        over = at.clone()
        over[i] *= 1.01
        assert not by_angle._meets(theta, over, 2)


def test_the_state_keeps_the_guard_columns_and_nothing_to_check_without_probes() -> None:
    """After a solve, the ``b - k`` columns beyond the top k are kept as guards for the next
    warm start (a copy, not a view of the result); without probes nothing is kept for a
    check."""
    A, k = operator(), 4
    warm = WarmRefresh(probes=2)
    res = warm.solve(DenseOperator(A), k)
    guards = warm.warm_state.guards
    assert guards is not None and guards.shape == (A.shape[0], warm.extra)
    # the guards are the block's next Ritz vectors: orthogonal to the top k, near the
    # exact eigenvectors k+1, ..., k+extra of this well-separated spectrum
    assert float((res.eigenvectors.T @ guards).abs().max()) < 1e-8
    assert warm.warm_state.kept is not None and warm.warm_state.kept.theta.shape == (k,)
    off = WarmRefresh(probes=0)
    off.solve(DenseOperator(A), k)
    assert off.warm_state.kept is None and off.warm_state.guards is not None
    # no guard columns asked for (a residual tolerance instead of an angle): none kept
    bare = WarmRefresh(extra=0, tol=1e-8)
    bare.solve(DenseOperator(A), k)
    assert bare.warm_state.guards is None
