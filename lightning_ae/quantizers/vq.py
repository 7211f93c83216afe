"""The vector quantizer of the VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning",
arXiv 1711.00937), usable on its own as an ``nn.Module``.

Inputs are channel-first, ``(B, D, *spatial)`` (a conv encoder's grid of codes) or ``(N, D)``. The nearest code
is found from ``||z||^2 - 2 z.e + ||e||^2`` in fp32, even under bf16/fp16 autocast. Options: EMA codebook updates
(Appendix A.1), k-means initialisation, dead-code restarts, cosine-similarity lookup, a low-dimensional factorized
lookup (ViT-VQGAN, Yu et al. 2021, arXiv 2110.04627, section 3.2) and the rotation trick (Fifty et al. 2024) in
place of the straight-through gradient.

DDP: every statistic that changes the codebook (EMA counts and sums, k-means sums and counts) is all-reduced, and
every random choice (k-means seeds, restart vectors) is made on rank 0 and broadcast, so all ranks hold the
identical codebook after every step. Whether to synchronise is decided when the step runs
(:func:`lightning_ae.distributed.world_size`), because Lightning builds the module before the process group exists.

Host synchronisations: none per step once the codebook is initialised (with ``kmeans_init``, one per training
step until the k-means has run; restarts are chosen with ``torch.where`` on the device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae.quantizers.base import Quantizer, QuantizerOutput
from lightning_ae.quantizers.functional import (
    all_reduce_sum,
    count_codes,
    ema_codebook,
    initial_codebook,
    laplace_smoothed,
    perplexity_of_counts,
    rotation_trick,
    sample_rows,
    straight_through,
    vq_losses,
)


def check_vq_arguments(num_codes: int, code_dim: int, beta: float, decay: float, epsilon: float, kmeans_iters: int,
                       restart_threshold: float) -> None:
    """Raises a ``ValueError`` naming the first argument of a vector quantizer that is out of range."""
    checks = [("num_codes", num_codes, num_codes >= 1, ">= 1"), ("code_dim", code_dim, code_dim >= 1, ">= 1"),
              ("beta", beta, beta >= 0, ">= 0"), ("decay", decay, 0.0 <= decay < 1.0, "in [0, 1)"),
              ("epsilon", epsilon, epsilon > 0, "> 0"), ("kmeans_iters", kmeans_iters, kmeans_iters >= 1, ">= 1"),
              ("restart_threshold", restart_threshold, restart_threshold >= 0, ">= 0")]
    for name, value, ok, rule in checks:
        if not ok:
            raise ValueError(f"{name} must be {rule}, got {value}")


def forget_initialized(module: VectorQuantizer, incompatible_keys: object) -> None:
    """After ``load_state_dict``: the loaded ``initialized`` buffer decides again whether k-means runs."""
    module._known_initialized = not module.kmeans_init


class VectorQuantizer(Quantizer):
    """Vector quantization layer (van den Oord et al. 2017, section 3.1).

    Args:
        num_codes: codebook size ``K``.
        code_dim: code dimension ``D`` (the input's channel dimension).
        beta: commitment weight (eq. 3; 0.25 in the paper).
        ema: update the codebook with exponential moving averages (Appendix A.1) instead of the codebook loss.
        decay: EMA decay (0.99 in the paper), also used for the usage statistics that drive restarts.
        epsilon: Laplace smoothing of the EMA cluster sizes.
        kmeans_init: initialise the codebook by k-means on the first training batch's encoder outputs.
        kmeans_iters: Lloyd iterations of that k-means.
        restart_threshold: codes whose EMA usage (assignments per step) falls below this are re-initialised from
            current encoder outputs at each training step; 0 disables restarts.
        cosine: look codes up by cosine similarity (l2-normalised codes and inputs; the quantized outputs are
            the normalised codes).
        codebook_dim: factorized codes (ViT-VQGAN, section 3.2): the input is projected to this dimension by a
            linear map, looked up there (with ``cosine``, l2-normalised as in ViT-VQGAN) and projected back;
            ``None`` (or ``code_dim``) looks up in the input space.
        rotation_trick: pass gradients through the quantizer with the rotation trick (Fifty et al. 2024, arXiv
            2410.06424, eq. 3) instead of the straight-through estimator.
    """

    def __init__(
        self,
        num_codes: int = 512,
        code_dim: int = 64,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_threshold: float = 0.0,
        cosine: bool = False,
        codebook_dim: int | None = None,
        rotation_trick: bool = False,
    ) -> None:
        super().__init__()
        check_vq_arguments(num_codes, code_dim, beta, decay, epsilon, kmeans_iters, restart_threshold)
        if codebook_dim is not None and codebook_dim < 1:
            raise ValueError(f"codebook_dim must be >= 1 (or None), got {codebook_dim}")
        self.num_codes, self.code_dim, self.beta = num_codes, code_dim, beta
        self.ema, self.decay, self.epsilon = ema, decay, epsilon
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.restart_threshold, self.cosine, self.rotation_trick = restart_threshold, cosine, rotation_trick
        self.codebook_dim = code_dim if codebook_dim is None else codebook_dim
        factorized = self.codebook_dim != code_dim
        self.project_in = nn.Linear(code_dim, self.codebook_dim) if factorized else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, code_dim) if factorized else nn.Identity()
        self.codebook = nn.Parameter(initial_codebook(num_codes, self.codebook_dim), requires_grad=not ema)
        # EMA statistics (zero-started, read debiased): usage counts per step (kept without EMA too, for restarts)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", torch.zeros(num_codes, self.codebook_dim) if ema else torch.zeros(0))
        self.register_buffer("ema_steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self._known_initialized = not kmeans_init  # host-side copy of `initialized`: no sync once it is True
        self.register_load_state_dict_post_hook(forget_initialized)

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def usage_per_step(self) -> torch.Tensor:
        """Debiased EMA of each code's assignments per training step ``(K,)`` (zeros before any update)."""
        bias = 1 - self.decay**self.ema_steps
        return torch.where(self.ema_steps > 0, self.cluster_size / bias, self.cluster_size)

    # ---- lookup -------------------------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The codebook ``(K, codebook_dim)`` in fp32 as used for lookup (l2-normalised with ``cosine``)."""
        codebook = self.codebook.float()
        return F.normalize(codebook, dim=1) if self.cosine else codebook

    def nearest(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` ``(N, codebook_dim)`` (fp32).

        The distance is ``||z||^2 - 2 z.e + ||e||^2``; ``||z||^2`` is the same for every code of a row, so the
        argmin is taken over ``||e||^2 - 2 z.e`` (one fused ``addmm``).
        """
        return torch.addmm((codes * codes).sum(1), flat, codes.t(), alpha=-2.0).argmin(1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, *spatial)`` -> codes ``(B, D, *spatial)`` (or ``(N,)`` -> ``(N, D)``)."""
        return self.codes_to_channels_first(self.project_out(F.embedding(indices, self.codes())), indices)

    def to_lookup_space(self, flat: torch.Tensor) -> torch.Tensor:
        """Input rows ``(N, D)`` -> the rows that are looked up ``(N, codebook_dim)`` (projected, normalised)."""
        flat = self.project_in(flat)
        return F.normalize(flat, dim=1) if self.cosine else flat

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """Quantizes ``z`` ``(B, D, *spatial)`` or ``(N, D)``.

        Args:
            z: encoder outputs ``z_e``.
            update: change the codebook (k-means init, EMA, restarts) from this batch; default ``self.training``.
                Evaluation never changes the codebook.
        """
        update = self.training if update is None else update
        with torch.autocast(z.device.type, enabled=False):
            flat = self.to_lookup_space(self.flatten(z))  # (N, codebook_dim) fp32
            if update and not self._is_initialized():
                self._kmeans(flat.detach())
            codes = self.codes()
            indices = self.nearest(flat.detach(), codes)
            quantized = F.embedding(indices, codes)  # (N, codebook_dim)
            counts = count_codes(indices, self.num_codes)
            codebook_loss, commitment_loss = vq_losses(flat, quantized, self.beta)
            if self.ema:
                codebook_loss = codebook_loss.detach()
            loss = commitment_loss if self.ema else commitment_loss + codebook_loss
            if update:
                self._update(flat.detach(), indices, counts)
            estimator = rotation_trick if self.rotation_trick else straight_through
            quantized = self.project_out(estimator(flat, quantized))
        return QuantizerOutput(self.unflatten(quantized, z), self.rows_to_index_grid(indices, z), loss,
                               codebook_loss, commitment_loss, perplexity_of_counts(counts), {})

    def _is_initialized(self) -> bool:
        if not self._known_initialized:  # reads the buffer (a host sync) only until the k-means has run
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    # ---- codebook updates (training only) ------------------------------------------------------------------------
    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        stats = counts.float()
        self.ema_steps += 1
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
            stats = all_reduce_sum(torch.cat([stats.unsqueeze(1), sums], 1))  # one collective for both
            self.codebook.copy_(ema_codebook(self.cluster_size, self.embed_sum, stats[:, 0], stats[:, 1:],
                                             self.decay, self.epsilon, self.ema_steps))
        else:
            stats = all_reduce_sum(stats.unsqueeze(1))
            self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        if self.restart_threshold > 0:
            self._restart(flat)

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor) -> None:
        """Re-initialises codes with EMA usage below ``restart_threshold`` from rank 0's current encoder outputs.

        ``cluster_size`` is identical on all ranks (reduced counts), so every rank selects the same dead codes. A
        restarted code gets usage ``restart_threshold``: it is restarted again next step unless it is used. One
        candidate row per code is drawn and ``torch.where`` keeps the live codes, so the step never asks the host
        how many codes are dead.
        """
        dead = (self.usage_per_step() < self.restart_threshold).unsqueeze(1)
        new = sample_rows(flat, self.num_codes)
        bias = 1 - self.decay**self.ema_steps
        self.codebook.copy_(torch.where(dead, new.to(self.codebook.dtype), self.codebook))
        self.cluster_size.copy_(torch.where(dead[:, 0], self.restart_threshold * bias, self.cluster_size))
        if self.ema:  # so that the debiased m_i / smoothed N_i is the new code
            smoothed = laplace_smoothed(self.cluster_size / bias, self.epsilon)
            self.embed_sum.copy_(torch.where(dead, new * smoothed.unsqueeze(1) * bias, self.embed_sum))

    @torch.no_grad()
    def _kmeans(self, flat: torch.Tensor) -> None:
        """Lloyd's k-means on the encoder outputs of all ranks: seeds from rank 0, sums and counts all-reduced."""
        centroids = sample_rows(flat, self.num_codes)
        for _ in range(self.kmeans_iters):
            indices = self.nearest(flat, F.normalize(centroids, dim=1) if self.cosine else centroids)
            stats = torch.zeros(self.num_codes, self.codebook_dim + 1, device=flat.device)
            stats[:, 0] = count_codes(indices, self.num_codes).float()
            stats[:, 1:].index_add_(0, indices, flat)
            stats = all_reduce_sum(stats)
            used = stats[:, :1] > 0
            centroids = torch.where(used, stats[:, 1:] / stats[:, :1].clamp_min(1), centroids)  # empty: keep seed
        self.codebook.copy_(centroids)  # the EMA statistics start (again) from zero
        self.cluster_size.zero_()
        self.embed_sum.zero_()
        self.ema_steps.zero_()
        self.initialized.fill_(True)
        self._known_initialized = True

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, code_dim={self.code_dim}, codebook_dim={self.codebook_dim}, "
                f"beta={self.beta}, ema={self.ema}, decay={self.decay}, kmeans_init={self.kmeans_init}, "
                f"restart_threshold={self.restart_threshold}, cosine={self.cosine}, "
                f"rotation_trick={self.rotation_trick}")
