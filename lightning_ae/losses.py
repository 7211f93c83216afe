"""Loss terms as pure functions of tensors: no modules, no state. Each docstring names its source.

Reductions: the plain autoencoders' reconstruction terms are means over every element (so regularizer
weights are comparable across image sizes); likelihood terms of probabilistic models are sums over pixels
(nats per image), averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

ReconLoss = Literal["mse", "bce"]


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, kind: ReconLoss) -> torch.Tensor:
    """Mean reconstruction error per element.

    Args:
        output: decoder output ``(B, ...)``: the reconstruction for ``mse``, logits for ``bce``.
        target: images ``(B, ...)``; in [0, 1] for ``bce``.
        kind: ``mse`` — mean squared error; ``bce`` — binary cross-entropy of Bernoulli logits (the
            cross-entropy reconstruction of Vincent et al. 2010, eq. 2), computed stably from logits.

    Returns:
        A scalar tensor.

    >>> reconstruction_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 3.0]]]]), "mse").item()
    5.0
    """
    if output.shape != target.shape:
        raise ValueError(f"output shape {tuple(output.shape)} does not match target shape {tuple(target.shape)}")
    if kind == "mse":
        return F.mse_loss(output, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(output, target)
    raise ValueError(f"reconstruction must be 'mse' or 'bce', got {kind!r}")


# ---- sparse autoencoders --------------------------------------------------------------------------------------
def l1_sparsity(code: torch.Tensor) -> torch.Tensor:
    """Mean absolute activation of a code, the L1 sparsity penalty ``mean |h|`` (weighted by lambda by the caller).

    The L1 penalty on hidden activations of sparse coding / sparse autoencoders (Ng, *Sparse autoencoder*,
    CS294A lecture notes, 2011, sec. 2.3 mentions it as the alternative to the KL penalty).

    Args:
        code: activations ``(B, d)``.

    Returns:
        A scalar tensor: ``(1 / (B d)) sum_{b,j} |h_bj|``.

    >>> l1_sparsity(torch.tensor([[1.0, -3.0], [0.0, 0.0]])).item()
    1.0
    """
    return code.abs().mean()


def kl_sparsity(code: torch.Tensor, rho: float, eps: float = 1e-6) -> torch.Tensor:
    """KL sparsity penalty ``sum_j KL(rho || rho_hat_j)`` (Ng, *Sparse autoencoder*, CS294A notes, sec. 2.3).

    ``rho_hat_j = (1/B) sum_b h_bj`` is the batch-mean activation of unit ``j`` and
    ``KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat))``.

    Args:
        code: sigmoid activations ``(B, d)`` in (0, 1).
        rho: target mean activation, in (0, 1).
        eps: clamp of ``rho_hat`` into ``[eps, 1 - eps]`` so saturated units give a finite penalty.

    Returns:
        A scalar tensor (a sum over the ``d`` units, not a mean).
    """
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    rho_hat = code.mean(dim=0).clamp(eps, 1.0 - eps)
    kl = rho * torch.log(rho / rho_hat) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - rho_hat))
    return kl.sum()


def topk_sparsify(code: torch.Tensor, k: int) -> torch.Tensor:
    """The k-sparse bottleneck: keeps the ``k`` largest activations of each sample, zeroes the rest.

    Makhzani & Frey, *k-Sparse Autoencoders*, 2013, Algorithm 1 (``z = W x + b``; ``Gamma = supp_k(z)``;
    ``z_{Gamma^c} = 0``). The output is ``code * mask``, so the gradient flows through the kept units
    unchanged and is zero for the others.

    Args:
        code: activations ``(B, d)``.
        k: units kept per sample, ``1 <= k <= d``.

    Returns:
        ``(B, d)`` with exactly ``k`` entries per row taken from ``code`` (the others 0).

    >>> topk_sparsify(torch.tensor([[0.1, 0.9, 0.5]]), k=2)
    tensor([[0.0000, 0.9000, 0.5000]])
    """
    if not 1 <= k <= code.shape[-1]:
        raise ValueError(f"k must be in [1, {code.shape[-1]}] (the code size), got {k}")
    indices = code.topk(k, dim=-1).indices
    mask = torch.zeros_like(code).scatter_(-1, indices, 1.0)
    return code * mask


# ---- contractive autoencoders ---------------------------------------------------------------------------------
def contractive_penalty_exact(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Frobenius norm ``||J_f(x)||_F^2`` of the encoder Jacobian, computed exactly.

    Rifai et al., *Contractive Auto-Encoders*, ICML 2011, eq. 3 (the penalty) — here for any encoder: the
    full Jacobian of each sample is built with ``torch.func.vmap(torch.func.jacrev(f))`` (one vector-Jacobian
    product per code unit), inside the autograd graph, so the result is differentiable with respect to the
    encoder's parameters. Cost grows with the code size: use it for small codes. The encoder must treat the
    samples of a batch independently (no batch statistics).

    Args:
        encoder: maps ``(B, *shape)`` to codes ``(B, *code_shape)``.
        x: inputs ``(B, *shape)``.

    Returns:
        ``(B,)`` squared Frobenius norms.
    """

    def single(sample: torch.Tensor) -> torch.Tensor:
        return encoder(sample.unsqueeze(0)).squeeze(0)

    jacobians = torch.func.vmap(torch.func.jacrev(single))(x)  # (B, *code_shape, *shape)
    return jacobians.pow(2).flatten(1).sum(dim=1)


def contractive_penalty_sigmoid(code: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||J_f(x)||_F^2`` in closed form for a sigmoid layer ``h = sigmoid(W x + b)``.

    Rifai et al., *Contractive Auto-Encoders*, ICML 2011, eq. 4:
    ``||J_f(x)||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2``.

    Args:
        code: the layer's output ``h`` ``(B, d)``.
        weight: its weight ``W`` ``(d, D)``.

    Returns:
        ``(B,)`` squared Frobenius norms.
    """
    if weight.ndim != 2 or weight.shape[0] != code.shape[-1]:
        raise ValueError(f"weight must be (d, D) with d={code.shape[-1]} (the code size), got {tuple(weight.shape)}")
    return (code * (1.0 - code)).pow(2) @ weight.pow(2).sum(dim=1)


def contractive_penalty_stochastic(
    code: torch.Tensor, x: torch.Tensor, num_projections: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unbiased random-projection estimate of the per-sample ``||J_f(x)||_F^2``, one VJP per projection.

    Rifai et al. 2011, eq. 3, estimated with Hutchinson's identity ``||J||_F^2 = tr(J J^T) = E_v ||J^T v||^2``
    for ``v`` with ``E[v v^T] = I``; ``v`` is Rademacher (lower variance than Gaussian). ``J^T v`` is one
    vector-Jacobian product of the already computed code, taken with ``create_graph=True`` so that the penalty
    is differentiated with the rest of the loss. Works for any encoder (convolutional, large codes) that treats
    the samples of a batch independently.

    Args:
        code: the encoder output ``f(x)`` ``(B, *code_shape)``, computed from ``x`` in the autograd graph.
        x: the encoder input ``(B, *shape)``, with ``requires_grad=True``.
        num_projections: random vectors averaged per sample (each costs one extra backward pass).
        generator: optional random generator for the projections.

    Returns:
        ``(B,)`` estimates of the squared Frobenius norms.
    """
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    if not x.requires_grad:
        raise ValueError("x must require grad and code must be computed from it (x.requires_grad_() before encoding)")
    total = code.new_zeros(code.shape[0])
    for _ in range(num_projections):
        v = torch.randint(0, 2, code.shape, device=code.device, generator=generator).to(code.dtype) * 2 - 1
        (jtv,) = torch.autograd.grad(code, x, grad_outputs=v, create_graph=True)
        total = total + jtv.pow(2).flatten(1).sum(dim=1)
    return total / num_projections



# ---- adversarial training (VQGAN, latent diffusion's autoencoders) -------------------------------------------
AdversarialLoss = Literal["hinge", "vanilla", "lsgan"]


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: AdversarialLoss) -> torch.Tensor:
    """The discriminator's loss on its logits for real and reconstructed images (any shapes; PatchGAN maps).

    * ``hinge`` (Lim & Ye 2017; taming's ``hinge_d_loss``): ``1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])``;
    * ``vanilla`` (Goodfellow et al. 2014, eq. 1; taming's ``vanilla_d_loss``):
      ``1/2 (E[softplus(-D(x))] + E[softplus(D(x_hat))])``, the binary cross-entropy of the logits;
    * ``lsgan`` (Mao et al. 2017, eq. 2 with a=0, b=1): ``1/2 (E[(D(x) - 1)^2] + E[D(x_hat)^2])``.

    >>> discriminator_loss(torch.tensor([2.0, 0.0]), torch.tensor([-0.5]), "hinge").item()
    0.5
    """
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    if kind == "vanilla":
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    if kind == "lsgan":
        return 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean())
    raise ValueError(f"adversarial loss must be 'hinge', 'vanilla' or 'lsgan', got {kind!r}")


def generator_loss(logits_fake: torch.Tensor, kind: AdversarialLoss) -> torch.Tensor:
    """The generator's adversarial loss on the discriminator's logits for its reconstructions.

    * ``hinge`` (taming's VQGAN): ``-E[D(x_hat)]``;
    * ``vanilla``: the non-saturating loss ``E[softplus(-D(x_hat))]`` (Goodfellow et al. 2014, sec. 3);
    * ``lsgan``: ``E[(D(x_hat) - 1)^2]`` (Mao et al. 2017, eq. 2 with c=1).

    >>> round(generator_loss(torch.zeros(3), "vanilla").item(), 4)
    0.6931
    """
    fake = logits_fake.float()
    if kind == "hinge":
        return -fake.mean()
    if kind == "vanilla":
        return F.softplus(-fake).mean()
    if kind == "lsgan":
        return (fake - 1.0).pow(2).mean()
    raise ValueError(f"adversarial loss must be 'hinge', 'vanilla' or 'lsgan', got {kind!r}")


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """VQGAN's adaptive weight of the adversarial term (Esser et al. 2021, eq. 7):
    ``lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + eps)``, clamped to ``[0, max_weight]`` and detached,
    the gradients taken with respect to the decoder's last layer ``G_L`` (the norms in fp32).

    Both losses must still hold their graphs (the gradients are taken with ``retain_graph=True``).
    """
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.float().norm() / (g_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def lecam_regularization(logits_real: torch.Tensor, logits_fake: torch.Tensor, ema_real: torch.Tensor,
                         ema_fake: torch.Tensor) -> torch.Tensor:
    """LeCam regularisation of the discriminator (Tseng et al. 2021, eq. 3):
    ``R_LC = E[||D(x) - alpha_F||^2] + E[||D(G(z)) - alpha_R||^2]``, ``alpha_R`` / ``alpha_F`` being exponential
    moving averages of the discriminator's mean logits on real and fake images (given, not updated here).

    >>> lecam_regularization(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor(0.5), torch.tensor(-0.5)).item()
    4.5
    """
    return (logits_real.float() - ema_fake).pow(2).mean() + (logits_fake.float() - ema_real).pow(2).mean()


def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The R1 gradient penalty (Mescheder et al. 2018, eq. 9, without its ``gamma / 2``):
    ``E_x[||grad_x D(x)||^2]``, ``real`` having required gradients when ``logits_real`` was computed.

    The penalty is differentiable (``create_graph=True``), so it trains the discriminator.
    """
    grad, = torch.autograd.grad(logits_real.float().sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def adopt_weight(weight: float, step: int, start: int) -> float:
    """``weight`` from optimizer step ``start`` on, 0 before (taming's ``adopt_weight``: ``disc_start``)."""
    return weight if step >= start else 0.0
