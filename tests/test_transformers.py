"""The wrapper inside Hugging Face's ``Trainer``: a GPT-2 built from a small config (no
download), ``Trainer(optimizers=(opt, scheduler))`` with an :class:`~subspace_optim.UpdateHistory`
source, gradient accumulation, and a resume from a ``Trainer`` checkpoint.

Runs when ``transformers`` and ``accelerate`` are installed (the ``hf`` and ``test``
extras); skipped with the reason otherwise.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip(
    "transformers",
    reason="Hugging Face transformers is not installed (pip install 'subspace-optim[hf]')",
)
pytest.importorskip(
    "accelerate", reason="Trainer needs accelerate (pip install 'subspace-optim[hf]')"
)

import subspace_optim as so  # noqa: E402

VOCAB, CONTEXT = 48, 32


class Tokens(torch.utils.data.Dataset):
    """Sequences of a repeating pattern with noise: learnable in a few steps."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.arange(CONTEXT) % 7
        self.rows = (base + torch.randint(0, 3, (n, CONTEXT), generator=g)) % VOCAB

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def trainer(model, out, *, steps: int, accumulate: int = 1, save: int | None = None):
    base = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    src = so.UpdateHistory(k=2, window=4, refresh_every=2)
    opt = so.SubspaceProjectedOptimizer(base, src, mode=(0.5, 2.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 3))
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulate,
        logging_steps=1,
        report_to=[],
        save_strategy="steps" if save else "no",
        save_steps=save or 1,
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    t = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(), optimizers=(opt, sched)
    )
    return t, opt, src


def test_trainer_trains_with_the_wrapper_and_gradient_accumulation(tmp_path):
    model = gpt2()
    t, opt, src = trainer(model, tmp_path, steps=10, accumulate=2)
    t.train()
    losses = [r["loss"] for r in t.state.log_history if "loss" in r]
    assert src.observed == 10  # one observation per optimizer step, not per micro-batch
    assert opt.last_stats.projected and src.counters["refreshes"] >= 3
    assert losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_trainer_checkpoint_resumes_bit_for_bit(tmp_path):
    straight = gpt2()
    trainer(straight, tmp_path / "a", steps=8)[0].train()
    resumed = gpt2()
    trainer(resumed, tmp_path / "b", steps=4, save=4)[0].train()
    again = gpt2()
    t, _, src = trainer(again, tmp_path / "b", steps=8, save=4)
    t.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    assert src.observed == 8
    for p, q in zip(straight.parameters(), again.parameters()):
        assert torch.equal(p, q)
