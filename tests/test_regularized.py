"""DenoisingAutoencoder, SparseAutoencoder, ContractiveAutoencoder: what each adds to the Autoencoder (issue 3).

The shared contract (shapes, batch formats, NaN guard, training, checkpoints) is in test_contract.py; the loss
terms on their own in test_losses_regularized.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_ae import (
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    FakeImageDataModule,
    SparseAutoencoder,
)
from lightning_ae.callbacks.probe import LinearProbe, encode_batches, fit_logistic_regression, linear_probe
from lightning_ae.losses import contractive_penalty_exact, contractive_penalty_stochastic, reconstruction_loss
from lightning_ae.nets import MLPDecoder, MLPEncoder, SigmoidEncoder

SHAPE = (1, 28, 28)


def validate(model: nn.Module, tmp_path: Path, **data_kwargs) -> dict[str, float]:
    data = FakeImageDataModule(image_shape=SHAPE, num_train=96, val_size=64, batch_size=32, **data_kwargs)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(model, datamodule=data, verbose=False)
    return {k: v.item() for k, v in trainer.callback_metrics.items()}


def test_a_term_that_is_the_loss_itself_is_logged_once(tmp_path: Path) -> None:
    """The plain autoencoder's ``recon`` term is its loss tensor: logged once, as ``loss`` (each key costs Lightning's
    ``self.log`` about half a millisecond); a sparse autoencoder's ``recon`` differs from its loss and is logged."""
    logged = {}
    for name, model in (("ae", Autoencoder()), ("sae", SparseAutoencoder(sparsity_weight=0.5))):
        assert "recon" in model.loss_terms(torch.rand(4, *SHAPE), "train").terms  # still a term of the output
        data = FakeImageDataModule(image_shape=SHAPE, num_train=64, val_size=32, batch_size=32)
        trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path)
        trainer.fit(model, datamodule=data)
        logged[name] = {k for k in trainer.callback_metrics if k.startswith("train/")}
    assert logged["ae"] == {"train/loss"}
    assert {"train/loss", "train/recon", "train/sparsity"} <= logged["sae"]


# ---- DenoisingAutoencoder ----------------------------------------------------------------------------------
class CorruptionSpy(DenoisingAutoencoder):
    calls: int = 0

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().corrupt(x)


def test_dae_trains_on_corrupted_inputs_against_clean_targets() -> None:
    seed_everything(0)
    model = DenoisingAutoencoder(corruption="masking", noise_fraction=0.5)
    x = torch.rand(8, *SHAPE)
    torch.manual_seed(3)
    terms = model.loss_terms(x, "train").as_dict()
    torch.manual_seed(3)
    x_tilde = model.corrupt(x)
    assert (x_tilde == 0).float().mean() > 0.4  # the input really is corrupted
    expected = reconstruction_loss(model.decode(model.encode(x_tilde)), x, "mse")
    torch.testing.assert_close(terms["loss"], expected)
    assert not torch.allclose(terms["loss"], reconstruction_loss(model.decode(model.encode(x)), x, "mse"))


@pytest.mark.parametrize("stage", ["val", "test"])
def test_dae_does_not_corrupt_at_evaluation(stage: str) -> None:
    seed_everything(0)
    model = DenoisingAutoencoder(corruption="salt_and_pepper", noise_fraction=0.5).eval()
    x = torch.rand(8, *SHAPE)
    _out = model.loss_terms(x, stage)
    terms, reconstruction = _out.as_dict(), _out.reconstruction
    with torch.no_grad():
        torch.testing.assert_close(reconstruction, model(x))  # the returned reconstruction is from the clean input
        torch.testing.assert_close(terms["loss"], reconstruction_loss(model.decode(model.encode(x)), x, "mse"))
    torch.manual_seed(5)
    out = model.loss_terms(x, stage)
    torch.manual_seed(5)
    noisy = model.corrupt(x)  # the clean pass draws nothing: the same corruption as inside loss_terms
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(noisy).clamp(0, 1), x)
    torch.testing.assert_close(out.terms["mse_corrupted"], expected)  # the corrupted copy's error, by hand


def test_dae_validation_logs_clean_and_corrupted_reconstruction(tmp_path: Path) -> None:
    seed_everything(0)
    model = CorruptionSpy(corruption="masking", noise_fraction=0.5)
    metrics = validate(model, tmp_path)
    assert {"val/loss", "val/mse", "val/mse_corrupted", "val/recon_corrupted"} <= set(metrics)
    assert metrics["val/mse_corrupted"] != pytest.approx(metrics["val/mse"])
    assert model.calls == 2  # only for the extra metric (two validation batches), never the scored input


def test_dae_corrupts_on_the_batch_device_and_dtype() -> None:
    model = DenoisingAutoencoder(corruption="gaussian", noise_std=0.1)
    x = torch.rand(2, *SHAPE, dtype=torch.float64)
    y = model.corrupt(x)
    assert y.dtype == x.dtype and y.device == x.device and not torch.equal(x, y)


def test_dae_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="corruption must be one of"):
        DenoisingAutoencoder(corruption="blur")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_fraction"):
        DenoisingAutoencoder(corruption="masking", noise_fraction=1.5)
    with pytest.raises(ValueError, match="noise_std"):
        DenoisingAutoencoder(corruption="gaussian", noise_std=-0.1)
    DenoisingAutoencoder(corruption="gaussian", noise_std=1.5)  # a sigma may exceed 1


# ---- SparseAutoencoder -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", ["l1", "kl", "topk"])
def test_sae_loss_is_reconstruction_plus_weighted_penalty(sparsity: str) -> None:
    seed_everything(0)
    model = SparseAutoencoder(sparsity=sparsity, sparsity_weight=0.5, rho=0.1, k=4, latent_dim=16)
    x = torch.rand(8, *SHAPE)
    terms = model.loss_terms(x, "train").as_dict()
    h = model.encoder(x)
    code = {"l1": torch.relu(h), "kl": torch.sigmoid(h), "topk": h}[sparsity]
    if sparsity == "topk":
        keep = h.topk(4, dim=1).indices
        code = torch.zeros_like(h).scatter(1, keep, h.gather(1, keep))
    recon = reconstruction_loss(model.decode(code), x, "mse")
    rho_hat = code.mean(0)
    penalty = {"l1": code.abs().mean(),
               "kl": (0.1 * torch.log(0.1 / rho_hat) + 0.9 * torch.log(0.9 / (1 - rho_hat))).sum(),
               "topk": torch.tensor(0.0)}[sparsity]
    torch.testing.assert_close(terms["loss"], recon + 0.5 * penalty)
    torch.testing.assert_close(terms["mean_activation"], code.detach().mean())
    active = code > 0.5 if sparsity == "kl" else code != 0
    torch.testing.assert_close(terms["active_fraction"], active.float().mean())


def test_sae_topk_code_has_exactly_k_active_units_and_logs_it(tmp_path: Path) -> None:
    seed_everything(0)
    model = SparseAutoencoder(sparsity="topk", k=5, latent_dim=20)
    z = model.encode(torch.rand(16, *SHAPE))
    assert torch.equal((z != 0).sum(1), torch.full((16,), 5))
    metrics = validate(model, tmp_path)
    assert metrics["val/active_fraction"] == pytest.approx(5 / 20)
    data = FakeImageDataModule(image_shape=SHAPE, num_train=96, val_size=64, batch_size=32)  # as validate()
    data.setup("fit")
    with torch.no_grad():  # the epoch mean of the batch means (equal batches): the mean code over the set
        expected = model.encode(data.transform(data.val_set.images, training=False)).mean().item()
    assert metrics["val/mean_activation"] == pytest.approx(expected, rel=1e-4)


def test_sae_kl_training_moves_mean_activation_towards_rho(tmp_path: Path) -> None:
    seed_everything(0)
    model = SparseAutoencoder(encoder=MLPEncoder(SHAPE, 16, hidden_dims=(32,)),
                              decoder=MLPDecoder(SHAPE, 16, hidden_dims=(32,)),
                              sparsity="kl", rho=0.05, sparsity_weight=1.0, latent_dim=16)
    before = validate(model, tmp_path)["val/mean_activation"]
    data = FakeImageDataModule(image_shape=SHAPE, num_train=192, val_size=64, batch_size=32)
    Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path).fit(model, datamodule=data)
    after = validate(model, tmp_path)["val/mean_activation"]
    assert abs(after - 0.05) < 0.5 * abs(before - 0.05)


def test_sae_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sparsity must be one of"):
        SparseAutoencoder(sparsity="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rho"):
        SparseAutoencoder(sparsity="kl", rho=0.0)
    with pytest.raises(ValueError, match="k must be"):
        SparseAutoencoder(sparsity="topk", k=33, latent_dim=32)
    with pytest.raises(ValueError, match="sparsity_weight"):
        SparseAutoencoder(sparsity_weight=-1.0)


# ---- ContractiveAutoencoder --------------------------------------------------------------------------------
@pytest.mark.parametrize("penalty", ["exact", "sigmoid", "stochastic"])
def test_cae_loss_is_reconstruction_plus_lambda_jacobian(penalty: str) -> None:
    seed_everything(0)
    model = ContractiveAutoencoder(penalty=penalty, contractive_weight=0.3, latent_dim=6, num_projections=3,
                                   network="sigmoid" if penalty == "sigmoid" else "mlp")
    x = torch.rand(3, *SHAPE)
    torch.manual_seed(1)
    terms = model.loss_terms(x, "train").as_dict()
    if penalty == "stochastic":  # the same draws through the pure function (its unbiasedness: test_losses_...)
        torch.manual_seed(1)
        x_in = x.clone().requires_grad_()
        expected = contractive_penalty_stochastic(model.encoder(x_in), x_in, num_projections=3).mean()
    else:
        expected = contractive_penalty_exact(model.encoder, x).mean()
    torch.testing.assert_close(terms["contractive"], expected, rtol=1e-5, atol=1e-6)
    recon = reconstruction_loss(model.decode(model.encode(x)), x, "mse")
    torch.testing.assert_close(terms["loss"], recon + 0.3 * terms["contractive"])


@pytest.mark.parametrize("penalty", ["exact", "sigmoid", "stochastic"])
def test_cae_training_gradient_of_the_penalty_reaches_the_encoder(penalty: str) -> None:
    seed_everything(0)
    model = ContractiveAutoencoder(penalty=penalty, latent_dim=6, network="sigmoid" if penalty == "sigmoid" else "mlp")
    x = torch.rand(4, *SHAPE)
    terms = model.loss_terms(x, "train").as_dict()
    first = next(model.encoder.parameters())
    (grad,) = torch.autograd.grad(terms["contractive"], first, retain_graph=True)
    assert grad.abs().sum() > 0
    decoder_grads = torch.autograd.grad(terms["contractive"], list(model.decoder.parameters()), allow_unused=True)
    assert all(g is None for g in decoder_grads)  # the penalty is a function of the encoder alone


def test_cae_sigmoid_default_encoder_and_structure_check() -> None:
    model = ContractiveAutoencoder(penalty="sigmoid", network="sigmoid", latent_dim=7)
    assert isinstance(model.encoder, SigmoidEncoder)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(784, 7), nn.Sigmoid())
    ContractiveAutoencoder(penalty="sigmoid", encoder=seq, latent_dim=7)
    with pytest.raises(ValueError, match="single sigmoid layer"):
        ContractiveAutoencoder(penalty="sigmoid", encoder=MLPEncoder(SHAPE, 7), latent_dim=7)
    for network in ("mlp", "conv"):  # never a silent swap of the chosen network for a sigmoid layer
        with pytest.raises(ValueError, match="network='sigmoid'"):
            ContractiveAutoencoder(penalty="sigmoid", network=network, latent_dim=7)


def test_cae_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="penalty must be one of"):
        ContractiveAutoencoder(penalty="hutchinson")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contractive_weight"):
        ContractiveAutoencoder(contractive_weight=-0.1)
    with pytest.raises(ValueError, match="num_projections"):
        ContractiveAutoencoder(num_projections=0)


def test_cae_logs_jacobian_norm_on_validation_data(tmp_path: Path) -> None:
    # Lightning validates under inference mode: the penalty must still be computed there
    seed_everything(0)
    model = ContractiveAutoencoder(penalty="exact", latent_dim=4)
    metrics = validate(model, tmp_path, noise=0.0)
    data = FakeImageDataModule(image_shape=SHAPE, num_train=96, val_size=64, batch_size=32, noise=0.0)
    data.setup("fit")
    x = torch.cat([data.transform(b[0], training=False) for b in data.val_dataloader()])
    norms = contractive_penalty_exact(model.encoder, x).detach().sqrt()
    assert metrics["val/jacobian_norm"] == pytest.approx(norms.mean().item(), rel=1e-4)
    assert metrics["val/contractive"] == pytest.approx(norms.pow(2).mean().item(), rel=1e-4)


# ---- linear probe ------------------------------------------------------------------------------------------
def test_linear_probe_separates_informative_codes_and_not_constant_ones() -> None:
    seed_everything(0)
    data = FakeImageDataModule(image_shape=SHAPE, num_train=320, val_size=64, num_test=128, batch_size=64)
    model = Autoencoder(latent_dim=8, num_classes=10)
    assert linear_probe(model, data, max_iter=50) > 0.9  # the fake classes are separable prototypes
    with torch.no_grad():
        model.encoder.net[-1].weight.zero_()  # every image gets the same code
    assert linear_probe(model, data, max_iter=50) < 0.25


def test_logistic_regression_fits_a_separable_problem_and_encode_batches_keeps_labels() -> None:
    codes = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    classifier = fit_logistic_regression(codes, labels, 2, max_iter=20)
    assert torch.equal(classifier(codes).argmax(1), labels)
    model = Autoencoder(latent_dim=3)
    z, y = encode_batches(model, [(torch.rand(4, *SHAPE), torch.arange(4))])
    assert z.shape == (4, 3) and torch.equal(y, torch.arange(4))
    with pytest.raises(ValueError, match="no labels"):
        encode_batches(model, [torch.rand(2, *SHAPE)])


def test_linear_probe_callback_logs_accuracy_at_the_last_epoch_and_every_n(tmp_path: Path) -> None:
    seed_everything(0)
    data = FakeImageDataModule(image_shape=SHAPE, num_train=320, val_size=64, num_test=128, batch_size=64)
    model = Autoencoder(latent_dim=8, num_classes=10)

    class Spy(LinearProbe):
        epochs: list[int] = []

        def on_train_epoch_end(self, trainer: Trainer, pl_module) -> None:
            before = self.accuracy
            super().on_train_epoch_end(trainer, pl_module)
            if self.accuracy is not before:
                self.epochs.append(trainer.current_epoch)

    probe = Spy(every_n_epochs=2, max_iter=50)
    trainer = Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[probe])
    trainer.fit(model, datamodule=data)
    assert probe.epochs == [1, 2]  # every second epoch, and the last one
    assert trainer.callback_metrics["probe/accuracy"].item() == pytest.approx(probe.accuracy)
    assert probe.accuracy == pytest.approx(linear_probe(model, data, max_iter=50))  # the function, on the same model
    assert probe.accuracy > 0.9
    with pytest.raises(ValueError, match="every_n_epochs"):
        LinearProbe(every_n_epochs=-1)


# ---- real MNIST (slow) -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_regularized_variants_on_real_mnist_subset(real_mnist_dir: Path) -> None:
    """Issue 3 on real data, cheaply (~30 s on one thread): 3 epochs on the first 10k training images, scored on the
    first 2k test images, the same MLP for every variant."""
    from lightning_ae import MNISTDataModule
    from lightning_ae.corruptions import corrupt

    class SubsetMNIST(MNISTDataModule):
        def _load_split(self, train: bool):  # first 10k training / 2k test images
            images, labels = super()._load_split(train)
            n = 10_000 if train else 2_000
            return images[:n], labels[:n]

    data = SubsetMNIST(data_dir=real_mnist_dir, download=False, batch_size=64, eval_batch_size=1000, val_size=500)
    data.setup("test")
    x = data.transform(data.test_set.images, training=False)
    x_masked = corrupt(x, "masking", 0.5, generator=torch.Generator().manual_seed(1))
    common = {"latent_dim": 64, "recon_loss": "bce", "num_classes": 10}
    builds = {
        "ae": lambda n: Autoencoder(**n, **common),
        "dae": lambda n: DenoisingAutoencoder(**n, **common, corruption="masking", noise_fraction=0.5),
        "kl": lambda n: SparseAutoencoder(**n, **common, sparsity="kl", rho=0.05, sparsity_weight=0.1),
        "topk": lambda n: SparseAutoencoder(**n, **common, sparsity="topk", k=16),
    }
    codes, mse_masked = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads than free cores is many times slower on a shared machine
    try:
        _train_and_score(builds, data, x, x_masked, codes, mse_masked)
    finally:
        torch.set_num_threads(threads)
    assert mse_masked["dae"] < mse_masked["ae"], mse_masked  # the DAE restores masked digits better than the AE
    assert codes["kl"].mean().item() == pytest.approx(0.05, rel=0.2)  # batch-mean activation near rho
    assert torch.equal((codes["topk"] != 0).sum(1), torch.full((x.shape[0],), 16))  # exactly k per sample


def _train_and_score(builds, data, x, x_masked, codes, mse_masked) -> None:
    for name, build in builds.items():
        seed_everything(0)
        model = build({"encoder": MLPEncoder(SHAPE, 64, hidden_dims=(256,)),
                       "decoder": MLPDecoder(SHAPE, 64, hidden_dims=(256,))})
        Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(model, data)
        model.eval()
        with torch.no_grad():
            codes[name] = model.encode(x)
            mse_masked[name] = (model(x_masked) - x).pow(2).mean().item()
