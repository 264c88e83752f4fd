"""Edge of Stability helpers: sharpness against the stability threshold ``2/η``.

Full-batch gradient descent with learning rate ``η`` on a quadratic is stable only while every
Hessian eigenvalue stays below ``2/η``. Neural networks first sharpen progressively (the top
eigenvalue λ_1 rises) until λ_1 reaches ``2/η`` and then hover there, the *Edge of Stability*
(Cohen et al., 2021), while the loss keeps decreasing non-monotonically.

For projected training the relevant number is not λ_1 but the top eigenvalue of what the
projection leaves in: Bulk-GD removes the top-``k`` directions, so its dynamics see
λ_{k+1}; once λ_{k+1} passes ``2/η`` nothing self-stabilizes those directions and the loss
rises (see ``docs/eos_findings.md``).

The API is small:

* :func:`stability_threshold` reads the threshold off an optimizer: ``2/η`` for SGD,
  ``(2 + 2β)/η`` with heavy-ball momentum ``β``, ``(2 + 2β)/(η(1 + 2β))`` with Nesterov,
  minus weight decay; SAM uses its base's; adaptive methods (Adam, ...) have none.
* :func:`pick_learning_rate` estimates λ_1 and returns ``lr = c · 2/λ_1``.
* :class:`SharpnessTracker` follows the top eigenvalues through training with warm-started
  solves and records them against the threshold (:class:`SharpnessRecord`).
* :func:`choose_k` is the rule behind ``SubspaceProjectedOptimizer(..., adaptive_k=c)``:
  every eigenvalue above ``c`` times the threshold, capped.
* :class:`EdgeOfStabilityWarning` is what the projection wrapper warns with when the
  projected dynamics are unstable (λ_{k+1} above the threshold in Bulk mode).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from subspace_optim import HessianOperator, SharpnessTracker, pick_learning_rate
    >>> g = torch.Generator().manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    >>> X, Y = torch.randn(64, 4, generator=g), torch.randn(64, 2, generator=g)
    >>> op = HessianOperator(model, nn.MSELoss(), (X, Y))
    >>> pick = pick_learning_rate(op, c=0.9)
    >>> abs(pick.lr * pick.sharpness - 1.8) < 1e-9
    True
    >>> opt = torch.optim.SGD(model.parameters(), lr=pick.lr)
    >>> tracker = SharpnessTracker(op, num_eigs=2)
    >>> for _ in range(3):
    ...     opt.zero_grad(); nn.MSELoss()(model(X), Y).backward(); opt.step()
    ...     rec = tracker.update(opt)
    >>> len(tracker.history), rec.threshold == 2 / pick.lr, len(rec.eigenvalues)
    (3, True, 2)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._utils import check_int, check_positive_float
from ..eigensolvers import EigenResult, Eigensolver, Lanczos, resolve_eigensolver
from ..operators.base import LinearOperator
from ._guard import guarded_chain
from .protocol import inner_chain

__all__ = [
    "EdgeOfStabilityWarning",
    "LearningRatePick",
    "SharpnessRecord",
    "SharpnessTracker",
    "choose_k",
    "pick_learning_rate",
    "stability_threshold",
]


class EdgeOfStabilityWarning(RuntimeWarning):
    """The projected dynamics are unstable: an eigenvalue the update still moves along
    (λ_{k+1} in Bulk mode) is above the optimizer's stability threshold.

    Example:
        Least squares whose Hessian is ``diag(6, 1.5, 0.375)``: Bulk with ``k=1`` removes
        λ_1 = 6 but still steps along λ_2 = 1.5, above ``2/η = 1.333`` for ``η = 1.5``.

        >>> import warnings, torch
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> model = nn.Linear(3, 1, bias=False).double()
        >>> X = torch.diag(torch.tensor([3.0, 1.5, 0.75], dtype=torch.float64))
        >>> Y = torch.ones(3, 1, dtype=torch.float64)
        >>> loss_fn = nn.MSELoss()  # Hessian (2/3)·XᵀX
        >>> op = so.HessianOperator(model, loss_fn, (X, Y))
        >>> base = torch.optim.SGD(model.parameters(), lr=1.5)
        >>> opt = so.SubspaceProjectedOptimizer(base, op, k=1, mode="bulk", num_extra=1,
        ...                                     eigensolver="eigh")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     opt.zero_grad(); loss_fn(model(X), Y).backward(); opt.step()
        >>> [str(w.message).partition(" (")[0] for w in caught
        ...  if issubclass(w.category, so.EdgeOfStabilityWarning)]
        ['step 0: λ_2 = 1.5 exceeds the stability threshold 1.333']
        >>> issubclass(so.EdgeOfStabilityWarning, RuntimeWarning)  # filter it like any warning
        True
    """


def _group_threshold(group: dict, kind: str) -> float | None:
    lr = float(group.get("lr", math.nan))
    if not math.isfinite(lr) or lr <= 0:
        return None
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if kind == "sgd":
        beta = float(group.get("momentum", 0.0) or 0.0)
        damp = float(group.get("dampening", 0.0) or 0.0)
        if group.get("nesterov", False):
            thr = (2 + 2 * beta) / (lr * (1 + 2 * beta))
        else:
            thr = (2 + 2 * beta) / (lr * (1 - damp)) if damp < 1 else math.inf
    else:  # plain gradient steps of size lr
        thr = 2 / lr
    return thr - wd


def stability_threshold(optimizer: Optimizer) -> float | None:
    """Largest Hessian eigenvalue the optimizer's iteration is stable for, on a quadratic.

    .. math::

        \\lambda_{\\max} < \\frac{2}{\\eta} \\;\\text{(GD)}, \\qquad
        \\frac{2 + 2\\beta}{\\eta} \\;\\text{(heavy ball)}, \\qquad
        \\frac{2 + 2\\beta}{\\eta\\,(1 + 2\\beta)} \\;\\text{(Nesterov)}

    minus the ``weight_decay`` (which adds to every eigenvalue), with ``η`` scaled by
    ``1 − dampening``. With several parameter groups the smallest threshold (the largest
    learning rate) is returned. Read at call time, so LR schedulers are followed.

    Args:
        optimizer: ``torch.optim.SGD``, or an optimizer that steps one: a
            :class:`~subspace_optim.optim.CompositeOptimizer` such as
            :class:`~subspace_optim.SAM` (followed by
            :func:`~subspace_optim.optim.protocol.inner_chain`), or a
            :class:`~subspace_optim.SubspaceProjectedOptimizer` around either.

    Returns:
        The threshold, or ``None`` when it is not defined by a learning rate alone
        (Adam, RMSprop, Adagrad, ...: their stability depends on the preconditioner).

    Example:
        >>> import torch
        >>> from subspace_optim import stability_threshold
        >>> w = [torch.zeros(2, requires_grad=True)]
        >>> stability_threshold(torch.optim.SGD(w, lr=0.5))
        4.0
        >>> round(stability_threshold(torch.optim.SGD(w, lr=0.1, momentum=0.9)), 9)  # 3.8 / 0.1
        38.0
        >>> stability_threshold(torch.optim.Adam(w)) is None
        True
    """
    chain = guarded_chain(optimizer) or inner_chain(optimizer)  # a wrapper: its base's chain
    sgd = next((o for o in chain if isinstance(o, torch.optim.SGD)), None)
    if sgd is None:
        return None
    values = [_group_threshold(g, "sgd") for g in sgd.param_groups]
    finite = [v for v in values if v is not None]
    return min(finite) if finite else None


def choose_k(eigenvalues: Tensor, threshold: float, fraction: float, k_max: int) -> int:
    """Number of leading eigenvalues at or above ``fraction · threshold``, at most ``k_max``.

    Args:
        eigenvalues: ``(m,)``, descending.
        threshold: the stability threshold (e.g. ``2/η``).
        fraction: ``c > 0``.
        k_max: cap.

    Returns:
        The count of eigenvalues ``>= fraction · threshold``, capped at ``k_max``.

    Example:
        >>> import torch
        >>> from subspace_optim import choose_k
        >>> choose_k(torch.tensor([5.0, 3.0, 2.5, 1.0]), threshold=4.0, fraction=0.6, k_max=10)
        3
        >>> choose_k(torch.tensor([5.0, 3.0, 2.5, 1.0]), threshold=4.0, fraction=0.6, k_max=2)
        2
    """
    cut = fraction * threshold
    count = int((eigenvalues >= cut).sum())
    return min(count, k_max)


@dataclass(frozen=True)
class LearningRatePick:
    """Result of :func:`pick_learning_rate`.

    Attributes:
        lr: the chosen learning rate ``c · 2 / sharpness``.
        sharpness: the estimated top eigenvalue λ_1.
        c: the factor used (``c < 1`` starts below the edge, ``c > 1`` beyond it).
        num_matvecs: Hessian-vector products spent.
        converged: whether the eigensolver met its tolerance.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, pick_learning_rate
        >>> spectrum = torch.tensor([8.0, 2.0, 1.0, 0.5], dtype=torch.float64)
        >>> pick = pick_learning_rate(DenseOperator.from_spectrum(spectrum), c=0.5)
        >>> round(pick.sharpness, 6), round(pick.lr, 6), pick.c, pick.converged  # 0.5 · 2/8
        (8.0, 0.125, 0.5, True)
        >>> w = [torch.zeros(4, requires_grad=True)]
        >>> torch.optim.SGD(w, lr=pick.lr).param_groups[0]["lr"]
        0.125
    """

    lr: float
    sharpness: float
    c: float
    num_matvecs: int
    converged: bool


def pick_learning_rate(
    curvature: LinearOperator,
    c: float = 1.0,
    *,
    eigensolver: str | Eigensolver | None = None,
    generator: torch.Generator | None = None,
) -> LearningRatePick:
    """Estimate λ_1 and return ``lr = c · 2/λ_1`` for full-batch GD.

    With ``c`` somewhat below 1 training starts stable and sharpens into the Edge of
    Stability; with ``c >= 1`` it is at (or beyond) the edge from the first step.

    Args:
        curvature: the Hessian operator at the current parameters.
        c: factor ``> 0``.
        eigensolver: default ``Lanczos(tol=1e-4)``.
        generator: randomness for the start vector.

    Returns:
        The pick: learning rate, λ_1, ``c`` and the solve's cost and convergence.

    Raises:
        TypeError: ``c`` is not a number.
        ValueError: ``c`` is not finite or ``c <= 0``, λ_1 is not positive (no curvature
            to set a step by), or ``eigensolver`` is neither an
            :class:`~subspace_optim.Eigensolver` nor a registered name.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, pick_learning_rate
        >>> op = DenseOperator.from_spectrum(torch.linspace(0, 4, 40, dtype=torch.float64))
        >>> pick = pick_learning_rate(op, c=0.9)
        >>> round(pick.sharpness, 6), round(pick.lr, 6)  # 0.9 · 2/4
        (4.0, 0.45)
    """
    c = check_positive_float("c", c)
    solver = Lanczos(tol=1e-4) if eigensolver is None else resolve_eigensolver(eigensolver)
    if generator is None:
        generator = torch.Generator(device=curvature.device).manual_seed(0)
    with curvature.solve_scope():
        res = solver.solve(curvature, 1, generator=generator)
    lam = float(res.eigenvalues[0])
    if not math.isfinite(lam) or lam <= 0:
        raise ValueError(
            f"the top Hessian eigenvalue is {lam}: there is no positive curvature to set the "
            "learning rate by; pick it by hand"
        )
    return LearningRatePick(
        lr=c * 2 / lam, sharpness=lam, c=c, num_matvecs=res.num_matvecs, converged=res.converged
    )


@dataclass(frozen=True)
class SharpnessRecord:
    """One measurement of :class:`SharpnessTracker`.

    Attributes:
        step: the tracker's update count when measured (0-based).
        eigenvalues: top ``num_eigs`` eigenvalues, descending.
        threshold: the stability threshold at that step (``nan`` when undefined).
        num_matvecs: Hessian-vector products this measurement cost.
        converged: the eigensolver met its tolerance.

    Example:
        >>> from subspace_optim import SharpnessRecord
        >>> rec = SharpnessRecord(step=7, eigenvalues=(4.2, 3.1), threshold=4.0,
        ...                       num_matvecs=12, converged=True)
        >>> rec.sharpness, round(rec.ratio, 6), rec.at_edge  # λ_1 = 4.2 past 2/η = 4
        (4.2, 1.05, True)
        >>> SharpnessRecord(0, (4.2,), float("nan"), 0, True).at_edge  # no threshold (Adam)
        False
    """

    step: int
    eigenvalues: tuple[float, ...]
    threshold: float
    num_matvecs: int
    converged: bool

    @property
    def sharpness(self) -> float:
        """λ_1."""
        return self.eigenvalues[0]

    @property
    def ratio(self) -> float:
        """λ_1 / threshold: about 1 at the Edge of Stability."""
        return self.sharpness / self.threshold if self.threshold == self.threshold else math.nan

    @property
    def at_edge(self) -> bool:
        """λ_1 is at or above the threshold."""
        return self.ratio >= 1.0


class SharpnessTracker:
    """Follow the top eigenvalues of a curvature operator through training, warm-started.

    Call :meth:`update` after each optimizer step (or every few); each call solves for the
    top ``num_eigs`` eigenpairs starting from the previous eigenvectors, which costs a few
    Hessian-vector products once training moves slowly.

    Args:
        curvature: usually :class:`~subspace_optim.HessianOperator` over the full batch.
        num_eigs: how many eigenvalues to track (``>= 1``).
        eigensolver: default ``Lanczos(tol=1e-3)``.
        every: measure every ``every``-th call of :meth:`update` (others return ``None``).
        generator: randomness for the first start vector.

    Raises:
        TypeError: ``curvature`` is not a :class:`~subspace_optim.LinearOperator`,
            ``generator`` is not a ``torch.Generator``, or ``num_eigs`` or ``every`` is
            not an int.
        ValueError: ``num_eigs`` or ``every`` is below 1, ``eigensolver`` is neither an
            :class:`~subspace_optim.Eigensolver` nor a registered name, or the solver
            cannot compute ``num_eigs`` eigenpairs of ``curvature`` (see
            :meth:`~subspace_optim.Eigensolver.check_k`).

    Attributes:
        history: the :class:`SharpnessRecord` list.
        num_matvecs: total Hessian-vector products spent.

    Example:
        >>> import torch
        >>> from subspace_optim import DenseOperator, SharpnessTracker
        >>> op = DenseOperator.from_spectrum(torch.linspace(-1, 3, 50, dtype=torch.float64))
        >>> tracker = SharpnessTracker(op, num_eigs=2)
        >>> record = tracker.update(0.5)  # learning rate 0.5: threshold 2/0.5 = 4
        >>> [round(v, 4) for v in record.eigenvalues], record.threshold
        ([3.0, 2.9184], 4.0)
    """

    def __init__(
        self,
        curvature: LinearOperator,
        num_eigs: int = 1,
        *,
        eigensolver: str | Eigensolver | None = None,
        every: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(curvature, LinearOperator):
            raise TypeError(
                "curvature must be a LinearOperator such as HessianOperator(model, loss_fn, data); "
                f"got {type(curvature).__name__}"
            )
        self.num_eigs = check_int("num_eigs", num_eigs, low=1)
        self.every = check_int("every", every, low=1)
        self.solver = Lanczos(tol=1e-3) if eigensolver is None else resolve_eigensolver(eigensolver)
        self.solver.check_k(curvature.shape[0], self.num_eigs)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        self.curvature = curvature
        self.generator = generator or torch.Generator(device=curvature.device).manual_seed(0)
        self.history: list[SharpnessRecord] = []
        self.num_matvecs = 0
        self.last_result: EigenResult | None = None
        self._calls = 0

    def update(self, lr_or_optimizer: float | Optimizer | None = None) -> SharpnessRecord | None:
        """Measure now (if due) and append a record.

        Args:
            lr_or_optimizer: a learning rate (threshold ``2/lr``), an optimizer (threshold
                from :func:`stability_threshold`) or ``None`` (no threshold).

        Returns:
            The new record, or ``None`` when this call was not due.
        """
        threshold = math.nan
        if isinstance(lr_or_optimizer, Optimizer):
            thr = stability_threshold(lr_or_optimizer)
            threshold = math.nan if thr is None else thr
        elif lr_or_optimizer is not None:
            threshold = 2 / check_positive_float("lr", lr_or_optimizer)
        step = self._calls
        self._calls += 1
        if step % self.every:
            return None
        init = None if self.last_result is None else self.last_result.eigenvectors
        if init is not None and not bool(torch.isfinite(init).all()):
            init = None
        with self.curvature.solve_scope():  # training moves θ next: the graph is stale
            res = self.solver.solve(
                self.curvature, self.num_eigs, init=init, generator=self.generator
            )
        self.num_matvecs += res.num_matvecs
        if bool(torch.isfinite(res.eigenvectors).all()):
            self.last_result = res
        rec = SharpnessRecord(
            step=step,
            eigenvalues=tuple(float(x) for x in res.eigenvalues.tolist()),
            threshold=threshold,
            num_matvecs=res.num_matvecs,
            converged=res.converged,
        )
        self.history.append(rec)
        return rec

    def __repr__(self) -> str:
        return f"SharpnessTracker(num_eigs={self.num_eigs}, every={self.every}, solver={self.solver!r})"


def warn_unstable(
    t: int, index: int, lam: float, limit: float, *, dominant: bool = False, stacklevel: int
) -> None:
    """Issue the :class:`EdgeOfStabilityWarning` of a projected step along unstable directions.

    Args:
        t: the step.
        index: ``j`` of ``λ_j``, the eigenvalue of the direction that is unstable.
        lam: ``λ_j``.
        limit: the threshold it exceeds (``2/η`` for SGD, over the scale of its part).
        dominant: the direction is in the dominant subspace, amplified by the mode's ``a``
            (otherwise it is the first direction the projection no longer removes).
        stacklevel: as for :func:`warnings.warn`.
    """
    if dominant:
        what = (
            "the dominant part of the update, scaled by the mode's a, is unstable along it, "
            "and the loss may rise. Lower a or the learning rate"
        )
    else:
        what = (
            "Bulk dynamics are unstable along directions the projection no longer removes, "
            "and the loss may rise. Raise k (or use adaptive_k), lower the learning rate, "
            "or use mode='none'"
        )
    warnings.warn(
        f"step {t}: λ_{index} = {lam:.4g} exceeds the stability threshold {limit:.4g} "
        f"(2/η for SGD, over the mode's scale): {what}",
        EdgeOfStabilityWarning,
        stacklevel=stacklevel + 1,
    )
