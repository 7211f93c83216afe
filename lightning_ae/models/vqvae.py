"""The VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937): a conv encoder's grid of vectors snapped to the
nearest of K codes, decoded back; loss = reconstruction / data variance + codebook + commitment (eq. 3)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from lightning_ae.batch import Batch
from lightning_ae.graphs import FunctionModule, Graph, output_shape, random_images
from lightning_ae.metrics import CodebookUsage
from lightning_ae.models.base import AutoencoderBase, LossOutput, Stage
from lightning_ae.nets.common import Init
from lightning_ae.quantizers import Quantizer, QuantizerOutput, VectorQuantizer, check_quantizer


class VQVAE(AutoencoderBase):
    """Vector-quantized autoencoder with the sonnet/paper architecture by default.

    ``encode(x)`` gives the pre-quantization latents ``z_e`` ``(B, D, h, w)``; ``decode(z)`` quantizes and decodes
    (so ``forward`` reconstructs through the codebook); ``encode_indices`` / ``decode_indices`` go through code
    indices, for a prior over them (:class:`~lightning_ae.models.prior.PixelCNNPrior`). Logs ``{stage}/recon``,
    ``codebook``, ``commitment``, ``perplexity`` and the quantizer's own terms (LFQ's entropies) per batch and, per
    epoch, the :class:`CodebookUsage` of train, val and test (``{stage}/codebook_perplexity``,
    ``codebook_used_fraction``, ``codebook_dead_codes``), declared once as the stage metric ``codebook``.

    Args:
        latent_dim: code dimension ``D``.
        network: ``conv`` (the paper's networks; ``hidden_channels``, ``res_channels``, ``num_res_blocks`` and
            ``weight_init`` size them) or ``ldm`` (the latent-diffusion / VQGAN networks, sized by
            ``network_options``): the latents form a spatial grid.
        hidden_channels: channels of the default networks (sonnet: 128).
        res_channels: hidden channels of the residual blocks (sonnet: 32).
        num_res_blocks: residual blocks (sonnet: 2).
        data_variance: divides the reconstruction MSE in the loss (eq. 3's first term), as sonnet's example does
            with the training pixel variance (:meth:`ImageDataModule.pixel_variance`); ``recon`` is logged undivided.
        weight_init: initialisation of the default networks: ``torch`` (PyTorch's defaults) or ``sonnet``
            (sonnet 2's: truncated normal with std ``1/sqrt(fan_in)``, zero biases).
        quantizer: any :class:`~lightning_ae.quantizers.Quantizer` (``VectorQuantizer``, ``FSQ``, ``LFQ``,
            ``ResidualVQ`` or one of your own; from YAML or the command line with ``class_path``) whose ``code_dim``
            is ``latent_dim``; it owns its options (codebook size, commitment weight ``beta``, EMA, k-means, restarts,
            levels...). ``None``: ``VectorQuantizer(code_dim=latent_dim)`` with its defaults (512 codes, EMA).
        **kwargs: the other arguments of :class:`~lightning_ae.models.AutoencoderBase` (sonnet's optimizer is Adam
            with lr 3e-4, its ``pixel_range`` ``(-0.5, 0.5)``).
    """

    def __init__(
        self,
        latent_dim: int = 64,
        network: Literal["conv", "ldm"] = "conv",
        hidden_channels: int = 128,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        data_variance: float = 1.0,
        weight_init: Init = "torch",
        quantizer: Quantizer | None = None,
        **kwargs: Any,
    ) -> None:
        if not data_variance > 0:
            raise ValueError(f"data_variance must be > 0, got {data_variance}")
        if network not in ("conv", "ldm"):
            raise ValueError(f"network must be 'conv' or 'ldm' for VQVAE (its latents form a spatial grid), got "
                             f"{network!r}")
        super().__init__(latent_dim=latent_dim, network=network, **kwargs)
        self.init_networks(spatial=True, hidden_channels=hidden_channels, res_channels=res_channels,
                           num_res_blocks=num_res_blocks, init=weight_init)
        self.quantizer = (VectorQuantizer(code_dim=latent_dim) if quantizer is None
                          else check_quantizer(quantizer, latent_dim))
        self.data_variance = data_variance
        self.declare_metric("codebook", self._new_codebook_usage, self._count_codes, stages=("train", "val", "test"))

    def _new_codebook_usage(self) -> CodebookUsage:
        return CodebookUsage(self.quantizer.codebook_size, self.quantizer.indices_per_position)

    @staticmethod
    def _count_codes(usage: CodebookUsage, batch: Batch, out: LossOutput) -> None:
        usage.update(out.latent)  # the code indices of the step

    def quantize(self, z_e: torch.Tensor, update: bool = False) -> QuantizerOutput:
        """Quantizes ``z_e`` ``(B, D, h, w)``; ``update`` lets the batch change the codebook (training only)."""
        return self.quantizer(z_e, update=update)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Quantizes ``z`` (a no-op for codebook vectors) and decodes it to images."""
        return self.decoder(self.quantize(z).quantized)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> code indices ``(B, h, w)`` (int64; ``(B, Q, h, w)`` for residual VQ)."""
        return self.quantize(self.encode(self.check_images(x))).indices

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, h, w)`` (``(B, Q, h, w)`` for residual VQ) -> images ``(B, C, H, W)``."""
        return self.output_to_image(self.decoder(self.quantizer.indices_to_codes(indices)))

    def export_graphs(self) -> list[Graph]:
        """``encoder`` images -> code ``indices`` (int64) and ``decoder`` indices -> ``images``."""
        images = random_images(self)
        grid = output_shape(self.encode_indices, images(1))
        size = self.quantizer.codebook_size
        return [
            Graph("encoder", FunctionModule(self, self.encode_indices), images, ("images",), ("indices",)),
            Graph("decoder", FunctionModule(self, self.decode_indices),
                  lambda n: (torch.randint(size, (n, *grid), device=self.device),), ("indices",), ("images",)),
        ]

    def codebook_usage(self, stage: Stage) -> CodebookUsage:
        """The :class:`CodebookUsage` metric counting the codes of ``stage`` in the current epoch."""
        return self.stage_metric(stage, "codebook")  # type: ignore[return-value]

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        q = self.quantize(self.encode(x), update=stage == "train")
        x_hat = self.decoder(q.quantized)
        recon = F.mse_loss(x_hat, x)
        return LossOutput(recon / self.data_variance + q.loss, x_hat, {
            "recon": recon, "codebook": q.codebook_loss, "commitment": q.commitment_loss, "perplexity": q.perplexity,
            **q.terms}, latent=q.indices, decoded=x_hat)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """As :meth:`AutoencoderBase.predict_step`, plus the code ``"indices"`` ``(B, h, w)``."""
        out = super().predict_step(batch, batch_idx, dataloader_idx)
        out["indices"] = self.quantize(out["latent"]).indices
        return out
