"""Shared pieces of the VAE benchmarks: the data, the networks of issue 6, pythae wrappers around them.

The networks: MLP encoder 784-512-256-(2x32) and decoder 32-256-512-784, ReLU, Bernoulli logits; Adam 1e-3,
batch 128. Data: MNIST from ``$LIGHTNING_AE_DATA`` (``MNIST/raw``), binarized once with a fixed seed
(``MNISTDataModule(binarize="static", seed=0)``: train with seed 0, test with seed 1), 60k train / 10k test.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
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
def pythae_model(encoder: nn.Module, decoder: nn.Module, latent_dim: int = LATENT_DIM) -> Any:
    """pythae's ``VAE`` (Bernoulli, ``reconstruction_loss="bce"``) on our encoder/decoder modules."""
    from pythae.models import VAE as PVAE
    from pythae.models import VAEConfig
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

    config = VAEConfig(input_dim=IMAGE_SHAPE, latent_dim=latent_dim, reconstruction_loss="bce")
    return PVAE(config, encoder=Encoder(), decoder=Decoder())


def pythae_trainer(model: Any, train_images: torch.Tensor, epochs: int, output_dir: str) -> Any:
    """pythae's ``BaseTrainer`` with Adam (lr 1e-3), batch 128, no evaluation set, on the CPU."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    config = BaseTrainerConfig(output_dir=output_dir, num_epochs=epochs, learning_rate=LR,
                               per_device_train_batch_size=BATCH_SIZE, optimizer_cls="Adam", no_cuda=True, seed=0)
    dataset = BaseDataset(train_images, torch.zeros(train_images.shape[0]))
    return BaseTrainer(model, train_dataset=dataset, training_config=config)
