"""Shape checks and the solve-space choice shared by the closed-form edits.

Usage::

    from diffloc.editing.shapes import _check_keys_values, _check_ndim, solve_space

    _check_ndim("W0", W0, 2, "[out, in]")                       # TypeError / ValueError naming the shape
    _check_keys_values(W0, K, V, "K", "V", allow_missing_v=False)  # K [n, in], V [n, out] against W0 [out, in]
    solve_space(n=10, d=768)                                    # 'pairs': the smaller system

:mod:`diffloc.editing.closed_form` and :mod:`diffloc.editing.nullspace` validate with these;
``closed_form`` re-exports :func:`solve_space`.
"""
from __future__ import annotations

import torch

_F64 = torch.float64


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_ndim(name: str, t: torch.Tensor, ndim: int, expected: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} has shape {_shape(t)}; expected {expected}")


def _check_keys_values(W0, K, V, kname: str, vname: str, allow_missing_v: bool) -> None:
    """K [n,in] and V [n,out] against W0 [out,in]; V may be None if allowed."""
    out_dim, in_dim = W0.shape
    _check_ndim(kname, K, 2, f"[n, {in_dim}] (in = W0.shape[1])")
    if K.shape[1] != in_dim:
        raise ValueError(f"{kname} has shape {_shape(K)}; expected [n, {in_dim}] (in = W0.shape[1])")
    if V is None:
        if not allow_missing_v:
            raise ValueError(f"{vname} is required")
        return
    n = K.shape[0]
    _check_ndim(vname, V, 2, f"[{n}, {out_dim}] (n = {kname}.shape[0], out = W0.shape[0])")
    if tuple(V.shape) != (n, out_dim):
        raise ValueError(
            f"{vname} has shape {_shape(V)}; expected [{n}, {out_dim}] "
            f"(n = {kname}.shape[0], out = W0.shape[0])"
        )


def solve_space(n: int, d: int, space: str = "auto") -> str:
    """Where the least-squares system is solved: ``"pairs"`` ([n, n], Woodbury) or ``"input"`` ([d, d]).

    ``"auto"`` picks the smaller: pairs when the stacked pairs are fewer than the input dims.
    """
    if space == "auto":
        return "pairs" if n < d else "input"
    if space not in ("pairs", "input"):
        raise ValueError(f"space must be 'auto', 'pairs' or 'input', got {space!r}")
    return space
