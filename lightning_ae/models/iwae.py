"""The importance weighted autoencoder: the VAE trained on the K-sample bound ``L_K`` instead of the ELBO.

``L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)]`` (Burda et al. 2015, eq. 8) with the plain gradient of
``L_K`` (their eq. 14) or the doubly reparameterized one of Tucker et al. 2018 (DReG, their eq. 7), which keeps the
encoder's gradient signal from vanishing as K grows.

References:
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016 (arXiv:1509.00519).
    Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives*,
    ICLR 2019 (arXiv:1810.04152).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint

from lightning_ae.distributions import DiagonalGaussian, importance_weighted_log_likelihood
from lightning_ae.models.base import LossOutput, Stage
from lightning_ae.models.vae import VAE

Estimator = Literal["iwae", "dreg"]


class IWAE(VAE):
    """A :class:`VAE` whose loss is ``-L_K``, the negative K-sample importance-weighted bound, in nats per image.

    ``k = 1`` is the one-sample ELBO with a Monte-Carlo KL (the VAE's loss uses the analytic KL: equal in
    expectation). Samples are decoded ``iw_batch`` at a time; when ``k > iw_batch`` each chunk is recomputed in
    the backward pass (activation checkpointing), so training memory is that of ``iw_batch`` samples for any k.

    Args:
        k: importance samples per input in training (Burda et al. use 5 and 50).
        estimator: ``iwae``, the gradient of ``L_K``: ``sum_k w~_k grad log w_k`` with normalized weights
            ``w~_k`` (Burda et al. 2015, eq. 14); or ``dreg``, the same decoder gradient and the encoder gradient
            ``sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi)`` with ``q``'s parameters held fixed inside
            ``log q(z_k|x)`` (Tucker et al. 2018, eq. 7): unbiased for the same gradient, with a signal-to-noise
            ratio that grows with k.
        **kwargs: the arguments of :class:`VAE` (``beta``, ``kl_warmup_steps`` and ``free_bits`` must keep their
            defaults: the bound does not split into a reconstruction and a KL term).
    """

    def __init__(self, k: int = 5, estimator: Estimator = "iwae", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if estimator not in ("iwae", "dreg"):
            raise ValueError(f"estimator must be 'iwae' or 'dreg', got {estimator!r}")
        if (self.beta, self.kl_warmup_steps, self.free_bits) != (1.0, 0, 0.0):
            raise ValueError("IWAE trains on the importance-weighted bound, which has no separate KL term: beta, "
                             f"kl_warmup_steps and free_bits must be 1, 0, 0; got {self.beta}, "
                             f"{self.kl_warmup_steps}, {self.free_bits}")
        self.k, self.estimator = k, estimator

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        """``loss = -L_K`` (Burda et al. 2015, eq. 8) with the chosen gradient; terms ``iw_bound`` (``L_K``),
        ``elbo`` (the mean one-sample ELBO of the same k samples), ``recon`` (of the first sample's decoding).
        The reconstruction scored by the val/test metrics is the decoded posterior mean."""
        q = self.posterior(x)
        z = q.rsample((self.k,))  # (k, B, D)
        q_weights = DiagonalGaussian(q.mean.detach(), q.logvar.detach()) if self.estimator == "dreg" else q
        chunks: list[torch.Tensor] = []

        def next_log_weights(n: int) -> torch.Tensor:  # the next n of the k samples, kept for DReG's weights
            z_n = z[sum(c.shape[0] for c in chunks):][:n]
            if self.k > self.iw_batch and torch.is_grad_enabled():  # recomputed in backward: bounded memory
                log_w = checkpoint(self.log_weights, x, q_weights, z_n, use_reentrant=False)
            else:
                log_w = self.log_weights(x, q_weights, z_n)
            chunks.append(log_w)
            return log_w

        bound = importance_weighted_log_likelihood(next_log_weights, self.k, self.iw_batch)  # (B,)
        log_w = torch.cat(chunks)  # (k, B)
        loss = -bound.mean()
        if self.estimator == "dreg" and torch.is_grad_enabled():
            surrogate = dreg_surrogate(log_w, z).mean()
            loss = loss.detach() - (surrogate - surrogate.detach())  # the value of -L_K, DReG's gradient
        with torch.no_grad():
            output = self.decode(q.mode())
        terms = {"iw_bound": bound.mean().detach(), "elbo": log_w.mean().detach(),
                 "recon": self.reconstruction_nll(output, x).mean().detach()}
        return LossOutput(loss, lambda: self.output_to_image(output), terms, q.mean)


def dreg_surrogate(log_w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """A surrogate whose gradient is DReG's (Tucker et al. 2018, eq. 7): ``(B,)``, differentiate and negate.

    ``log_w`` ``(k, B)`` must have been computed from the reparameterized ``z`` ``(k, B, D)`` with ``q``'s
    parameters detached inside ``log q``. ``sum_k w~_k log w_k`` gives the decoder ``sum_k w~_k grad log w_k``;
    a hook on ``z`` scales the gradient reaching the encoder through ``z_k`` once more by ``w~_k``, giving its
    ``sum_k w~_k^2 d log w_k / d z_k``. The weights ``w~ = softmax_k(log w)`` are constants.
    """
    weights = torch.softmax(log_w.detach(), dim=0)  # (k, B)
    if z.requires_grad:
        z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
    return (weights * log_w).sum(dim=0)
