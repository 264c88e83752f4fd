"""Training data of a curvature operator: validation and micro-batching (private).

A curvature operator reads its data once per product, so the data must be re-iterable:
one ``(inputs, targets)`` batch, or a list / ``DataLoader`` of such batches. ``inputs`` is
a Tensor, a tuple of Tensors (passed as ``model(*inputs)``) or a dict of Tensors (passed as
``model(**inputs)``, the shape Hugging Face-style models take); the first dimension of
every tensor is the batch dimension. Batches may differ in size; the operators weight each
micro-batch by its number of examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RAN_DRY",
    "Batch",
    "check_batch",
    "data_tensors",
    "input_tensors",
    "micro_batches",
    "normalize_data",
    "num_micro_batches",
    "validate_data",
]

Batch = tuple[Any, Tensor]

#: the error of a product whose pass over the data saw no example
RAN_DRY = (
    "data yielded no examples although it was not empty at construction: it is probably a "
    "one-shot iterable (its __iter__ returns an exhausted iterator). Pass a list of batches "
    "or a DataLoader"
)


def input_tensors(x: Any) -> list[Tensor]:
    """The tensors of ``inputs``: ``[x]``, the items of a tuple, or the values of a dict.

    Raises:
        TypeError: ``x`` is none of a Tensor, a non-empty tuple/list of Tensors or a
            non-empty dict of Tensors.
    """
    if isinstance(x, Tensor):
        return [x]
    items = list(x.values()) if isinstance(x, dict) else x
    if isinstance(items, (tuple, list)) and items and all(isinstance(t, Tensor) for t in items):
        return list(items)
    raise TypeError(
        f"inputs must be a Tensor, a tuple of Tensors (model(*inputs)) or a dict of Tensors "
        f"(model(**inputs)); got {type(x).__name__}. Wrap other input types in a module "
        "that takes Tensors."
    )


def batch_size(x: Any) -> int:
    """Number of examples in ``inputs`` (the first dimension of its first tensor)."""
    first = input_tensors(x)[0]
    return first.shape[0] if first.ndim else 0


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` pair rather than an iterable of them."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor)):
        return False
    try:
        input_tensors(data[0])
    except TypeError:
        return False
    return True


def check_batch(batch: Any, index: int) -> int:
    """Validate batch number ``index`` and return its number of examples.

    Raises:
        TypeError: not an ``(inputs, targets)`` pair, non-Tensor targets, complex inputs.
        ValueError: inputs and targets disagree on the number of examples.
    """
    if isinstance(batch, dict):
        raise TypeError(
            f"batch {index} of data is a dict with keys {sorted(batch)}; each batch must be "
            "an (inputs, targets) pair, because loss_fn(outputs, targets) needs the targets "
            "apart. Map the batches, e.g. [({k: v for k, v in b.items() if k != 'labels'}, "
            "b['labels']) for b in loader]: a dict of inputs is passed as model(**inputs)"
        )
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"batch {index} of data is a {type(batch).__name__}; each batch must be an "
            "(inputs, targets) pair"
        )
    x, y = batch
    if not isinstance(y, Tensor):
        raise TypeError(f"batch {index}: targets must be a Tensor; got {type(y).__name__}")
    nx, ny = batch_size(x), (y.shape[0] if y.ndim else 0)
    if nx != ny:
        raise ValueError(
            f"batch {index}: inputs hold {nx} examples but targets hold {ny}; "
            "the first dimension of both must be the batch dimension"
        )
    for t in input_tensors(x):
        if t.is_complex():
            raise TypeError(
                f"batch {index}: complex inputs are not supported; pass real tensors (e.g. "
                "torch.view_as_real(x))"
            )
    return nx


def _split(x: Any, size: int) -> list[Any]:
    if isinstance(x, Tensor):
        return list(torch.split(x, size))
    if isinstance(x, dict):
        pieces = {k: torch.split(t, size) for k, t in x.items()}
        return [dict(zip(pieces, p)) for p in zip(*pieces.values())]
    return [type(x)(p) for p in zip(*(torch.split(t, size) for t in x))]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: t.to(device, non_blocking=True) for k, t in x.items()}
    return type(x)(t.to(device, non_blocking=True) for t in x)


def normalize_data(data: Batch | Iterable[Batch]) -> Any:
    """One batch as a one-element list; a re-iterable unchanged; a one-shot iterator refused.

    Raises:
        TypeError: ``data`` is neither a batch nor an iterable of batches, or it is an
            iterator (a generator), which the second product would find exhausted.
    """
    if is_single_batch(data):
        return [tuple(data)]  # type: ignore[arg-type]
    if isinstance(data, (str, bytes, Tensor)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be one (inputs, targets) batch or an iterable of such batches; "
            f"got {type(data).__name__}"
        )
    if isinstance(data, Iterator):
        raise TypeError(
            "data is a one-shot iterator (e.g. a generator): it would be exhausted "
            "after the first Hessian product. Pass a list of batches or a DataLoader."
        )
    return data


def validate_data(data: Any, *, allow_empty: bool) -> None:
    """Check every batch of in-memory ``data`` (only the first batch of a loader).

    Raises:
        TypeError: a malformed batch, or an iterable that hands out one shared iterator.
        ValueError: no examples at all (unless ``allow_empty``: a data-parallel rank whose
            shard is empty while other ranks have data).
    """
    if isinstance(data, Sequence):
        batches: Iterable[Any] = data
    else:  # only look at the first batch of a loader: a full pass could be expensive
        iterator = iter(data)
        if iterator is data or (
            not isinstance(data, torch.utils.data.DataLoader)  # persistent workers reuse
            and iter(data) is iterator
        ):
            raise TypeError(
                f"data ({type(data).__name__}) hands out the same iterator every time: "
                "it would be exhausted after the first Hessian product. Pass a list of "
                "batches or a DataLoader"
            )
        first = next(iterator, None)
        batches = [] if first is None else [first]
    total = 0
    for i, batch in enumerate(batches):
        total += check_batch(batch, i)
    if total == 0 and not allow_empty:
        raise ValueError(
            "data yields no examples; pass at least one non-empty (inputs, targets) batch"
        )


def micro_batches(
    data: Any, chunk_size: int | None, device: torch.device
) -> Iterator[tuple[Any, Tensor, int]]:
    """Yield ``(inputs, targets, count)``: every non-empty batch of ``data``, split into
    pieces of at most ``chunk_size`` examples (``None``: whole batches), on ``device``."""
    for i, batch in enumerate(data):
        count = check_batch(batch, i)
        if count == 0:
            continue
        x, y = batch
        size = count if chunk_size is None else chunk_size
        for xs, ys in zip(_split(x, size), torch.split(y, size)):
            yield _to(xs, device), ys.to(device, non_blocking=True), ys.shape[0]


def num_micro_batches(data: Any, chunk_size: int | None) -> int:
    """Micro-batches in one pass over in-memory ``data`` (no tensor is moved)."""
    total = 0
    for i, batch in enumerate(data):
        count = check_batch(batch, i)
        if count:
            total += 1 if chunk_size is None else -(-count // chunk_size)
    return total


def data_tensors(data: Any) -> Iterator[Tensor]:
    """Every tensor of in-memory ``data``, inputs before targets, batch by batch."""
    for x, y in data:
        yield from input_tensors(x)
        yield y
