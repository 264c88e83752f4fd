"""The numbers a setup's tables and findings are made from, derived from its results only:
progress ratios against SGD, the sweep's edge ratio and whether each run diverged."""

from __future__ import annotations

import math
from typing import Any

#: the curvatures as the tables and figures name them
LABEL = {"hessian": "Hessian", "ggn": "GGN", "covariance": "covariance", "fisher": "emp. Fisher"}


def _first_at_or_below(curve: list[float], level: float) -> int | None:
    return next((t for t, v in enumerate(curve) if math.isfinite(v) and v <= level), None)


# ------------------------------------------------------------------------ summaries
def summarize(block: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers of one setup: progress ratios, the sweep's edge and divergence."""
    cfg = block["config"]
    k, lr, sw = cfg["k"], cfg["lr"], cfg["switch"]
    sgd = block["trajectory"]["loss"][sw:]
    L_s = sgd[0]
    out: dict[str, Any] = {"loss_switch": L_s, "threshold": 2 / lr, "runs": {}, "sweep": []}
    for name, r in block["runs"].items():
        L_e, L_sgd = r["loss"][-1], sgd[len(r["loss"]) - 1]
        c = r["counters"]
        out["runs"][name] = {
            "loss_end": L_e,
            "loss_sgd": L_sgd,
            "progress": (L_s - L_e) / (L_s - L_sgd),
            "matvecs_per_refresh": c["matvecs"] / max(c["refreshes"], 1),
            "ms_per_refresh": 1e3 * c["refresh_seconds"] / max(c["refreshes"], 1),
        }
    every = cfg["sweep_refresh_every"]
    for r in block["sweep"]:
        a, b, loss = r["a"], r["b"], r["loss"]
        L_sgd = sgd[len(loss) - 1]
        # the spectrum the run met before it blew up: refreshes at steps before the loss first
        # exceeded twice its value at the switch (or stopped being finite)
        blow = next((t for t, v in enumerate(loss) if not math.isfinite(v) or v > 2 * L_s), None)
        eig = [e for j, e in enumerate(r["eigenvalues"]) if blow is None or j * every < blow]
        eig = [e for e in eig if all(math.isfinite(x) for x in e)] or r["eigenvalues"][:1]
        lam1 = [e[0] for e in eig]
        lamk1 = [e[k] for e in eig]
        edge = [max(abs(a) * x, abs(b) * y) for x, y in zip(lam1, lamk1)]
        finite = all(math.isfinite(v) for v in loss)
        diverged = (
            not finite
            or max(loss) > 2 * L_s
            or r["counters"].get("faults", 0) > 0
            or r["counters"].get("skipped_steps", 0) > 0
        )
        reach = _first_at_or_below(loss, L_sgd)
        out["sweep"].append(
            {
                "a": a,
                "b": b,
                "loss_end": loss[-1],
                "loss_min": min(v for v in loss if math.isfinite(v)),
                "loss_sgd": L_sgd,
                "progress": (L_s - loss[-1]) / (L_s - L_sgd) if finite else math.nan,
                "speedup": (len(loss) - 1) / reach if reach else math.nan,
                "max_a_lam1": max(abs(a) * x for x in lam1),
                "max_b_lamk1": max(abs(b) * y for y in lamk1),
                "edge_ratio": max(edge) * lr / 2,  # max(a·λ_1, b·λ_(k+1)) / (2/η)
                "blew_up_at": blow,
                "diverged": diverged,
                "warnings": int(r["counters"].get("unstable_refreshes", 0)),
                "refreshes": int(r["counters"].get("refreshes", 0)),
                "rose": loss[-1] > L_s,
            }
        )
    return out
