"""The VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937): a conv encoder's grid of vectors snapped to the
nearest of K codes, decoded back; loss = reconstruction / data variance + codebook + commitment (eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.metrics import CodebookUsage
from lightning_ae.models.base import AutoencoderBase, Network, Stage
from lightning_ae.nets import ConvDecoder, ConvEncoder
from lightning_ae.nets.common import Init
from lightning_ae.quantizers import QuantizerOutput, VectorQuantizer


class VQVAE(AutoencoderBase):
    """Vector-quantized autoencoder with the sonnet/paper architecture by default.

    ``encode(x)`` gives the pre-quantization ``z_e`` ``(B, D, h, w)``; ``decode(z)`` quantizes and decodes (so
    ``forward`` reconstructs through the codebook); ``encode_to_indices`` / ``decode_indices`` go through code
    indices, for a prior over them (:class:`~lightning_ae.models.prior.PixelCNNPrior`). Logs ``{stage}/recon``,
    ``codebook``, ``commitment``, ``perplexity`` per batch and the epoch's :class:`CodebookUsage`
    (``{stage}/usage_perplexity``, ``usage_used_fraction``, ``usage_dead_codes``) for train and val.

    Args:
        encoder: maps images to ``(B, latent_dim, h, w)``; ``None`` builds the residual conv encoder.
        decoder: maps ``(B, latent_dim, h, w)`` to images; ``None`` builds the mirror decoder.
        latent_dim: code dimension ``D``.
        network: must be ``conv`` (the codes form a spatial grid).
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule).
        pixel_range: ``(low, high)`` of pixel values (sonnet uses ``(-0.5, 0.5)``).
        optimizer: optimizer factory (sonnet: Adam, lr 3e-4).
        lr_scheduler: optional scheduler factory.
        num_codes: codebook size ``K``.
        beta: commitment weight (eq. 3).
        ema: EMA codebook updates (Appendix A.1) instead of the codebook loss.
        decay: EMA decay.
        epsilon: Laplace smoothing of the EMA cluster sizes.
        kmeans_init: k-means initialisation of the codebook from the first training batch.
        kmeans_iters: Lloyd iterations of the k-means initialisation.
        restart_threshold: restart codes whose EMA usage per step falls below this (0: never).
        cosine: cosine-similarity code lookup.
        hidden_channels: channels of the default networks (sonnet: 128).
        res_channels: hidden channels of the residual blocks (sonnet: 32).
        num_res_blocks: residual blocks (sonnet: 2).
        data_variance: the reconstruction MSE is divided by this in the loss, as in sonnet's example, which
            divides by the training set's pixel variance (about 0.063 for CIFAR-10 in a pixel range of width 1;
            :meth:`ImageDataModule.pixel_variance` computes it). This sets the weight of eq. 3's first term
            against the commitment term: with 1.0 on CIFAR-10 the commitment is ~16x stronger than in sonnet and
            codes come into use far more slowly. The logged ``recon`` stays the plain MSE.
        weight_init: initialisation of the default networks: ``torch`` (PyTorch's defaults) or ``sonnet``
            (sonnet 2's: truncated normal with std ``1/sqrt(fan_in)``, zero biases), as in the sonnet example.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        latent_dim: int = 64,
        network: Network = "conv",
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_codes: int = 512,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_threshold: float = 0.0,
        cosine: bool = False,
        hidden_channels: int = 128,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        data_variance: float = 1.0,
        weight_init: Init = "torch",
    ) -> None:
        if not data_variance > 0:
            raise ValueError(f"data_variance must be > 0, got {data_variance}")
        if network != "conv":
            raise ValueError(f"network must be 'conv' for VQVAE (its codes form a spatial grid), got {network!r}")
        # read by default_networks() during the base __init__ (plain ints may be set before Module.__init__)
        self.arch = {"hidden_channels": hidden_channels, "res_channels": res_channels, "num_res_blocks": num_res_blocks,
                     "init": weight_init}
        super().__init__(encoder, decoder, latent_dim, network, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler)
        self.quantizer = VectorQuantizer(num_codes, latent_dim, beta, ema, decay, epsilon, kmeans_init, kmeans_iters,
                                         restart_threshold, cosine)
        self.data_variance = data_variance
        self.train_usage, self.val_usage, self.test_usage = (CodebookUsage(num_codes) for _ in range(3))

    def default_networks(self) -> tuple[nn.Module, nn.Module]:
        return (
            ConvEncoder(self.image_shape, self.latent_dim, spatial=True, **self.arch),
            ConvDecoder(self.image_shape, self.latent_dim, spatial=True, **self.arch),
        )

    # ---- the contract used by the prior and the callbacks --------------------------------------------------------
    def quantize(self, z_e: torch.Tensor, update: bool = False) -> QuantizerOutput:
        """Quantizes ``z_e`` ``(B, D, h, w)``; ``update`` lets the batch change the codebook (training only)."""
        return self.quantizer(z_e, update=update)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Quantizes ``z`` (a no-op for codebook vectors) and decodes it to images."""
        return self.decoder(self.quantize(z).quantized)

    def encode_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> code indices ``(B, h, w)`` (int64)."""
        return self.quantize(self.encode(self.check_images(x))).indices

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, h, w)`` -> images ``(B, C, H, W)`` in pixel space."""
        return self.output_to_image(self.decoder(self.quantizer.indices_to_codes(indices)))

    # ---- the step ------------------------------------------------------------------------------------------------
    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        q = self.quantize(self.encode(x), update=stage == "train")
        x_hat = self.decoder(q.quantized)
        recon = F.mse_loss(x_hat, x)
        self.usage(stage).update(q.indices)
        terms = {"loss": recon / self.data_variance + q.loss, "recon": recon, "codebook": q.codebook_loss,
                 "commitment": q.commitment_loss, "perplexity": q.perplexity}
        return terms, x_hat

    def usage(self, stage: Stage) -> CodebookUsage:
        """The :class:`CodebookUsage` metric of ``stage``."""
        return getattr(self, f"{stage}_usage")

    def _log_usage(self, stage: Stage) -> None:
        usage = self.usage(stage)
        if not usage.update_called:
            return
        values = usage.compute()  # already summed over ranks: sync_dist averages equal values (and stops the warning)
        self.log_dict({f"{stage}/usage_{k}": v for k, v in values.items()}, on_step=False, on_epoch=True,
                      sync_dist=True)
        usage.reset()

    def on_train_epoch_start(self) -> None:
        self.train_usage.reset()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.val_usage.reset()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.test_usage.reset()

    def on_train_epoch_end(self) -> None:
        self._log_usage("train")

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")
