"""Contract checks: "nothing changed" snapshots, finiteness and orthonormality."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["StateSnapshot", "all_finite", "orthonormality_error"]


def orthonormality_error(U: Tensor) -> float:
    """``max |UᵀU − I|`` of a basis ``U`` of shape ``(n, k)`` (0 for orthonormal columns).

    Args:
        U: the basis, columns ``(n, k)``.

    Returns:
        The largest entry of ``|UᵀU − I|``, as a Python float.

    Example:
        >>> import torch
        >>> from subspace_optim.testing import orthonormality_error
        >>> orthonormality_error(torch.eye(3)[:, :2]), orthonormality_error(2 * torch.eye(2))
        (0.0, 3.0)
    """
    gram = U.T @ U
    return float((gram - torch.eye(gram.shape[0], dtype=U.dtype, device=U.device)).abs().max())


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every tensor holds only finite values.

    Args:
        tensors: the tensors to check (an empty iterable counts as finite).

    Returns:
        ``True`` when no tensor holds a NaN or an infinity.

    Example:
        >>> import torch
        >>> from subspace_optim.testing import all_finite
        >>> all_finite([torch.ones(2)]), all_finite([torch.ones(2), torch.tensor([float("nan")])])
        (True, False)
    """
    return all(bool(torch.isfinite(t.detach()).all()) for t in tensors)


def _clone(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, Mapping):
        return {key: _clone(v) for key, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return copy.deepcopy(obj)


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            out.append(f"{path}: {type(a).__name__} became {type(b).__name__}")
            return
        if a.is_sparse or b.is_sparse:
            if a.is_sparse != b.is_sparse:
                out.append(f"{path}: layout changed")
                return
            a, b = a.to_dense(), b.to_dense()
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            same = a.shape == b.shape and a.dtype == b.dtype
            # NaN != NaN: compare bit patterns through equal_nan
            if not (same and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)):
                out.append(f"{path}: tensor changed")
    elif isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(f"{path}[{key!r}]: {'added' if key not in a else 'removed'}")
            else:
                _diff(a[key], b[key], f"{path}[{key!r}]", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} became {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b and not (a != a and b != b):  # NaN floats count as equal
        out.append(f"{path}: {a!r} became {b!r}")


@dataclass(frozen=True)
class StateSnapshot:
    """A deep copy of everything a failed call must leave alone: parameter values and their
    ``.grad``, and each optimizer's ``state_dict()`` (for a
    :class:`~subspace_optim.SubspaceProjectedOptimizer` that includes the base state, basis,
    eigenvalues, step, counters, schedule and generator).

    Take one before the call and one after; :meth:`differences` lists what changed.

    Example:
        >>> import torch
        >>> from subspace_optim.testing import StateSnapshot
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> before = StateSnapshot.take([w], [opt])
        >>> with torch.no_grad():
        ...     _ = w.add_(1)
        >>> StateSnapshot.take([w], [opt]).differences(before)
        ['params[0]: tensor changed']
    """

    params: tuple[Tensor, ...]
    grads: tuple[Tensor | None, ...]
    optimizers: tuple[dict[str, Any], ...]

    @classmethod
    def take(cls, params: Iterable[Tensor], optimizers: Iterable[Optimizer] = ()) -> StateSnapshot:
        """Copy the parameters, their gradients and the optimizers' state now.

        Args:
            params: the parameters (their values and ``.grad``).
            optimizers: optimizers whose ``state_dict()`` to copy.

        Returns:
            The snapshot (deep copies: later changes do not reach it).
        """
        params = list(params)
        return cls(
            params=tuple(p.detach().clone() for p in params),
            grads=tuple(None if p.grad is None else p.grad.detach().clone() for p in params),
            optimizers=tuple(_clone(opt.state_dict()) for opt in optimizers),
        )

    def differences(self, other: StateSnapshot) -> list[str]:
        """What differs between ``other`` (earlier) and this snapshot; empty if nothing.

        Args:
            other: the snapshot taken before the call.

        Returns:
            One line per difference, naming where it is (``params[0]: tensor changed``).
        """
        out: list[str] = []
        _diff(list(other.params), list(self.params), "params", out)
        _diff(list(other.grads), list(self.grads), "grads", out)
        _diff(list(other.optimizers), list(self.optimizers), "optimizers", out)
        return out
