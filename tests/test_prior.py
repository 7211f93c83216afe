"""The gated PixelCNN prior: causal masking (by gradients), likelihood units, sampling and decoding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything

from lightning_ae import VQVAE, FakeImageDataModule, PixelCNNPrior, VectorQuantizer
from lightning_ae.nets.pixelcnn import GatedPixelCNN


@pytest.mark.parametrize(("layers", "kernel"), [(1, 3), (3, 5), (5, 3)])
def test_pixelcnn_is_causal(layers: int, kernel: int) -> None:
    torch.manual_seed(0)
    net = GatedPixelCNN(num_codes=5, channels=6, num_layers=layers, kernel_size=kernel)
    net.head = torch.nn.Conv2d(6, 5, 1)  # the head is pointwise; a linear one has no dead ReLUs to hide gradients
    h, w = 5, 6
    x = torch.randn(1, 6, h, w, requires_grad=True)
    logits = net.logits_from_embeddings(x)
    for pos in range(h * w):
        (grad,) = torch.autograd.grad(logits[0, :, pos // w, pos % w].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(0).reshape(-1) > 0
        assert not seen[pos:].any(), f"position {pos} sees positions {seen[pos:].nonzero().flatten().tolist()}"
        if pos % w:
            assert seen[pos - 1], "the position to the left must be seen"
        if pos >= w:
            assert seen[pos - w], "the position above must be seen"
    # the bottom-right output sees the whole row above it (the gated stacks have no blind spot)
    (grad,) = torch.autograd.grad(logits[0, :, h - 1, w - 1].sum(), x)
    assert (grad[0].abs().sum(0)[h - 2, w - 1 - min(w - 1, layers * (kernel // 2)):] > 0).all()


def test_pixelcnn_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        GatedPixelCNN(kernel_size=4)
    with pytest.raises(ValueError, match="num_codes"):
        GatedPixelCNN(num_codes=1)


def fit_quietly(model: LightningModule, max_steps: int, root: Path | None = None, num_train: int = 64) -> Trainer:
    """Fits ``model`` on tiny fake 1x28x28 data without logger, checkpoints or progress output."""
    data = FakeImageDataModule(image_shape=(1, 28, 28), num_train=num_train, val_size=16, batch_size=16)
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                      default_root_dir=root)
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.fixture(scope="module")
def vqvae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    seed_everything(0)
    model = VQVAE(image_shape=(1, 28, 28), latent_dim=8, quantizer=VectorQuantizer(16, code_dim=8), hidden_channels=16,
                  res_channels=8)
    trainer = fit_quietly(model, max_steps=2)
    path = tmp_path_factory.mktemp("vqvae") / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_prior_likelihood_sampling_and_decoding(vqvae_checkpoint: Path, tmp_path: Path) -> None:
    prior = PixelCNNPrior(str(vqvae_checkpoint), channels=8, num_layers=2, kernel_size=3)
    assert prior.grid_shape == (7, 7)
    x = torch.rand(4, 1, 28, 28)
    indices = prior.vqvae.encode_indices(x)
    nats = prior.nll(indices)
    log_probs = prior(indices).log_softmax(1)  # the NLL by an independent path: the true codes' log-probabilities
    torch.testing.assert_close(nats, -log_probs.gather(1, indices.unsqueeze(1)).mean())
    assert nats.item() == pytest.approx(math.log(16), rel=0.2)  # untrained: near uniform over 16 codes
    torch.testing.assert_close(prior.bits_per_dim(nats), nats * 49 / (math.log(2) * 784))
    grids = prior.sample_indices(400, generator=torch.Generator().manual_seed(0))
    assert grids.shape == (400, 7, 7) and grids.dtype == torch.long and grids.min() >= 0 and grids.max() < 16
    with torch.no_grad():  # the first code of a grid is drawn from the prior's first conditional
        first = prior(torch.zeros(1, 7, 7, dtype=torch.long))[0, :, 0, 0].softmax(0)
    empirical = torch.bincount(grids[:, 0, 0], minlength=16).float() / 400
    assert (empirical - first).abs().max() < 0.08  # 4 standard errors of a share near 1/16 over 400 draws
    images = prior.sample(2, generator=torch.Generator().manual_seed(1))
    expected = prior.vqvae.decode_indices(prior.sample_indices(2, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(images, expected)


def test_prior_trains_with_the_vqvae_frozen(vqvae_checkpoint: Path, tmp_path: Path) -> None:
    prior = PixelCNNPrior(str(vqvae_checkpoint), channels=8, num_layers=2, kernel_size=3)
    frozen = {k: v.clone() for k, v in prior.vqvae.state_dict().items()}
    before = [p.detach().clone() for p in prior.pixelcnn.parameters()]
    trainer = fit_quietly(prior, max_steps=3, root=tmp_path)
    assert all(torch.equal(v, prior.vqvae.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(a, b) for a, b in zip(before, prior.pixelcnn.parameters(), strict=True))
    assert {"val/loss", "val/bits_per_dim"} <= set(trainer.callback_metrics)
    path = tmp_path / "prior.ckpt"
    trainer.save_checkpoint(path)
    loaded = PixelCNNPrior.load_from_checkpoint(path, weights_only=False)
    idx = prior.vqvae.encode_indices(torch.rand(2, 1, 28, 28))
    torch.testing.assert_close(loaded(idx), prior.eval()(idx))


def test_prior_checks_the_data_matches(vqvae_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="image_shape"):
        PixelCNNPrior(str(vqvae_checkpoint), image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="pixel_range"):
        PixelCNNPrior(str(vqvae_checkpoint), pixel_range=(-0.5, 0.5))


def _fit_prior(vqvae_path: Path, root: Path) -> Path:
    prior = PixelCNNPrior(str(vqvae_path), channels=8, num_layers=2, kernel_size=3)
    trainer = fit_quietly(prior, max_steps=1, root=root, num_train=32)
    trainer.save_checkpoint(root / "prior.ckpt")
    return root / "prior.ckpt"


def test_prior_checkpoint_holds_its_vqvae(vqvae_checkpoint: Path, tmp_path: Path) -> None:
    """A prior checkpoint loads after its VQ-VAE checkpoint is gone, and ignores a different VQ-VAE written to
    that path since: it holds the exact VQ-VAE it was trained on."""
    vqvae_path = tmp_path / "vqvae.ckpt"
    vqvae_path.write_bytes(vqvae_checkpoint.read_bytes())
    prior_path = _fit_prior(vqvae_path, tmp_path)
    trained = PixelCNNPrior.load_from_checkpoint(prior_path, weights_only=False).eval()
    grids = torch.randint(16, (2, 7, 7))
    expected_images, expected_logits = trained.vqvae.decode_indices(grids), trained(grids)

    vqvae_path.unlink()
    loaded = PixelCNNPrior.load_from_checkpoint(prior_path, weights_only=False).eval()
    torch.testing.assert_close(loaded.vqvae.decode_indices(grids), expected_images)
    torch.testing.assert_close(loaded(grids), expected_logits)

    other = VQVAE(image_shape=(1, 28, 28), latent_dim=8, quantizer=VectorQuantizer(16, code_dim=8), hidden_channels=32,
                  res_channels=8)
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams),
                "pytorch-lightning_version": "2.6.0"}, vqvae_path)
    reloaded = PixelCNNPrior.load_from_checkpoint(prior_path, weights_only=False).eval()
    assert reloaded.vqvae.hparams["hidden_channels"] == 16  # the embedded one, not the file now at the path
    torch.testing.assert_close(reloaded.vqvae.decode_indices(grids), expected_images)


def test_prior_names_a_missing_vqvae_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match=r"vqvae_checkpoint .*nowhere"):
        PixelCNNPrior(str(missing))


def test_prior_from_the_cli_loads_without_its_vqvae_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two-stage CLI workflow: both checkpoints written by ``lightning-ae fit`` (with Lightning's CLI
    instantiator in their hyperparameters); the prior's then loads from Python on its own."""
    from lightning_ae.cli import main

    monkeypatch.chdir(tmp_path)
    common = ["--data", "lightning_ae.FakeImageDataModule", "--data.num_train", "32", "--data.val_size", "16",
              "--data.batch_size", "16", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
              "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(["fit", "--model", "lightning_ae.VQVAE", "--model.hidden_channels", "8", "--model.res_channels", "4",
          "--model.latent_dim", "4", "--model.quantizer", "VectorQuantizer", "--model.quantizer.num_codes", "8",
          "--model.quantizer.code_dim", "4", "--trainer.default_root_dir", "vq", *common])
    (vqvae_path,) = Path("vq").rglob("*.ckpt")
    main(["fit", "--model", "lightning_ae.PixelCNNPrior", "--model.vqvae_checkpoint", str(vqvae_path),
          "--model.channels", "8", "--model.num_layers", "2", "--model.kernel_size", "3",
          "--trainer.default_root_dir", "prior", *common])
    (prior_path,) = Path("prior").rglob("*.ckpt")
    vqvae = VQVAE.load_from_checkpoint(vqvae_path, weights_only=False).eval()
    vqvae_path.unlink()
    prior = PixelCNNPrior.load_from_checkpoint(prior_path, weights_only=False).eval()
    grids = torch.randint(8, (2, 7, 7))
    torch.testing.assert_close(prior.vqvae.decode_indices(grids), vqvae.decode_indices(grids))
    assert prior.sample(2).shape == (2, 1, 28, 28)
