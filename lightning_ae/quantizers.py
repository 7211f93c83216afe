"""The vector quantizer of the VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning",
arXiv 1711.00937), usable on its own as an ``nn.Module``.

Inputs are channel-first, ``(B, D, *spatial)`` (a conv encoder's grid of codes) or ``(N, D)``. The nearest code
is found from ``||z||^2 - 2 z.e + ||e||^2`` in fp32, even under bf16/fp16 autocast. Options: EMA codebook updates
(Appendix A.1), k-means initialisation, dead-code restarts and cosine-similarity lookup.

DDP: every statistic that changes the codebook (EMA counts and sums, k-means sums and counts) is all-reduced, and
every random choice (k-means seeds, restart vectors) is made on rank 0 and broadcast, so all ranks hold the
identical codebook after every step. Whether to synchronise is decided when the step runs
(:func:`lightning_ae.distributed.world_size`), because Lightning builds the module before the process group exists.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lightning_ae.distributed import world_size


class QuantizerOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns.

    Attributes:
        quantized: the nearest codes with a straight-through gradient, shaped like the input.
        indices: code indices, the input's shape without the code dimension (``(B, *spatial)`` or ``(N,)``).
        loss: the quantizer's total loss (``commitment_loss``, plus ``codebook_loss`` without EMA).
        codebook_loss: ``||sg[z_e] - e||^2`` (eq. 3, second term); without gradient when the codebook uses EMA.
        commitment_loss: ``beta * ||z_e - sg[e]||^2`` (eq. 3, third term).
        perplexity: ``exp(-sum p log p)`` of this batch's code usage (this rank's data only).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


# ---- pure functions ----------------------------------------------------------------------------------------------
def vq_losses(z_e: torch.Tensor, codes: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook and commitment losses of van den Oord et al. 2017, eq. 3 (means over elements, as in sonnet).

    Args:
        z_e: encoder outputs.
        codes: their nearest codebook vectors ``e``, same shape.
        beta: commitment weight (the paper uses 0.25).

    Returns:
        ``(||sg[z_e] - e||^2, beta * ||z_e - sg[e]||^2)``.

    >>> codebook, commitment = vq_losses(torch.zeros(1, 2), torch.ones(1, 2), beta=0.25)
    >>> codebook.item(), commitment.item()
    (1.0, 0.25)
    """
    return F.mse_loss(codes, z_e.detach()), beta * F.mse_loss(z_e, codes.detach())


def laplace_smoothed(cluster_size: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Laplace smoothing of EMA cluster sizes, ``(N_i + eps) / (n + K eps) * n`` (van den Oord et al. 2017,
    Appendix A.1, as in sonnet's ``VectorQuantizerEMA``), so no code divides by zero."""
    n = cluster_size.sum()
    return (cluster_size + epsilon) / (n + cluster_size.numel() * epsilon) * n


def ema_codebook(
    cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, decay: float,
    epsilon: float, step: int,
) -> torch.Tensor:
    """One EMA codebook step (van den Oord et al. 2017, Appendix A.1, eqs. 6-8), in place on the statistics.

    ``N_i <- decay N_i + (1 - decay) n_i``; ``m_i <- decay m_i + (1 - decay) sum_j z_ij``; ``e_i = m_i / N_i`` with
    Laplace-smoothed ``N_i``. The statistics start at zero and are read zero-debiased, divided by
    ``1 - decay**step`` (as sonnet's ``ExponentialMovingAverage``, whose VQ-VAE example the benchmarks follow):
    a code unused so far has ``m_i = 0`` and moves to the origin, where small early encoder outputs can pick it up.

    Args:
        cluster_size: EMA counts ``N`` ``(K,)``, updated in place.
        embed_sum: EMA sums ``m`` ``(K, D)``, updated in place.
        counts: this step's assignment counts ``n`` ``(K,)`` (over all ranks).
        sums: this step's sums of assigned encoder outputs ``(K, D)`` (over all ranks).
        decay: EMA decay ``gamma``.
        epsilon: Laplace smoothing constant.
        step: number of updates including this one (>= 1), for the zero-debiasing.

    Returns:
        The new codebook ``(K, D)``.
    """
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    bias = 1 - decay**step
    return (embed_sum / bias) / laplace_smoothed(cluster_size / bias, epsilon).unsqueeze(1)


def initial_codebook(num_codes: int, code_dim: int) -> torch.Tensor:
    """The codebook before training ``(K, D)``: uniform in ``+-sqrt(3 / D)`` (variance ``1/D``, codes of norm
    about 1), sonnet 2's initialiser of both its quantizers (``VarianceScaling(1.0, fan_in, uniform)`` of its
    ``[D, K]`` embeddings).

    With EMA the scale matters although the first update replaces every code: it decides how many codes the first
    batch's small encoder outputs pick (sonnet 1 used a unit-normal codebook). For a learned codebook it beats the
    ``+-1/K`` of the paper's PyTorch ports, whose near-zero codes collapse onto few indices (the README's VQ-VAE
    section has the figures).
    """
    bound = math.sqrt(3.0 / code_dim)
    return torch.empty(num_codes, code_dim).uniform_(-bound, bound)


def perplexity_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """``exp(-sum_k p_k log p_k)`` of code counts (1 when one code is used, K when all are used equally).

    >>> perplexity_of_counts(torch.tensor([5, 5, 0, 0])).item()  # two codes used equally often
    2.0
    """
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums ``tensor`` over ranks in place when running distributed; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_from_rank0(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrites ``tensor`` in place with rank 0's copy when running distributed; returns it."""
    if world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``x`` drawn on rank 0 (without replacement when there are enough) and broadcast."""
    idx = torch.randperm(x.shape[0], device=x.device)[:n] if x.shape[0] >= n else torch.randint(
        x.shape[0], (n,), device=x.device)
    return broadcast_from_rank0(x[idx].contiguous())


# ---- the module ------------------------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """Vector quantization layer with straight-through gradients (van den Oord et al. 2017, section 3.1).

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
    ) -> None:
        super().__init__()
        if num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        if code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, got {code_dim}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {kmeans_iters}")
        if restart_threshold < 0:
            raise ValueError(f"restart_threshold must be >= 0, got {restart_threshold}")
        self.num_codes, self.code_dim, self.beta = num_codes, code_dim, beta
        self.ema, self.decay, self.epsilon = ema, decay, epsilon
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.restart_threshold, self.cosine = restart_threshold, cosine
        self.codebook = nn.Parameter(initial_codebook(num_codes, code_dim), requires_grad=not ema)
        # EMA statistics (zero-started, read debiased): usage counts per step (kept without EMA too, for restarts)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", torch.zeros(num_codes, code_dim) if ema else torch.zeros(0))
        self.register_buffer("ema_steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    def usage_per_step(self) -> torch.Tensor:
        """Debiased EMA of each code's assignments per training step ``(K,)`` (zeros before any update)."""
        steps = int(self.ema_steps)
        return self.cluster_size / (1 - self.decay**steps) if steps else self.cluster_size.clone()

    # ---- lookup -------------------------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The codebook ``(K, D)`` in fp32 as used for lookup (l2-normalised with ``cosine``)."""
        codebook = self.codebook.float()
        return F.normalize(codebook, dim=1) if self.cosine else codebook

    def nearest(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` ``(N, D)`` (fp32).

        The distance is ``||z||^2 - 2 z.e + ||e||^2``; ``||z||^2`` is the same for every code of a row, so the
        argmin is taken over ``||e||^2 - 2 z.e`` (one fused ``addmm``).
        """
        return torch.addmm((codes * codes).sum(1), flat, codes.t(), alpha=-2.0).argmin(1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, *spatial)`` -> codes ``(B, D, *spatial)`` (or ``(N,)`` -> ``(N, D)``)."""
        codes = F.embedding(indices, self.codes())
        # a non-negative source dim: ONNX's legacy exporter writes an invalid Transpose for movedim(-1, 1)
        return codes.movedim(indices.ndim, 1) if indices.ndim > 1 else codes

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim < 2 or z.shape[1] != self.code_dim:
            raise ValueError(f"expected input (B, {self.code_dim}, ...) with code_dim={self.code_dim} channels, "
                             f"got {tuple(z.shape)}")
        flat = z.float().movedim(1, -1).reshape(-1, self.code_dim)
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
            flat = self._flatten(z)  # (N, D) fp32
            if update and not bool(self.initialized):
                self._kmeans(flat.detach())
            codes = self.codes()
            indices = self.nearest(flat.detach(), codes)
            quantized = F.embedding(indices, codes)  # (N, D)
            counts = torch.bincount(indices, minlength=self.num_codes)
            codebook_loss, commitment_loss = vq_losses(flat, quantized, self.beta)
            if self.ema:
                codebook_loss = codebook_loss.detach()
            loss = commitment_loss if self.ema else commitment_loss + codebook_loss
            if update:
                self._update(flat.detach(), indices, counts)
        quantized = flat + (quantized - flat).detach()  # straight-through: d quantized / d z_e = identity
        out_shape = (z.shape[0], *z.shape[2:], self.code_dim)
        quantized = quantized.reshape(out_shape).movedim(-1, 1).contiguous().to(z.dtype)
        return QuantizerOutput(quantized, indices.reshape(out_shape[:-1]), loss, codebook_loss, commitment_loss,
                               perplexity_of_counts(counts))

    # ---- codebook updates (training only) ------------------------------------------------------------------------
    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        stats = counts.float()
        self.ema_steps += 1
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
            stats = all_reduce_sum(torch.cat([stats.unsqueeze(1), sums], 1))  # one collective for both
            self.codebook.copy_(ema_codebook(self.cluster_size, self.embed_sum, stats[:, 0], stats[:, 1:],
                                             self.decay, self.epsilon, int(self.ema_steps)))
        else:
            stats = all_reduce_sum(stats.unsqueeze(1))
            self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        if self.restart_threshold > 0:
            self._restart(flat)

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor) -> None:
        """Re-initialises codes with EMA usage below ``restart_threshold`` from rank 0's current encoder outputs.

        ``cluster_size`` is identical on all ranks (reduced counts), so every rank selects the same dead codes. A
        restarted code gets usage ``restart_threshold``: it is restarted again next step unless it is used.
        """
        dead = self.usage_per_step() < self.restart_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        new = sample_rows(flat, n_dead)
        bias = 1 - self.decay ** int(self.ema_steps)
        self.codebook[dead] = new.to(self.codebook.dtype)
        self.cluster_size[dead] = self.restart_threshold * bias
        if self.ema:  # so that the debiased m_i / smoothed N_i is the new code
            smoothed = laplace_smoothed(self.cluster_size / bias, self.epsilon)
            self.embed_sum[dead] = new * smoothed[dead].unsqueeze(1) * bias

    @torch.no_grad()
    def _kmeans(self, flat: torch.Tensor) -> None:
        """Lloyd's k-means on the encoder outputs of all ranks: seeds from rank 0, sums and counts all-reduced."""
        centroids = sample_rows(flat, self.num_codes)
        for _ in range(self.kmeans_iters):
            indices = self.nearest(flat, F.normalize(centroids, dim=1) if self.cosine else centroids)
            stats = torch.zeros(self.num_codes, self.code_dim + 1, device=flat.device)
            stats[:, 0] = torch.bincount(indices, minlength=self.num_codes).float()
            stats[:, 1:].index_add_(0, indices, flat)
            stats = all_reduce_sum(stats)
            used = stats[:, 0] > 0
            centroids[used] = stats[used, 1:] / stats[used, :1]  # empty clusters keep their seed
        self.codebook.copy_(centroids)  # the EMA statistics start (again) from zero
        self.cluster_size.zero_()
        self.embed_sum.zero_()
        self.ema_steps.zero_()
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, code_dim={self.code_dim}, beta={self.beta}, ema={self.ema}, "
                f"decay={self.decay}, kmeans_init={self.kmeans_init}, restart_threshold={self.restart_threshold}, "
                f"cosine={self.cosine}")
