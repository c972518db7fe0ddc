"""Closed-form weight edits: pure functions, tensors in, tensors out.

Usage::

    from diffloc.editing.closed_form import least_squares_update, rank_one_update, second_moment

    # Diff-QuickFix / TIME / UCE / LocoEdit: many (key, value) pairs, one linear layer.
    W = least_squares_update(W0, K, V, lam=0.01)            # W0 [out,in], K [n,in], V [n,out]
    W = least_squares_update(W0, K, V, lam=0.5, K_preserve=Kp)  # UCE: keep W0 on Kp rows
    W = least_squares_update(W0, K, V, lam=0.5, K_preserve=Kp, preserve_mode="nullspace")  # AlphaEdit / SPEED: W K_p = W0 K_p exactly

    # ROME / ReFACT: one key k*, one target value v*, key statistics C (factorised once).
    C = second_moment(K_corpus)                              # [in,in], uncentred
    L = cholesky_factor(C)                                   # C = L Lᵀ, cache it with C
    delta = rank_one_update(W, k_star, v_star, chol=L, k_dir=k_bar)   # (W + delta) @ k_star == v_star

Conventions. Every weight is in torch ``nn.Linear`` layout ``[out, in]``, so a layer maps a
key ``k [in]`` to ``y = W @ k [out]``. Rows of ``K`` / ``V`` are keys / values. The
functions neither touch a model nor do I/O; editors gather keys and values through the hooks
and apply (and undo) the returned tensors. Results come back in ``W0``'s dtype and device;
the linear algebra runs in float64 and never forms an explicit inverse.
"""
from __future__ import annotations

import torch

from .nullspace import NULLSPACE_RTOL, nullspace_projector, nullspace_room, nullspace_update, preserved_basis
from .shapes import _F64, _check_keys_values, _check_ndim, _shape, solve_space

__all__ = [
    "least_squares_update",
    "nullspace_update",
    "nullspace_room",
    "preserved_basis",
    "nullspace_projector",
    "NULLSPACE_RTOL",
    "PRESERVE_MODES",
    "least_squares_delta",
    "solve_space",
    "rank_one_update",
    "cholesky_factor",
    "second_moment",
    "MomentAccumulator",
    "clamp_delta",
]

#: How preserve keys enter a least-squares edit: ``soft`` (UCE's term, ``Σ‖W k_p − W0 k_p‖²`` in the
#: objective) or ``nullspace`` (AlphaEdit / SPEED: the update is confined to the orthogonal
#: complement of the preserved keys, so ``ΔW k_p = 0``).
PRESERVE_MODES = ("soft", "nullspace")


def _input_space(W0d, Ka, Va, lam: float) -> torch.Tensor:
    """W (λI + KᵀK) = λW0 + VᵀK solved in the [in,in] input space (rows of Ka/Va are pairs)."""
    A = lam * W0d + Va.T @ Ka                                # [out,in]  λW0 + Σ v kᵀ
    B = Ka.T @ Ka                                            # [in,in]   Σ k kᵀ
    B.diagonal().add_(lam)                                   # + λI
    return torch.linalg.solve(B, A, left=False)              # W B = A, no explicit inverse


def _pair_space(W0d, Ka, Va, lam: float) -> torch.Tensor:
    """The same W in the [n,n] pair space (Woodbury): ``W0 + (V − W0K)(λI + KᵀK)⁻¹Kᵀ``.

    Written for K, V as [d, n] columns; here the rows of Ka [n,in] / Va [n,out] are the pairs, so
    ``KᵀK`` is ``Ka Kaᵀ`` and the update is ``W0 + ((λI + Ka Kaᵀ)⁻¹ (Va − Ka W0ᵀ))ᵀ Ka``.
    """
    R = Va - Ka @ W0d.T                                      # [n,out]  residuals v − W0 k
    S = Ka @ Ka.T                                            # [n,n]    Gram matrix
    S.diagonal().add_(lam)                                   # + λI
    return W0d + torch.linalg.solve(S, R).T @ Ka             # [out,in]


def _least_squares_f64(W0, K, V, lam, K_preserve, V_preserve, space="auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (W, W0) in float64 on W0's device; see ``least_squares_update``."""
    _check_ndim("W0", W0, 2, "[out, in]")
    _check_keys_values(W0, K, V, "K", "V", allow_missing_v=False)
    if K_preserve is None and V_preserve is not None:
        raise ValueError("V_preserve given without K_preserve")
    if K_preserve is not None:
        _check_keys_values(W0, K_preserve, V_preserve, "K_preserve", "V_preserve", allow_missing_v=True)
    lam = float(lam)
    if not lam >= 0.0:  # also rejects NaN
        raise ValueError(f"lam must be >= 0, got {lam}")

    dev = W0.device
    W0d = W0.detach().to(device=dev, dtype=_F64)            # [out,in]
    Ka = K.detach().to(device=dev, dtype=_F64)              # [n,in]
    Va = V.detach().to(device=dev, dtype=_F64)              # [n,out]
    if K_preserve is not None:
        # min_W Σ‖W k − v‖² + Σ‖W k_p − v_p‖² + λ‖W − W0‖²: preserve pairs are more rows.
        Kp = K_preserve.detach().to(device=dev, dtype=_F64)  # [m,in]
        Vp = Kp @ W0d.T if V_preserve is None else V_preserve.detach().to(device=dev, dtype=_F64)  # [m,out]
        Ka, Va = torch.cat([Ka, Kp]), torch.cat([Va, Vp])
    if solve_space(Ka.shape[0], Ka.shape[1], space) == "pairs":
        return _pair_space(W0d, Ka, Va, lam), W0d
    return _input_space(W0d, Ka, Va, lam), W0d


def least_squares_update(
    W0: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lam: float = 0.01,
    K_preserve: torch.Tensor | None = None,
    V_preserve: torch.Tensor | None = None,
    space: str = "auto",
    preserve_mode: str = "soft",
    rtol: float = NULLSPACE_RTOL,
) -> torch.Tensor:
    """Regularised least-squares edit of one linear map; returns the new weight.

    Usage::

        W = least_squares_update(W0, K, V, lam=0.01)                   # Diff-QuickFix
        W = least_squares_update(W0, K, V, lam=0.5, K_preserve=Kp)     # UCE
        layer.weight.data.copy_(W)

    Shapes: ``W0 [out,in]``, ``K [n,in]``, ``V [n,out]``, ``K_preserve [m,in]``,
    ``V_preserve [m,out]``; returns ``W [out,in]`` in ``W0``'s dtype and device.

    Solves ``min_W Σ‖W k − v‖² + Σ‖W k_p − v_p‖² + λ‖W − W0‖²``, i.e.::

        W = (λW0 + Σ v kᵀ + Σ v_p k_pᵀ) (λI + Σ k kᵀ + Σ k_p k_pᵀ)⁻¹

    with ``torch.linalg.solve`` in float64. Preserve values default to ``v_p = W0 k_p``,
    which gives UCE's ``Σ W0 k_p k_pᵀ`` term. λ from the papers: Diff-QuickFix 0.01,
    LocoEdit 0.01, TIME 0.1, UCE 0.5.

    ``space`` picks the system solved (:func:`solve_space`): with n stacked pairs (edit and
    preserve) fewer than the ``in`` dims, ``"auto"`` solves the [n, n] pair-space (Woodbury)
    form ``W0 + (V − W0K)(λI + KᵀK)⁻¹Kᵀ`` (K, V as [d, n] columns), else the [in, in] form
    above; both give the same W. ``lam = 0`` needs the system's matrix to be invertible: keys
    spanning the input space (``"input"``), or linearly independent keys (``"pairs"``, the
    exact-fit edit of least change); otherwise ``torch.linalg.solve`` raises.
    Bias terms are not touched (Diff-QuickFix leaves the bias as is): pass values with the
    bias already subtracted if the layer has one.

    ``preserve_mode="nullspace"`` replaces the soft preserve term by a hard constraint:
    :func:`nullspace_update` (``ΔW K_preserve = 0`` exactly; ``rtol`` its rank threshold).
    """
    _check_mode(preserve_mode)
    if preserve_mode == "nullspace" and K_preserve is not None:
        if V_preserve is not None:
            raise ValueError("preserve_mode='nullspace' keeps W0 k_p on the preserve keys; V_preserve cannot be given")
        return nullspace_update(W0, K, V, K_preserve, lam=lam, rtol=rtol, space=space)
    W, _ = _least_squares_f64(W0, K, V, lam, K_preserve, V_preserve, space)
    return W.to(dtype=W0.dtype)


def _check_mode(mode: str) -> None:
    if mode not in PRESERVE_MODES:
        raise ValueError(f"preserve_mode must be one of {', '.join(PRESERVE_MODES)}, got {mode!r}")


def least_squares_delta(
    W0: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lam: float = 0.01,
    K_preserve: torch.Tensor | None = None,
    V_preserve: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same as ``least_squares_update`` but returns ``ΔW = W − W0 [out,in]``.

    Usage::

        delta = least_squares_delta(W0, K, V, lam=0.01)
        layer.weight.data += delta        # apply
        layer.weight.data -= delta        # undo (exact only up to float rounding; keep W0
                                          # itself if bit-exact undo is needed)

    The difference is taken in float64 and then cast to ``W0``'s dtype.
    """
    W, W0d = _least_squares_f64(W0, K, V, lam, K_preserve, V_preserve)
    return (W - W0d).to(dtype=W0.dtype)


def cholesky_factor(C: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor ``L`` of a symmetric positive definite ``C [in,in]`` (``C = L Lᵀ``), float64.

    Usage::

        L = cholesky_factor(C)                       # once per layer (O(d³)); cache it with C
        delta = rank_one_update(W, k_star, v_star, chol=L)   # then each edit is O(d²)
    """
    _check_ndim("C", C, 2, "[in, in]")
    L, info = torch.linalg.cholesky_ex(C.detach().to(_F64))
    if int(info) != 0:
        raise ValueError(f"C is not positive definite (leading minor {int(info)} fails); add a ridge to C")
    return L


def _check_rank_one(W, k_star, v_star, C, chol, k_dir) -> None:
    _check_ndim("W", W, 2, "[out, in]")
    out_dim, in_dim = W.shape
    for name, t in (("k_star", k_star), ("k_dir", k_dir)):
        if t is None:
            continue
        _check_ndim(name, t, 1, f"[{in_dim}] (in = W.shape[1])")
        if t.shape[0] != in_dim:
            raise ValueError(f"{name} has shape {_shape(t)}; expected [{in_dim}] (in = W.shape[1])")
    _check_ndim("v_star", v_star, 1, f"[{out_dim}] (out = W.shape[0])")
    if v_star.shape[0] != out_dim:
        raise ValueError(f"v_star has shape {_shape(v_star)}; expected [{out_dim}] (out = W.shape[0])")
    if (C is None) == (chol is None):
        raise ValueError("give exactly one of C (the key second moment) and chol (its Cholesky factor)")
    name, M = ("C", C) if C is not None else ("chol", chol)
    _check_ndim(name, M, 2, f"[{in_dim}, {in_dim}] (in = W.shape[1])")
    if tuple(M.shape) != (in_dim, in_dim):
        raise ValueError(f"{name} has shape {_shape(M)}; expected [{in_dim}, {in_dim}] (in = W.shape[1])")


def rank_one_update(
    W: torch.Tensor,
    k_star: torch.Tensor,
    v_star: torch.Tensor,
    C: torch.Tensor | None = None,
    *,
    chol: torch.Tensor | None = None,
    k_dir: torch.Tensor | None = None,
) -> torch.Tensor:
    """ROME / ReFACT rank-one edit; returns ``ΔW [out,in]`` with ``(W + ΔW) k* = v*``.

    Usage::

        C = second_moment(K_corpus)                 # [in,in], uncentred fc2-input moment
        delta = rank_one_update(fc2.weight, k_star, v_star, C)
        delta = rank_one_update(fc2.weight, k_star, v_star, chol=cholesky_factor(C), k_dir=k_bar)
        fc2.weight.data += delta

    Shapes: ``W [out,in]`` (torch ``nn.Linear`` layout, ``y = W k``), ``k_star [in]``,
    ``v_star [out]``, ``C [in,in]`` symmetric positive definite, or instead ``chol``, its lower
    Cholesky factor (:func:`cholesky_factor`; two triangular solves, O(in²), instead of an
    O(in³) solve). ``k_dir [in]`` (default ``k_star``) sets the update's direction: ReFACT's
    ``compute_u`` takes ``u ∝ C⁻¹ k̄`` with ``k̄`` the key averaged over its context prompts,
    while the residual and the denominator use the edit prompt's key ``k*``. Returns ``ΔW``
    in ``W``'s dtype and device. Computed in float64 as::

        c  = C⁻¹ k_dir                   (torch.linalg.solve, or two triangular solves; no inverse)
        ΔW = (v* − W k*) cᵀ / (cᵀ k*)

    so ``ΔW k* = v* − W k*`` exactly (in exact arithmetic); with ``k_dir = k*``, among all ΔW
    achieving it this one minimises the change measured by ``C`` (ROME's constrained least
    squares). ``v_star`` is the target of ``W k*`` alone: for a layer with bias ``b`` whose
    output should become ``v``, pass ``v_star = v − b`` (the bias is not edited).

    Equivalence with the formula in the ReFACT / ROME text, written for the transposed
    (GPT-2 ``Conv1D``) layout ``W_T [in,out]`` with ``y = W_Tᵀ k``::

        u = C⁻¹ k / ‖C⁻¹ k‖;   W_T += u (v* − W_Tᵀ k)ᵀ / (kᵀ u)

    Transposing gives ``W += (v* − W k) uᵀ / (uᵀ k)`` with ``W = W_Tᵀ``. Since
    ``u = c / ‖c‖``, the factor ``1/‖c‖`` appears in both numerator and denominator and
    cancels: ``(v* − W k) cᵀ / (cᵀ k)``, which is what is implemented here.
    """
    _check_rank_one(W, k_star, v_star, C, chol, k_dir)
    dev = W.device
    Wd = W.detach().to(device=dev, dtype=_F64)              # [out,in]
    k = k_star.detach().to(device=dev, dtype=_F64)          # [in]
    v = v_star.detach().to(device=dev, dtype=_F64)          # [out]
    kd = k if k_dir is None else k_dir.detach().to(device=dev, dtype=_F64)  # [in]
    if chol is not None:  # C⁻¹ k = L⁻ᵀ (L⁻¹ k): two triangular solves (torch.cholesky_solve copies L, ~10x slower)
        Ld = chol.detach().to(device=dev, dtype=_F64)
        c = torch.linalg.solve_triangular(Ld.T, torch.linalg.solve_triangular(Ld, kd[:, None], upper=False), upper=True)[:, 0]
    else:
        c = torch.linalg.solve(C.detach().to(device=dev, dtype=_F64), kd)                    # [in]  C⁻¹ k_dir
    denom = torch.dot(c, k)                                 # scalar cᵀ k*
    if not torch.isfinite(denom) or denom.abs() <= torch.finfo(_F64).tiny:
        raise ValueError(f"k_dir' C^-1 k_star = {denom.item()}; need a nonzero key and a positive definite C")
    residual = v - Wd @ k                                   # [out]  v* − W k*
    delta = torch.outer(residual / denom, c)                # [out,in]
    return delta.to(dtype=W.dtype)


def second_moment(K: torch.Tensor) -> torch.Tensor:
    """Uncentred second moment ``C = KᵀK / n`` of keys ``K [n,in]``; returns ``[in,in]``.

    Usage::

        C = second_moment(fc2_inputs.reshape(-1, fc2_inputs.shape[-1]))

    Computed in float64, returned in ``K``'s dtype. Uncentred, as ROME and ReFACT use it
    (no mean subtraction). For a corpus too big for memory use ``MomentAccumulator``.
    """
    _check_ndim("K", K, 2, "[n, in] (flatten leading dims with K.reshape(-1, in))")
    if K.shape[0] == 0:
        raise ValueError(f"K has shape {_shape(K)}; expected at least one row")
    Kd = K.detach().to(_F64)                                # [n,in]
    return (Kd.T @ Kd / K.shape[0]).to(K.dtype)             # [in,in]


class MomentAccumulator:
    """Running uncentred second moment over batches of keys.

    Usage::

        acc = MomentAccumulator()
        for batch in corpus:                     # each K: [n_i, in]
            acc.update(K)
        C = acc.value()                          # [in,in] float64 = Σ KᵀK / Σ n_i

    Sums are kept in float64 on the device of the first batch. ``value(dtype=...)`` casts.
    The result equals ``second_moment(torch.cat(batches))`` up to float64 rounding.
    """

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None   # [in,in] float64, Σ KᵀK
        self.count: int = 0

    def update(self, K: torch.Tensor) -> "MomentAccumulator":
        """Add the rows of ``K [n,in]``; returns ``self``."""
        _check_ndim("K", K, 2, "[n, in] (flatten leading dims with K.reshape(-1, in))")
        if self.sum is None:
            self.sum = torch.zeros(K.shape[1], K.shape[1], dtype=_F64, device=K.device)
        elif K.shape[1] != self.sum.shape[0]:
            d = self.sum.shape[0]
            raise ValueError(f"K has shape {_shape(K)}; expected [n, {d}] (in of earlier batches)")
        Kd = K.detach().to(device=self.sum.device, dtype=_F64)
        self.sum += Kd.T @ Kd
        self.count += K.shape[0]
        return self

    def value(self, dtype: torch.dtype = _F64) -> torch.Tensor:
        """Return ``Σ KᵀK / n`` as ``[in,in]`` in ``dtype`` (float64 by default)."""
        if self.sum is None or self.count == 0:
            raise ValueError("MomentAccumulator has no rows yet; call update(K) first")
        return (self.sum / self.count).to(dtype)


def clamp_delta(delta: torch.Tensor, v0: torch.Tensor, max_ratio: float = 4.0) -> torch.Tensor:
    """Scale ``delta`` down so that ``‖delta‖ ≤ max_ratio · ‖v0‖`` (ReFACT/ROME δ clamp).

    Usage::

        # inside the v* optimisation loop, after optimizer.step():
        with torch.no_grad():
            delta.copy_(clamp_delta(delta, v0, max_ratio=4.0))

    Shapes: ``delta`` and ``v0`` the same shape (typically ``[out]``). Norms are the
    Euclidean norm over all elements. Returns a new tensor; ``delta`` is returned unchanged
    in value (as a copy) when already inside the ball. Pure: no in-place writes.
    """
    if delta.shape != v0.shape:
        raise ValueError(f"delta has shape {_shape(delta)}; expected {_shape(v0)} (the shape of v0)")
    max_ratio = float(max_ratio)
    if not max_ratio >= 0.0:
        raise ValueError(f"max_ratio must be >= 0, got {max_ratio}")
    max_norm = max_ratio * v0.detach().norm()
    norm = delta.detach().norm()
    if norm > max_norm:
        return delta * (max_norm / norm)
    return delta.clone()
