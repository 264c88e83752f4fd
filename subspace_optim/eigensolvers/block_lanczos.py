"""Thick-restart block Lanczos with full block reorthogonalization: one block product per step."""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import check_int
from ..operators.base import LinearOperator
from . import _common
from .base import EigenResult, Eigensolver

__all__ = ["BlockLanczos"]


def _orthogonalize(W: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """``W`` with ``span(basis)`` removed by two classical Gram–Schmidt passes, and the
    coefficients ``basisᵀ W`` removed (``(m, c)``)."""
    H = basis.T @ W
    W = W - basis @ H
    H2 = basis.T @ W  # second pass: orthogonality to rounding (Giraud et al., 2005)
    return W - basis @ H2, H + H2


def _extend(
    W: Tensor,
    basis: Tensor,
    width: int,
    drop: Tensor,
    op: LinearOperator,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Next block of the Krylov basis from the orthogonalized products ``W`` ``(n, c)``.

    Returns ``Q`` ``(n, r)``, ``r <= width``, orthonormal and orthogonal to ``basis``, and
    ``B = Qᵀ W`` ``(r, c)``. Directions of ``W`` with singular value ``<= drop`` are
    deflated (they are rounding, or the Krylov space became invariant); the lost width is
    refilled with random directions from ``generator`` (their rows of ``B`` are ~0), fewer
    only when the orthogonal complement of ``basis`` is exhausted.
    """
    n, c = W.shape
    if width == 0:
        return W[:, :0], W.new_zeros(0, c)
    U, sigma, _ = torch.linalg.svd(W, full_matrices=False)
    Q = U[:, sigma > drop][:, :width]
    if Q.shape[1]:
        # a third pass: a direction with small singular value carries rounding along
        Q = torch.linalg.qr(Q - basis @ (basis.T @ Q)).Q
    missing = width - Q.shape[1]
    if missing:
        known = torch.cat([basis, Q], dim=1)
        Z = _common.random_block(n, missing, op, generator)
        before = Z.norm(dim=0)
        Z, _ = _orthogonalize(Z, known)
        Z, R = torch.linalg.qr(Z)
        # a random vector keeps a fair share of its norm unless the complement is empty
        alive = R.diagonal().abs() > 1e3 * torch.finfo(W.dtype).eps * before
        Z, _ = _orthogonalize(Z[:, alive], known)
        Q = torch.cat([Q, Z], dim=1)
    return Q, Q.T @ W


class BlockLanczos(Eigensolver):
    """Thick-restart block Lanczos with full block reorthogonalization.

    Each step applies the operator once to a block ``V_j`` of ``b`` columns
    (``op.matmat``: a :class:`~subspace_optim.HessianOperator` evaluates the ``b`` products
    in one batched pass, far faster than ``b`` single products), orthogonalizes the result
    twice against the whole basis and takes an orthonormal basis of what is left as the next
    block:

    .. math::

        A V_j = \\sum_{i \\le j} V_i H_{ij} + V_{j+1} B_j, \\qquad
        A \\mathcal{V}_m = \\mathcal{V}_m T_m + V_{j+1} B_j E_j^\\top .

    The Ritz pairs ``(θ_i, 𝒱_m s_i)`` of ``T_m = 𝒱_mᵀ A 𝒱_m`` approximate the extreme
    eigenpairs, and the residual of a pair is ``‖B_j s_i^{(j)}‖`` (the last block rows of
    ``s_i``), read without extra products; it is checked after every block step. When the
    basis reaches ``ncv`` columns, the best ``keep`` Ritz vectors and the pending block are
    kept (thick restart, Wu & Simon 2000, in block form), so memory stays
    ``O(n · (ncv + b))``.

    A block of width ``b`` sees ``b`` directions of each eigenspace, so an eigenvalue of
    multiplicity up to ``b`` is found with all its copies (single-vector
    :class:`~subspace_optim.Lanczos` sees one). When a new block loses rank (an invariant
    subspace, a rank-deficient start) the lost columns are replaced by random directions
    from ``generator``, so the block keeps its width.

    Args:
        block_size: columns per block product, ``b`` (default ``max(k, 2)``, capped at
            ``n − k``: a block as wide as the wanted set catches every multiplicity in
            it). Unlike :class:`~subspace_optim.LOBPCG`, ``b`` may be narrower than ``k``:
            the basis still grows to ``k`` and beyond. ``b`` trades matvecs for products:
            a wider block needs more matvecs in all but fewer block products. It must be
            at least the multiplicity of a repeated wanted eigenvalue.
        ncv: most basis columns kept before a thick restart (default
            ``max(k + 6b, 2k + 20)``, at least ``k + 2b``, capped at ``n``). Memory is
            ``n · (ncv + b)`` numbers; a wide block needs a long basis to pay off (a block
            step adds ``b`` columns at once), lower it on very large models.
        tol, which, raise_on_failure: see :class:`Eigensolver`.
        max_iter: cap on block products (each one ``b`` matvecs, one ``op.matmat``
            call); ``num_iterations`` of the result counts them. The basis always grows
            to ``k`` columns first, even past this cap.

    A warm start ``init`` ``(n, m)`` is used as the first block, padded with random
    columns when ``m < b``. When ``m > b`` (at most ``ncv``) every column is kept: they
    are applied ``b`` at a time and the pending block stays ``m`` wide, so nothing of the
    previous basis is lost.

    .. note::
        Why a class of its own rather than ``Lanczos(block_size=...)``: its capability
        flags differ (it uses a block warm start, which :class:`~subspace_optim.Lanczos`
        folds into one vector, and it finds repeated eigenvalues), its cost knob is the
        block width rather than the vector count, and ``max_iter`` counts block products
        rather than restarts; one file per algorithm keeps each readable.
        ``BlockLanczos(block_size=1)`` is thick-restart Lanczos.

        The pending part of the basis is kept as a queue: only its first ``b`` columns
        are applied per step, and ``B_j`` generalizes to the coupling ``Pᵀ A 𝒱_m`` of
        the whole queue ``P``, so the residuals read from it are those of the returned
        vectors up to the deflated directions (singular values below
        ``100 · eps · ‖A V_j‖``).

    Example:
        An eigenvalue of multiplicity 3 at the top, found three times with ``b = 3``:

        >>> import torch
        >>> from subspace_optim import BlockLanczos, DenseOperator
        >>> lam = torch.cat([torch.tensor([6.0, 6.0, 6.0]), torch.linspace(-1, 4, 197)])
        >>> op = DenseOperator.from_spectrum(lam.double())
        >>> res = BlockLanczos(block_size=3, tol=1e-8).solve(op, 4)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()], res.converged
        ([6.0, 6.0, 6.0, 4.0], True)
        >>> res.num_matvecs == 3 * res.num_iterations
        True
    """

    def __init__(
        self,
        *,
        block_size: int | None = None,
        ncv: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 1000,
        which: str = "LA",
        raise_on_failure: bool = False,
    ) -> None:
        super().__init__(tol=tol, max_iter=max_iter, which=which, raise_on_failure=raise_on_failure)
        if block_size is not None:
            check_int("block_size", block_size, low=1)
        if ncv is not None:
            check_int("ncv", ncv, low=2)
        self.block_size = block_size
        self.ncv = ncv

    def check_k(self, n: int, k: int) -> None:
        """Raise a clear error if ``k`` pairs of an ``(n, n)`` operator are out of reach
        (``k < 1`` or ``k > n − 1``); ``block_size`` may be narrower than ``k``.

        Args:
            n: the operator's size.
            k: the number of eigenpairs asked for.

        Raises:
            ValueError: ``k`` is below 1 or above ``n − 1``.

        Example:
            >>> from subspace_optim import BlockLanczos
            >>> BlockLanczos(block_size=2).check_k(100, 10)  # fine: blocks need not hold k
            >>> BlockLanczos().check_k(10, 10)
            Traceback (most recent call last):
            ...
            ValueError: k=10 is too large for BlockLanczos on an operator of size 10 (at most 9); lower k or use Eigh for tiny operators
        """
        check_int("k", k, low=1)
        if k > n - self.min_gap_to_n:
            raise ValueError(
                f"k={k} is too large for {type(self).__name__} on an operator of size {n} "
                f"(at most {n - self.min_gap_to_n}); lower k or use Eigh for tiny operators"
            )

    def sizes(self, n: int, k: int) -> tuple[int, int]:
        """``(b, ncv)``: the block width and the basis size used for ``k`` pairs of an
        ``(n, n)`` operator.

        Args:
            n: the operator's size.
            k: the number of eigenpairs asked for.

        Returns:
            ``block_size`` (default ``max(k, 2)``) capped at ``n − k``, and ``ncv`` (default
            ``max(k + 6b, 2k + 20)``) at least ``k + 2b`` and at most ``n``.

        Example:
            >>> from subspace_optim import BlockLanczos
            >>> BlockLanczos().sizes(10_000, 10), BlockLanczos(block_size=4).sizes(10_000, 10)
            ((10, 70), (4, 40))
        """
        b = self.block_size if self.block_size is not None else max(k, 2)
        b = max(1, min(b, n - k))
        ncv = self.ncv if self.ncv is not None else max(k + 6 * b, 2 * k + 20)
        return b, min(n, max(ncv, k + 2 * b))

    def _solve(
        self, op: LinearOperator, k: int, init: Tensor | None, generator: torch.Generator
    ) -> EigenResult:
        n = op.shape[0]
        b, ncv = self.sizes(n, k)
        width = b if init is None else max(b, min(init.shape[1], ncv))
        cap = min(n, ncv + width)
        # V[:, :m] has been applied; V[:, m : m + p] is the pending queue
        V = torch.zeros(n, cap, dtype=op.dtype, device=op.device)
        # G[i, j] = v_iᵀ A v_j for applied j (rows of later columns are 0 by orthogonality)
        G = torch.zeros(cap, cap, dtype=op.dtype, device=op.device)
        V[:, :width] = _common.start_block(op, width, init, generator)
        m, p = 0, width
        theta = S = res = None
        iterations = 0
        finite = True
        while True:
            c = min(b, p)
            if c and m + c > ncv:
                assert theta is not None and S is not None  # m >= k here
                keep = max(k, min(k + (m - k) // 2, ncv - 2 * c))
                if keep < m:  # thick restart: the best `keep` Ritz vectors, the queue
                    _thick_restart(V, G, theta, S, m, p, keep)
                    m = keep
                    continue
                c = ncv - m  # tiny n, no room to gain: a narrower last block
            if c == 0:
                break  # the basis spans the whole space (m == n): T_m is exact
            AV = op.matmat(V[:, m : m + c])
            iterations += 1
            if not bool(torch.isfinite(AV).all()):  # NaN/Inf products: report, do not raise
                finite = False
                break
            r = _append_block(V, G, AV, m, p, op, generator)
            m, p = m + c, p - c + r
            if m < k:
                continue  # fewer basis vectors than wanted pairs: keep growing
            theta, S = _ritz_pairs(G[:m, :m], self.which)
            res = (G[m : m + p, :m] @ S).norm(dim=0)
            if not bool(torch.isfinite(theta).all()):
                finite = False
                break
            target = _common.tolerance(theta[:k], self.tol)
            if bool((res[:k] <= target).all()) or iterations >= self.max_iter:
                break
        if not finite or theta is None or S is None or res is None:
            ritz = _common.nan_ritz(op, k)
        else:
            ritz = _common.Ritz(theta, V[:, :m] @ S[:, :k], res)
        return _common.result(
            "BlockLanczos",
            ritz,
            k,
            self.tol,
            iterations,
            f"raise max_iter (now {self.max_iter}), block_size (now {b}) or ncv (now {ncv}), "
            "or loosen tol",
        )

    def __repr__(self) -> str:
        return (
            f"BlockLanczos(block_size={self.block_size}, ncv={self.ncv}, tol={self.tol}, "
            f"max_iter={self.max_iter}, which={self.which!r})"
        )


def _ritz_pairs(T: Tensor, which: str) -> tuple[Tensor, Tensor]:
    """The eigenpairs of the block tridiagonal ``T`` (symmetrized), ordered by ``which``."""
    theta, S = _common.safe_eigh((T + T.T) / 2)
    idx = _common.order(theta, which)
    return theta[idx], S[:, idx]


def _thick_restart(
    V: Tensor, G: Tensor, theta: Tensor, S: Tensor, m: int, p: int, keep: int
) -> None:
    """Restart in place from the best ``keep`` Ritz vectors of ``V[:, :m]``, then the
    ``p`` pending columns, with their couplings in ``G``."""
    Y = V[:, :m] @ S[:, :keep]
    coupling = G[m : m + p, :m] @ S[:, :keep]
    V[:, keep : keep + p] = V[:, m : m + p].clone()
    V[:, :keep] = Y
    G.zero_()
    G[:keep, :keep] = torch.diag(theta[:keep])
    G[keep : keep + p, :keep] = coupling


def _append_block(
    V: Tensor, G: Tensor, AV: Tensor, m: int, p: int, op: LinearOperator, generator: torch.Generator
) -> int:
    """Orthogonalize the products ``AV`` of ``V[:, m : m + c]`` against the ``m + p``
    stored columns, record the coefficients in ``G`` and append the new directions to
    ``V``; returns how many were appended."""
    c, stored = AV.shape[1], m + p
    W, H = _orthogonalize(AV, V[:, :stored])
    G[:stored, m : m + c] = H
    drop = 1e2 * torch.finfo(op.dtype).eps * AV.norm(dim=0).max()
    Q, B = _extend(W, V[:, :stored], min(c, V.shape[1] - stored), drop, op, generator)
    r = Q.shape[1]
    V[:, stored : stored + r] = Q
    G[stored : stored + r, m : m + c] = B
    return r
