"""Why each surviving mutant survives: one line per survivor, keyed by its mutmut name and the
line it changes (mutmut numbers the mutants of a function in order, so the line keeps a
reason from sticking to a different mutant after the code changes). Add a line here, or a
test that kills the mutant, and run the study again."""

from __future__ import annotations

#: (mutant name, changed line after mutation, stripped) -> one-line reason
REASONS: dict[tuple[str, str], str] = {
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_22",
        "nan_t = torch.full((), math.nan, dtype=None, device=g.device)",
    ): "equivalent: torch.stack promotes the float32 NaN to g's dtype, and NaN is NaN in either",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_26",
        "nan_t = torch.full((), math.nan, device=g.device)",
    ): "equivalent: torch.stack promotes the float32 NaN to g's dtype, and NaN is NaN in either",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_23",
        "nan_t = torch.full((), math.nan, dtype=g.dtype, device=None)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_27",
        "nan_t = torch.full((), math.nan, dtype=g.dtype, )",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.optim._update.x_step_statistics__mutmut_33",
        "nan_t if loss is None else loss.to(None),",
    ): "equivalent: the loss is read back as a Python float; torch.stack promotes it to g's dtype anyway, and a float32 value is exact in float64",
    (
        "subspace_optim.optim._update.x_moved_eigenvalue__mutmut_11",
        "parts.append((j + 1, float(eigenvalues[j]), threshold if (b == 1.0) and False else threshold / b))",
    ): "equivalent: for b == 1.0, threshold / b is threshold exactly",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_21",
        "weak = diag < 1e3 * torch.finfo(V.dtype).eps * scale",
    ): "equivalent in practice: a diagonal exactly equal to the tolerance has probability zero, and a zero column is weak under both",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_24",
        "weak = diag <= 1001.0 * torch.finfo(V.dtype).eps * scale",
    ): "equivalent in practice: a tolerance 0.1% larger; no test can place a column in that sliver above rounding",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_30",
        "if g is not None and g.device == V.device:",
    ): "equivalent on a CPU run: generator and block on the same device, and both branches then draw the same numbers",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_31",
        "fill = None",
    ): "unreachable on a CPU run: the branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_alignment__mutmut_13",
        "den >= 0, num / den.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(den)",
    ): "equivalent: for a zero column den = 0 and num = 0, and 0 / tiny is 0, the value of the other branch",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_8",
        "if U.shape[1] >= W.shape[1]:",
    ): "equivalent: principal angles are symmetric in the two bases, so swapping equal-width bases changes nothing",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_12",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(None, 1)",
    ): "equivalent: singular values are never negative, so the lower clamp at 0 is a no-op",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_13",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(0, None)",
    ): "equivalent: a cosine rounded above 1 only feeds arccos where torch.where takes the sine formula (cos > 0.7071)",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_15",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(0, )",
    ): "equivalent: a cosine rounded above 1 only feeds arccos where torch.where takes the sine formula (cos > 0.7071)",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_18",
        "cos = torch.linalg.svdvals(U.T @ W).clamp(0, 2)",
    ): "equivalent: a cosine never exceeds 1 by more than rounding, so clamping at 2 instead of 1 only matters where the sine formula is taken",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_23",
        "sin = torch.linalg.svdvals(R).clamp(None, 1).flip(0)",
    ): "equivalent: singular values are never negative, so the lower clamp at 0 is a no-op",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_24",
        "sin = torch.linalg.svdvals(R).clamp(0, None).flip(0)",
    ): "equivalent: the sine formula is taken only where cos > 0.7071, i.e. sin < 0.7072, far below the clamp at 1",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_26",
        "sin = torch.linalg.svdvals(R).clamp(0, ).flip(0)",
    ): "equivalent: the sine formula is taken only where cos > 0.7071, i.e. sin < 0.7072, far below the clamp at 1",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_29",
        "sin = torch.linalg.svdvals(R).clamp(0, 2).flip(0)",
    ): "equivalent: the sine formula is taken only where cos > 0.7071, i.e. sin < 0.7072, far below the clamp at 1",
    (
        "subspace_optim.subspace.x_principal_angles__mutmut_41",
        "return torch.where(cos >= 0.7071, angles_sin, angles_cos)",
    ): "equivalent in practice: at exactly 45° both formulas are accurate to rounding",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_16",
        "None,",
    ): "equivalent: warnings.warn with category None warns a UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_19",
        "",
    ): "equivalent: warnings.warn's default category is UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_30",
        "None,",
    ): "equivalent: warnings.warn with category None warns a UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_33",
        "",
    ): "equivalent: warnings.warn's default category is UserWarning",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁload_state_dict__mutmut_12",
        'self.forced = bool(state.get("forced", None))',
    ): "equivalent: bool(None) is False, the default it replaces",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁload_state_dict__mutmut_14",
        'self.forced = bool(state.get("forced", ))',
    ): "equivalent: dict.get without a default returns None, and bool(None) is False",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_15",
        "lam, W = torch.linalg.eigh((gram + gram.T) * 2)",
    ): "equivalent: scaling the Gram matrix scales every eigenvalue alike, and the shrink uses only their ratios (λ_i − δ)/λ_i",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_17",
        "lam, W = torch.linalg.eigh((gram + gram.T) / 3)",
    ): "equivalent: scaling the Gram matrix scales every eigenvalue alike, and the shrink uses only their ratios (λ_i − δ)/λ_i",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_27",
        "delta = lam[ell // 2] if (ell >= 2) or True else lam[-1]",
    ): "equivalent: ℓ = 1 is outside the contract (ℓ >= 2), and for ℓ = 1 lam[ℓ // 2] is lam[-1] anyway",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_30",
        "delta = lam[ell // 2] if ell > 2 else lam[-1]",
    ): "equivalent: for ℓ = 2, lam[-1] is lam[ℓ // 2]",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_31",
        "delta = lam[ell // 2] if ell >= 3 else lam[-1]",
    ): "equivalent: for ℓ = 2, lam[-1] is lam[ℓ // 2]",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_32",
        "delta = lam[ell // 2] if ell >= 2 else lam[+1]",
    ): "equivalent within the contract: the branch runs only for ℓ < 2, which the sketch never has (ℓ >= 2)",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_33",
        "delta = lam[ell // 2] if ell >= 2 else lam[-2]",
    ): "equivalent within the contract: the branch runs only for ℓ < 2, which the sketch never has (ℓ >= 2)",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_45",
        "scale = torch.where(lam >= 0, (shrunk / lam.clamp_min(1e-300)).sqrt(), torch.zeros_like(lam))",
    ): "equivalent: where λ = 0 the shrunk value is 0 too, and 0 / 1e-300 gives the other branch's 0",
    (
        "subspace_optim.optim._blockwise.x_block_statistics__mutmut_18",
        "if U is None and c is None:",
    ): "equivalent: scale_blocks gives coordinates exactly for the blocks with a basis, so c is None exactly when U is None",
    (
        "subspace_optim.sources._pca.x__centering__mutmut_4",
        "return torch.eye(m, dtype=dtype, device=None) - 1.0 / m",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.sources._pca.x__centering__mutmut_7",
        "return torch.eye(m, dtype=dtype, ) - 1.0 / m",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.optim._blockwise.x_scale_blocks__mutmut_26",
        "applied.append((1.0, 1.0) if (U is None) or True else (a, b))",
    ): "equivalent: this branch runs for a block without a basis (applied (1, 1) either way) or for the pair (1, 1) itself",
    (
        "subspace_optim.optim._blockwise.x_scale_blocks__mutmut_47",
        "p.add_(step.view_as(p).to(None))",
    ): "equivalent: an in-place add casts the float64 step to the parameter's dtype anyway",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁdecide__mutmut_21",
        "stacklevel=3,",
    ): "killed in a plain test run (the warning must name the test file); under mutmut its trampoline adds a frame, so stacklevel 3 is the caller there",
    (
        "subspace_optim.schedules.xǁAlignmentSwitchǁobserve__mutmut_37",
        "stacklevel=3,",
    ): "killed in a plain test run (the warning must name the test file); under mutmut its trampoline adds a frame, so stacklevel 3 is the caller there",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_11",
        "J = _centering(m, torch.float64, None)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_40",
        "keep = int((lam[:k] >= RANK_TOL * top).sum())",
    ): "equivalent in practice: an eigenvalue exactly at the rank tolerance has probability zero",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_44",
        "W = W + W.mean(dim=0, keepdim=True)  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_45",
        "W = W - W.mean(dim=None, keepdim=True)  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_48",
        "W = W - W.mean(dim=0, )  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_50",
        "W = W - W.mean(dim=0, keepdim=False)  # J W, so that U = Rᵀ J W Λ^{-1/2}",
    ): "equivalent: eigenvectors of J G J with a nonzero eigenvalue are already orthogonal to the ones vector, so their column mean is zero up to rounding; the subtraction is a safeguard",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_53",
        "coeff = (W * lam.sqrt()).to(work.dtype)",
    ): "equivalent: the columns Rᵀ J w_i are orthogonal, so scaling each by a positive number leaves the QR's Q (with the sign fix) unchanged",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_58",
        "Q = Q / torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 1.0)",
    ): "equivalent: the signs are ±1, so dividing by them is multiplying by them",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_66",
        "Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) == 0, 1.0)",
    ): "equivalent for every consumer: the basis is used only through projections U Uᵀ, which do not depend on its columns' signs (tests are sign-invariant by design)",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_67",
        "Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 1, 1.0)",
    ): "equivalent for every consumer: the basis is used only through projections U Uᵀ, which do not depend on its columns' signs (tests are sign-invariant by design)",
    (
        "subspace_optim.sources._pca.x_gram_directions__mutmut_68",
        "Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 2.0)",
    ): "equivalent: the fallback applies only where R's diagonal is exactly 0 (a column the QR found dependent, never produced here: keep drops those directions first)",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_4",
        "work = sketch if (sketch.dtype in (torch.float32, torch.float64)) or True else sketch.float()",
    ): "test added after this run: tests/test_sources.py::test_a_half_precision_sketch_is_shrunk_in_float32 compares the half-precision shrink bit for bit with the float32 one rounded once; the mutant applied by hand fails it",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_59",
        "out[ell + ell // 2 :] = 0",
    ): "equivalent: the shrink already makes those rows exactly zero (their scale is max(λ_i − λ_{ℓ/2}, 0) = 0 with λ sorted); the assignment is a safeguard",
    (
        "subspace_optim.sources._pca.x_frequent_directions_shrink__mutmut_61",
        "out[ell - ell // 3 :] = 0",
    ): "equivalent: the shrink already makes those rows exactly zero (their scale is max(λ_i − λ_{ℓ/2}, 0) = 0 with λ sorted); the assignment is a safeguard",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_46",
        "fill = torch.randn(n, m, dtype=None, device=V.device, generator=g)",
    ): "equivalent within the contract: the fill is random directions, orthonormalized against the kept columns; drawing them in float32 or another stream changes which random directions, not a property the function promises (orthonormal, spanning the independent columns)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_51",
        "fill = torch.randn(n, m, device=V.device, generator=g)",
    ): "equivalent within the contract: the fill is random directions, orthonormalized against the kept columns; drawing them in float32 or another stream changes which random directions, not a property the function promises (orthonormal, spanning the independent columns)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_47",
        "fill = torch.randn(n, m, dtype=V.dtype, device=None, generator=g)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_52",
        "fill = torch.randn(n, m, dtype=V.dtype, generator=g)",
    ): "equivalent on a CPU run: the tensor is already on the CPU; only a CUDA run could tell (tests/test_cuda.py needs a GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_66",
        "for _ in range(3):",
    ): "equivalent: a third re-orthogonalization pass changes nothing after two (twice is enough)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_32",
        "fill = torch.randn(n, m, dtype=V.dtype, device=g.device, generator=g).to(None)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_33",
        "fill = torch.randn(None, m, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_34",
        "fill = torch.randn(n, None, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_35",
        "fill = torch.randn(n, m, dtype=None, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_36",
        "fill = torch.randn(n, m, dtype=V.dtype, device=None, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_37",
        "fill = torch.randn(n, m, dtype=V.dtype, device=g.device, generator=None).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_38",
        "fill = torch.randn(m, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_39",
        "fill = torch.randn(n, dtype=V.dtype, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_40",
        "fill = torch.randn(n, m, device=g.device, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_41",
        "fill = torch.randn(n, m, dtype=V.dtype, generator=g).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
    (
        "subspace_optim.subspace.x_orthonormalize__mutmut_42",
        "fill = torch.randn(n, m, dtype=V.dtype, device=g.device, ).to(V.device)",
    ): "unreachable on a CPU run: this branch needs a generator on another device than the block (GPU)",
}
