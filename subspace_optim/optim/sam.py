"""Sharpness-Aware Minimization (Foret et al., 2021) as a wrapper around any torch optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._utils import check_positive_float
from . import _checkpoint
from ._guard import check_not_bypassed, guarded_chain

__all__ = ["SAM"]


class SAM(Optimizer):
    """Sharpness-Aware Minimization around an already-built base optimizer.

    Each step evaluates the gradient at the worst-case point of a ball of radius ``ρ`` (to
    first order) and hands *that* gradient to the base optimizer, which then updates the
    original weights:

    .. math::

        \\varepsilon_t = \\rho\\, \\frac{T_t^2\\, g_t}{\\lVert T_t\\, g_t \\rVert_2}, \\qquad
        \\tilde g_t = \\nabla L(\\theta_t + \\varepsilon_t), \\qquad
        \\theta_{t+1} = \\mathrm{base.step}(\\theta_t, \\tilde g_t)

    with ``g_t = ∇L(θ_t)`` and ``T_t = I`` (SAM) or, with ``adaptive=True`` (ASAM, Kwon et al.
    2021), the element-wise scaling ``T_t = diag(|θ_t| + η)``. The norm is global over every
    parameter of every group; ``rho`` may differ per parameter group (a ``"rho"`` key in the
    group, which LR-scheduler-style code can change).

    Two ways to call it:

    * ``step(closure)``: ``closure()`` re-evaluates the loss and calls ``backward()``. If no
      fresh gradient is in ``.grad``, the closure is first evaluated at ``θ_t``; otherwise the
      gradient already there (from the usual ``loss.backward()``) is used as ``g_t``. A
      gradient is fresh if a backward pass wrote it after the previous SAM step (the
      perturbed gradient that step leaves in ``.grad`` is not), so both
      ``loss.backward(); opt.step(closure)`` and LBFGS-style ``opt.step(closure)`` work.
      Returns the closure's loss at the perturbed point (the SAM objective).
    * ``first_step()`` / ``second_step()``, for loops that cannot pass a closure (gradient
      accumulation): ``loss.backward(); opt.first_step(zero_grad=True);
      loss_at_perturbed.backward(); opt.second_step(zero_grad=True)``.
      ``second_step()`` is :meth:`unperturb` (back to ``θ``, the gradient at ``θ + ε`` kept
      in ``.grad``) followed by ``step()``, which then applies that gradient without a
      closure. Splitting it lets a ``torch.amp.GradScaler`` (which refuses closures) drive
      the base step and skip it on inf/NaN exactly as for any optimizer:
      ``scaler.scale(loss).backward(); opt.first_step(zero_grad=True);
      scaler.scale(loss_at_perturbed).backward(); opt.unperturb(); scaler.step(opt);
      scaler.update()``. The first gradient needs no unscaling: ``ε`` is invariant to a
      positive scale of ``g_t``.

    ``param_groups`` and ``state`` *are* the base optimizer's (LR schedulers and
    :class:`~subspace_optim.SubspaceProjectedOptimizer` act on the base through SAM), and
    :meth:`state_dict` is the base optimizer's own ``state_dict`` (momentum buffers and Adam
    moments included). Between full steps SAM itself holds no state, so a checkpoint taken
    between steps resumes exactly.

    Args:
        base: the optimizer that takes the step with the perturbed gradient (SGD, Adam, ...),
            already constructed over the parameters to train.
        rho: radius ``ρ > 0`` of the perturbation (default 0.05, Foret et al.; ASAM
            typically uses a larger radius such as 0.5–2).
        adaptive: use ASAM's scale-invariant perturbation.
        eta: ASAM's offset ``η >= 0`` in ``T = |θ| + η`` (ignored when ``adaptive=False``).

    Raises:
        TypeError: ``base`` is not a torch optimizer, or is a SAM or a projection wrapper
            (wrap SAM inside :class:`~subspace_optim.SubspaceProjectedOptimizer`, not the
            other way round).
        ValueError: ``rho <= 0`` or not finite, ``eta < 0``.

    .. note::
        The ASAM perturbation follows Kwon et al. (2021) with ``T = |θ| + η`` and
        ``η = 0.01`` by default; the popular ``davda54/sam`` port uses ``η = 0``. A parameter
        whose gradient is ``None`` is neither perturbed nor counted in the norm. If the
        gradient norm is not finite (an overflowing AMP step) no perturbation is applied,
        so the non-finite gradient reaches the next check unchanged (the projection wrapper
        then skips the step; a bare base optimizer would apply it, as torch does).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from subspace_optim import SAM
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(3, 1)
        >>> X, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
        >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = nn.functional.mse_loss(model(X), y)
        ...     loss.backward()
        ...     return loss
        >>> losses = [opt.step(closure).item() for _ in range(20)]
        >>> losses[-1] < losses[0]
        True
        >>> "momentum_buffer" in opt.state_dict()["state"][0]
        True
    """

    def __init__(
        self,
        base: Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        *,
        eta: float = 0.01,
    ) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(
                "base must be a torch.optim.Optimizer, e.g. SAM(torch.optim.SGD(model.parameters(), "
                f"lr=0.1), rho=0.05); got {type(base).__name__}"
            )
        if isinstance(base, SAM):
            raise TypeError("base is already a SAM; wrap the underlying optimizer once")
        if guarded_chain(base) is not None:  # a projection wrapper
            raise TypeError(
                f"base is a {type(base).__name__}; put SAM inside it instead: "
                "SubspaceProjectedOptimizer(SAM(torch.optim.SGD(...)), curvature, ...)"
            )
        rho = check_positive_float("rho", rho)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be True or False; got {adaptive!r}")
        eta = check_positive_float("eta", eta, allow_zero=True)
        for group in base.param_groups:
            if "rho" in group:
                check_positive_float("rho of a parameter group", group["rho"])
        self.base = base
        # Optimizer.__init__ fills rho/adaptive/eta into the base's groups where missing
        super().__init__(
            base.param_groups, {**base.defaults, "rho": rho, "adaptive": adaptive, "eta": eta}
        )
        self.param_groups = base.param_groups
        self.state = base.state
        self._ready = True
        # perturbation bookkeeping between first_step and second_step (never checkpointed)
        self._saved: dict[Tensor, Tensor] = {}
        self._perturbed = False
        # the gradients second_step left in .grad (tensor, version): stale until a backward
        self._left: list[tuple[Tensor, Tensor, int]] = []
        # after unperturb(): the gradients at θ + ε that the next step() applies
        self._awaiting: list[tuple[Tensor, Tensor]] = []
        _checkpoint.delegate_to_base(self, check=SAM._check_loadable, restore=SAM._after_load)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (``rho``/``adaptive``/``eta`` default to SAM's).

        Args:
            param_group: as for :meth:`torch.optim.Optimizer.add_param_group`: ``"params"``
                and per-group options of the base optimizer, plus SAM's own (``rho``,
                ``adaptive``, ``eta``), which default to the values SAM was built with.

        Raises:
            TypeError: the group's ``rho`` is not a number.
            ValueError: the group's ``rho`` is not finite and positive.
        """
        if not getattr(self, "_ready", False):  # from Optimizer.__init__: the base's own groups
            super().add_param_group(param_group)
            return
        if "rho" in param_group:
            check_positive_float("rho of a parameter group", param_group["rho"])
        group = dict(param_group)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.base.add_param_group(group)
        self.param_groups = self.base.param_groups

    # -------------------------------------------------------------------- math
    def _grad_norm(self) -> Tensor | None:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["adaptive"]:
                    g = g * (p.abs() + group["eta"])
                # at least float32 (half-precision gradients), never narrower than g
                norms.append(
                    torch.linalg.vector_norm(g, dtype=torch.promote_types(g.dtype, torch.float32))
                )
        if not norms:
            return None
        return torch.linalg.vector_norm(torch.stack(norms))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the parameters to ``θ + ε`` using the gradient currently in ``.grad``.

        Args:
            zero_grad: clear the gradients afterwards (set them to ``None``), ready for the
                backward pass at the perturbed point.

        Raises:
            RuntimeError: called twice without :meth:`second_step` in between, or no
                parameter has a gradient (call ``loss.backward()`` first).
        """
        if self._perturbed:
            raise RuntimeError(
                "first_step() was already called; call second_step() before the next first_step()"
            )
        norm = self._grad_norm()
        if norm is None:
            raise RuntimeError(
                "no parameter has a gradient: call loss.backward() before first_step(), or "
                "use step(closure)"
            )
        self._awaiting = []  # a step skipped by a GradScaler: its gradient is dropped
        finite = math.isfinite(float(norm))
        self._saved = {}
        for group in self.param_groups:
            scale = group["rho"] / (float(norm) + 1e-12) if finite else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._saved[p] = p.detach().clone()
                if scale == 0.0:
                    continue
                e = p.grad * scale
                if group["adaptive"]:
                    e = e * (p.abs() + group["eta"]).pow(2)
                p.add_(e.to(p.dtype))
        self._perturbed = True
        if zero_grad:
            self.base.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``θ`` exactly and let the base optimizer step with the gradient at ``θ + ε``.

        Args:
            zero_grad: clear the gradients after the base step.

        Raises:
            RuntimeError: :meth:`first_step` was not called before.
        """
        if not self._perturbed:
            raise RuntimeError("second_step() needs a first_step() before it")
        check_not_bypassed(self.base)  # wrapped by a projection: it must take the step
        self.unperturb()
        self._apply(zero_grad)

    @torch.no_grad()
    def unperturb(self) -> None:
        """Move the parameters back to ``θ`` exactly, keeping the gradient at ``θ + ε`` in
        ``.grad``; the next :meth:`step` (without a closure) hands it to the base optimizer.

        This is :meth:`second_step` without the base step, so that something else can take
        it: ``scaler.step(opt)`` with a ``torch.amp.GradScaler`` (unscaled, skipped on
        inf/NaN), or a :class:`~subspace_optim.SubspaceProjectedOptimizer` around this SAM
        (``scaler.step(wrapper)`` or ``wrapper.step()``). If the step is skipped, the
        parameters are already back at ``θ``; the next :meth:`first_step` drops the gradient.

        Raises:
            RuntimeError: :meth:`first_step` was not called before.
        """
        if not self._perturbed:
            raise RuntimeError("unperturb() needs a first_step() before it")
        for p, saved in self._saved.items():
            p.copy_(saved)
        self._saved = {}
        self._perturbed = False
        self._awaiting = [
            (p, p.grad)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]

    @property
    def awaiting_step(self) -> bool:
        """:meth:`unperturb` left the gradient at ``θ + ε`` in ``.grad`` (the same tensors,
        possibly unscaled in place) and no step has applied it yet."""
        return bool(self._awaiting) and all(p.grad is g for p, g in self._awaiting)

    def _apply(self, zero_grad: bool) -> None:
        """The base step with the gradient at ``θ + ε``, parameters at ``θ``."""
        self._awaiting = []
        self.base.step()
        if zero_grad:
            self.base.zero_grad(set_to_none=True)
        self._left = [
            (p, p.grad, p.grad._version)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]

    # ------------------------------------------- CompositeOptimizer protocol
    def inner_optimizers(self) -> Sequence[Optimizer]:
        """``[base]``: SAM takes its step through the base optimizer.

        Returns:
            A one-element list holding the base optimizer.
        """
        return [self.base]

    def step_in_progress(self) -> bool:
        """:meth:`first_step` ran and the step is not finished: the parameters are at
        ``θ + ε``, or :meth:`unperturb` left the gradient there for the next :meth:`step`.

        Returns:
            ``True`` between :meth:`first_step` and the step that finishes it.
        """
        return self._perturbed or self.awaiting_step

    def check_ready_to_step(self, *, closure: bool) -> None:
        """Refuse a step by a wrapping optimizer that SAM cannot take now (nothing changes).

        Args:
            closure: whether the wrapper's ``step`` call passes a closure.

        Raises:
            RuntimeError: the parameters are at ``θ + ε`` (call :meth:`unperturb` first).
            ValueError: no closure, and no :meth:`unperturb` left a gradient to apply.
        """
        if self._perturbed:
            raise RuntimeError(
                "SAM is at its perturbed point (first_step() was called): call "
                "sam.unperturb() after the backward pass at θ + ε, then opt.step() (or "
                "scaler.step(opt))"
            )
        if not closure and not self.awaiting_step:
            raise ValueError(
                "a SAM base needs opt.step(closure), the closure recomputing the loss and "
                "calling backward(); loops that cannot pass one (a GradScaler) use "
                "loss.backward(); sam.first_step(zero_grad=True); "
                "loss_at_perturbed.backward(); sam.unperturb(); opt.step()"
            )

    def uses_existing_gradient(self) -> bool:
        """``step(closure)`` takes ``g_t`` from ``.grad`` (a fresh gradient is there).

        Returns:
            ``True`` when some ``.grad`` was produced after the last finished step.
        """
        return self._has_fresh_gradient()

    def _has_fresh_gradient(self) -> bool:
        """Some ``.grad`` was produced (or accumulated into) after the last second_step."""
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        if all(g is None for g in grads):
            return False
        if not self._left:
            return True
        stale = all(p.grad is g and g._version == v for p, g, v in self._left)
        return not (stale and sum(g is not None for g in grads) == len(self._left))

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step; ``closure`` re-evaluates the loss and calls ``backward()``.

        Args:
            closure: required unless :meth:`unperturb` has just left the gradient at
                ``θ + ε`` in ``.grad`` (then ``step()`` applies it). It should zero the
                gradients (or let this method do it), compute the loss and call
                ``backward()``; it is called once at ``θ + ε``, and once more at ``θ``
                first if no fresh gradient is in ``.grad``.

        Returns:
            The closure's loss at the perturbed point ``θ + ε`` (``None`` without a closure).

        Raises:
            ValueError: ``closure`` is ``None`` and no :meth:`unperturb` preceded it (use
                ``first_step``/``second_step`` then).
        """
        if self._perturbed:
            raise RuntimeError(
                "step() called between first_step() and second_step(); call unperturb() or "
                "second_step() first"
            )
        if closure is None:
            if self.awaiting_step:
                self._apply(zero_grad=False)
                return None
            raise ValueError(
                "SAM.step needs a closure that recomputes the loss and calls backward(), e.g. "
                "opt.step(lambda: (opt.zero_grad(), loss_fn(model(x), y).backward())); loops "
                "that cannot pass one use opt.first_step() / opt.second_step() (or "
                "first_step() / unperturb() / step(), e.g. with a GradScaler)"
            )
        self._awaiting = []
        if not self._has_fresh_gradient():
            with torch.enable_grad():
                closure()
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                loss = closure()
        except BaseException:
            # leave the parameters where they were
            with torch.no_grad():
                for p, saved in self._saved.items():
                    p.copy_(saved)
            self._saved = {}
            self._perturbed = False
            raise
        self.second_step()
        return loss

    # -------------------------------------------------------------- checkpoint
    # state_dict() is the base optimizer's own (its state and param_groups, with rho);
    # load_state_dict() loads into the base. Both through torch's hooks (see __init__).
    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        if self._perturbed:
            raise RuntimeError("cannot load a state_dict between first_step() and second_step()")

    def _after_load(self, _: Any) -> None:
        self._awaiting = []
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the base optimizer's parameters.

        Args:
            set_to_none: set the gradients to ``None`` instead of zeroing them, as in
                :meth:`torch.optim.Optimizer.zero_grad`.
        """
        self.base.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        rho = self.defaults["rho"]
        return (
            f"SAM(base={type(self.base).__name__}, rho={rho}, adaptive={self.defaults['adaptive']})"
        )
