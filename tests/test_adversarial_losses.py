"""The adversarial pieces of VQGAN / latent diffusion's autoencoders as pure functions, against hand computations,
and the PatchGAN discriminator's shape and taming's initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ae.losses import (
    adaptive_weight,
    adopt_weight,
    discriminator_loss,
    generator_loss,
    lecam_regularization,
    r1_penalty,
)
from lightning_ae.nets.patchgan import PatchGANDiscriminator

REAL, FAKE = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_discriminator_losses_by_hand() -> None:
    hinge = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.5) / 3)
    vanilla = 0.5 * (sum(softplus(-r) for r in REAL.tolist()) / 3 + sum(softplus(f) for f in FAKE.tolist()) / 3)
    lsgan = 0.5 * (sum((r - 1) ** 2 for r in REAL.tolist()) / 3 + sum(f**2 for f in FAKE.tolist()) / 3)
    for kind, expected in (("hinge", hinge), ("vanilla", vanilla), ("lsgan", lsgan)):
        assert discriminator_loss(REAL, FAKE, kind).item() == pytest.approx(expected, rel=1e-6), kind
    with pytest.raises(ValueError, match="'hinge', 'vanilla' or 'lsgan'"):
        discriminator_loss(REAL, FAKE, "wgan")  # type: ignore[arg-type]


def test_generator_losses_by_hand() -> None:
    assert generator_loss(FAKE, "hinge").item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    assert generator_loss(FAKE, "vanilla").item() == pytest.approx(sum(softplus(-f) for f in FAKE.tolist()) / 3)
    assert generator_loss(FAKE, "lsgan").item() == pytest.approx(sum((f - 1) ** 2 for f in FAKE.tolist()) / 3)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    """Esser et al. 2021, eq. 7, on a last layer w where both gradients are known in closed form."""
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    rec = (w**2).sum()          # grad 2w: norm 10
    gan = 0.5 * w.sum()         # grad (0.5, 0.5): norm sqrt(0.5)
    weight = adaptive_weight(rec, gan, w)
    assert weight.item() == pytest.approx(10.0 / (math.sqrt(0.5) + 1e-4), rel=1e-6)
    assert not weight.requires_grad
    assert adaptive_weight((w**2).sum() * 1e9, 0.0 * w.sum(), w).item() == 1e4  # clamped
    rec.backward()  # the graphs were retained
    assert w.grad is not None


def test_lecam_and_r1_by_hand() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    ema_real, ema_fake = torch.tensor(2.0), torch.tensor(-0.5)
    expected = ((1.5**2 + 3.5**2) / 2) + ((3.0**2 + 2.0**2) / 2)  # (D(x) - a_F)^2, (D(G(z)) - a_R)^2
    assert lecam_regularization(real, fake, ema_real, ema_fake).item() == pytest.approx(expected)
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    logits = (x**2).sum(1)  # grad 2x: ||2x||^2 = 4 ||x||^2
    penalty = r1_penalty(logits, x)
    assert penalty.item() == pytest.approx(4 * (5.0 + 1.25) / 2)
    penalty.backward()  # differentiable: it trains the discriminator
    torch.testing.assert_close(x.grad, 8 * x.detach() / 2)


def test_adopt_weight_starts_at_disc_start() -> None:
    assert [adopt_weight(0.5, s, 3) for s in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize(("size", "n_layers", "grid"), [(256, 3, 30), (32, 3, 2), (32, 2, 6)])
def test_patchgan_logit_map(size: int, n_layers: int, grid: int) -> None:
    d = PatchGANDiscriminator(ndf=16, n_layers=n_layers)
    assert d(torch.zeros(2, 3, size, size)).shape == (2, 1, grid, grid)


def test_patchgan_taming_init_and_norms() -> None:
    torch.manual_seed(0)
    d = PatchGANDiscriminator(ndf=64, n_layers=3)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert abs(convs[1].weight.std().item() - 0.02) < 0.002 and convs[1].bias is None  # BatchNorm after it
    norms = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 3 and abs(norms[0].weight.mean().item() - 1.0) < 0.01
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in PatchGANDiscriminator(norm="group").modules())
    with pytest.raises(ValueError, match="norm must be"):
        PatchGANDiscriminator(norm="instance")  # type: ignore[arg-type]
