"""The oracle table: a smaller GPT where the Hessian's top eigenvectors are affordable.

Arms (every seed, in this process, on one thread): plain AdamW at the tuned learning rate; the
Hessian oracle, ``so.SubspaceProjectedOptimizer(AdamW, so.HessianOperator(model, lm_loss,
(X, Y)), k, mode=(α, γ), refresh=so.Every(T))`` with the Hessian of a fixed handful of
training sequences; and, when the library has them, the UpdateHistory and GradientSketch
sources with the same ``(α, γ)``. At checkpoints of a source arm, the top eigenvectors
``u_i`` of that same Hessian at the run's current parameters, and how much of each the
source's block-diagonal span holds: ``‖P_blocks u_i‖ = sqrt(Σ_b ‖B_bᵀ u_i[b]‖²)`` over the
blocks ``b`` with a basis ``B_b`` (1-D parameters have none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import subspace_optim as so

from . import arms, text, train
from .gpt import GPTConfig, lm_loss

HESSIAN_SEED = 99  # the fixed sequences of the oracle's Hessian


@dataclass(frozen=True)
class OracleConfig:
    """Sizes of the oracle table: ``hessian_seqs`` training sequences for the Hessian,
    ``k`` directions for every subspace arm, refreshed every ``refresh`` steps, ``mode``
    ``(α, γ)``, and the top ``eig_k`` Hessian eigenvectors measured at ``checkpoints``."""

    model: GPTConfig = field(
        default_factory=lambda: GPTConfig(vocab=0, context=64, width=64, layers=2, heads=2)
    )
    train: train.TrainConfig = field(
        default_factory=lambda: train.TrainConfig(steps=400, batch=8, eval_every=20, warmup=20)
    )
    hessian_seqs: int = 8
    k: int = 4
    refresh: int = 20
    mode: tuple[float, float] = (0.5, 1.5)
    eig_k: int = 4
    checkpoints: tuple[int, ...] = (50, 200, 400)

    @classmethod
    def quick(cls) -> OracleConfig:
        return cls(
            GPTConfig(vocab=0, context=16, width=16, layers=1, heads=2),
            train.TrainConfig(steps=10, batch=4, eval_every=5, eval_batches=1, eval_batch_size=4, warmup=2),
            hessian_seqs=2, refresh=5, checkpoints=(10,),
        )  # fmt: skip


def oracle_arms(cfg: OracleConfig) -> list[arms.ArmSpec]:
    a, g = cfg.mode
    out = [
        arms.ArmSpec("adamw", "adamw", "AdamW at the tuned lr", lr_mult=1.0),
        arms.ArmSpec(f"hessian-a{a:g}-g{g:g}", "hessian", f"Hessian top-{cfg.k}, refreshed every {cfg.refresh}; α={a:g}, γ={g:g}", mode=cfg.mode, k=cfg.k, refresh_every=cfg.refresh),
    ]  # fmt: skip
    if arms.sources_available():
        for kind in ("history", "sketch"):
            desc = f"{kind} source, k={cfg.k}, refresh every {cfg.refresh}; α={a:g}, γ={g:g}"
            spec = arms.ArmSpec(
                f"{kind}-a{a:g}-g{g:g}",
                kind,
                desc,
                mode=cfg.mode,
                k=cfg.k,
                refresh_every=cfg.refresh,
            )
            out.append(spec)
    return out


def hessian_builder(data: tuple[torch.Tensor, torch.Tensor]):
    """A builder (``train.Extras.builder``) that makes the Hessian arm and defers the rest."""

    def build(spec: arms.ArmSpec, model: nn.Module, lr: float) -> arms.Built:
        if spec.kind != "hessian":
            return arms.build(spec, model, lr)
        base = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=arms.WEIGHT_DECAY)
        for group in base.param_groups:
            group["peak_lr"] = group["lr"]
        op = so.HessianOperator(model, lm_loss, data)
        opt = so.SubspaceProjectedOptimizer(
            base, op, k=spec.k, mode=spec.mode, refresh=so.Every(spec.refresh_every)
        )
        return arms.Built(opt, base)

    return build


def source_params(built: arms.Built) -> list[torch.Tensor]:
    """The parameters in the order of the source's blocks: ``source.params`` when the
    source keeps them, else the wrapper's order (its base's param groups, flattened)."""
    params = getattr(built.source, "params", None)
    if params is None:
        params = [p for g in built.base.param_groups for p in g["params"]]
    sizes = [b.size for b in getattr(built.source, "blocks", [])] or [p.numel() for p in params]
    if [p.numel() for p in params] != sizes or len(params) != len(built.source.bases):
        raise RuntimeError("cannot align the source's bases with the model's parameters")
    return list(params)


def block_cosines(
    eigvecs: torch.Tensor, params: list[torch.Tensor], built: arms.Built
) -> dict[str, Any]:
    """``‖P_blocks u_i‖`` for each column ``u_i`` of ``eigvecs (n, m)`` (laid out in the
    order of ``params``), the share of ``u_i`` in the blocks that have a basis (the most the
    span could hold), and the chance level ``sqrt(Σ k_b / n)`` of a random direction."""
    offset, start = {}, 0
    for p in params:
        offset[id(p)] = start
        start += p.numel()
    sq = torch.zeros(eigvecs.shape[1], dtype=torch.float64)
    share = torch.zeros_like(sq)
    dims = 0
    for p, basis in zip(source_params(built), built.source.bases):
        if basis is None:
            continue
        part = eigvecs[offset[id(p)] : offset[id(p)] + p.numel()].double()
        sq += ((basis.double().T @ part) ** 2).sum(0)
        share += (part**2).sum(0)
        dims += basis.shape[1]
    return {
        "cos": sq.sqrt().tolist(),
        "share": share.sqrt().tolist(),
        "chance": math.sqrt(dims / start),
    }


def cosine_hook(data: tuple[torch.Tensor, torch.Tensor], eig_k: int):
    """``train.Extras.hook``: the top ``eig_k`` Hessian eigenpairs and the source's cosines."""

    def hook(step: int, model: nn.Module, built: arms.Built) -> dict[str, Any]:
        if built.source is None or not hasattr(built.source, "bases"):
            return {}
        op = so.HessianOperator(model, lm_loss, data)
        res = so.top_k_eigenpairs(op, eig_k, generator=torch.Generator().manual_seed(step))
        out = block_cosines(res.eigenvectors, list(op.params), built)
        return {"eigenvalues": res.eigenvalues.tolist(), "converged": bool(res.converged), **out}

    return hook


def study(cfg: OracleConfig, corpus: text.Corpus, lr: float, seeds: list[int]) -> dict[str, Any]:
    """Every oracle arm for each seed, in this process on one torch thread."""
    model_cfg = GPTConfig(**{**cfg.model.__dict__, "vocab": corpus.vocab})
    data = text.fixed_batches(corpus.train, 1, cfg.hessian_seqs, model_cfg.context, HESSIAN_SEED)[0]
    extras = train.Extras(hessian_builder(data), cosine_hook(data, cfg.eig_k), cfg.checkpoints)
    specs = oracle_arms(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for spec in specs:
            for seed in seeds:
                runs.append(
                    train.train_run(
                        train.RunTask(spec, seed, lr, model_cfg, cfg.train), corpus, extras
                    )
                )
                r = runs[-1]
                print(
                    f"  oracle {r['arm']:20s} seed {seed}: val {r['val_loss'][-1]:.4f}, {r['wall_seconds']:.0f} s",
                    flush=True,
                )
    finally:
        torch.set_num_threads(threads)
    return {
        "model": model_cfg.__dict__, "params": runs[0]["params"], "train": cfg.train.__dict__,
        "hessian_seqs": cfg.hessian_seqs, "k": cfg.k, "refresh": cfg.refresh, "mode": list(cfg.mode),
        "eig_k": cfg.eig_k, "tuned_lr": lr, "seeds": seeds,
        "arms": [dict(s.__dict__, family=s.family) for s in specs], "runs": runs,
    }  # fmt: skip
