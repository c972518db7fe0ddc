"""Timing of the closed-form editors at Stable-Diffusion layer sizes (CPU).

Usage::

    from diffloc.bench_edit import bench_edit_closed_form
    numbers = bench_edit_closed_form()   # {'quickfix_ms_sd_sized': ..., 'nullspace_ms_sd_sized': ..., 'context_embedder_ms_flux_sized': ...}

    python -m diffloc.bench_edit              # prints the numbers as JSON

Only the closed-form maths is timed, never key gathering:

- ``quickfix_ms_sd_sized``: ``least_squares_update`` on a 768×768 layer
  (``self_attn.out_proj`` of the SD v1 text encoder) with 300 key/value pairs, λ = 0.01, as
  shipped: 300 pairs < 768 dims, so it solves in the [300, 300] pair space (Woodbury,
  ``quickfix_space``); ``quickfix_direct_ms`` forces the [768, 768] input-space solve.
- ``rank_one_ms_sd_sized``: ``rank_one_update`` on an fc2-sized layer, ``W [768,d_ff]``
  (``d_ff`` 3072), with ``C [d_ff,d_ff]`` already computed (the solve ``C⁻¹k̄`` dominates);
  ``rank_one_cached_ms`` the same update from C's cached Cholesky factor (ReFACT's editor caches
  it with C), and ``cholesky_ms`` the one-off factorisation.
- ``batched_ms`` / ``naive_ms``: ``n_edits`` edits of ``n_pairs // n_edits`` pairs each, as one
  stacked solve (``editing.batch``) against one solve per edit (applied one after another).
- ``nullspace_ms_sd_sized``: the null-space-preserving solve (``preserve_mode="nullspace"``,
  AlphaEdit / SPEED) on the same 768×768 layer with 300 pairs and 300 preserve keys (``nullspace_shape``):
  the preserved basis (thin SVD) plus the projected pair-space solve. Target ≤ 50 ms.
- ``context_embedder_ms_flux_sized``: a closed-form edit (UCE form, λ = 0.1) of FLUX's full-size
  ``context_embedder`` shape, ``W0 [3072, 4096]`` (T5 width 4096 -> inner dim 3072), with 300 pairs.
  Target ≤ 1000 ms on the CPU.
- ``woodbury_max_rel_diff``: the direct solve against the pair-space (Woodbury) form
  ``W0 + (V − W0K)(λI + KᵀK)⁻¹Kᵀ`` (K, V as [d, n]), computed here in float64 for the
  ``n_pairs`` keys: the two must agree to rounding.

Inputs are float32, as in a loaded model; each number is the median of ``repeats`` timed
calls after one warm-up call (minima are returned too: on a shared machine other jobs only
add time). Inputs come from a fixed ``torch.Generator``.
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import torch

from diffloc.editing import closed_form
from diffloc.editing.closed_form import least_squares_update

__all__ = ["bench_edit_closed_form", "bench_edit_dit", "bench_edit_all"]


def _times_ms(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _clocked_ms(fn, repeats: int, clock=None) -> list[float]:
    """Wall times (ms) of ``repeats`` calls of ``fn`` after one warm-up, read from ``clock`` (seconds;
    default ``time.perf_counter``): tests inject a scripted clock."""
    clock = clock or time.perf_counter
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1000.0)
    return times


def _ms(times: list[float]) -> tuple[float, float]:
    return round(statistics.median(times), 2), round(min(times), 2)


def quickfix_times(W0: torch.Tensor, K: torch.Tensor, V: torch.Tensor, repeats: int) -> dict:
    """Diff-QuickFix's solve as shipped (the smaller space) and forced into the [in, in] input space."""
    shipped = _times_ms(lambda: closed_form.least_squares_update(W0, K, V, lam=0.01), repeats)
    direct = _times_ms(lambda: closed_form.least_squares_update(W0, K, V, lam=0.01, space="input"), repeats)
    (med, low), (dmed, dlow) = _ms(shipped), _ms(direct)
    return {"quickfix_ms_sd_sized": med, "quickfix_ms_min": low, "quickfix_direct_ms": dmed, "quickfix_direct_ms_min": dlow,
            "quickfix_space": closed_form.solve_space(*K.shape)}


def nullspace_times(g: torch.Generator, repeats: int, n_pairs: int = 300, n_preserve: int = 300, d: int = 768,
                    clock=None) -> dict:
    """The null-space-preserving least-squares solve on a ``d × d`` layer: ``n_pairs`` edit pairs, ``n_preserve`` preserve keys."""
    W0 = torch.randn(d, d, generator=g) / d ** 0.5                   # [out,in]
    K, V = torch.randn(n_pairs, d, generator=g), torch.randn(n_pairs, d, generator=g)
    Kp = torch.randn(n_preserve, d, generator=g)                     # [m,in]
    times = _clocked_ms(lambda: closed_form.least_squares_update(W0, K, V, lam=0.01, K_preserve=Kp, preserve_mode="nullspace"),
                        repeats, clock)
    med, low = _ms(times)
    return {"nullspace_ms_sd_sized": med, "nullspace_ms_min": low,
            "nullspace_shape": {"W0": [d, d], "K": [n_pairs, d], "V": [n_pairs, d], "K_preserve": [n_preserve, d]}}


def context_embedder_times(g: torch.Generator, repeats: int, n_pairs: int = 300, d_in: int = 4096, d_out: int = 3072,
                           clock=None) -> dict:
    """A closed-form edit (UCE form: values ``W0 e_target``) of FLUX's ``context_embedder`` shape ``[d_out, d_in]``."""
    W0 = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5         # [out,in]
    K, T = torch.randn(n_pairs, d_in, generator=g), torch.randn(n_pairs, d_in, generator=g)

    def edit():
        return closed_form.least_squares_update(W0, K, T @ W0.T, lam=0.1)

    med, low = _ms(_clocked_ms(edit, repeats, clock))
    return {"context_embedder_ms_flux_sized": med, "context_embedder_ms_min": low,
            "context_embedder_shape": {"W0": [d_out, d_in], "K": [n_pairs, d_in]}}


def rank_one_times(g: torch.Generator, repeats: int, d_ff: int = 3072) -> dict:
    """ReFACT's rank-one update on fc2 ``[768, d_ff]``: solving with C each time, and from C's cached factor."""
    W = torch.randn(768, d_ff, generator=g) / d_ff ** 0.5   # [out,in]
    X = torch.nn.functional.gelu(torch.randn(4096, d_ff, generator=g))  # [m,in] GELU-like keys
    C = X.T @ X / X.shape[0]                                # [in,in], computed outside the timing
    del X
    k_star, k_bar = (torch.nn.functional.gelu(torch.randn(d_ff, generator=g)) for _ in range(2))  # [in]
    v_star = torch.randn(768, generator=g)                  # [out]
    uncached = _times_ms(lambda: closed_form.rank_one_update(W, k_star, v_star, C, k_dir=k_bar), repeats)
    t0 = time.perf_counter()
    L = closed_form.cholesky_factor(C)
    chol_ms = (time.perf_counter() - t0) * 1000.0
    cached = _times_ms(lambda: closed_form.rank_one_update(W, k_star, v_star, chol=L, k_dir=k_bar), repeats)
    (med, low), (cmed, clow) = _ms(uncached), _ms(cached)
    return {"rank_one_ms_sd_sized": med, "rank_one_ms_min": low, "rank_one_cached_ms": cmed, "rank_one_cached_ms_min": clow,
            "cholesky_ms": round(chol_ms, 2), "rank_one_shape": {"W": [768, d_ff], "C": [d_ff, d_ff]}}


def bench_edit_closed_form(repeats: int = 20, n_pairs: int = 300, seed: int = 0, n_edits: int = 24, d_ff: int = 3072) -> dict:
    """Return median wall times (ms) of the closed-form editors at SD layer sizes."""
    g = torch.Generator().manual_seed(seed)

    # Diff-QuickFix: out_proj 768×768, n (key, value) pairs.
    W0 = torch.randn(768, 768, generator=g) / 768 ** 0.5    # [out,in]
    K = torch.randn(n_pairs, 768, generator=g)              # [n,in]
    V = torch.randn(n_pairs, 768, generator=g)              # [n,out]
    quickfix = quickfix_times(W0, K, V, repeats)

    # Many edits: one stacked solve against one solve per edit.
    chunks = list(zip(K.chunk(n_edits), V.chunk(n_edits)))

    def naive():
        W = W0
        for k, v in chunks:
            W = least_squares_update(W, k, v, lam=0.01)

    batched = _times_ms(lambda: least_squares_update(W0, K, V, lam=0.01), repeats)
    naive_t = _times_ms(naive, repeats)
    Kd, Vd, W0d = K.double().T, V.double().T, W0.double()   # [d,n], [d,n], [out,in]
    small = torch.linalg.solve(0.01 * torch.eye(Kd.shape[1], dtype=torch.float64) + Kd.T @ Kd, (Vd - W0d @ Kd).T)  # [n,out]
    woodbury = W0d + small.T @ Kd.T                                                      # [out,in]
    direct = least_squares_update(W0.double(), K.double(), V.double(), lam=0.01, space="input")  # the direct form, not pair space
    wood_diff = float((direct - woodbury).norm() / woodbury.norm())

    return {
        **quickfix,
        **rank_one_times(g, repeats, d_ff),
        "batched_ms": round(statistics.median(batched), 2),
        "naive_ms": round(statistics.median(naive_t), 2),
        "n_edits": n_edits,
        "woodbury_max_rel_diff": wood_diff,
        # *_min: the least-disturbed estimate when the machine is shared
        "quickfix_shape": {"W0": [768, 768], "K": [n_pairs, 768], "V": [n_pairs, 768]},
        "repeats": repeats,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }


def bench_edit_dit(repeats: int = 10, n_pairs: int = 300, seed: int = 1, clock=None) -> dict:
    """The DiT-era closed forms: ``nullspace_ms_sd_sized`` and ``context_embedder_ms_flux_sized`` (fewer repeats: ~1 s each)."""
    g = torch.Generator().manual_seed(seed)
    return {**nullspace_times(g, repeats, n_pairs, clock=clock), **context_embedder_times(g, max(3, repeats // 3), n_pairs, clock=clock)}


def bench_edit_all(model_spec: str = "toy", repeats: int = 5) -> dict:
    """The numbers ``diffloc bench edit`` writes: SD-sized closed form, and whole edits on the toy model.

    ``quickfix_ms_toy`` is a whole Diff-QuickFix edit (key/value gathering through the hooks,
    solve, apply) followed by its undo; ``refact_s_toy`` a whole ReFACT edit in its default
    configuration (ReFACT's templates, no contrastive captions) with the covariance and its
    factor already cached (the first, uncached run is reported separately), with its final p.
    """
    from diffloc.editing.corpus import read_corpus
    from diffloc.editing.quickfix import quickfix
    from diffloc.editing.records import undo_edit
    from diffloc.editing.refact import refact
    from diffloc.tracing.models import load_model

    out = bench_edit_closed_form()
    out.update(bench_edit_dit())
    model = load_model(model_spec)

    def qf():
        for rec in quickfix(model, "red", "blue"):
            undo_edit(model, rec)

    corpus, _ = read_corpus(None, model)
    info = {}

    def rf():
        recs = refact(model, "red", "blue", corpus=corpus)
        info.update(recs[0].info)
        for rec in recs:
            undo_edit(model, rec)

    t0 = time.perf_counter()
    rf()  # fills the covariance cache (if empty)
    first = time.perf_counter() - t0
    out["quickfix_ms_toy"] = round(statistics.median(_times_ms(qf, repeats)), 2)
    out["refact_s_toy"] = round(statistics.median(_times_ms(rf, max(1, repeats // 2))) / 1000, 3)
    out["refact_s_toy_first_run"] = round(first, 3)
    out["refact_toy_opt_steps"] = info.get("opt_steps")
    out["refact_toy_final_p"], out["refact_toy_edited_p"] = info.get("final_p"), info.get("edited_p")
    out["targets"] = {"quickfix_ms_sd_sized": "<= 50", "refact_s_toy": "<= 5", "nullspace_ms_sd_sized": "<= 50",
                      "context_embedder_ms_flux_sized": "<= 1000"}
    return out


if __name__ == "__main__":
    print(json.dumps({**bench_edit_closed_form(), **bench_edit_dit()}, indent=2))
