"""Probabilistic pieces of the VAE as pure functions of tensors plus one small distribution object.

* :class:`DiagonalGaussian` — the encoder's posterior ``q(z|x) = N(mu, diag sigma^2)`` (``rsample``, ``mode``,
  ``log_prob``, ``kl`` to the standard normal), like diffusers' ``DiagonalGaussianDistribution``.
* Likelihood terms of the decoder ``p(x|z)`` — Bernoulli, Gaussian and discretized logistic (mixture) negative
  log-likelihoods in nats,
  **summed** over the pixels of each image (not averaged), so ``recon + KL`` is the negative ELBO per image;
  :class:`PixelLikelihood` reads them from a decoder output.
* The objective's knobs: free bits (Kingma et al. 2016) and linear KL warm-up (Bowman et al. 2016).
* The importance-weighted log-likelihood estimate of Burda et al. 2015, batched over the K samples.

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014 (arXiv:1312.6114).
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016 (arXiv:1509.00519).
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, *Improved Variational Inference with Inverse
    Autoregressive Flow*, NeurIPS 2016 (arXiv:1606.04934).
    Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio, *Generating Sentences from a Continuous Space*,
    CoNLL 2016 (arXiv:1511.06349).
    Salimans, Karpathy, Chen & Kingma, *PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture
    Likelihood and Other Modifications*, ICLR 2017 (arXiv:1701.05517).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)
IMAGE_EVENT_NDIM = 3  # (C, H, W): likelihoods sum over these and keep any leading (sample, batch) dims


def _sum_last(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-ndim, 0))) if ndim else t


# ---- the posterior ---------------------------------------------------------------------------------------------
class DiagonalGaussian:
    """``N(mean, diag exp(logvar))`` over the last dimension; leading dimensions are batch dimensions.

    Args:
        mean: ``(..., D)`` means.
        logvar: ``(..., D)`` log-variances, clamped to ``[-30, 20]`` (as diffusers does) so ``exp`` stays finite.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean shape {tuple(mean.shape)} != logvar shape {tuple(logvar.shape)}")
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    @classmethod
    def from_params(cls, params: torch.Tensor) -> DiagonalGaussian:
        """Splits encoder outputs ``(B, 2D)``, or a spatial ``(B, 2D, h, w)``, into mean and log-variance halves
        along dimension 1, each flattened to ``(B, D * h * w)``."""
        mean, logvar = params.chunk(2, dim=1)
        return cls(mean.flatten(1), logvar.flatten(1))

    def mode(self) -> torch.Tensor:
        """The most likely point, the mean: the deterministic code."""
        return self.mean

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Reparameterized sample ``z = mean + std * eps``, ``eps ~ N(0, I)`` (Kingma & Welling 2014, eq. 4 and
        sec. 2.4): differentiable in ``mean`` and ``logvar``. Returns ``(*sample_shape, ..., D)``."""
        eps = torch.randn((*sample_shape, *self.mean.shape), dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` summed over the last dimension; ``z`` may carry extra leading sample dimensions."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean).pow(2) / self.logvar.exp()).sum(dim=-1)

    def kl_per_dim(self) -> torch.Tensor:
        """``KL(q || N(0, I))`` per latent dimension ``(..., D)`` (see :func:`gaussian_kl`)."""
        return gaussian_kl(self.mean, self.logvar)

    def kl(self) -> torch.Tensor:
        """``KL(q || N(0, I))`` summed over the latent dimensions: ``(...)``."""
        return self.kl_per_dim().sum(dim=-1)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic ``KL(N(mean, exp(logvar)) || N(0, 1))`` element-wise, in nats.

    Kingma & Welling 2014, appendix B (used in eq. 10):
    ``-KL = 1/2 (1 + log sigma^2 - mu^2 - sigma^2)``.
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension (the prior ``p(z)``)."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(dim=-1)


# ---- decoder likelihoods -----------------------------------------------------------------------------------------
def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor, event_ndim: int = IMAGE_EVENT_NDIM) -> torch.Tensor:
    """``-log p(x|z)`` of a factorized Bernoulli with ``logits``, summed over the last ``event_ndim`` dims (nats).

    The Bernoulli MLP decoder of Kingma & Welling 2014, appendix C.1, computed stably from logits. ``target``
    (binary, or in [0, 1]) broadcasts against ``logits``, e.g. ``(B, C, H, W)`` against ``(K, B, C, H, W)``.
    """
    return _sum_last(F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none"),
                     event_ndim)


def gaussian_nll(
    mean: torch.Tensor, target: torch.Tensor, logvar: torch.Tensor | float, event_ndim: int = IMAGE_EVENT_NDIM
) -> torch.Tensor:
    """``-log N(x; mean, exp(logvar))`` of a factorized Gaussian, summed over the last ``event_ndim`` dims (nats).

    The Gaussian MLP decoder of Kingma & Welling 2014, appendix C.2. ``logvar`` is a tensor (learned variance)
    or a float (fixed variance); ``target`` broadcasts against ``mean``.
    """
    logvar_t = torch.as_tensor(logvar, dtype=mean.dtype, device=mean.device)
    return _sum_last(0.5 * (LOG_2PI + logvar_t + (target - mean).pow(2) * torch.exp(-logvar_t)), event_ndim)


def discretized_logistic_nll(
    logit_weights: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, target: torch.Tensor,
    event_ndim: int = IMAGE_EVENT_NDIM,
) -> torch.Tensor:
    """``-log P(x)`` of 8-bit pixels under a mixture of discretized logistics, summed over the last ``event_ndim``
    dims (nats): Salimans et al. 2017 (PixelCNN++), eq. 2, with their edge cases.

    Pixels are scaled to ``[-1, 1]`` (value ``v`` in 0..255 is ``2 v / 255 - 1``; bins are ``2 / 255`` wide).
    ``P(x) = sum_i pi_i [sigmoid((x + 1/255 - mu_i) / s_i) - sigmoid((x - 1/255 - mu_i) / s_i)]``, where the
    lowest bin (0) takes all mass below, ``sigmoid((x + 1/255 - mu) / s)``, and the highest (255) all mass above,
    ``1 - sigmoid((x - 1/255 - mu) / s)``; so the 256 probabilities of a pixel sum to 1. As in PixelCNN++, a
    bin whose probability underflows (< 1e-5) is scored by density x bin width at its centre.

    Args:
        logit_weights: ``(..., K, C, H, W)`` unnormalized log mixture weights ``pi`` (components on dim -4).
        means: ``(..., K, C, H, W)`` component locations ``mu`` in ``[-1, 1]`` pixel units.
        log_scales: ``(..., K, C, H, W)`` ``log s``, clamped below at -7 (as PixelCNN++).
        target: ``(B, C, H, W)`` pixels scaled to ``[-1, 1]``, broadcast against the leading dims.
        event_ndim: trailing dims summed (the component dim is reduced first).
    """
    x = target.unsqueeze(-4)  # a component axis
    log_scales = log_scales.clamp(min=-7.0)
    centered, inv_s = x - means, torch.exp(-log_scales)
    plus_in, min_in = inv_s * (centered + 1.0 / 255.0), inv_s * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): the lowest bin
    log_one_minus_cdf_min = -F.softplus(min_in)  # log (1 - sigmoid(min_in)): the highest bin
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in) - math.log(127.5)  # density x bin width
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
    log_px = torch.logsumexp(log_probs + torch.log_softmax(logit_weights, dim=-4), dim=-4)
    return -_sum_last(log_px, event_ndim)


Likelihood = Literal["bernoulli", "gaussian", "logistic"]
DECODER_LOGVAR_RANGE = (-10.0, 5.0)  # learned pixel log-variance bounds: sigma in [0.0067, 12]


class PixelLikelihood:
    """The decoder's distribution ``p(x|z)`` over pixels, read from the decoder output (channels are dim -3).

    Args:
        kind: ``bernoulli`` (the output is logits; binarized images), ``gaussian`` (the output is means) or
            ``logistic`` (a discretized logistic mixture over 256 pixel values, Salimans et al. 2017; 8-bit
            images).
        gaussian_std: fixed standard deviation of ``gaussian``, in pixel units; ``None`` learns a per-pixel
            log-variance, the second half of ``2 * C`` output channels (clamped to ``DECODER_LOGVAR_RANGE``).
        logistic_mixtures: components ``K`` of ``logistic``: the output has ``2 C`` channels (means, log-scales)
            for ``K = 1`` and ``3 K C`` (mixture logits, means, log-scales) otherwise; each colour channel has its
            own mixture (PixelCNN++'s channel coupling is autoregressive, which a VAE decoder is not).
        pixel_range: ``(low, high)`` of the images, mapped to ``[-1, 1]`` for ``logistic``.

    >>> likelihood = PixelLikelihood("gaussian", gaussian_std=None)
    >>> out = torch.zeros(1, 2, 1, 1)  # mean 0 and log-variance 0 of one pixel
    >>> round(likelihood.nll(out, torch.zeros(1, 1, 1, 1)).item(), 5)  # log(2 pi) / 2
    0.91894
    """

    def __init__(
        self,
        kind: Likelihood = "bernoulli",
        gaussian_std: float | None = 0.1,
        logistic_mixtures: int = 1,
        pixel_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if kind not in ("bernoulli", "gaussian", "logistic"):
            raise ValueError(f"likelihood must be 'bernoulli', 'gaussian' or 'logistic', got {kind!r}")
        if gaussian_std is not None and gaussian_std <= 0:
            raise ValueError(f"gaussian_std must be > 0 or None (learned), got {gaussian_std}")
        if logistic_mixtures < 1:
            raise ValueError(f"logistic_mixtures must be >= 1, got {logistic_mixtures}")
        self.kind, self.gaussian_std, self.logistic_mixtures = kind, gaussian_std, logistic_mixtures
        self.low, self.high = float(pixel_range[0]), float(pixel_range[1])

    @property
    def channels_per_pixel(self) -> int:
        """Decoder output channels per image channel: 2 for a learned-variance Gaussian or one logistic, 3 K for
        a mixture of K logistics, else 1."""
        if self.kind == "logistic":
            return 2 if self.logistic_mixtures == 1 else 3 * self.logistic_mixtures
        return 2 if self.kind == "gaussian" and self.gaussian_std is None else 1

    def params(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Decoder output -> ``(logits or mean, log-variance)`` (``bernoulli`` and ``gaussian``)."""
        if self.kind == "bernoulli":
            return output, 0.0
        if self.gaussian_std is not None:
            return output, 2.0 * math.log(self.gaussian_std)
        mean, logvar = output.chunk(2, dim=-3)
        return mean, logvar.clamp(*DECODER_LOGVAR_RANGE)

    def logistic_params(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder output ``(..., channels_per_pixel * C, H, W)`` -> mixture logits, means in ``[-1, 1]`` (a
        tanh) and log-scales, each ``(..., K, C, H, W)``."""
        k = self.logistic_mixtures
        if k == 1:
            means, log_scales = output.chunk(2, dim=-3)
            logits = torch.zeros_like(means)
        else:
            logits, means, log_scales = output.chunk(3, dim=-3)
        return tuple(t.unflatten(-3, (k, t.shape[-3] // k)) for t in (logits, torch.tanh(means), log_scales))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in ``pixel_range`` -> ``[-1, 1]``."""
        return (x - self.low) * (2.0 / (self.high - self.low)) - 1.0

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        """The mean of ``p(x|z)``: ``sigmoid(logits)`` for Bernoulli, the Gaussian mean, the logistic mixture's
        mean (in ``pixel_range``)."""
        if self.kind == "logistic":
            logits, means, _ = self.logistic_params(output)
            unit = (torch.softmax(logits, dim=-4) * means).sum(dim=-4)
            return self.low + (unit + 1.0) * (0.5 * (self.high - self.low))
        loc, _ = self.params(output)
        return torch.sigmoid(loc) if self.kind == "bernoulli" else loc

    def nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` in nats per image, ``(...)``; ``x`` ``(B, C, H, W)`` broadcasts against ``output``."""
        if self.kind == "logistic":
            return discretized_logistic_nll(*self.logistic_params(output), self.to_unit(x))
        loc, logvar = self.params(output)
        return bernoulli_nll(loc, x) if self.kind == "bernoulli" else gaussian_nll(loc, x, logvar)

    def bin_width(self, pixel_range: tuple[float, float]) -> float | None:
        """Width of an 8-bit pixel bin for a density over continuous pixels (None for the discrete Bernoulli and
        logistic likelihoods, whose NLL is already a probability of the 8-bit values)."""
        return (pixel_range[1] - pixel_range[0]) / 256.0 if self.kind == "gaussian" else None


def bits_per_dim(nll: torch.Tensor, num_dims: int, bin_width: float | None = None) -> torch.Tensor:
    """Converts a negative log-likelihood per image (nats) to bits per dimension.

    For a density over continuous pixels (``bin_width`` given, e.g. ``(high - low) / 256`` for 8-bit data), the
    discrete probability of a pixel bin is approximated by density x bin width, so
    ``bpd = (nll - D log(bin_width)) / (D log 2)`` (as in Theis, van den Oord & Bethge 2016, sec. 3.1). For a
    discrete likelihood (Bernoulli) ``bin_width`` is ``None``: ``bpd = nll / (D log 2)``.

    >>> round(bits_per_dim(torch.tensor(784 * math.log(2.0)), 784).item(), 6)  # 1 bit per binary pixel
    1.0
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    if bin_width is not None and bin_width <= 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    correction = 0.0 if bin_width is None else -num_dims * math.log(bin_width)
    return (nll + correction) / (num_dims * math.log(2.0))


# ---- the objective's knobs ---------------------------------------------------------------------------------------
def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL term with free bits: ``sum_j max(lambda, E_x[KL(q(z_j|x) || p(z_j))])``.

    Kingma et al. 2016, the "free bits" objective of their appendix C: the KL of each latent dimension,
    averaged over the minibatch, is floored at ``lambda`` nats, so dimensions under the floor get no gradient
    pushing them to the prior. With ``free_bits = 0`` this is the plain minibatch-mean KL.

    Args:
        kl_per_dim: ``(B, D)`` per-sample, per-dimension KL in nats.
        free_bits: ``lambda`` >= 0, nats per latent dimension.

    Returns:
        A scalar tensor.

    >>> free_bits_kl(torch.tensor([[0.1, 2.0], [0.3, 2.0]]), free_bits=0.5).item()  # max(0.5, 0.2) + max(0.5, 2)
    2.5
    """
    if free_bits < 0:
        raise ValueError(f"free_bits must be >= 0, got {free_bits}")
    return kl_per_dim.mean(dim=0).clamp(min=free_bits).sum()


def kl_warmup_weight(step: int, warmup_steps: int, beta: float = 1.0) -> float:
    """Weight of the KL term at ``step``: ``beta * min(1, step / warmup_steps)`` (``beta`` if no warm-up).

    Linear KL cost annealing from 0, Bowman et al. 2016, sec. 3.1; ``beta`` is the final weight
    (Higgins et al. 2017's beta-VAE for ``beta != 1``).

    >>> kl_warmup_weight(step=50, warmup_steps=100, beta=2.0)
    1.0
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if warmup_steps == 0:
        return beta
    return beta * min(1.0, max(step, 0) / warmup_steps)


# ---- the importance-weighted estimate ----------------------------------------------------------------------------
def importance_weighted_log_likelihood(
    log_weights_fn: Callable[[int], torch.Tensor], num_samples: int, chunk_size: int
) -> torch.Tensor:
    """``log (1/K) sum_k w_k``, the IWAE bound ``L_K`` (Burda et al. 2015, eq. 8), in chunks of samples.

    ``w_k = p(x, z_k) / q(z_k|x)`` with ``z_k ~ q(z|x)``. ``L_1`` is the ELBO, ``L_K`` does not decrease in
    ``K`` in expectation and tends to ``log p(x)`` (Burda et al. 2015, Theorem 1). The log-mean-exp is taken with
    log-sum-exp; chunks are combined exactly (``logsumexp`` of per-chunk ``logsumexp``), so memory is bounded
    by ``chunk_size`` samples while the result equals the one-shot estimate.

    Args:
        log_weights_fn: ``k -> (k, B)`` log importance weights of ``k`` fresh samples for each of ``B`` inputs.
        num_samples: ``K`` >= 1.
        chunk_size: samples drawn per call of ``log_weights_fn`` (>= 1).

    Returns:
        ``(B,)`` estimates of ``log p(x)`` in nats.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    partial = []
    for start in range(0, num_samples, chunk_size):
        partial.append(torch.logsumexp(log_weights_fn(min(chunk_size, num_samples - start)), dim=0))
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(num_samples)
