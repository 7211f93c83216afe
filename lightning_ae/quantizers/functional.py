"""Pure functions shared by the quantizers: the VQ-VAE losses and EMA codebook of van den Oord et al. 2017
(arXiv 1711.00937), code counting, the two gradient estimators (straight-through and the rotation trick of
Fifty et al. 2024, arXiv 2410.06424) and the DDP collectives (no-ops without a process group, checked when called).

None of them synchronises with the host: counts are scatter-adds (``torch.bincount`` reads the maximum index back
on a GPU), and every shape is known without looking at tensor values.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

from lightning_ae.distributed import world_size


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
    epsilon: float, step: int | torch.Tensor,
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
        step: number of updates including this one (>= 1), for the zero-debiasing (a tensor: no host sync).

    Returns:
        The new codebook ``(K, D)``.
    """
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    bias = 1 - decay**step
    return (embed_sum / bias) / laplace_smoothed(cluster_size / bias, epsilon).unsqueeze(-1)


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


def count_codes(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each of ``num_codes`` codes occurs in ``indices`` (any shape, values in ``[0, num_codes)``), as
    int64 ``(num_codes,)``; a scatter-add, so unlike ``torch.bincount`` it never reads a value back on a GPU.

    >>> count_codes(torch.tensor([[0, 2], [2, 2]]), 4).tolist()
    [1, 0, 3, 0]
    """
    flat = indices.reshape(-1)
    return torch.zeros(num_codes, dtype=torch.long, device=indices.device).scatter_add_(0, flat, torch.ones_like(flat))


def perplexity_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """``exp(-sum_k p_k log p_k)`` of code counts over the last dimension (1 when one code is used, K when all
    are used equally); one value per row of a ``(..., K)`` tensor.

    >>> perplexity_of_counts(torch.tensor([5, 5, 0, 0])).item()  # two codes used equally often
    2.0
    """
    p = counts.float() / counts.sum(-1, keepdim=True).clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum(-1))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension, ``-sum_k p_k log p_k`` (``0 log 0 = 0``, with a finite
    gradient there: the log's argument is clamped to the smallest normal number).

    >>> round(entropy(torch.tensor([0.5, 0.5, 0.0])).item(), 4)  # log 2
    0.6931
    """
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)


def straight_through(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``codes`` in the forward pass, the identity gradient to ``z`` in the backward pass (van den Oord et al. 2017,
    section 3.1; Bengio et al. 2013): ``z + sg[codes - z]``."""
    return z + (codes - z).detach()


def rotation_trick(z: torch.Tensor, codes: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The rotation trick (Fifty et al. 2024, arXiv 2410.06424, eq. 3 with the Householder form of section 4.2):
    ``q~ = sg[||q|| / ||z||] * sg[R] z``, where ``R`` is the rotation taking ``z / ||z||`` to ``q / ||q||`` in the
    plane they span, ``R = I - 2 r r^T + 2 q^ z^^T`` with ``r = (z^ + q^) / ||z^ + q^||``.

    The forward value is ``codes`` (``R`` maps ``z`` onto the direction of ``q``, the factor restores its norm); the
    gradient reaching ``z`` is ``||q|| / ||z|| * R^T g`` for the output gradient ``g``: rotated and rescaled rather
    than copied as by the straight-through estimator. Rows of ``z`` and ``codes`` ``(N, D)`` are vectors.

    Examples:
        >>> z, q = torch.tensor([[3.0, 0.0]], requires_grad=True), torch.tensor([[0.0, 2.0]])
        >>> out = rotation_trick(z, q)
        >>> [round(v, 4) for v in out[0].tolist()]
        [0.0, 2.0]
        >>> out.backward(torch.tensor([[0.0, 1.0]]))
        >>> [round(v, 4) for v in z.grad[0].tolist()]  # (0, 1) rotated back onto the x axis, times 2/3
        [0.6667, 0.0]
    """
    z_norm = z.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = codes.norm(dim=-1, keepdim=True)
    u = (z / z_norm).detach()
    q_hat = (codes / q_norm.clamp_min(eps)).detach()
    r = F.normalize(u + q_hat, dim=-1, eps=eps).detach()
    rotated = z - 2 * (z * r).sum(-1, keepdim=True) * r + 2 * (z * u).sum(-1, keepdim=True) * q_hat
    return rotated * (q_norm / z_norm).detach()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums ``tensor`` over ranks in place when running distributed; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor) through which gradients flow: the backward pass sums the
    output gradients of all ranks, so a loss that is a function of the global sum, averaged over ranks by DDP,
    gets the gradient it would get in one process holding all the data. ``tensor`` itself without a process group.
    """
    return dist_fn.all_reduce(tensor) if world_size() > 1 else tensor


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
