"""Null-space preservation (AlphaEdit / SPEED) against independent solves written another way."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffloc.editing.closed_form import (
    NULLSPACE_RTOL,
    least_squares_update,
    nullspace_projector,
    nullspace_update,
    preserved_basis,
)


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _null_basis(K0: np.ndarray, rtol: float) -> np.ndarray:
    """numpy: columns spanning {x : K0 x = 0} (right singular vectors past the rank threshold)."""
    _, s, vh = np.linalg.svd(K0, full_matrices=True)
    r = int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    return vh[r:].T                                                  # [in, in - r]


def _via_null_basis(W0, K, V, K0, lam, rtol=NULLSPACE_RTOL) -> np.ndarray:
    """ΔWᵀ = N Y with N a basis of K0's null space: min ‖K N Y − R‖² + λ‖Y‖² by stacked lstsq."""
    W0, K, V, K0 = (t.numpy() for t in (W0, K, V, K0))
    N = _null_basis(K0, rtol)
    R = V - K @ W0.T
    q = N.shape[1]
    A = np.vstack([K @ N, np.sqrt(lam) * np.eye(q)]) if lam > 0 else K @ N
    b = np.vstack([R, np.zeros((q, R.shape[1]))]) if lam > 0 else R
    Y, *_ = np.linalg.lstsq(A, b, rcond=None)
    return W0 + (N @ Y).T


def _via_projector(W0, K, V, K0, lam) -> np.ndarray:
    """Brute force ΔW = X P: min over free X of ‖K (XP)ᵀ − R‖² + λ‖XP‖², min-norm lstsq in X."""
    W0, K, V, K0 = (t.numpy() for t in (W0, K, V, K0))
    d = W0.shape[1]
    P = np.eye(d) - np.linalg.pinv(K0) @ K0                          # orthogonal projector onto null(K0)
    R = V - K @ W0.T
    Xt, *_ = np.linalg.lstsq(np.vstack([K @ P, np.sqrt(lam) * P]), np.vstack([R, np.zeros((d, R.shape[1]))]), rcond=None)
    return W0 + (P @ Xt).T


@pytest.mark.parametrize("n, m, d, lam", [(6, 5, 20, 0.01), (6, 5, 20, 0.5), (30, 8, 16, 0.1), (9, 40, 48, 0.01)])
def test_nullspace_matches_independent_solves(n, m, d, lam):
    W0, K, V, K0 = _rand(0, 12, d), _rand(1, n, d), _rand(2, n, 12), _rand(3, m, d)
    W = nullspace_update(W0, K, V, K0, lam=lam)
    ref = _via_null_basis(W0, K, V, K0, lam)
    np.testing.assert_allclose(W.numpy(), ref, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(W.numpy(), _via_projector(W0, K, V, K0, lam), rtol=1e-7, atol=1e-7)
    # preserved outputs unchanged; the edit residual is the independent solve's
    np.testing.assert_allclose((K0 @ W.T).numpy(), (K0 @ W0.T).numpy(), atol=1e-10)
    res, res_ref = np.linalg.norm(K.numpy() @ W.numpy().T - V.numpy()), np.linalg.norm(K.numpy() @ ref.T - V.numpy())
    assert res == pytest.approx(res_ref, rel=1e-9)


@pytest.mark.parametrize("space", ["pairs", "input"])
def test_both_spaces_and_least_squares_update_agree(space):
    W0, K, V, K0 = _rand(4, 10, 24), _rand(5, 7, 24), _rand(6, 7, 10), _rand(7, 9, 24)
    W = least_squares_update(W0, K, V, lam=0.1, K_preserve=K0, preserve_mode="nullspace", space=space)
    np.testing.assert_allclose(W.numpy(), _via_null_basis(W0, K, V, K0, 0.1), rtol=1e-8, atol=1e-8)


def test_exact_fit_at_lambda_zero_when_room_is_left():
    W0, K, V, K0 = _rand(8, 10, 32), _rand(9, 6, 32), _rand(10, 6, 10), _rand(11, 12, 32)   # 6 + 12 <= 32
    W = nullspace_update(W0, K, V, K0, lam=0.0)
    np.testing.assert_allclose((K @ W.T).numpy(), V.numpy(), atol=1e-9)
    np.testing.assert_allclose((K0 @ W.T).numpy(), (K0 @ W0.T).numpy(), atol=1e-10)
    np.testing.assert_allclose(W.numpy(), _via_null_basis(W0, K, V, K0, 0.0), atol=1e-8)


def test_float32_preserved_outputs_unchanged_to_1e5():
    g = torch.Generator().manual_seed(12)
    W0 = torch.randn(64, 96, generator=g) / 96 ** 0.5
    K, V = torch.randn(120, 96, generator=g), torch.randn(120, 64, generator=g)     # more pairs than dims: soft must trade
    K0 = torch.randn(30, 8, generator=g) @ torch.randn(8, 96, generator=g)                  # rank 8 from 30 keys
    W = least_squares_update(W0, K, V, lam=0.01, K_preserve=K0, preserve_mode="nullspace")
    assert W.dtype == torch.float32
    assert preserved_basis(K0).shape[0] == 8
    scale = (K0 @ W0.T).abs().max()
    assert float(((K0 @ W.T) - (K0 @ W0.T)).abs().max() / scale) < 1e-5
    soft = least_squares_update(W0, K, V, lam=0.01, K_preserve=K0)                          # UCE's term leaks
    assert float(((K0 @ soft.T) - (K0 @ W0.T)).abs().max() / scale) > 1e-3


def test_rank_threshold_and_projector():
    K0 = torch.cat([_rand(13, 3, 10), 1e-9 * _rand(14, 2, 10)])                            # 2 directions below 1e-5 · σ_max
    B = preserved_basis(K0)
    assert B.shape == (3, 10)
    np.testing.assert_allclose((B @ B.T).numpy(), np.eye(3), atol=1e-12)
    assert preserved_basis(K0, rtol=0.0).shape[0] == 5
    P = nullspace_projector(K0[:3])
    np.testing.assert_allclose((P @ P).numpy(), P.numpy(), atol=1e-12)
    np.testing.assert_allclose((K0[:3] @ P).numpy(), 0.0, atol=1e-12)
    big = _rand(15, 50, 10)                                                                  # m > in: the Gram route
    assert preserved_basis(big).shape[0] == 10
    assert preserved_basis(torch.zeros(4, 10, dtype=torch.float64)).shape[0] == 0


def test_no_room_left_is_no_edit_and_bad_inputs_raise():
    W0, K, V = _rand(16, 6, 8), _rand(17, 3, 8), _rand(18, 3, 6)
    W = nullspace_update(W0, K, V, _rand(19, 20, 8), lam=0.01)                              # preserved keys span R^8
    np.testing.assert_allclose(W.numpy(), W0.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="preserve_mode"):
        least_squares_update(W0, K, V, K_preserve=K, preserve_mode="hard")
    with pytest.raises(ValueError, match="V_preserve"):
        least_squares_update(W0, K, V, K_preserve=K, V_preserve=V, preserve_mode="nullspace")
    with pytest.raises(ValueError, match="K_preserve"):
        nullspace_update(W0, K, V, _rand(20, 3, 7))
    # no preserve keys: nullspace mode is the plain edit
    np.testing.assert_allclose(least_squares_update(W0, K, V, preserve_mode="nullspace").numpy(),
                               least_squares_update(W0, K, V).numpy())


def test_bench_figures_are_medians_and_minima_of_an_injected_clock():
    import itertools

    from diffloc import bench_edit as be

    # each timed call reads the clock twice; durations 0.030, 0.010, 0.020 s for each block
    ticks = itertools.chain.from_iterable((t, t + d) for t, d in zip(itertools.count(0, 1), itertools.cycle([0.030, 0.010, 0.020])))
    r = be.bench_edit_dit(repeats=3, n_pairs=8, clock=lambda: next(ticks))
    assert (r["nullspace_ms_sd_sized"], r["nullspace_ms_min"]) == (20.0, 10.0)
    assert (r["context_embedder_ms_flux_sized"], r["context_embedder_ms_min"]) == (20.0, 10.0)
    assert r["nullspace_shape"]["K_preserve"] == [300, 768] and r["context_embedder_shape"]["W0"] == [3072, 4096]
