"""Shared pieces of the VAE benchmarks: the data, the networks of the VAE benchmarks, pythae wrappers around them.

The networks: MLP encoder 784-512-256-(2x32) and decoder 32-256-512-784, ReLU, Bernoulli logits; Adam 1e-3,
batch 128. Data: MNIST from ``$LIGHTNING_AE_DATA`` (``MNIST/raw``), binarized once with a fixed seed
(``MNISTDataModule(binarize="static", seed=0)``: train with seed 0, test with seed 1), 60k train / 10k test.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from lightning_ae import VAE, MNISTDataModule
from lightning_ae.nets import MLPDecoder, MLPEncoder

LATENT_DIM = 32
ENC_HIDDEN = (512, 256)
DEC_HIDDEN = (256, 512)
BATCH_SIZE = 128
LR = 1e-3
IMAGE_SHAPE = (1, 28, 28)


def data_dir() -> str:
    path = os.environ.get("LIGHTNING_AE_DATA")
    if not path:
        sys.exit("set LIGHTNING_AE_DATA to the folder holding MNIST/raw")
    return path


def mnist(binarize: str = "static", batch_size: int = BATCH_SIZE, eval_batch_size: int = 500) -> MNISTDataModule:
    """MNIST, 60k train (no validation split) / 10k test, loaded into memory."""
    dm = MNISTDataModule(data_dir=data_dir(), download=False, binarize=binarize, val_size=0, seed=0,  # type: ignore[arg-type]
                         batch_size=batch_size, eval_batch_size=eval_batch_size)
    dm.setup("fit")
    dm.setup("test")
    return dm


def static_test_images(dm: MNISTDataModule) -> torch.Tensor:
    """The test split as float {0, 1} images; for dynamic binarization, one fixed-seed Bernoulli sample of it."""
    assert dm.test_set is not None
    x = dm.test_set.images.float() / 255.0
    if dm.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(1))
    return x


def networks(latent_dim: int = LATENT_DIM, enc_hidden: tuple[int, ...] = ENC_HIDDEN,
             dec_hidden: tuple[int, ...] = DEC_HIDDEN) -> tuple[nn.Module, nn.Module]:
    return (MLPEncoder(IMAGE_SHAPE, 2 * latent_dim, enc_hidden), MLPDecoder(IMAGE_SHAPE, latent_dim, dec_hidden))


def make_vae(encoder: nn.Module, decoder: nn.Module, latent_dim: int = LATENT_DIM, **kwargs: Any) -> VAE:
    return VAE(encoder=encoder, decoder=decoder, latent_dim=latent_dim, image_shape=IMAGE_SHAPE,
               likelihood="bernoulli", **kwargs)


@torch.no_grad()
def test_nll(model: VAE, images: torch.Tensor, k: int = 1000, batch: int = 500, iw_batch: int = 100) -> float:
    """Mean importance-weighted ``-log p(x)`` (nats) over ``images`` with our estimator (Burda et al. 2015)."""
    model.eval()
    model.iw_batch = iw_batch
    total = 0.0
    for start in range(0, images.shape[0], batch):
        total += -model.log_likelihood(images[start:start + batch], k).sum().item()
    return total / images.shape[0]


# ---- pythae --------------------------------------------------------------------------------------------------
def pythae_model(encoder: nn.Module, decoder: nn.Module, latent_dim: int = LATENT_DIM, kind: str = "vae",
                 k: int = 5) -> Any:
    """pythae's ``VAE``, or its ``IWAE`` with ``k`` samples (``kind="iwae"``), Bernoulli
    (``reconstruction_loss="bce"``), on our encoder/decoder modules."""
    from pythae.models import IWAE as PIWAE
    from pythae.models import VAE as PVAE
    from pythae.models import IWAEConfig, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = encoder

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mean, logvar = self.net(x).chunk(2, dim=-1)
            return ModelOutput(embedding=mean, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = decoder

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    if kind == "iwae":
        config = IWAEConfig(input_dim=IMAGE_SHAPE, latent_dim=latent_dim, reconstruction_loss="bce", number_samples=k)
        return PIWAE(config, encoder=Encoder(), decoder=Decoder())
    config = VAEConfig(input_dim=IMAGE_SHAPE, latent_dim=latent_dim, reconstruction_loss="bce")
    return PVAE(config, encoder=Encoder(), decoder=Decoder())


def pythae_trainer(model: Any, train_images: torch.Tensor, epochs: int, output_dir: str,
                   batch_size: int = BATCH_SIZE) -> Any:
    """pythae's ``BaseTrainer`` with Adam (lr 1e-3), no evaluation set, on the CPU."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    config = BaseTrainerConfig(output_dir=output_dir, num_epochs=epochs, learning_rate=LR,
                               per_device_train_batch_size=batch_size, optimizer_cls="Adam", no_cuda=True, seed=0)
    dataset = BaseDataset(train_images, torch.zeros(train_images.shape[0]))
    return BaseTrainer(model, train_dataset=dataset, training_config=config)


# ---- training for a wall-clock budget, with a test-NLL curve ------------------------------------------------------
class TimeBudget(Callback):
    """Stops training after ``minutes`` of training wall time, decays the learning rate from its initial value to
    ``final_lr`` along a cosine of the elapsed fraction of that budget (a schedule for a time budget, not an
    epoch count), and every ``curve_every`` training minutes calls ``evaluate(model) -> float``; the time spent
    evaluating is not counted. ``curve`` holds ``(training minutes, value)`` pairs; each is printed as it comes.
    """

    def __init__(self, minutes: float, curve_every: float, evaluate: Callable[[Any], float],
                 final_lr: float = 1e-5) -> None:
        self.budget, self.every, self.evaluate, self.final_lr = 60.0 * minutes, 60.0 * curve_every, evaluate, final_lr
        self.curve: list[tuple[float, float]] = []
        self.trained, self.next_point, self.base_lrs = 0.0, 60.0 * curve_every, None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        optimizer = trainer.optimizers[0]
        if self.base_lrs is None:
            self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        frac = min(self.trained / self.budget, 1.0)
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.final_lr + (base - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.trained += time.perf_counter() - self.started
        if self.trained >= self.next_point or self.trained >= self.budget:
            self.point(pl_module)
            self.next_point += self.every
        if self.trained >= self.budget:
            trainer.should_stop = True

    def point(self, pl_module: LightningModule) -> None:
        was_training = pl_module.training
        value = self.evaluate(pl_module)
        pl_module.train(was_training)
        self.curve.append((round(self.trained / 60.0, 2), round(value, 3)))
        print(f"{self.trained / 60:.2f} training minutes, step {pl_module.global_step}: {value:.3f}", flush=True)


def fit_for(model: LightningModule, dm: Any, budget: TimeBudget) -> float:
    """Trains ``model`` on ``dm`` under ``budget`` (no validation, no logger); returns the wall seconds of fit."""
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[budget])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start
