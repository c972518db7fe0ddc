"""Null-space preservation (AlphaEdit / SPEED): edits confined to the complement of the preserved keys.

Usage::

    from diffloc.editing.nullspace import nullspace_projector, nullspace_update, preserved_basis

    B = preserved_basis(Kp)                       # Kp [m, in] -> orthonormal rows B [r, in]
    P = nullspace_projector(Kp)                   # I − BᵀB [in, in]
    W = nullspace_update(W0, K, V, Kp, lam=0.01)  # (W − W0) @ Kp.T == 0; W K ≈ V

Conventions as :mod:`diffloc.editing.closed_form` (weights ``[out, in]``, rows of ``K`` / ``V`` are
keys / values, float64 inside, results in ``W0``'s dtype), which re-exports these and calls
:func:`nullspace_update` for ``least_squares_update(..., preserve_mode="nullspace")``.
"""
from __future__ import annotations

import torch

from .shapes import _F64, _check_keys_values, _check_ndim, solve_space

#: Rank threshold of the preserved-key span: singular values ``σ_i > NULLSPACE_RTOL · σ_max`` of the
#: stacked preserve keys count as preserved directions. Why 1e-5: keys come from float32 models,
#: whose rounding puts spurious singular values near ``eps32 · √d · σ_max`` (1.2e-7 · √768 ≈ 3e-6 at
#: SD width); a threshold above that floor does not spend edit room on rounding artefacts, and
#: one this small still protects every direction a preserved key measurably has: the dropped
#: directions move the preserved outputs by at most ``‖ΔW‖₂ · ‖K_p P‖₂ ≤ ‖ΔW‖₂ · rtol · σ_max · √d``.
#: Keys gathered from real prompts have continuously decaying spectra (many near-identical padding
#: tokens), so the threshold is a trade: a larger ``rtol`` leaves more room for the edit and lets
#: more of it leak into the weakest preserved directions (callers pass ``rtol`` to trade).
NULLSPACE_RTOL = 1e-5


def preserved_basis(K_preserve: torch.Tensor, rtol: float = NULLSPACE_RTOL) -> torch.Tensor:
    """Orthonormal rows ``B [r, in]`` (float64) spanning the preserved keys' directions.

    Usage::

        B = preserved_basis(Kp)                   # Kp [m, in]; B Bᵀ = I_r
        P = torch.eye(in) - B.T @ B                # the projector onto their orthogonal complement

    ``r`` counts the singular values of ``K_preserve`` above ``rtol · σ_max`` (:data:`NULLSPACE_RTOL`);
    an all-zero ``K_preserve`` gives ``r = 0``. Computed from the eigendecomposition of the smaller
    Gram matrix, ``K Kᵀ [m, m]`` (m ≤ in; the basis is ``Σ⁻¹ Uᵀ K``, re-orthonormalised by one
    Cholesky-QR pass) or ``KᵀK [in, in]`` (m > in): eigenvalues are σ², so the threshold is ``rtol²``,
    safe in float64 for ``rtol ≥ 1e-7``.
    """
    _check_ndim("K_preserve", K_preserve, 2, "[m, in]")
    rtol = float(rtol)
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    Kp = K_preserve.detach().to(_F64)
    m, d = Kp.shape
    if m == 0:
        return Kp.new_zeros(0, d)
    if m <= d:  # the [m, m] Gram matrix: eigh is ~4x faster than the SVD at 300 x 768
        evals, U = torch.linalg.eigh(Kp @ Kp.T)                        # ascending σ², [m], [m, m]
        top = evals[-1]
        keep = evals > (rtol * rtol) * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
        if not bool(keep.any()):
            return Kp.new_zeros(0, d)
        B = (U[:, keep].T @ Kp) / evals[keep].sqrt()[:, None]          # [r, in] = Σ⁻¹ Uᵀ K_p, the right singular vectors
        L = torch.linalg.cholesky(B @ B.T)                             # one Cholesky-QR pass: rows orthonormal to rounding
        return torch.linalg.solve_triangular(L, B, upper=False)
    evals, evecs = torch.linalg.eigh(Kp.T @ Kp)                        # ascending, [in], [in, in]
    top = evals[-1]
    keep = evals > (rtol * rtol) * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    return evecs[:, keep].T.contiguous()


def nullspace_room(K_preserve: torch.Tensor, rtol: float = NULLSPACE_RTOL) -> int:
    """Dimensions left to an edit: ``in − rank(K_preserve)`` at threshold ``rtol`` (0: the update is empty)."""
    return int(K_preserve.shape[1] - preserved_basis(K_preserve, rtol).shape[0])


def nullspace_projector(K_preserve: torch.Tensor, rtol: float = NULLSPACE_RTOL) -> torch.Tensor:
    """``P = I − BᵀB [in, in]`` (float64): projects keys onto the complement of the preserved keys' span."""
    B = preserved_basis(K_preserve, rtol)
    P = -B.T @ B
    P.diagonal().add_(1.0)
    return P


def nullspace_update(
    W0: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    K_preserve: torch.Tensor,
    lam: float = 0.01,
    rtol: float = NULLSPACE_RTOL,
    space: str = "auto",
) -> torch.Tensor:
    """Least-squares edit confined to the null space of the preserved keys (AlphaEdit, SPEED).

    Usage::

        W = nullspace_update(W0, K, V, Kp, lam=0.01)    # (W − W0) @ Kp.T == 0; W K ≈ V

    Shapes as :func:`least_squares_update`. With ``P = I − BᵀB`` (``B``: :func:`preserved_basis` of
    ``K_preserve``) it solves::

        min_ΔW Σ‖(W0 + ΔW) k − v‖² + λ‖ΔW‖²   subject to   ΔW = ΔW P   (so ΔW k_p = 0)

    Writing ``Kq = K P`` (the edit keys projected onto the complement), ``R = V − K W0ᵀ`` (rows:
    residuals) and using ``K ΔWᵀ = Kq ΔWᵀ`` under the constraint, this is ridge regression on the
    projected keys, whose solution already satisfies the constraint::

        ΔWᵀ = Kqᵀ (Kq Kqᵀ + λI)⁻¹ R      (pair space, n × n)  =  (KqᵀKq + λI)⁻¹ Kqᵀ R   (input space)

    ``λ = 0`` gives the least-change exact fit where the projected keys allow it (``pinv(Kq) R``,
    rank threshold ``rtol``). The rows of ``ΔW`` are combinations of the rows of ``Kq``, so the
    preserved keys' outputs are unchanged up to float64 rounding and the directions the rank
    threshold dropped. No preserved directions (``r = 0``) is the unconstrained edit; preserved
    directions filling the input (``r = in``) leave no room, and ``W0`` is returned unchanged.
    """
    _check_ndim("W0", W0, 2, "[out, in]")
    _check_keys_values(W0, K, V, "K", "V", allow_missing_v=False)
    _check_keys_values(W0, K_preserve, None, "K_preserve", "V_preserve", allow_missing_v=True)
    lam = float(lam)
    if not lam >= 0.0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    dev = W0.device
    W0d = W0.detach().to(device=dev, dtype=_F64)                     # [out,in]
    Ka = K.detach().to(device=dev, dtype=_F64)                       # [n,in]
    Va = V.detach().to(device=dev, dtype=_F64)                       # [n,out]
    B = preserved_basis(K_preserve.to(dev), rtol)                    # [r,in]
    if B.shape[0] == W0.shape[1]:  # the preserved keys fill the input: no room, the weight is returned unchanged
        return W0.detach().clone()
    Kq = Ka - (Ka @ B.T) @ B                                         # [n,in]  K P
    R = Va - Ka @ W0d.T                                              # [n,out] v − W0 k
    if lam == 0.0:
        delta = (torch.linalg.pinv(Kq, rtol=max(rtol, 1e-12)) @ R).T  # [out,in]
    elif solve_space(Kq.shape[0], Kq.shape[1], space) == "pairs":
        S = Kq @ Kq.T                                                # [n,n]
        S.diagonal().add_(lam)
        delta = torch.linalg.solve(S, R).T @ Kq                      # [out,in]
    else:
        A = Kq.T @ Kq                                                # [in,in]
        A.diagonal().add_(lam)
        delta = torch.linalg.solve(A, R.T @ Kq, left=False)          # ΔW A = Rᵀ Kq
    # δ's rows are combinations of Kq's rows, orthogonal to B to rounding: no re-projection needed
    return (W0d + delta).to(dtype=W0.dtype)
