"""Closed-form editors against independent solves (numpy lstsq on stacked systems)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffloc.editing.closed_form import (
    MomentAccumulator,
    cholesky_factor,
    clamp_delta,
    least_squares_delta,
    least_squares_update,
    rank_one_update,
    second_moment,
    solve_space,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(g: torch.Generator, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype)


def _stacked_lstsq(W0, K, V, lam, Kp=None, Vp=None) -> np.ndarray:
    """Independent reference: minimise ‖[K; Kp; √λ I] Wᵀ − [V; Vp; √λ W0ᵀ]‖ with lstsq."""
    W0, K, V = (t.double().numpy() for t in (W0, K, V))
    d = W0.shape[1]
    rows_k, rows_v = [K], [V]
    if Kp is not None:
        Kp = Kp.double().numpy()
        Vp = Kp @ W0.T if Vp is None else Vp.double().numpy()
        rows_k.append(Kp)
        rows_v.append(Vp)
    rows_k.append(np.sqrt(lam) * np.eye(d))
    rows_v.append(np.sqrt(lam) * W0.T)
    Wt, *_ = np.linalg.lstsq(np.vstack(rows_k), np.vstack(rows_v), rcond=None)
    return Wt.T


@pytest.mark.parametrize("lam", [0.01, 0.1, 0.5, 3.0])
def test_least_squares_matches_stacked_lstsq(lam):
    g = _gen(0)
    W0, K, V = _rand(g, 12, 20), _rand(g, 7, 20), _rand(g, 7, 12)  # fewer keys than in
    W = least_squares_update(W0, K, V, lam=lam)
    assert W.shape == W0.shape and W.dtype == W0.dtype
    np.testing.assert_allclose(W.numpy(), _stacked_lstsq(W0, K, V, lam), rtol=1e-9, atol=1e-9)


def test_least_squares_float32_in_float32_out():
    g = _gen(1)
    W0, K, V = (_rand(g, *s, dtype=torch.float32) for s in [(8, 10), (5, 10), (5, 8)])
    W = least_squares_update(W0, K, V, lam=0.01)
    assert W.dtype == torch.float32
    np.testing.assert_allclose(W.numpy(), _stacked_lstsq(W0, K, V, 0.01), rtol=1e-4, atol=1e-5)


def test_delta_is_update_minus_w0():
    g = _gen(2)
    W0, K, V = _rand(g, 6, 9), _rand(g, 4, 9), _rand(g, 4, 6)
    W = least_squares_update(W0, K, V, lam=0.1)
    delta = least_squares_delta(W0, K, V, lam=0.1)
    torch.testing.assert_close(W0 + delta, W, rtol=1e-12, atol=1e-12)


def test_residual_vanishes_as_lambda_goes_to_zero():
    g = _gen(3)
    d_in, d_out, n = 10, 6, 10  # n >= in: an exact solution exists (square, full rank)
    W0, K = _rand(g, d_out, d_in), _rand(g, n, d_in)
    V = K @ _rand(g, d_out, d_in).T  # consistent targets
    residuals = [(K @ least_squares_update(W0, K, V, lam=lam).T - V).norm().item()
                 for lam in (1e-1, 1e-3, 1e-5, 1e-8)]
    assert all(b < a for a, b in zip(residuals, residuals[1:]))
    assert residuals[-1] < 1e-6
    # lam = 0 is the plain least-squares solution
    W = least_squares_update(W0, K, V, lam=0.0)
    torch.testing.assert_close(K @ W.T, V, rtol=1e-9, atol=1e-9)


def test_large_lambda_returns_w0():
    g = _gen(4)
    W0, K, V = _rand(g, 5, 8), _rand(g, 3, 8), _rand(g, 3, 5)
    W = least_squares_update(W0, K, V, lam=1e10)
    torch.testing.assert_close(W, W0, rtol=0, atol=1e-8)


def test_uce_preserve_keys_keep_their_outputs():
    g = _gen(5)
    d_in, d_out = 16, 8
    W0, K, V = _rand(g, d_out, d_in), _rand(g, 3, d_in), _rand(g, 3, d_out)
    Kp = _rand(g, 6, d_in)
    W = least_squares_update(W0, K, V, lam=0.5, K_preserve=Kp)
    np.testing.assert_allclose(W.numpy(), _stacked_lstsq(W0, K, V, 0.5, Kp), rtol=1e-9, atol=1e-9)
    # Preserve terms pull the preserved outputs back towards W0 k_p.
    W_nopreserve = least_squares_update(W0, K, V, lam=0.5)
    drift = (Kp @ W.T - Kp @ W0.T).norm()
    drift_nopreserve = (Kp @ W_nopreserve.T - Kp @ W0.T).norm()
    assert drift < drift_nopreserve
    # With edit keys orthogonal to the preserve keys and λ -> 0, preserved outputs are exact.
    Q, _ = torch.linalg.qr(_rand(g, d_in, d_in))
    K_o, Kp_o = Q[:3], Q[3:9]  # rows orthonormal, edit ⟂ preserve
    W = least_squares_update(W0, K_o, V, lam=1e-9, K_preserve=Kp_o)
    torch.testing.assert_close(Kp_o @ W.T, Kp_o @ W0.T, rtol=0, atol=1e-6)
    torch.testing.assert_close(K_o @ W.T, V, rtol=0, atol=1e-6)


def test_uce_explicit_preserve_values_equal_default():
    g = _gen(6)
    W0, K, V, Kp = _rand(g, 4, 7), _rand(g, 2, 7), _rand(g, 2, 4), _rand(g, 5, 7)
    a = least_squares_update(W0, K, V, lam=0.5, K_preserve=Kp)
    b = least_squares_update(W0, K, V, lam=0.5, K_preserve=Kp, V_preserve=Kp @ W0.T)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, m", [(7, 0), (5, 4), (40, 0), (9, 30)])  # pairs < in, = with preserve, > in, > in with preserve
def test_pair_space_woodbury_equals_the_direct_form(n, m):
    """``W0 + (V − W0K)(λI + KᵀK)⁻¹Kᵀ`` (pairs) = ``(λW0 + VKᵀ)(λI + KKᵀ)⁻¹`` (input space), both regimes."""
    g = _gen(20 + n)
    d_out, d_in = 11, 24
    W0, K, V = _rand(g, d_out, d_in), _rand(g, n, d_in), _rand(g, n, d_out)
    Kp = _rand(g, m, d_in) if m else None
    for lam in (0.01, 0.5):
        pairs = least_squares_update(W0, K, V, lam=lam, K_preserve=Kp, space="pairs")
        direct = least_squares_update(W0, K, V, lam=lam, K_preserve=Kp, space="input")
        auto = least_squares_update(W0, K, V, lam=lam, K_preserve=Kp)
        assert float((pairs - direct).norm() / direct.norm()) < 1e-11, (n, m, lam)
        torch.testing.assert_close(auto, pairs if n + m < d_in else direct, rtol=0, atol=0)
        np.testing.assert_allclose(pairs.numpy(), _stacked_lstsq(W0, K, V, lam, Kp), rtol=1e-9, atol=1e-9)


def test_solve_space_picks_the_smaller_system():
    assert solve_space(300, 768) == "pairs" and solve_space(768, 768) == "input" and solve_space(2000, 768) == "input"
    assert solve_space(2000, 768, "pairs") == "pairs"
    with pytest.raises(ValueError, match="space must be"):
        solve_space(3, 4, "woodbury")


def test_pair_space_fits_exactly_at_lambda_zero_with_least_change():
    g = _gen(30)
    W0, K, V = _rand(g, 6, 20), _rand(g, 5, 20), _rand(g, 5, 6)
    W = least_squares_update(W0, K, V, lam=0.0)  # 5 pairs < 20 dims: pair space, exact fit
    torch.testing.assert_close(K @ W.T, V, rtol=1e-10, atol=1e-10)
    # the change lies in the keys' row space (least Frobenius change among exact fits)
    P = K.T @ torch.linalg.solve(K @ K.T, K)
    torch.testing.assert_close((W - W0) @ P, W - W0, rtol=1e-10, atol=1e-10)


def test_rank_one_with_cached_cholesky_and_a_direction_key():
    g = _gen(31)
    W, C = _rand(g, 7, 12), second_moment(_rand(g, 100, 12))
    k, k_bar, v = _rand(g, 12), _rand(g, 12), _rand(g, 7)
    L = cholesky_factor(C)
    torch.testing.assert_close(L @ L.T, C, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rank_one_update(W, k, v, chol=L), rank_one_update(W, k, v, C), rtol=1e-10, atol=1e-12)
    delta = rank_one_update(W, k, v, chol=L, k_dir=k_bar)
    torch.testing.assert_close((W + delta) @ k, v, rtol=1e-10, atol=1e-10)  # v* reached at k*, not at k̄
    u = torch.linalg.solve(C, k_bar)  # every row of ΔW is parallel to C⁻¹ k̄
    torch.testing.assert_close(delta, torch.outer(delta @ u / (u @ u), u), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="exactly one of C"):
        rank_one_update(W, k, v, C, chol=L)
    with pytest.raises(ValueError, match="not positive definite"):
        cholesky_factor(-C)


def test_rank_one_hits_target_exactly():
    g = _gen(7)
    d_out, d_in = 9, 14
    W = _rand(g, d_out, d_in)
    X = _rand(g, 200, d_in)
    C = second_moment(X)
    k, v = _rand(g, d_in), _rand(g, d_out)
    delta = rank_one_update(W, k, v, C)
    assert delta.shape == W.shape
    torch.testing.assert_close((W + delta) @ k, v, rtol=1e-10, atol=1e-10)
    assert torch.linalg.matrix_rank(delta).item() == 1


def test_rank_one_matches_issue_formula_and_constrained_lstsq():
    g = _gen(8)
    d_out, d_in = 5, 7
    W = _rand(g, d_out, d_in)
    C = second_moment(_rand(g, 50, d_in))
    k, v = _rand(g, d_in), _rand(g, d_out)
    delta = rank_one_update(W, k, v, C)
    # Issue's transposed (Conv1D, [in,out]) formula with u normalised.
    Wt = W.T.clone()
    u = torch.linalg.solve(C, k)
    u = u / u.norm()
    Wt = Wt + torch.outer(u, v - Wt.T @ k) / (k @ u)
    torch.testing.assert_close(W + delta, Wt.T, rtol=1e-10, atol=1e-10)
    # ROME's characterisation: ΔW minimises tr(ΔW C ΔWᵀ) = ‖ΔW L‖²_F subject to ΔW k = r,
    # with C = L Lᵀ. Put N = ΔW L: minimum-norm N with N a = r, a = L⁻¹ k; then ΔW = N L⁻¹.
    L = np.linalg.cholesky(C.numpy())
    a = np.linalg.solve(L, k.numpy())
    r = (v - W @ k).numpy()
    N = np.outer(r, a) / (a @ a)
    np.testing.assert_allclose(delta.numpy(), N @ np.linalg.inv(L), rtol=1e-8, atol=1e-10)


def test_rank_one_float32():
    g = _gen(9)
    W = _rand(g, 6, 10, dtype=torch.float32)
    C = second_moment(_rand(g, 40, 10, dtype=torch.float32))
    k, v = _rand(g, 10, dtype=torch.float32), _rand(g, 6, dtype=torch.float32)
    delta = rank_one_update(W, k, v, C)
    assert delta.dtype == torch.float32
    torch.testing.assert_close((W + delta) @ k, v, rtol=1e-4, atol=1e-4)


def test_second_moment_and_accumulator():
    g = _gen(10)
    K = _rand(g, 37, 6)
    C = second_moment(K)
    np.testing.assert_allclose(C.numpy(), K.numpy().T @ K.numpy() / 37, rtol=1e-12)
    acc = MomentAccumulator()
    for chunk in torch.split(K, [10, 1, 26]):
        acc.update(chunk.float())
    torch.testing.assert_close(acc.value(), second_moment(K.float().double()), rtol=1e-12, atol=1e-12)
    assert acc.value(torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="no rows"):
        MomentAccumulator().value()
    with pytest.raises(ValueError, match=r"expected \[n, 6\]"):
        acc.update(_rand(g, 3, 5))


def test_clamp_delta():
    v0 = torch.tensor([3.0, 4.0])  # ‖v0‖ = 5 -> max ‖δ‖ = 20
    big = torch.tensor([30.0, 40.0])
    out = clamp_delta(big, v0, max_ratio=4.0)
    torch.testing.assert_close(out.norm(), torch.tensor(20.0))
    torch.testing.assert_close(out / out.norm(), big / big.norm())
    small = torch.tensor([1.0, -1.0])
    out = clamp_delta(small, v0)
    torch.testing.assert_close(out, small)
    assert out is not small
    with pytest.raises(ValueError, match="expected"):
        clamp_delta(torch.zeros(3), v0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda W, K, V: least_squares_update(W, K[:, :-1], V), r"K has shape \[4, 7\]; expected \[n, 8\]"),
        (lambda W, K, V: least_squares_update(W, K, V[:3]), r"V has shape \[3, 5\]; expected \[4, 5\]"),
        (lambda W, K, V: least_squares_update(W, K, V.T), r"V has shape \[5, 4\]; expected \[4, 5\]"),
        (lambda W, K, V: least_squares_update(W[0], K, V), r"W0 has shape \[8\]; expected \[out, in\]"),
        (lambda W, K, V: least_squares_update(W, K, V, lam=-1.0), r"lam must be >= 0"),
        (lambda W, K, V: least_squares_update(W, K, V, K_preserve=K[:, :3]), r"K_preserve has shape"),
        (lambda W, K, V: least_squares_update(W, K, V, K_preserve=K, V_preserve=V[:, :2]),
         r"V_preserve has shape \[4, 2\]; expected \[4, 5\]"),
        (lambda W, K, V: least_squares_update(W, K, V, V_preserve=V), r"V_preserve given without"),
        (lambda W, K, V: rank_one_update(W, K[0, :-1], V[0], torch.eye(8)), r"k_star has shape \[7\]; expected \[8\]"),
        (lambda W, K, V: rank_one_update(W, K[0], V[0, :-1], torch.eye(8)), r"v_star has shape \[4\]; expected \[5\]"),
        (lambda W, K, V: rank_one_update(W, K[0], V[0], torch.eye(7)), r"C has shape \[7, 7\]; expected \[8, 8\]"),
        (lambda W, K, V: rank_one_update(W, K, V[0], torch.eye(8)), r"k_star has shape \[4, 8\]; expected \[8\]"),
        (lambda W, K, V: rank_one_update(W, torch.zeros(8), V[0], torch.eye(8)), r"nonzero key"),
        (lambda W, K, V: second_moment(K[None]), r"K has shape \[1, 4, 8\]; expected \[n, in\]"),
    ],
)
def test_bad_shapes_raise(call, message):
    g = _gen(11)
    W, K, V = _rand(g, 5, 8), _rand(g, 4, 8), _rand(g, 4, 5)
    with pytest.raises(ValueError, match=message):
        call(W, K, V)
