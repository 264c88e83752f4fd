"""The parameter space of a curvature operator: which tensors span it, validated (private).

The flat space is the concatenation of the chosen parameters, in the order given (tied
parameters count once). Every curvature operator over a model selects it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ParamSpace", "check_model", "select_params"]


def check_model(model: Any, loss_fn: Any) -> nn.Module:
    """``model`` itself, or the eager module under a ``torch.compile``'d one.

    The compiled wrapper shares its parameters with the module underneath; products run
    on the eager module because ``aot_autograd`` has no double backward.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``loss_fn`` is not callable.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
    orig = getattr(model, "_orig_mod", None)
    return orig if isinstance(orig, nn.Module) else model


@dataclass(frozen=True)
class ParamSpace:
    """The chosen parameters and what follows from them.

    Attributes:
        params: the parameters, in flat-vector order, each once.
        names: their names in ``model.named_parameters()``.
        param_dtype: their (common) dtype.
        dtype: the dtype of products: ``param_dtype``, or float32 for half precision.
        device: their (common) device.
        n: the total number of entries.
    """

    params: list[Tensor]
    names: list[str]
    param_dtype: torch.dtype
    dtype: torch.dtype
    device: torch.device
    n: int


def select_params(model: nn.Module, params: Iterable[Tensor] | Tensor | None) -> ParamSpace:
    """Resolve ``params`` (``None``: every parameter with ``requires_grad``) against ``model``.

    Raises:
        TypeError: a non-tensor, mixed or non-floating dtypes, or a sparse embedding among
            the chosen parameters (sparse gradients can be neither differentiated twice
            nor projected).
        ValueError: a tensor that is not a parameter of ``model``, no parameter at all, or
            parameters on several devices.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    if params is None:
        chosen = [p for p in model.parameters() if p.requires_grad]
    else:
        if isinstance(params, Tensor):
            params = [params]
        chosen = []
        seen: set[int] = set()
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"params must be tensors; got {type(p).__name__}")
            if id(p) not in names:
                raise ValueError(
                    f"a tensor of shape {tuple(p.shape)} in params is not a parameter of "
                    "the model; pass tensors from model.parameters()"
                )
            if id(p) not in seen:
                seen.add(id(p))
                chosen.append(p)
    if not chosen:
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad); pass params="
        )
    dtypes = {p.dtype for p in chosen}
    devices = {p.device for p in chosen}
    if len(dtypes) > 1:
        raise TypeError(f"parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype")
    if len(devices) > 1:
        raise ValueError(
            f"parameters live on several devices {sorted(map(str, devices))}; move the "
            "model to one device"
        )
    (dtype,) = dtypes
    if not dtype.is_floating_point:
        raise TypeError(f"parameters must be real floating point; got {dtype}")
    _refuse_sparse_embeddings(model, {id(p) for p in chosen})
    return ParamSpace(
        params=chosen,
        names=[names[id(p)] for p in chosen],
        param_dtype=dtype,
        # half-precision parameters: products (hence the basis and the eigensolve) in float32
        dtype=torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype,
        device=next(iter(devices)),
        n=sum(p.numel() for p in chosen),
    )


def _refuse_sparse_embeddings(model: nn.Module, chosen_ids: set[int]) -> None:
    for mod_name, module in model.named_modules():
        if (
            isinstance(module, (nn.Embedding, nn.EmbeddingBag))
            and module.sparse
            and id(module.weight) in chosen_ids
        ):
            raise TypeError(
                f"module {mod_name!r} is an {type(module).__name__} with sparse=True: sparse "
                "gradients can be neither differentiated twice nor projected. Build it "
                "with sparse=False"
            )


def missing_from(old: Iterable[Tensor], new: Iterable[Tensor]) -> list[tuple[int, ...]]:
    """Shapes of the tensors of ``old`` that ``new`` lacks (by identity)."""
    kept = {id(p) for p in new}
    return [tuple(p.shape) for p in old if id(p) not in kept]
