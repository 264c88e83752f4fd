"""The per-step record of :class:`~subspace_optim.SubspaceProjectedOptimizer`.

Effective learning rates (Song, Ahn & Yun, 2025) decompose the realized update ``Δ`` along
the dominant and bulk components of the gradient ``g``:

.. math::

    \\eta_{dom} = -\\frac{\\langle \\Delta, P g \\rangle}{\\lVert P g \\rVert^2}, \\qquad
    \\eta_{bulk} = -\\frac{\\langle \\Delta, P^\\perp g \\rangle}{\\lVert P^\\perp g \\rVert^2}

For plain SGD with learning rate ``η`` both equal ``η``. Summaries over a window use the
ratio of sums (:func:`effective_lr_summary`): per-step ratios are too noisy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["StepStats", "effective_lr_summary"]


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did; every field is a plain Python value (easy to log).

    Attributes:
        step: index of the step (0-based).
        projected: the update was projected (Dom or Bulk) at this step.
        refreshed: the basis was recomputed at this step (before the update).
        gradient_source: ``"full"`` (the full-data gradient computed at the refresh),
            ``"minibatch"`` (``p.grad``) or ``"none"``.
        loss: full-data loss at the refresh, else ``nan``.
        grad_alignment: χ_k(g) = ‖P g‖/‖g‖ for that gradient, else ``nan``.
        update_alignment: ‖P Δ_base‖/‖Δ_base‖ of the *unprojected* base update: the
            fraction of its norm that Dom keeps and Bulk removes.
        eta_dom: effective learning rate of the realized update along ``P g``.
        eta_bulk: effective learning rate of the realized update along ``P⊥ g``.
        dot_dom: ``−⟨Δ, P g⟩``, numerator of the ratio-of-sums summary of ``eta_dom``.
        dot_bulk: ``−⟨Δ, P⊥ g⟩``, numerator of the summary of ``eta_bulk``.
        sq_dom: ``‖P g‖²``, denominator of the summary of ``eta_dom``.
        sq_bulk: ``‖P⊥ g‖²``, denominator of the summary of ``eta_bulk``.
        eigenvalues: tracked eigenvalues, descending (``k + num_extra`` of them).
        refresh_matvecs: Hessian-vector products of this step's refresh (0 without one).
        refresh_seconds: wall time of this step's refresh (0 without one).
        refresh_converged: the eigensolver met its tolerance (``True`` when no refresh).
        skipped: the step was undone to protect the parameters (non-finite update).
        faults: cumulative count of numerical faults handled so far.
        scale_dom: ``a`` of the wrapper's ``mode`` as a pair ``(a, b)``, the factor of the
            dominant component ``P_kΔ`` (``"dominant"`` is ``(1, 0)``, ``"bulk"`` ``(0, 1)``,
            ``"none"`` ``(1, 1)``); ``nan`` in a record that does not know it.
        scale_bulk: ``b``, the factor of the bulk component ``Δ − P_kΔ``; ``nan`` when
            unknown.

    Example:
        One Bulk step of SGD (``η = 0.1``) on least squares with Hessian
        ``diag(6, 1.5, 0.375)``, from zero weights: the full gradient is ``(−2, −1, −0.5)``.

        >>> import torch
        >>> from torch import nn
        >>> import subspace_optim as so
        >>> model = nn.Linear(3, 1, bias=False).double()
        >>> _ = nn.init.zeros_(model.weight)
        >>> X = torch.diag(torch.tensor([3.0, 1.5, 0.75], dtype=torch.float64))
        >>> Y = torch.ones(3, 1, dtype=torch.float64)
        >>> loss_fn = nn.MSELoss()
        >>> op = so.HessianOperator(model, loss_fn, (X, Y))
        >>> opt = so.SubspaceProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), op,
        ...                                     k=1, eigensolver="eigh")
        >>> opt.zero_grad(); loss_fn(model(X), Y).backward(); opt.step()
        >>> s = opt.last_stats
        >>> s.step, s.projected, s.refreshed, s.gradient_source
        (0, True, True, 'full')
        >>> round(s.loss, 6), [round(v, 6) for v in s.eigenvalues], round(s.grad_alignment, 4)
        (1.0, [6.0], 0.8729)
        >>> abs(s.eta_dom) < 1e-12, round(s.eta_bulk, 6)  # Bulk: no step along λ_1's direction
        (True, 0.1)
        >>> s.scale_dom, s.scale_bulk  # "bulk" is the pair (0, 1)
        (0.0, 1.0)
    """

    step: int
    projected: bool
    refreshed: bool
    gradient_source: str
    loss: float = math.nan
    grad_alignment: float = math.nan
    update_alignment: float = math.nan
    eta_dom: float = math.nan
    eta_bulk: float = math.nan
    dot_dom: float = math.nan
    dot_bulk: float = math.nan
    sq_dom: float = math.nan
    sq_bulk: float = math.nan
    eigenvalues: tuple[float, ...] = field(default_factory=tuple)
    refresh_matvecs: int = 0
    refresh_seconds: float = 0.0
    refresh_converged: bool = True
    skipped: bool = False
    faults: int = 0
    scale_dom: float = math.nan
    scale_bulk: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        """A flat dict (eigenvalues as ``eig_0, eig_1, …``) for CSV / TensorBoard / W&B.

        Returns:
            Every field by name, with ``eigenvalues`` replaced by one ``eig_i`` entry per
            eigenvalue (descending); all values are plain Python numbers, booleans or
            strings.

        Example:
            >>> from subspace_optim import StepStats
            >>> s = StepStats(step=3, projected=True, refreshed=True, gradient_source="full",
            ...               grad_alignment=0.97, eigenvalues=(4.0, 2.5))
            >>> d = s.as_dict()
            >>> d["step"], d["grad_alignment"], d["eig_0"], d["eig_1"]
            (3, 0.97, 4.0, 2.5)
        """
        d = asdict(self)
        eig = d.pop("eigenvalues")
        d.update({f"eig_{i}": v for i, v in enumerate(eig)})
        return d


def _is_projected(value: Any) -> bool:
    """``projected`` of a record: a bool, a number, or a string as read back from a CSV."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "1.0", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> float:
    """A record's term as a float; ``nan`` for what a report writes for a missing or
    non-finite one (no key, ``None`` in JSON, ``""`` in CSV)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def effective_lr_summary(records: Iterable[StepStats | Mapping[str, Any]]) -> dict[str, float]:
    """Window summary of effective learning rates as ratios of sums.

    .. math:: \\bar\\eta_{dom} = \\frac{\\sum_t -\\langle \\Delta_t, P_t g_t\\rangle}
                                       {\\sum_t \\lVert P_t g_t \\rVert^2}

    (likewise for bulk), over the records whose terms are finite.

    Effective learning rates describe what the *base optimizer* does along the dominant and
    bulk directions, so they are measured on an unprojected run (``mode="none"``, or the
    steps before a switch): that is the paper's Table 1. On a projected step the realized
    update is the projection's (a Bulk update has no component along ``P g``, so its
    ``eta_dom`` is zero and the ratio is meaningless), and such records are refused. The
    decision is made from the records themselves (their ``projected`` field), not from an
    argument.

    Args:
        records: :class:`StepStats`, or mappings with the same keys (e.g. rows of
            :meth:`StepStats.as_dict` read back from a CSV file), of the steps to summarise.
            Records whose four terms are not all finite (steps without a full-batch
            gradient) are skipped.

    Returns:
        ``{"eta_dom", "eta_bulk", "ratio", "steps"}``: the two ratios of sums, their ratio
        ``eta_bulk / eta_dom`` (``nan`` when a denominator is zero or nothing was
        summarised), and the number of records used.

    Raises:
        ValueError: a summarised record has ``projected`` true. Summarise the unprojected
            run instead, or keep only its unprojected steps
            (``[r for r in records if not r.projected]``).

    Example:
        >>> from subspace_optim import StepStats, effective_lr_summary
        >>> r = [StepStats(step=i, projected=False, refreshed=True, gradient_source="full",
        ...                dot_dom=0.1, sq_dom=1.0, dot_bulk=0.2, sq_bulk=1.0) for i in range(3)]
        >>> effective_lr_summary(r)
        {'eta_dom': 0.1, 'eta_bulk': 0.2, 'ratio': 2.0, 'steps': 3}
        >>> bulk = StepStats(step=3, projected=True, refreshed=True, gradient_source="full",
        ...                  dot_dom=0.0, sq_dom=1.0, dot_bulk=0.2, sq_bulk=1.0)
        >>> effective_lr_summary(r + [bulk])
        Traceback (most recent call last):
            ...
        ValueError: effective_lr_summary: 1 of 4 records (first: step 3) were projected; ...
    """
    num_d = den_d = num_b = den_b = 0.0
    steps = 0
    projected: list[Any] = []
    for r in records:
        get = r.get if isinstance(r, Mapping) else lambda key, _r=r: getattr(_r, key)
        terms = [_number(get(key)) for key in ("dot_dom", "sq_dom", "dot_bulk", "sq_bulk")]
        if not all(math.isfinite(x) for x in terms):
            continue
        if _is_projected(get("projected")):
            projected.append(get("step"))
        num_d += terms[0]
        den_d += terms[1]
        num_b += terms[2]
        den_b += terms[3]
        steps += 1
    if projected:
        raise ValueError(
            f"effective_lr_summary: {len(projected)} of {steps} records (first: step "
            f"{projected[0]}) were projected; their realized updates are the projection's, "
            "not the base optimizer's (a Bulk step has eta_dom = 0 by construction). "
            "Summarise the unprojected run (mode='none', or the steps before the switch), "
            "e.g. [r for r in records if not r.projected]."
        )
    eta_d = num_d / den_d if den_d > 0 else math.nan
    eta_b = num_b / den_b if den_b > 0 else math.nan
    ratio = eta_b / eta_d if eta_d not in (0.0,) and math.isfinite(eta_d) else math.nan
    return {
        "eta_dom": round(eta_d, 12),
        "eta_bulk": round(eta_b, 12),
        "ratio": round(ratio, 12),
        "steps": steps,
    }
