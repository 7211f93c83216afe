"""The VAE and its probabilistic pieces: KL, likelihoods, the importance-weighted estimate, warm-up, free bits,
active units, generation helpers. The shared contract (shapes, batches, checkpoints) is in test_contract.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_ae import VAE, FakeImageDataModule, MNISTDataModule
from lightning_ae.distributions import (
    DiagonalGaussian,
    bernoulli_nll,
    bits_per_dim,
    free_bits_kl,
    gaussian_kl,
    gaussian_nll,
    importance_weighted_log_likelihood,
    kl_warmup_weight,
    standard_normal_log_prob,
)
from lightning_ae.metrics import ActiveUnits


def small_vae(**kwargs) -> VAE:
    seed_everything(0)
    defaults = dict(image_shape=(1, 4, 4), latent_dim=3)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 6))
    dec = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 16), nn.Unflatten(1, (1, 4, 4)))
    return VAE(encoder=enc, decoder=dec, **{**defaults, **kwargs}).eval()


def quiet_trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


# ---- distributions and likelihoods -------------------------------------------------------------------------------
def test_analytic_kl_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[-1.0, 0.5, 0.0]]))
    z = q.rsample((200_000,))
    log_ratio = q.log_prob(z) - standard_normal_log_prob(z)  # (N, 1): KL = E_q[log q - log p]
    stderr = log_ratio.std() / math.sqrt(log_ratio.shape[0])
    assert abs(log_ratio.mean() - q.kl()[0]) < 4 * stderr
    assert q.kl()[0] == pytest.approx(gaussian_kl(q.mean, q.logvar).sum().item())


def test_log_prob_and_nlls_match_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, logvar, z = torch.randn(5, 4), torch.randn(5, 4), torch.randn(7, 5, 4)
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).log_prob(z), ref)
    logits, x = torch.randn(2, 1, 3, 3), torch.randint(0, 2, (2, 1, 3, 3)).float()
    ref_b = -torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(bernoulli_nll(logits, x), ref_b)
    loc, lv = torch.rand(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    y = torch.rand(2, 3, 2, 2)
    ref_g = -torch.distributions.Normal(loc, (0.5 * lv).exp()).log_prob(y).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_nll(loc, y, lv), ref_g)
    torch.testing.assert_close(gaussian_nll(loc, y, 2 * math.log(0.1)),
                               -torch.distributions.Normal(loc, 0.1).log_prob(y).sum((1, 2, 3)))


def test_nll_broadcasts_over_sample_dimension() -> None:
    logits, x = torch.randn(4, 2, 1, 3, 3), torch.randint(0, 2, (2, 1, 3, 3)).float()
    assert bernoulli_nll(logits, x).shape == (4, 2)
    torch.testing.assert_close(bernoulli_nll(logits, x)[1], bernoulli_nll(logits[1], x))


def test_bits_per_dim() -> None:
    nll = torch.tensor([784 * math.log(2.0)])
    assert bits_per_dim(nll, 784).item() == pytest.approx(1.0)
    # a density over [0, 1] pixels: 8 bits per dim of correction for bins of 1/256
    assert bits_per_dim(torch.zeros(1), 10, bin_width=1 / 256).item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(nll, 0)


# ---- the importance-weighted estimate -----------------------------------------------------------------------------
def test_chunked_estimate_equals_one_shot() -> None:
    torch.manual_seed(0)
    weights = torch.randn(50, 3) * 20
    rows = iter(weights.split(7))
    chunked = importance_weighted_log_likelihood(lambda n: next(rows)[:n], 50, 7)
    one_shot = torch.logsumexp(weights, 0) - math.log(50)
    torch.testing.assert_close(chunked, one_shot)
    with pytest.raises(ValueError, match="num_samples"):
        importance_weighted_log_likelihood(lambda n: weights[:n], 0, 7)
    with pytest.raises(ValueError, match="chunk_size"):
        importance_weighted_log_likelihood(lambda n: weights[:n], 5, 0)


@torch.no_grad()
def test_k1_estimate_is_the_elbo_on_average() -> None:
    model = small_vae()
    x = torch.rand(1, 1, 4, 4).bernoulli().expand(4000, -1, -1, -1)
    torch.manual_seed(1)
    l1 = model.log_likelihood(x, num_samples=1)  # 4000 independent one-sample estimates
    terms = model.loss_terms(x, "val").as_dict()  # analytic KL, reconstruction averaged over 4000 samples
    stderr = l1.std() / math.sqrt(l1.shape[0])
    assert abs(l1.mean() - terms["elbo"]) < 6 * stderr


@torch.no_grad()
def test_estimate_is_above_elbo_and_grows_with_k() -> None:
    model = small_vae()
    x = torch.rand(1, 1, 4, 4).bernoulli().expand(300, -1, -1, -1)
    elbo = model.loss_terms(x[:1], "val").terms["elbo"].item()
    torch.manual_seed(2)
    means = [model.log_likelihood(x, num_samples=k).mean().item() for k in (1, 10, 100)]
    assert means[0] == pytest.approx(elbo, abs=0.5)
    assert elbo < means[1] < means[2]


class LinearGaussianEncoder(nn.Module):
    """A deliberately imperfect diagonal posterior: true posterior mean + 0.3, variance x 1.5."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, sigma: float) -> None:
        super().__init__()
        precision = torch.eye(w.shape[1]) + w.T @ w / sigma**2
        self.register_buffer("cov", torch.linalg.inv(precision))
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = (x.flatten(1) - self.b) @ self.w @ self.cov.T / self.sigma**2 + 0.3
        logvar = torch.log(1.5 * self.cov.diagonal()).expand_as(mean)
        return torch.cat([mean, logvar], dim=1)


@torch.no_grad()
def test_estimate_converges_to_closed_form_marginal_of_linear_gaussian_model() -> None:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I) (closed form)."""
    torch.manual_seed(0)
    d, p, sigma = 2, 6, 0.5
    w, b = torch.randn(p, d), torch.randn(p)
    decoder = nn.Sequential(nn.Linear(d, p), nn.Unflatten(1, (1, 2, 3)))
    decoder[0].weight.copy_(w)
    decoder[0].bias.copy_(b)
    model = VAE(encoder=LinearGaussianEncoder(w, b, sigma), decoder=decoder, latent_dim=d, image_shape=(1, 2, 3),
                likelihood="gaussian", gaussian_std=sigma, iw_batch=1000).eval()
    x = torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(p)).sample((4,))
    exact = torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(p)).log_prob(x)
    images = x.view(4, 1, 2, 3)
    estimate = model.log_likelihood(images, num_samples=20_000)
    elbo = model.loss_terms(images, "val").terms["elbo"]
    assert exact.mean() - elbo > 0.2  # the posterior is wrong on purpose: the ELBO has a real gap
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)


# ---- the objective's knobs ------------------------------------------------------------------------------------------
def test_kl_warmup_weight() -> None:
    assert kl_warmup_weight(0, 100, beta=2.0) == 0.0
    assert kl_warmup_weight(50, 100, beta=2.0) == pytest.approx(1.0)
    assert kl_warmup_weight(500, 100, beta=2.0) == 2.0
    assert kl_warmup_weight(0, 0, beta=0.5) == 0.5


def test_warmup_starts_at_recon_only_and_ramps_during_training(tmp_path: Path) -> None:
    model = small_vae(kl_warmup_steps=4).train()
    x = torch.rand(8, 1, 4, 4).bernoulli()
    terms = model.loss_terms(x, "train").as_dict()
    torch.testing.assert_close(terms["loss"], terms["recon"])  # global step 0: weight 0
    assert terms["kl"] > 0

    weights: list[float] = []
    data = FakeImageDataModule(image_shape=(1, 4, 4), num_train=64, val_size=0, batch_size=8)
    original = model.loss_terms

    def spy(x: torch.Tensor, stage: str) -> Any:
        out = original(x, stage)
        weights.append(out.terms["kl_weight"].item())
        return out

    model.loss_terms = spy  # type: ignore[method-assign]
    quiet_trainer(tmp_path, max_steps=6, limit_val_batches=0).fit(model, datamodule=data)
    assert weights == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_free_bits_floor_value_and_gradient() -> None:
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # batch means 0.2 and 3.0
    value = free_bits_kl(kl, free_bits=0.5)
    assert value.item() == pytest.approx(0.5 + 3.0)
    value.backward()
    assert torch.equal(kl.grad[:, 0], torch.zeros(2))  # under the floor: no push towards the prior
    assert torch.all(kl.grad[:, 1] == 0.5)
    assert free_bits_kl(kl, 0.0).item() == pytest.approx(3.2)


def test_model_uses_free_bits_in_loss_but_reports_true_kl() -> None:
    x = torch.rand(8, 1, 4, 4).bernoulli()
    model = small_vae(free_bits=5.0)
    torch.manual_seed(0)
    terms = model.loss_terms(x, "val").as_dict()
    assert terms["kl"] < 3 * 5.0
    torch.testing.assert_close(terms["loss"], terms["recon"] + 3 * 5.0)
    torch.testing.assert_close(terms["elbo"], -(terms["recon"] + terms["kl"]))


# ---- active units ---------------------------------------------------------------------------------------------
def test_active_units_counts_dimensions_with_varying_means() -> None:
    torch.manual_seed(0)
    metric = ActiveUnits(latent_dim=5)
    means = torch.randn(1000, 5) * torch.tensor([1.0, 0.5, 0.2, 0.05, 0.0])  # variances 1, .25, .04, .0025, 0
    for chunk in means.split(100):
        metric.update(chunk + 7.0)  # an offset does not make a unit active
    assert metric.compute().item() == 3
    torch.testing.assert_close(metric.variances(), means.double().var(0))


def test_validation_logs_active_units_elbo_and_terms(tmp_path: Path) -> None:
    model = small_vae(latent_dim=3)
    data = FakeImageDataModule(image_shape=(1, 4, 4), num_train=64, val_size=32, batch_size=8)
    trainer = quiet_trainer(tmp_path)
    trainer.validate(model, datamodule=data, verbose=False)
    metrics = trainer.callback_metrics
    assert {"val/elbo", "val/recon", "val/kl", "val/loss", "val/active_units"} <= set(metrics)
    with torch.no_grad():
        means = torch.cat([model.encode(data.transform(data.val_set.images, False))])
    expected = (means.var(0) > 1e-2).sum().item()
    assert metrics["val/active_units"].item() == expected


def test_test_step_reports_iwae_nll_and_bits_per_dim(tmp_path: Path) -> None:
    model = small_vae(iw_samples=50, iw_batch=16)
    data = FakeImageDataModule(image_shape=(1, 4, 4), num_train=64, val_size=8, batch_size=16)
    trainer = quiet_trainer(tmp_path)
    trainer.test(model, datamodule=data, verbose=False)
    m = trainer.callback_metrics
    assert m["test/nll"].item() < -m["test/elbo"].item()  # K=50 bound is tighter than the ELBO
    assert m["test/bpd"].item() == pytest.approx(m["test/nll"].item() / (16 * math.log(2)), rel=1e-4)


# ---- the model API ---------------------------------------------------------------------------------------------------
def test_encode_is_posterior_mean_and_forward_deterministic() -> None:
    model = small_vae()
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(model.encode(x), model.posterior(x).mean)
    torch.testing.assert_close(model(x), model(x))
    torch.testing.assert_close(model(x), torch.sigmoid(model.decode(model.encode(x))))


def test_sample_interpolate_traverse() -> None:
    model = small_vae()
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    z = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(0))  # the same prior draws
    torch.testing.assert_close(samples, torch.sigmoid(model.decode(z)))
    x1, x2 = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    path = model.interpolate(x1, x2, steps=5)
    assert path.shape == (5, 2, 1, 4, 4)
    torch.testing.assert_close(path[0], model(x1))
    torch.testing.assert_close(path[-1], model(x2))
    assert model.interpolate(x1[0], x2[0], steps=3).shape == (3, 1, 4, 4)
    values = torch.tensor([-2.0, 0.0, 2.0])
    grid = model.traverse(x1[0], dim=1, values=values)
    z = model.encode(x1[:1]).repeat(3, 1)
    z[:, 1] = values
    torch.testing.assert_close(grid, torch.sigmoid(model.decode(z)))
    with pytest.raises(ValueError, match="dim"):
        model.traverse(x1[0], dim=3)
    with pytest.raises(ValueError, match="steps"):
        model.interpolate(x1, x2, steps=1)


def test_learned_variance_decoder_has_two_channels_per_image_channel() -> None:
    model = VAE(network="conv", image_shape=(3, 32, 32), latent_dim=8, likelihood="gaussian", gaussian_std=None)
    assert model.decode(torch.zeros(2, 8)).shape == (2, 6, 32, 32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    fixed = VAE(network="conv", image_shape=(3, 32, 32), latent_dim=8, likelihood="gaussian", gaussian_std=0.1)
    assert fixed.decode(torch.zeros(2, 8)).shape == (2, 3, 32, 32)


def test_wrong_encoder_width_is_a_clear_error() -> None:
    model = VAE(encoder=nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), latent_dim=8)
    with pytest.raises(ValueError, match=r"must output \(B, 16\) \(mean, log-variance of latent_dim=8\)"):
        model.encode(torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"beta": -1.0}, "beta"),
        ({"kl_warmup_steps": -1}, "kl_warmup_steps"),
        ({"free_bits": -0.1}, "free_bits"),
        ({"iw_samples": 0}, "iw_samples"),
        ({"iw_batch": 0}, "iw_batch"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"likelihood": "gaussian", "gaussian_std": 0.0}, "gaussian_std"),
        ({"pixel_range": (-1.0, 1.0)}, "pixel_range"),
        ({"active_threshold": -1.0}, "threshold"),
    ],
)
def test_bad_config_values_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        VAE(**kwargs)


# ---- real data ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
def test_mnist_vae_learns_a_reasonable_likelihood(real_mnist_dir: Path, tmp_path: Path) -> None:
    seed_everything(0)
    data = MNISTDataModule(data_dir=str(real_mnist_dir), download=False, binarize="static", batch_size=128,
                           eval_batch_size=500, val_size=5000)
    model = VAE(latent_dim=32, iw_samples=100, iw_batch=50)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_test_batches=2)
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["val/active_units"].item() >= 5  # read before test() replaces the metrics
    trainer.test(model, datamodule=data, verbose=False)
    m = trainer.callback_metrics
    assert m["test/nll"].item() < 130.0  # ~200 untrained -> ~110-120 nats after two epochs
    assert m["test/nll"].item() <= -m["test/elbo"].item()


# ---- training-step logging cadence (lightning_ae.models.base.logs_this_step) --------------------------------
def _csv_rows(tmp_path: Path, every_step: bool, name: str, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    import lightning_ae.models.base as base

    model = small_vae()
    logged_steps = []
    cadence = base.logs_this_step

    def counted(module: Any) -> bool:
        logs = True if every_step else cadence(module)
        logged_steps.append(logs)
        return logs

    monkeypatch.setattr(base, "logs_this_step", counted)
    data = FakeImageDataModule(image_shape=(1, 4, 4), num_train=80, val_size=16, batch_size=8, seed=0)
    logger = CSVLogger(tmp_path, name=name)
    seed_everything(0)
    quiet_trainer(tmp_path, logger=logger, log_every_n_steps=3, max_epochs=2).fit(model, datamodule=data)
    # 2 epochs of 8 batches; with log_every_n_steps=3, steps 3, 6, 8 (an epoch's last) and 9, 12, 15, 16 log
    assert len(logged_steps) == 16 and sum(logged_steps) == (16 if every_step else 7)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_terms_reach_loggers_exactly_as_when_logged_every_step(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sparse = _csv_rows(tmp_path, False, "cadence", monkeypatch)
    full = _csv_rows(tmp_path, True, "every", monkeypatch)
    assert len(sparse) == len(full) > 4
    assert sparse == full
