"""Why each surviving mutant survives: one line per survivor, keyed by its mutmut name and the
line it changes (mutmut numbers the mutants of a function in order, so the line keeps a
reason from sticking to a different mutant after the code changes). Add a line here, or a
test that kills the mutant, and run the study again."""

from __future__ import annotations

CPU_ONLY = "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)"
NON_BLOCKING = (
    "equivalent in value: non_blocking only lets a copy to a GPU overlap; on the CPU it is a no-op"
)
GRAPH_COUNT = "the graph's example count is read only from the cache (_local_matmat's cached path); a graph built for one product is used and dropped, its count never read"
KEEP_GRAPH = "equivalent in value: keep only decides whether the micro-batch's graph is held until the product returns (memory); graph_hvp's keep is tested on its own"
SQUARE = "equivalent: a curvature operator is square, so shape[1] is shape[0]"
MATVECS_RECOUNTED = "equivalent: Eigensolver.solve replaces num_matvecs with the operator's count of products in the call"
FILL_DEVICE = "equivalent on a CPU run: generator and block on the same device; with a CPU generator and a CUDA block it fails (tests/test_cuda.py, needs a GPU)"
FILL_DTYPE = "equivalent within the contract: the fill is random directions, orthonormalized against the kept columns; drawn in float32 they are other random directions (torch.where promotes them to the block's dtype), not a property the function promises (orthonormal, spanning the independent columns)"

#: (mutant name, changed line after mutation, stripped) -> one-line reason
REASONS: dict[tuple[str, str], str] = {
    (
        "subspace_optim.eigensolvers.warm.xǁWarmRefreshǁ_check__mutmut_30",
        "if not float(gram.abs().max()) < 1e-4:  # the result must have orthonormal columns",
    ): "equivalent in practice: a largest Gram entry exactly at 1e-4 has probability zero",
    (
        "subspace_optim.eigensolvers.warm.xǁWarmRefreshǁ_check__mutmut_54",
        "if not math.isfinite(rho) or rho >= CHECK_MARGIN:",
    ): "equivalent in practice: an estimate exactly at the margin has probability zero",
    (
        "subspace_optim.eigensolvers.warm.xǁWarmRefreshǁ_check__mutmut_81",
        "num_matvecs=None,",
    ): MATVECS_RECOUNTED,
    (
        "subspace_optim.eigensolvers.warm.xǁWarmRefreshǁ_check__mutmut_93",
        "num_matvecs=1,",
    ): MATVECS_RECOUNTED,
    (
        "subspace_optim.operators._data.x_micro_batches__mutmut_29",
        "yield _to(xs, None), ys.to(device, non_blocking=True), ys.shape[0]",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._data.x_micro_batches__mutmut_32",
        "yield _to(xs, device), ys.to(None, non_blocking=True), ys.shape[0]",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._data.x_micro_batches__mutmut_34",
        "yield _to(xs, device), ys.to(non_blocking=True), ys.shape[0]",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._data.x_micro_batches__mutmut_35",
        "yield _to(xs, device), ys.to(device, ), ys.shape[0]",
    ): NON_BLOCKING,
    (
        "subspace_optim.operators._data.x_micro_batches__mutmut_36",
        "yield _to(xs, device), ys.to(device, non_blocking=False), ys.shape[0]",
    ): NON_BLOCKING,
    (
        "subspace_optim.operators._jacobian.x_func_jacobian_block__mutmut_32",
        "None",
    ): "not detected: no model in the unit tests makes torch.func's jvp/vjp fail (the Hessian's func path, tested with F.mse_loss, raises the same kind of message)",
    (
        "subspace_optim.operators._model_operator.xǁModelOperatorǁ_local_loss_and_grad__mutmut_4",
        "loss_sum = torch.zeros((), dtype=self.dtype, device=None)",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._model_operator.xǁModelOperatorǁ_local_loss_and_grad__mutmut_7",
        "loss_sum = torch.zeros((), dtype=self.dtype, )",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._model_operator.xǁModelOperatorǁ_local_loss_and_grad__mutmut_11",
        "grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, device=None)",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._model_operator.xǁModelOperatorǁ_local_loss_and_grad__mutmut_14",
        "grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, )",
    ): CPU_ONLY,
    (
        "subspace_optim.operators._model_operator.xǁModelOperatorǁ_local_loss_and_grad__mutmut_15",
        "grad_sum = torch.zeros(self.shape[1], dtype=self.dtype, device=self.device)",
    ): SQUARE,
    (
        "subspace_optim.operators._model_operator.xǁModelOperatorǁloss_and_grad__mutmut_12",
        "total, count = self.reduction.sum(local, self.shape[1] + 1, None)",
    ): SQUARE,
    (
        "subspace_optim.operators.covariance.xǁGradientCovarianceOperatorǁ_chunk_product__mutmut_10",
        "return self._graph_product(self._build_graph(x, y, None), W)",
    ): GRAPH_COUNT,
    (
        "subspace_optim.operators.covariance.xǁGradientCovarianceOperatorǁ_chunk_product__mutmut_14",
        "return self._graph_product(self._build_graph(x, y, 1), W)",
    ): GRAPH_COUNT,
    (
        "subspace_optim.operators.covariance.xǁGradientCovarianceOperatorǁ_losses_and_grads__mutmut_1",
        "if self.caches_graph:",
    ): "equivalent in value: with and without the graph cache the gradient is the same (tested); only where its graph comes from changes",
    (
        "subspace_optim.operators.ggn.xǁGGNOperatorǁ_chunk_product__mutmut_10",
        "return self._graph_product(self._build_graph(x, y, None), W)",
    ): GRAPH_COUNT,
    (
        "subspace_optim.operators.ggn.xǁGGNOperatorǁ_chunk_product__mutmut_14",
        "return self._graph_product(self._build_graph(x, y, 1), W)",
    ): GRAPH_COUNT,
    (
        "subspace_optim.operators.hessian.xǁHessianOperatorǁ_chunk_product__mutmut_7",
        "return graph_hvp(self._build_graph(x, y, 0), W, self.params, keep=None)",
    ): KEEP_GRAPH,
    (
        "subspace_optim.operators.hessian.xǁHessianOperatorǁ_chunk_product__mutmut_14",
        "return graph_hvp(self._build_graph(x, y, None), W, self.params, keep=False)",
    ): GRAPH_COUNT,
    (
        "subspace_optim.operators.hessian.xǁHessianOperatorǁ_chunk_product__mutmut_18",
        "return graph_hvp(self._build_graph(x, y, 1), W, self.params, keep=False)",
    ): GRAPH_COUNT,
    (
        "subspace_optim.operators.hessian.xǁHessianOperatorǁ_chunk_product__mutmut_19",
        "return graph_hvp(self._build_graph(x, y, 0), W, self.params, keep=True)",
    ): KEEP_GRAPH,
    (
        "subspace_optim.optim._blockwise.x_scale_blocks__mutmut_26",
        "applied.append((1.0, 1.0) if (U is None) or True else (a, b))",
    ): "equivalent: this branch runs for a block without a basis (applied (1, 1) either way) or for the pair (1, 1) itself",
    (
        "subspace_optim.optim._blockwise.x_scale_blocks__mutmut_47",
        "p.add_(step.view_as(p).to(None))",
    ): "equivalent: an in-place add casts the float64 step to the parameter's dtype anyway",
    (
        "subspace_optim.optim._blockwise.x_block_statistics__mutmut_18",
        "if U is None and c is None:",
    ): "equivalent: scale_blocks gives coordinates exactly for the blocks with a basis, so c is None exactly when U is None",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_22",
        "nan_t = torch.full((), math.nan, dtype=None, device=g.device)",
    ): "equivalent: torch.stack promotes the float32 NaN to g's dtype, and NaN is NaN in either",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_23",
        "nan_t = torch.full((), math.nan, dtype=g.dtype, device=None)",
    ): CPU_ONLY,
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_26",
        "nan_t = torch.full((), math.nan, device=g.device)",
    ): "equivalent: torch.stack promotes the float32 NaN to g's dtype, and NaN is NaN in either",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_27",
        "nan_t = torch.full((), math.nan, dtype=g.dtype, )",
    ): CPU_ONLY,
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_33",
        "nan_t if loss is None else loss.to(None),",
    ): "equivalent: the loss is read back as a Python float; torch.stack promotes it to g's dtype anyway, and a float32 value is exact in float64",
    (
        "subspace_optim.optim._update.x_moved_eigenvalue__mutmut_11",
        "parts.append((j + 1, float(eigenvalues[j]), threshold if (b == 1.0) and False else threshold / b))",
    ): "equivalent: for b == 1.0, threshold / b is threshold exactly",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_16",
        "None,",
    ): "equivalent: warnings.warn with category None warns a UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_19",
        "",
    ): "equivalent: warnings.warn's default category is UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_21",
        "stacklevel=3,",
    ): "killed in a plain test run (the warning must name the test file); under mutmut its trampoline adds a frame, so stacklevel 3 is the caller there",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_30",
        "None,",
    ): "equivalent: warnings.warn with category None warns a UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_33",
        "",
    ): "equivalent: warnings.warn's default category is UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_37",
        "stacklevel=3,",
    ): "killed in a plain test run (the warning must name the test file); under mutmut its trampoline adds a frame, so stacklevel 3 is the caller there",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁload_state_dict__mutmut_12",
        'self.forced = bool(state.get("forced", None))',
    ): "equivalent: bool(None) is False, the default it replaces",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁload_state_dict__mutmut_14",
        'self.forced = bool(state.get("forced", ))',
    ): "equivalent: dict.get without a default returns None, and bool(None) is False",
    (
        "subspace_optim.sources._pca.x__centering__mutmut_4",
        "return torch.eye(m, dtype=dtype, device=None) - 1.0 / m",
    ): CPU_ONLY,
    (
        "subspace_optim.sources._pca.x__centering__mutmut_7",
        "return torch.eye(m, dtype=dtype, ) - 1.0 / m",
    ): CPU_ONLY,
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_11",
        "J = _centering(m, torch.float64, None)",
    ): CPU_ONLY,
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_37",
        "keep = int((lam[:k] >= RANK_TOL * top).sum())",
    ): "equivalent in practice: an eigenvalue exactly at RANK_TOL * lambda_1 has probability zero",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_27",
        "device = None",
    ): FILL_DEVICE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_29",
        "device = V.device if (generator is None) or True else generator.device",
    ): FILL_DEVICE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_34",
        "fill = torch.randn(n, m, dtype=None, device=device, generator=generator)",
    ): FILL_DTYPE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_35",
        "fill = torch.randn(n, m, dtype=V.dtype, device=None, generator=generator)",
    ): FILL_DEVICE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_39",
        "fill = torch.randn(n, m, device=device, generator=generator)",
    ): FILL_DTYPE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_40",
        "fill = torch.randn(n, m, dtype=V.dtype, generator=generator)",
    ): FILL_DEVICE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_43",
        "fill = fill.to(None)",
    ): FILL_DEVICE,
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_56",
        "for _ in range(3):",
    ): "equivalent: a third re-orthogonalization pass changes nothing after two (twice is enough)",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_8",
        "if U.shape[1] >= W.shape[1]:",
    ): "equivalent: principal angles are symmetric in the two bases, so swapping equal-width bases changes nothing",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_29",
        "return torch.where(cos >= 0.7071, angles_sin, angles_cos)",
    ): "equivalent in practice: at exactly 45 degrees both formulas are accurate to rounding",
}
