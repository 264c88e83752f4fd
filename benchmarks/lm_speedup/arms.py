"""The table of arms: each a name, a builder and a one-line description.

``adamw-lr{X}`` is plain AdamW at learning rate X (the sweep whose best final validation
loss is the tuned baseline). Every other arm runs at the tuned learning rate: the
``history-*`` and ``sketch-*`` arms wrap that AdamW in
``so.SubspaceProjectedOptimizer(base, source, mode=(α, γ))``, whose realized update is
``α·P_kΔ + γ·(Δ − P_kΔ)``; ``bulk`` (α=0, γ=1) and ``dom`` (α=1, γ=0) are the two
projections alone; the controls scale the update with no subspace at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import subspace_optim as so

WEIGHT_DECAY = 0.1
ADAMW_LRS = (5e-4, 1e-3, 2e-3, 4e-3)


@dataclass(frozen=True)
class ArmSpec:
    """One optimizer configuration. ``kind`` picks the builder: ``adamw`` (at ``lr``, or the
    tuned learning rate × ``lr_mult`` when ``lr`` is ``None``), ``blockscale`` (2-D weights
    at the tuned rate × ``lr_mult``, 1-D parameters at the tuned rate), ``history`` and
    ``sketch`` (a source with ``k``, ``window``/``sketch``, ``refresh_every`` and
    ``mode=(alpha, gamma)``)."""

    name: str
    kind: str
    description: str
    lr: float | None = None
    lr_mult: float = 1.0
    mode: tuple[float, float] = (1.0, 1.0)
    k: int = 4
    window: int = 16
    sketch: int = 8
    refresh_every: int = 16

    @property
    def family(self) -> str:
        """``adamw`` (the sweep), ``source`` (a subspace arm) or ``control``."""
        if self.kind in ("history", "sketch"):
            return "source"
        return "adamw" if self.lr is not None else "control"


@dataclass
class Built:
    """``opt`` is what the loop steps; ``base`` owns the param groups the schedule sets
    (each group carries its ``peak_lr``); ``source`` is the subspace source or ``None``."""

    opt: torch.optim.Optimizer
    base: torch.optim.Optimizer
    source: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _lr_name(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def _mode_name(kind: str, a: float, g: float, **changes: int) -> str:
    defaults = {"k": 4, "w": 16, "s": 8, "r": 16}
    tail = "".join(f"-{key}{v}" for key, v in changes.items() if v != defaults[key])
    return f"{kind}-a{a:g}-g{g:g}{tail}"


def _source_arm(kind: str, a: float, g: float, k: int = 4, w: int = 16, r: int = 16) -> ArmSpec:
    what = "UpdateHistory (PCA of the last" if kind == "history" else "GradientSketch (sketch of"
    size = f"{w} updates" if kind == "history" else "8 rows"
    desc = f"{what} {size}), k={k}, refresh every {r}; α={a:g}, γ={g:g}"
    changes = {"k": k, "w": w, "r": r} if kind == "history" else {"k": k, "r": r}
    return ArmSpec(
        _mode_name(kind, a, g, **changes), kind, desc, mode=(a, g), k=k, window=w, refresh_every=r
    )


def arm_table() -> dict[str, ArmSpec]:
    """Every arm of the study, in the order the report lists them."""
    arms = [
        ArmSpec(f"adamw-lr{_lr_name(lr)}", "adamw", f"AdamW, lr {lr:g}", lr=lr) for lr in ADAMW_LRS
    ]
    for a, g in ((0.5, 1.5), (0.5, 2.0), (0.25, 1.5), (1.0, 1.5)):
        arms.append(_source_arm("history", a, g))
    arms += [_source_arm("history", 0.5, 1.5, k=8), _source_arm("history", 0.5, 1.5, w=32)]
    arms += [_source_arm("history", 0.5, 1.5, r=4)]
    arms += [_source_arm("sketch", 0.5, 1.5), _source_arm("sketch", 0.5, 2.0)]
    bulk, dom = _source_arm("history", 0.0, 1.0), _source_arm("history", 1.0, 0.0)
    arms += [
        ArmSpec(
            "bulk", "history", "Bulk: UpdateHistory k=4, α=0, γ=1 (bulk part only)", mode=bulk.mode
        ),
        ArmSpec(
            "dom", "history", "Dom: UpdateHistory k=4, α=1, γ=0 (dominant part only)", mode=dom.mode
        ),
    ]
    for g in (1.5, 2.0):
        arms.append(
            ArmSpec(
                f"adamw-lrx{g:g}", "adamw", f"control: AdamW at the tuned lr × {g:g}", lr_mult=g
            )
        )
    for g in (1.5, 2.0):
        desc = (
            f"control: AdamW, 2-D weights at the tuned lr × {g:g}, 1-D parameters at the tuned lr"
        )
        arms.append(ArmSpec(f"blockscale-{g:g}", "blockscale", desc, lr_mult=g))
    return {a.name: a for a in arms}


def _adamw(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    for group in groups:
        group["peak_lr"] = group["lr"]
    return torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)


def build_adamw(spec: ArmSpec, model: nn.Module, tuned_lr: float) -> Built:
    lr = spec.lr if spec.lr is not None else tuned_lr * spec.lr_mult
    base = _adamw([{"params": list(model.parameters()), "lr": lr}])
    return Built(base, base)


def build_blockscale(spec: ArmSpec, model: nn.Module, tuned_lr: float) -> Built:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    base = _adamw(
        [{"params": matrices, "lr": tuned_lr * spec.lr_mult}, {"params": vectors, "lr": tuned_lr}]
    )
    return Built(base, base)


def require(name: str) -> Any:
    """``so.<name>``, or an error that says the subspace sources are not in the library yet."""
    obj = getattr(so, name, None)
    if obj is None:
        raise RuntimeError(
            f"subspace_optim has no {name}: the subspace sources (issue 23) are not in this "
            "version of the library yet. Run the AdamW and control arms alone, e.g. "
            "--arms " + ",".join(n for n, a in arm_table().items() if a.family != "source")
        )
    return obj


def sources_available() -> bool:
    return all(hasattr(so, n) for n in ("UpdateHistory", "GradientSketch"))


def build_source(spec: ArmSpec, model: nn.Module, tuned_lr: float) -> Built:
    base = _adamw([{"params": list(model.parameters()), "lr": tuned_lr}])
    if spec.kind == "history":
        source = require("UpdateHistory")(
            k=spec.k, window=spec.window, refresh_every=spec.refresh_every
        )
    else:
        source = require("GradientSketch")(
            k=spec.k, sketch=spec.sketch, refresh_every=spec.refresh_every
        )
    opt = so.SubspaceProjectedOptimizer(base, source, mode=spec.mode)
    return Built(opt, base, getattr(opt, "source", source))


BUILDERS: dict[str, Callable[[ArmSpec, nn.Module, float], Built]] = {
    "adamw": build_adamw,
    "blockscale": build_blockscale,
    "history": build_source,
    "sketch": build_source,
}


def build(spec: ArmSpec, model: nn.Module, tuned_lr: float) -> Built:
    """The optimizer of ``spec`` over ``model``'s parameters."""
    if spec.kind not in BUILDERS:
        raise ValueError(
            f"arm {spec.name!r} has an unknown kind {spec.kind!r}; known: {sorted(BUILDERS)}"
        )
    return BUILDERS[spec.kind](spec, model, tuned_lr)
