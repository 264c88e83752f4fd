"""
Training a character-level GPT with damped dominant and amplified bulk updates
==============================================================================

The training-tool side of the library: AdamW wrapped with an online subspace source,
:class:`~subspace_optim.UpdateHistory` (the top-k principal directions of each weight
matrix's last updates, no Hessian product), and ``mode=(α, γ)``: each update becomes
``α·P_kΔ + γ·(Δ − P_kΔ)`` block by block (BSFA, Zhou et al. 2025). The training loop,
the learning-rate scheduler and gradient clipping are those of plain AdamW; the two runs
see the same initialization and the same batches.

Whether this trains *faster* than a tuned AdamW, and against which controls, is measured in
:doc:`/lm_speedup`; this script shows the usage and the step's statistics.

Run::

    python examples/train_char_gpt.py --text my_corpus.txt   # any text file
    python examples/train_char_gpt.py --quick                # a tiny model on a built-in text (docs)

Without ``--text``, the script reads ``~/.cache/subspace-optim/shakespeare.txt`` when a
benchmark run has cached it (``benchmarks/lm_speedup/``), else a built-in text made from
a small grammar (enough to show the mechanics, not to learn English).

Threads: a small model, so one torch thread (see :doc:`/guide/troubleshooting`).
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

import subspace_optim as so

CACHE = Path.home() / ".cache" / "subspace-optim" / "shakespeare.txt"

# %%
# A small GPT (pre-LayerNorm, causal attention written out)
# ---------------------------------------------------------


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads, context) for _ in range(layers)))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))


# %%
# Text, batches and one training run
# ----------------------------------


def grammar_text(sentences: int = 3000, seed: int = 0) -> str:
    """A built-in corpus from a small grammar (no download)."""
    rng = random.Random(seed)
    who = ["the king", "a fool", "my lord", "the queen", "good sir", "this knave", "her maid"]
    does = ["speaks of", "hath seen", "doth love", "would fight", "shall find", "cannot bear"]
    what = ["the crown", "his honour", "a sword", "thy heart", "the night", "our cause"]
    return " ".join(
        f"{rng.choice(who).capitalize()} {rng.choice(does)} {rng.choice(what)}{rng.choice('.!?;,')}"
        for _ in range(sentences)
    )


def batches(
    data: torch.Tensor, steps: int, batch: int, context: int, seed: int
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - context - 1, (steps, batch), generator=g)
    return [torch.stack([data[s : s + context + 1] for s in row]) for row in starts]


def train(model: nn.Module, opt: torch.optim.Optimizer, train_batches, val, vocab, every):
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 10))
    curve = []
    for t, xb in enumerate(train_batches):
        opt.zero_grad()
        logits = model(xb[:, :-1])
        F.cross_entropy(logits.reshape(-1, vocab), xb[:, 1:].reshape(-1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (t + 1) % every == 0:
            with torch.no_grad():
                v = F.cross_entropy(model(val[:, :-1]).reshape(-1, vocab), val[:, 1:].reshape(-1))
            curve.append((t + 1, float(v)))
    return curve


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="AdamW vs AdamW with an UpdateHistory source.")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 80 steps")
    parser.add_argument("--text", type=Path, help="a text file to train on")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small model: one thread is fastest
    if args.text is not None:
        text = args.text.read_text(encoding="utf-8")
    elif CACHE.exists() and not args.quick:
        text = CACHE.read_text(encoding="utf-8")
    else:
        text = grammar_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(data))
    width, layers, context, steps, batch = (
        (32, 2, 32, 80, 8) if args.quick else (128, 4, 128, 600, 8)
    )
    train_batches = batches(data[:split], steps, batch, context, seed=0)
    val = batches(data[split:], 1, 32, context, seed=1)[0]
    curves = {}
    for name in ("AdamW", "AdamW + UpdateHistory, (α, γ) = (0.5, 1.5)"):
        torch.manual_seed(0)  # the same initialization for both runs
        model = GPT(len(chars), width, layers, heads=4, context=context)
        base = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
        opt = base
        if name != "AdamW":
            source = so.UpdateHistory(k=4, window=16, refresh_every=16)
            opt = so.SubspaceProjectedOptimizer(base, source, mode=(0.5, 1.5))
        curves[name] = train(model, opt, train_batches, val, len(chars), every=max(1, steps // 10))
        print(f"{name}: validation loss {curves[name][-1][1]:.3f} after {steps} steps")
    stats = opt.last_stats
    print(
        f"last step: projected={stats.projected}, share of the base update in the dominant "
        f"part ‖P_kΔ‖/‖Δ‖ = {stats.update_alignment:.2f}, source refreshes = "
        f"{int(source.counters['refreshes'])}, source memory = {source.memory_bytes() / 1e6:.1f} MB"
    )

    # %%
    # The validation loss of the two runs
    # -----------------------------------
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        ax.plot(*zip(*curve), marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.legend()
    fig.tight_layout()
    return {"curves": curves, "update_alignment": stats.update_alignment}


if __name__ == "__main__":
    main()
