"""Reconstruction yardsticks on a whole split, for every autoencoder: per-image PSNR, SSIM, LPIPS and Fréchet
distances (rFID on Inception features, or FD on any feature network), DDP-correct (torchmetrics states summed
over ranks), logged by ``validate`` / ``test`` (and every ``every_n_epochs`` validation of ``fit``).

The protocol (what the numbers mean, and what to report beside them): every image of the split (or the first
``max_images``), at the data's resolution, each reconstructed deterministically (``predict_step``: a VAE decodes
its posterior mean), pixels mapped from the model's ``pixel_range`` to ``[0, 1]`` and clamped; SSIM with an 11x11
Gaussian window (torchmetrics' defaults), LPIPS (VGG16, v0.1) on ``[-1, 1]``, Inception features after a bilinear
resize to 299x299. A Fréchet distance compares the split's real images with their reconstructions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric

from lightning_ae.batch import Batch
from lightning_ae.distributed import log_global
from lightning_ae.metrics import FrechetDistance, MeanScore

Yardstick = Literal["psnr", "ssim", "lpips", "rfid", "fd"]
YARDSTICKS: tuple[str, ...] = ("psnr", "ssim", "lpips", "rfid", "fd")


class PerImagePSNR(torch.nn.Module):
    """``10 log10(1 / MSE)`` of each image pair in ``[0, 1]``: ``(B,)`` dB (``score(fake, real)``)."""

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        mse = (fake - real).pow(2).flatten(1).mean(1).clamp(min=1e-10)
        return -10.0 * torch.log10(mse)


def build_yardstick(name: str, lpips_vgg: str | None = None, lpips_heads: str | None = None,
                    inception_weights: str | None = None, feature_network: Any = None,
                    image_shape: Sequence[int] = (3, 32, 32)) -> Metric:
    """The :class:`~torchmetrics.Metric` of one yardstick (``psnr`` per image, ``ssim``, ``lpips``, ``rfid``,
    ``fd``); the weight files are read here, so a missing one fails before any work (one line naming it)."""
    from lightning_ae import perceptual

    if name == "psnr":
        return MeanScore(PerImagePSNR())
    if name == "ssim":
        from torchmetrics.image import StructuralSimilarityIndexMeasure

        return StructuralSimilarityIndexMeasure(data_range=1.0)
    if name == "lpips":
        return MeanScore(perceptual.LPIPS.from_files(lpips_vgg, lpips_heads))
    if name == "rfid":
        return FrechetDistance(perceptual.InceptionV3Features.from_file(inception_weights),
                               perceptual.InceptionV3Features.FEATURES)
    if name == "fd":
        if feature_network is None:
            raise ValueError("the 'fd' yardstick needs feature_network (a model folder, checkpoint or TorchScript "
                             "file whose features it measures; 'rfid' is the Inception one)")
        network = perceptual.load_feature_network(feature_network)
        with torch.no_grad():
            dim = network(torch.zeros(2, *image_shape)).shape[1]
        return FrechetDistance(network, dim)
    raise ValueError(f"unknown yardstick {name!r}; known: {list(YARDSTICKS)}")


def _update(metric: Metric, fake: torch.Tensor, real: torch.Tensor) -> None:
    if isinstance(metric, FrechetDistance):
        metric.update(real, fake)
    else:  # a score of (prediction, target)
        metric.update(fake, real)


class ReconstructionMetrics(Callback):
    """Scores reconstructions of the whole val/test split and logs ``{stage}/psnr_per_image``, ``{stage}/ssim``,
    ``{stage}/lpips``, ``{stage}/rfid`` and ``{stage}/<fd_name>`` (see the module docstring for the protocol).

    Every variant already logs ``{stage}/psnr``, the PSNR of the split's mean squared error; ``psnr_per_image`` is
    the mean of per-image PSNRs, what image-tokenizer papers report.

    Args:
        metrics: the yardsticks: ``psnr`` (per image), ``ssim``, ``lpips`` (needs VGG16 and the LPIPS heads),
            ``rfid`` (needs the FID Inception weights), ``fd`` (needs ``feature_network``).
        every_n_epochs: validation epochs of ``fit`` that are scored (``validate`` and ``test`` always are).
        max_images: score only the first ``max_images`` of the split (all ranks together); ``None``: all.
        lpips_vgg: torchvision's ``vgg16-397923af.pth`` (default: ``$TORCH_HOME/hub/checkpoints``).
        lpips_heads: the ``lpips`` package's ``weights/v0.1/vgg.pth`` (default: found in the installed package).
        inception_weights: ``pt_inception-2015-12-05-6726825d.pth`` (default: ``$TORCH_HOME/hub/checkpoints``).
        feature_network: the ``fd`` network: a model folder or checkpoint with ``features`` (the CIFAR-10
            classifier of ``benchmarks/``), or a TorchScript file.
        fd_name: the logged name of ``fd`` (``fd_c10`` for the CIFAR-10 classifier).
    """

    def __init__(self, metrics: list[Yardstick] | None = None, every_n_epochs: int = 1, max_images: int | None = None,
                 lpips_vgg: str | None = None, lpips_heads: str | None = None, inception_weights: str | None = None,
                 feature_network: str | None = None, fd_name: str = "fd") -> None:
        super().__init__()
        self.names = list(metrics if metrics is not None else ["psnr", "ssim"])
        unknown = [m for m in self.names if m not in YARDSTICKS]
        if unknown or not self.names:
            raise ValueError(f"metrics must be a non-empty list of {list(YARDSTICKS)}, got {self.names}")
        if every_n_epochs < 1 or (max_images is not None and max_images < 2):
            raise ValueError(f"every_n_epochs must be >= 1 and max_images >= 2, got {every_n_epochs}, {max_images}")
        self.every_n_epochs, self.max_images, self.fd_name = every_n_epochs, max_images, fd_name
        self.files = {"lpips_vgg": lpips_vgg, "lpips_heads": lpips_heads, "inception_weights": inception_weights,
                      "feature_network": feature_network}
        self.metrics: dict[str, Metric] = {}
        self._active, self._seen = False, 0

    def logged_name(self, name: str) -> str:
        return {"psnr": "psnr_per_image", "fd": self.fd_name}.get(name, name)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Builds the metrics, reading their weight files (so a missing file stops the run before any work)."""
        if not callable(getattr(pl_module, "encode_batch", None)):
            raise ValueError(f"ReconstructionMetrics scores autoencoders; {type(pl_module).__name__} reconstructs "
                             "nothing")
        if not self.metrics:
            shape = getattr(pl_module, "image_shape", (3, 32, 32))
            self.metrics = {n: build_yardstick(n, image_shape=shape, **self.files) for n in self.names}

    def _start(self, trainer: Trainer, pl_module: LightningModule, scored: bool) -> None:
        self._active, self._seen = scored and not trainer.sanity_checking, 0
        for metric in self.metrics.values():
            metric.to(pl_module.device).reset()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == "fit"
        self._start(trainer, pl_module, not fitting or (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module, True)

    def _batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._active:
            return
        real = Batch.of(batch).images
        if self.max_images is not None:
            real = real[: max(math.ceil(self.max_images / max(trainer.world_size, 1)) - self._seen, 0)]
        if real.shape[0] == 0:
            return
        fake = pl_module.predict_step(batch, batch_idx)["reconstruction"][: real.shape[0]]
        low, high = pl_module.pixel_range
        real, fake = (((t.float() - low) / (high - low)).clamp(0, 1) for t in (real, fake))
        for metric in self.metrics.values():
            _update(metric, fake, real)
        self._seen += real.shape[0]

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(trainer, pl_module, batch, batch_idx)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(trainer, pl_module, batch, batch_idx)

    def _end(self, pl_module: LightningModule, stage: str) -> None:
        if not self._active:
            return
        values = {f"{stage}/{self.logged_name(n)}": m.compute() for n, m in self.metrics.items()}
        log_global(pl_module, values)  # every rank computed the same reduced value
        self._active = False

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end(pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end(pl_module, "test")
