"""Typed records of a reproduction run: one per run (base / Dom / Bulk), one per family, one
for the whole experiment. Every field is a plain Python value, so the records serialize to
JSON as they are."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ROSE_TOLERANCE",
    "VARIANTS",
    "ExperimentResult",
    "FamilyResult",
    "RunSummary",
    "VariantOutcome",
    "progress_ratio",
]

#: A run whose final loss is this fraction above the loss at the switch "rose" (a plateau that
#: drifts by a fraction of a percent, as Dom's does with MSE, is not flagged).
ROSE_TOLERANCE = 0.05

#: The three runs of a family after the switch: the unmodified optimizer, its Dom variant
#: (update projected onto the top-k subspace) and its Bulk variant (top-k component removed).
#: With ``RunConfig.mode_scales`` a fourth, ``"scaled"``, follows them.
VARIANTS = ("base", "dom", "bulk")


def scales_label(config: dict[str, Any]) -> str | None:
    """``"(a, b)"`` of a run with ``mode_scales`` (``None`` without).

    Args:
        config: an :class:`~subspace_optim.experiments.ExperimentResult`'s ``config``.

    Returns:
        The pair as text, e.g. ``"(0.5, 1.5)"``, or ``None``.
    """
    pair = config.get("mode_scales")
    return None if pair is None else f"({pair[0]:g}, {pair[1]:g})"


def progress_ratio(loss_at_switch: float, final: float, base_final: float) -> float:
    """Progress after the switch relative to the unprojected run,
    ``(L_switch − L_variant) / (L_switch − L_base)``: about 0 for a plateau (Dom), about 1
    when the variant trains as well as the base (Bulk); ``nan`` when the base made no progress.

    Args:
        loss_at_switch: the full-batch training loss at the switch.
        final: the variant's final loss.
        base_final: the base run's final loss.

    Returns:
        The ratio; ``nan`` when the base did not lower the loss or ``final`` is not finite.

    Example:
        >>> from subspace_optim.experiments.results import progress_ratio
        >>> round(progress_ratio(0.17, 0.123, 0.122), 3), round(progress_ratio(0.17, 0.171, 0.122), 3)
        (0.979, -0.021)
    """
    gain = loss_at_switch - base_final
    if not (math.isfinite(gain) and gain > 0 and math.isfinite(final)):
        return math.nan
    return (loss_at_switch - final) / gain


@dataclass(frozen=True)
class VariantOutcome:
    """How one run after the switch ended, before ``RunSummary.from_outcome`` sums it up.

    Attributes:
        variant: ``"base"``, ``"dom"``, ``"bulk"`` or ``"scaled"``.
        rows: the run's per-step rows after the switch (each holding the
            :class:`~subspace_optim.StepStats` fields, eigenvalues as ``eig_0, eig_1, …``).
        final_loss: the full-batch training loss after the last step (``nan`` if it
            diverged).
        diverged_at: the step at which a diverged run was stopped, else ``None``.
        steps_run: steps taken after the switch.
        seconds: wall time of the run.
        warnings: distinct warning messages raised during the run.
    """

    variant: str
    rows: Sequence[dict[str, Any]]
    final_loss: float
    diverged_at: int | None = None
    steps_run: int = 0
    seconds: float = math.nan
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """What one run after the switch did.

    Attributes:
        variant: ``"base"``, ``"dom"``, ``"bulk"`` or ``"scaled"`` (``--mode-scales``).
        final_loss: full-batch training loss after the last step (``nan`` if it diverged).
        progress: :func:`progress_ratio` against the base run (1.0 for the base itself).
        status: ``"ok"``; ``"loss rose"`` (final loss more than 5 % above the loss at the
            switch); ``"diverged"`` (the loss became non-finite or exploded and the run was
            stopped).
        diverged_at: the step at which a diverged run was stopped.
        steps_run: optimizer steps taken after the switch.
        removed_fraction: mean over projected steps of ``‖P Δ‖ / ‖Δ‖`` for the unprojected
            base update ``Δ``: the fraction of the update's norm inside the dominant subspace,
            which Bulk removes and Dom keeps (``nan`` for the base run).
        refreshes: eigensolves (basis refreshes) of this run after the switch.
        matvecs: Hessian-vector products those refreshes spent.
        refresh_seconds: wall time those refreshes took.
        watched_eigenvalue: which tracked eigenvalue is compared with the stability limit:
            ``"λ_1"`` for base and Dom, ``"λ_{k+1}"`` for Bulk (the largest curvature Bulk
            still steps along).
        max_watched: its largest value after the switch (for the base run: from step 0).
        limit_crossed_at: first step at which it exceeded the stability limit ``2(1+β)/η``
            (``None`` if never, or for adaptive optimizers). For Bulk this is the condition
            under which its dynamics are unstable (``docs/eos_findings.md``).
        faults: numerical faults the wrapper handled (failed refreshes, non-finite
            gradients or updates).
        skipped_steps: steps the wrapper skipped or undid because of such a fault.
        seconds: wall time of the run.
        warnings: distinct warning messages raised during the run.

    Example:
        A Bulk run stopped at step 37 after its loss became NaN; the record is plain values:

        >>> import json, math
        >>> from dataclasses import asdict
        >>> from subspace_optim.experiments import RunSummary, VariantOutcome
        >>> outcome = VariantOutcome("bulk", [], math.nan, diverged_at=37, steps_run=37)
        >>> r = RunSummary.from_outcome(outcome, k=10, limit=4.0, loss_at_switch=0.2,
        ...                             base_final=0.1)
        >>> r.status, r.diverged_at, r.watched_eigenvalue, math.isnan(r.progress)
        ('diverged', 37, 'λ_{k+1}', True)
        >>> json.loads(json.dumps(asdict(r)))["steps_run"]
        37
    """

    variant: str
    final_loss: float
    progress: float
    status: str
    diverged_at: int | None
    steps_run: int
    removed_fraction: float
    refreshes: int
    matvecs: int
    refresh_seconds: float
    watched_eigenvalue: str
    max_watched: float
    limit_crossed_at: int | None
    faults: int
    skipped_steps: int
    seconds: float
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_outcome(
        cls,
        outcome: VariantOutcome,
        *,
        k: int,
        limit: float,
        loss_at_switch: float,
        base_final: float,
        earlier: Sequence[dict[str, Any]] = (),
    ) -> RunSummary:
        """Summarize a run from its outcome and per-step rows after the switch.

        ``earlier`` rows (the shared run before the switch, for the base run) count only
        for the watched eigenvalue, so the onset of the Edge of Stability is dated.

        Args:
            outcome: how the run ended, with its rows.
            k: the dimension of the dominant subspace (Bulk watches ``eig_k``, λ_{k+1}).
            limit: the stability threshold the watched eigenvalue is compared with
                (``nan``: none).
            loss_at_switch: the full-batch training loss at the switch.
            base_final: the base run's final loss.
            earlier: rows of the shared run before the switch.

        Returns:
            The record.

        Example:
            >>> from subspace_optim.experiments import RunSummary, VariantOutcome
            >>> rows = [{"step": t, "refreshed": True, "projected": True, "update_alignment": 0.4,
            ...          "refresh_matvecs": 20, "refresh_seconds": 0.1, "eig_0": 3.0,
            ...          "eig_1": 1.5 + t} for t in range(3)]
            >>> r = RunSummary.from_outcome(VariantOutcome("bulk", rows, final_loss=0.3), k=1,
            ...                             limit=2.0, loss_at_switch=0.2, base_final=0.1)
            >>> r.status, r.limit_crossed_at, r.max_watched, r.matvecs, round(r.removed_fraction, 6)
            ('loss rose', 1, 3.5, 60, 0.4)
        """
        variant, rows, final = outcome.variant, outcome.rows, outcome.final_loss
        refreshed = [r for r in rows if r.get("refreshed")]
        projected = [r for r in rows if r.get("projected")]
        key = f"eig_{k if variant == 'bulk' else 0}"
        tracked = [r for r in earlier if r.get("refreshed")] + refreshed
        watched = [(r["step"], r[key]) for r in tracked if key in r and math.isfinite(r[key])]
        crossed = next((s for s, v in watched if math.isfinite(limit) and v > limit), None)
        fractions = [
            r["update_alignment"] for r in projected if math.isfinite(r["update_alignment"])
        ]
        if outcome.diverged_at is not None:
            status = "diverged"
        elif final > loss_at_switch * (1 + ROSE_TOLERANCE):
            status = "loss rose"
        else:
            status = "ok"
        return cls(
            variant=variant,
            final_loss=final,
            progress=1.0
            if variant == "base"
            else progress_ratio(loss_at_switch, final, base_final),
            status=status,
            diverged_at=outcome.diverged_at,
            steps_run=outcome.steps_run,
            removed_fraction=sum(fractions) / len(fractions) if fractions else math.nan,
            refreshes=len(refreshed),
            matvecs=int(sum(r["refresh_matvecs"] for r in refreshed)),
            refresh_seconds=float(sum(r["refresh_seconds"] for r in refreshed)),
            watched_eigenvalue="λ_{k+1}" if variant == "bulk" else "λ_1",
            max_watched=max((v for _, v in watched), default=math.nan),
            limit_crossed_at=crossed,
            faults=max((int(r.get("faults") or 0) for r in rows), default=0),
            skipped_steps=sum(1 for r in rows if r.get("skipped")),
            seconds=outcome.seconds,
            warnings=tuple(outcome.warnings),
        )


@dataclass(frozen=True)
class FamilyResult:
    """One optimizer family: the shared run up to the switch and the three runs after it.

    Attributes:
        family: the family's key (``"sgd"``, ``"adam"``, ...).
        label: the family's human name.
        lr: learning rate used (for GD at the Edge of Stability, derived from λ_1(θ_0)).
        batch_size: minibatch size, or ``None`` for full-batch GD.
        stability_limit: the base optimizer's stability threshold, ``2/η`` for (S)GD and
            SAM, ``2(1+β)/η`` with momentum (:func:`~subspace_optim.stability_threshold`);
            ``nan`` for adaptive optimizers (Adam).
        initial_sharpness: λ_1 at initialization when it was measured, else ``nan``.
        switch_step: the step at which Dom / Bulk projection starts (its update is the first
            projected one). With ``"threshold"``, the measurement step whose χ_k brought the
            EMA to the threshold.
        switch_reason: ``"threshold"`` (the EMA of χ_k reached the threshold),
            ``"forced"`` (it did not by the fallback step) or ``"fixed"`` (``--switch STEP``).
        alignment_ema: the EMA of χ_k at the switch: with ``"threshold"`` the value that
            reached the threshold (it includes ``chi_at_switch``), otherwise the EMA of the
            measurements before the switch (``nan`` for a fixed switch before any).
        chi_at_switch: χ_k of the full-batch gradient measured at the switch step, at the
            parameters the base / Dom / Bulk runs start from (with ``"threshold"``: the
            measurement that triggered the switch).
        initial_loss: full-batch training loss at step 0.
        loss_at_switch: full-batch training loss at the switch.
        eta: effective learning rates of the base run as ratios of sums over every step with
            a full-batch gradient (:func:`~subspace_optim.effective_lr_summary`).
        runs: ``{"base": RunSummary, "dom": ..., "bulk": ...}``, and ``"scaled"`` with
            ``mode_scales``.
        prefix_seconds: wall time of the shared run up to the switch.
        rows: one dict per step per run (the CSV / JSON metrics).

    Example:
        A family whose switch was forced and whose Dom run ended above the loss at the switch:

        >>> from subspace_optim.experiments import FamilyResult, RunSummary, VariantOutcome
        >>> runs = {v: RunSummary.from_outcome(VariantOutcome(v, [], f, steps_run=8), k=2,
        ...                                    limit=20.0, loss_at_switch=0.5, base_final=0.1)
        ...         for v, f in [("base", 0.1), ("dom", 0.6), ("bulk", 0.12)]}
        >>> fam = FamilyResult("sgd", "SGD", lr=0.1, batch_size=16, stability_limit=20.0,
        ...                    initial_sharpness=float("nan"), switch_step=40,
        ...                    switch_reason="forced", alignment_ema=0.81, chi_at_switch=0.84,
        ...                    initial_loss=1.0, loss_at_switch=0.5, eta={"ratio": 1.0},
        ...                    runs=runs, prefix_seconds=0.2)
        >>> for note in fam.notes():
        ...     print(note)
        χ_k EMA reached only 0.81 (below the threshold): switch forced at step 40
        dom: loss rose from 0.5 to 0.6
        >>> round(fam.runs["bulk"].progress, 6), "rows" in fam.as_dict()
        (0.95, False)
    """

    family: str
    label: str
    lr: float
    batch_size: int | None
    stability_limit: float
    initial_sharpness: float
    switch_step: int
    switch_reason: str
    alignment_ema: float
    chi_at_switch: float
    initial_loss: float
    loss_at_switch: float
    eta: dict[str, float]
    runs: dict[str, RunSummary]
    prefix_seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def notes(self) -> list[str]:
        """Human-readable remarks: forced switches, instabilities, faults.

        Returns:
            One sentence per remark (empty when there is nothing to remark).
        """
        out: list[str] = []
        if self.switch_reason == "forced":
            out.append(
                f"χ_k EMA reached only {self.alignment_ema:.2f} (below the threshold): "
                f"switch forced at step {self.switch_step}"
            )
        limit = self.stability_limit
        for name, r in self.runs.items():
            if r.status == "diverged":
                out.append(f"{name}: diverged, stopped at step {r.diverged_at}")
            elif r.status == "loss rose":
                out.append(
                    f"{name}: loss rose from {self.loss_at_switch:.4g} to {r.final_loss:.4g}"
                )
            if r.limit_crossed_at is not None:
                what = (
                    "Bulk dynamics unstable along the directions it keeps"
                    if name == "bulk"
                    else "Edge of Stability"
                )
                out.append(
                    f"{name}: {r.watched_eigenvalue} passed the stability threshold "
                    f"{limit:.3g} at step {r.limit_crossed_at} (max {r.max_watched:.3g}): {what}"
                )
            if r.faults or r.skipped_steps:
                out.append(
                    f"{name}: {r.faults} numerical fault(s) handled, {r.skipped_steps} step(s) undone"
                )
        return out

    def as_dict(self) -> dict[str, Any]:
        """Everything but the per-step rows, JSON-ready.

        Returns:
            The fields as plain values (runs as dicts), without ``rows``, with ``notes``.
        """
        d = asdict(self)
        d.pop("rows")
        d["notes"] = self.notes()
        return d


@dataclass(frozen=True)
class ExperimentResult:
    """A whole reproduction: the configuration, the machine and one result per family.

    Attributes:
        setup: the setup's name (``"digits"``, ``"mnist-5k-mlp"``, a user's module, ...).
        config: the run's settings (steps, switch, k, solver, ...), JSON-ready.
        machine: platform, Python, torch, threads and device.
        families: one :class:`FamilyResult` per optimizer family, in the order run.
        seconds: total wall time.
        cpu_seconds: CPU time of this process over the run (all threads); on a machine
            shared with other jobs it says what the run would take alone.

    Example:
        :func:`~subspace_optim.experiments.run` returns one; here one is assembled by hand:

        >>> import json
        >>> from subspace_optim.experiments import (ExperimentResult, FamilyResult, RunSummary,
        ...                                         VariantOutcome)
        >>> finals = [("base", 0.1), ("dom", 0.5), ("bulk", 0.12)]
        >>> runs = {v: RunSummary.from_outcome(VariantOutcome(v, [], f, steps_run=8), k=2,
        ...                                    limit=20.0, loss_at_switch=0.5, base_final=0.1)
        ...         for v, f in finals}
        >>> rows = [{"family": "sgd", "variant": v, "step": 12, "loss": f} for v, f in finals]
        >>> fam = FamilyResult("sgd", "SGD", lr=0.1, batch_size=16, stability_limit=20.0,
        ...                    initial_sharpness=float("nan"), switch_step=4,
        ...                    switch_reason="fixed", alignment_ema=0.9, chi_at_switch=0.95,
        ...                    initial_loss=1.0, loss_at_switch=0.5, eta={"ratio": 1.0},
        ...                    runs=runs, prefix_seconds=0.1, rows=rows)
        >>> result = ExperimentResult("toy", config={"steps": 12, "k": 2}, machine={},
        ...                           families=[fam], seconds=1.0)
        >>> [(r["variant"], r["loss"]) for r in result.rows()]
        [('base', 0.1), ('dom', 0.5), ('bulk', 0.12)]
        >>> summary = json.loads(json.dumps(result.summary()))  # JSON-ready, without the rows
        >>> summary["families"][0]["runs"]["dom"]["progress"], "rows" in summary["families"][0]
        (0.0, False)
    """

    setup: str
    config: dict[str, Any]
    machine: dict[str, Any]
    families: list[FamilyResult]
    seconds: float
    cpu_seconds: float = float("nan")

    def rows(self) -> list[dict[str, Any]]:
        """Every per-step row of every run (one row per step per run).

        Returns:
            The rows of every family, in the order run.
        """
        return [row for f in self.families for row in f.rows]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary without the per-step rows.

        Returns:
            ``setup``, ``config``, ``machine``, ``seconds``, ``cpu_seconds`` and the
            families (each as ``FamilyResult.as_dict`` gives it).
        """
        return {
            "setup": self.setup,
            "config": self.config,
            "machine": self.machine,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "families": [f.as_dict() for f in self.families],
        }
