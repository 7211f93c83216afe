"""Sparsity and contractive loss terms and the corruptions, against hand computations (issue 3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_ae.corruptions import corrupt, gaussian_noise, masking_noise, salt_and_pepper_noise
from lightning_ae.losses import (
    contractive_penalty_exact,
    contractive_penalty_sigmoid,
    contractive_penalty_stochastic,
    kl_sparsity,
    l1_sparsity,
    topk_sparsify,
)
from lightning_ae.nets import MLPEncoder, SigmoidEncoder


# ---- sparsity ----------------------------------------------------------------------------------------------
def test_l1_sparsity_hand_computed() -> None:
    code = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert l1_sparsity(code).item() == pytest.approx((1 + 2 + 0 + 3) / 4)


def test_kl_sparsity_hand_computed() -> None:
    code = torch.tensor([[0.1, 0.3], [0.3, 0.5]])  # rho_hat = (0.2, 0.4)
    rho = 0.2
    expected = 0.0 + (0.2 * math.log(0.2 / 0.4) + 0.8 * math.log(0.8 / 0.6))  # KL(.2||.2) + KL(.2||.4)
    assert kl_sparsity(code, rho).item() == pytest.approx(expected, rel=1e-6)
    assert kl_sparsity(torch.full((4, 3), 0.2), rho).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_sparsity_is_finite_for_saturated_units() -> None:
    assert torch.isfinite(kl_sparsity(torch.tensor([[0.0, 1.0]]), 0.05))
    with pytest.raises(ValueError, match="rho"):
        kl_sparsity(torch.rand(2, 2), 1.0)


def test_topk_keeps_the_k_largest() -> None:
    code = torch.tensor([[3.0, 1.0, 2.0, -1.0], [-5.0, 0.5, 0.4, 7.0]])
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.5, 0.0, 7.0]])
    assert torch.equal(topk_sparsify(code, 2), expected)


def test_topk_exactly_k_nonzeros_and_gradient_through_kept_units() -> None:
    torch.manual_seed(0)
    code = torch.randn(64, 40, requires_grad=True)
    out = topk_sparsify(code, 7)
    assert torch.equal((out != 0).sum(1), torch.full((64,), 7))
    weights = torch.randn(64, 40)
    (out * weights).sum().backward()
    kept = out != 0
    torch.testing.assert_close(code.grad, weights * kept)
    with pytest.raises(ValueError, match="k must be"):
        topk_sparsify(code, 41)


# ---- contractive penalties ---------------------------------------------------------------------------------
def brute_force_sq_norms(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    def single(s: torch.Tensor) -> torch.Tensor:
        return encoder(s.unsqueeze(0)).squeeze(0)

    return torch.stack([torch.autograd.functional.jacobian(single, s).pow(2).sum() for s in x])


def small_encoder() -> nn.Module:
    torch.manual_seed(0)
    return MLPEncoder((1, 4, 4), 3, hidden_dims=(8,), activation="tanh").double()


def test_exact_matches_brute_force_jacobian() -> None:
    encoder = small_encoder()
    x = torch.rand(5, 1, 4, 4, dtype=torch.double)
    torch.testing.assert_close(contractive_penalty_exact(encoder, x), brute_force_sq_norms(encoder, x),
                               atol=1e-5, rtol=1e-5)


def test_sigmoid_closed_form_hand_computed() -> None:
    weight = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    code = torch.full((1, 2), 0.5)  # sigmoid(W 0 + 0): h(1 - h) = 0.25
    assert contractive_penalty_sigmoid(code, weight).item() == pytest.approx(0.25**2 * (1 + 4) + 0.25**2 * 9)


def test_sigmoid_equals_exact_for_a_sigmoid_encoder() -> None:
    torch.manual_seed(0)
    encoder = SigmoidEncoder((1, 6, 6), 5).double()
    x = torch.rand(7, 1, 6, 6, dtype=torch.double)
    closed = contractive_penalty_sigmoid(encoder(x), encoder.linear.weight)
    torch.testing.assert_close(closed, contractive_penalty_exact(encoder, x), atol=1e-5, rtol=1e-5)


def test_stochastic_is_unbiased() -> None:
    encoder = small_encoder()
    x = torch.rand(5, 1, 4, 4, dtype=torch.double)
    draws = 20000
    xr = x.repeat(draws, 1, 1, 1).requires_grad_()
    estimates = contractive_penalty_stochastic(encoder(xr), xr, generator=torch.Generator().manual_seed(0))
    mean = estimates.view(draws, 5).mean(0)
    exact = contractive_penalty_exact(encoder, x)
    assert ((mean - exact).abs() / exact).max().item() < 0.02


def test_stochastic_needs_an_input_that_requires_grad() -> None:
    encoder = small_encoder()
    x = torch.rand(2, 1, 4, 4, dtype=torch.double)
    with pytest.raises(ValueError, match="must require grad"):
        contractive_penalty_stochastic(encoder(x), x)
    with pytest.raises(ValueError, match="num_projections"):
        contractive_penalty_stochastic(encoder(x), x.requires_grad_(), num_projections=0)


@pytest.mark.parametrize("method", ["exact", "sigmoid", "stochastic"])
def test_penalty_gradient_reaches_encoder_weights(method: str) -> None:
    torch.manual_seed(0)
    encoder = SigmoidEncoder((1, 4, 4), 3).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.double, requires_grad=method == "stochastic")
    if method == "exact":
        penalty = contractive_penalty_exact(encoder, x)
    elif method == "sigmoid":
        penalty = contractive_penalty_sigmoid(encoder(x), encoder.linear.weight)
    else:
        penalty = contractive_penalty_stochastic(encoder(x), x, num_projections=2)
    penalty.mean().backward()
    grad = encoder.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # d/dW of the closed form, by autograd on an independent expression: the three methods agree (exact ones exactly)
    if method != "stochastic":
        w = encoder.linear.weight.detach().clone().requires_grad_()
        h = torch.sigmoid(x.detach().flatten(1) @ w.T + encoder.linear.bias.detach())
        ((h * (1 - h)) ** 2 @ (w**2).sum(1)).mean().backward()
        torch.testing.assert_close(grad, w.grad)


# ---- corruptions -------------------------------------------------------------------------------------------
def clean_images() -> torch.Tensor:
    return torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05  # no 0 or 1


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_masking_zeroes_the_requested_fraction(fraction: float) -> None:
    x = clean_images()
    y = masking_noise(x, fraction, generator=torch.Generator().manual_seed(1))
    zeroed = y == 0
    assert abs(zeroed.float().mean().item() - fraction) < 0.005  # n = 156800: 4 standard errors
    assert torch.equal(y[~zeroed], x[~zeroed])


def test_salt_and_pepper_sets_only_low_or_high_at_the_requested_fraction() -> None:
    x = clean_images()
    y = salt_and_pepper_noise(x, 0.3, generator=torch.Generator().manual_seed(1))
    changed = y != x
    assert abs(changed.float().mean().item() - 0.3) < 0.005
    assert set(y[changed].unique().tolist()) == {0.0, 1.0}
    assert abs((y[changed] == 1).float().mean().item() - 0.5) < 0.01  # a fair coin
    z = corrupt(x, "salt_and_pepper", 0.3, pixel_range=(-1.0, 1.0), generator=torch.Generator().manual_seed(1))
    assert set(z[z != x].unique().tolist()) == {-1.0, 1.0}


def test_gaussian_noise_has_the_requested_sigma() -> None:
    x = clean_images()
    noise = gaussian_noise(x, 0.2, generator=torch.Generator().manual_seed(1)) - x
    assert abs(noise.std().item() - 0.2) < 0.002
    assert abs(noise.mean().item()) < 0.002


def test_corruption_arguments_are_checked() -> None:
    x = clean_images()[:2]
    with pytest.raises(ValueError, match="fraction"):
        masking_noise(x, 1.5)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(x, -0.1)
    with pytest.raises(ValueError, match="corruption must be one of"):
        corrupt(x, "blur", 0.1)  # type: ignore[arg-type]
