"""The conditional VAE: encoder ``q(z|x, y)`` and decoder ``p(x|z, y)`` see the class label ``y`` of the batch.

Reference:
    Sohn, Lee & Yan, *Learning Structured Output Representation using Deep Conditional Generative Models*,
    NeurIPS 2015: the conditional ELBO of their eq. 4, with the prior ``p(z|y) = N(0, I)`` independent of the
    label (the common simplification, as the generative model M2 of Kingma, Rezende, Mohamed & Welling,
    *Semi-Supervised Learning with Deep Generative Models*, NeurIPS 2014).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae.batch import Batch
from lightning_ae.distributions import DiagonalGaussian, importance_weighted_log_likelihood
from lightning_ae.graphs import FunctionModule, Graph, random_images
from lightning_ae.models.base import LossOutput, Stage
from lightning_ae.models.vae import VAE
from lightning_ae.nets import default_networks


class ConditionalVAE(VAE):
    """A :class:`VAE` conditioned on class labels ``0 .. num_classes - 1``.

    The encoder reads the image with one extra channel, a learned ``H x W`` embedding of the label (as
    PyTorch-VAE's CVAE); the decoder reads ``[z, one_hot(y)]``, ``latent_dim + num_classes`` features. The loss
    is the VAE's (Sohn et al. 2015, eq. 4), ``test/nll`` estimates ``log p(x|y)``. Training, validation, test and
    prediction batches must carry labels (``(images, labels)`` or ``{"image", "label"}``, as all our
    datamodules give): the steps read them from the :class:`~lightning_ae.batch.Batch` (:meth:`batch_loss`,
    :meth:`encode_batch`, :meth:`decode_batch`). Outside a step, pass ``labels``, or use
    ``with model.conditioned_on(labels):`` for the label-less methods (``forward``, ``encode``, ``interpolate``).

    Args:
        **kwargs: the arguments of :class:`VAE`; ``num_classes`` (linked from the datamodule by the CLI) is
            required. A given encoder maps ``(B, C + 1, H, W)`` to ``(B, 2 * latent_dim)``, a given decoder
            ``(B, latent_dim + num_classes)`` to the likelihood's output.
    """

    _labels: torch.Tensor | None = None  # the labels of the current step (see conditioned_on)

    def init_networks(self, **default_options: Any) -> None:
        """Builds the label embedding and the default networks with the conditioned input sizes."""
        if self.num_classes is None or self.num_classes < 2:
            raise ValueError(f"ConditionalVAE needs num_classes >= 2 (linked from the data by the CLI), got "
                             f"{self.num_classes}")
        if self.network == "ldm":
            raise ValueError("ConditionalVAE conditions a vector latent on the labels; network='ldm' (a spatial "
                             "latent) is not supported: use 'mlp' or 'conv'")
        c, h, w = self.image_shape
        self.label_embedding = nn.Embedding(self.num_classes, h * w)
        if self.encoder is None:
            self.encoder = default_networks(self.network, (c + 1, h, w), self.latent_dim, **default_options)[0]
        if self.decoder is None:
            self.decoder = default_networks(self.network, self.image_shape, self.latent_dim + self.num_classes,
                                            **default_options)[1]

    # ---- the condition --------------------------------------------------------------------------------------
    def check_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """Returns ``labels`` ``(n,)`` on the model's device, or raises an error naming what is wrong."""
        if labels is None:
            labels = self._labels
        if labels is None:
            raise ValueError("ConditionalVAE needs class labels: the batch has none (give (images, labels) or "
                             "{'image': ..., 'label': ...}), or pass labels= / use `with model.conditioned_on(y):`")
        if labels.is_floating_point() or labels.is_complex() or labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must be integer class indices of shape ({n},), got dtype {labels.dtype} and "
                             f"shape {tuple(labels.shape)}")
        on_host = labels.device.type == "cpu"  # values are checked where reading them costs no device sync
        if on_host and labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got values from {int(labels.min())} to "
                             f"{int(labels.max())}")
        return labels.to(self.device, torch.long)

    @contextmanager
    def conditioned_on(self, labels: torch.Tensor | None) -> Iterator[None]:
        """Within the block, ``posterior`` / ``encode`` / ``decode`` / ``forward`` use ``labels`` ``(B,)``."""
        previous, self._labels = self._labels, labels
        try:
            yield
        finally:
            self._labels = previous

    def posterior(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """``q(z|x, y)`` of images ``(B, C, H, W)`` and labels ``(B,)`` (default: those of the current batch)."""
        y = self.check_labels(labels, x.shape[0])
        plane = self.label_embedding(y).view(x.shape[0], 1, *x.shape[2:]).to(x.dtype)
        return super().posterior(torch.cat([x, plane], dim=1))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``p(x|z, y)``'s parameters for latents ``(N, D)``; ``N`` may be a multiple of the label count (samples
        flattened as ``(n, B)``, as ``log_weights`` and ``interpolate`` do): labels repeat over the leading ``n``."""
        y = labels if labels is not None else self._labels
        y = self.check_labels(y, y.shape[0] if y is not None else z.shape[0])
        if z.shape[0] % max(y.shape[0], 1):
            raise ValueError(f"{z.shape[0]} latents cannot be paired with {y.shape[0]} labels")
        y = y.repeat(z.shape[0] // y.shape[0])
        return super().decode(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=-1))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``n`` images of the classes ``labels`` ``(n,)`` (default ``i % num_classes``): ``z ~ N(0, I)``, then
        the mean of ``p(x|z, y)``, ``(n, C, H, W)``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        y = torch.arange(n, device=self.device) % self.num_classes if labels is None else labels
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device, dtype=self.dtype)
        return self.output_to_image(self.decode(z, self.check_labels(y, n)))

    def export_graphs(self) -> list[Graph]:
        """``encoder`` (images, labels) -> ``mean``, ``logvar`` of ``q(z|x, y)``; ``decoder`` (codes, labels) ->
        images (``labels``: int64 class indices ``(B,)``)."""
        images = random_images(self)

        def labels(n: int) -> torch.Tensor:
            return torch.arange(n, device=self.device) % self.num_classes

        def encode(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = self.posterior(x, y)
            return q.mean, q.logvar

        def decode(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.output_to_image(self.decode(z, y))

        return [
            Graph("encoder", FunctionModule(self, encode), lambda n: (*images(n), labels(n)), ("images", "labels"),
                  ("mean", "logvar")),
            Graph("decoder", FunctionModule(self, decode),
                  lambda n: (torch.randn(n, self.latent_dim, device=self.device), labels(n)), ("codes", "labels"),
                  ("images",)),
        ]

    # ---- the steps read the batch's labels ------------------------------------------------------------------
    def batch_labels(self, batch: Batch) -> torch.Tensor:
        """The checked labels of ``batch`` (an error naming what is wrong when it has none or bad ones)."""
        return self.check_labels(batch.labels, batch.images.shape[0])

    def batch_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """The conditional negative ELBO (Sohn et al. 2015, eq. 4) with ``q(z|x, y)`` and ``p(x|z, y)``; in a test
        step also the importance-weighted ``-log p(x|y)`` (``nll``, ``bpd``)."""
        y = self.batch_labels(batch)
        out = self.gaussian_elbo(batch.images, self.posterior(batch.images, y), partial(self.decode, labels=y), stage)
        if stage == "test":
            out.terms.update(self.nll_terms(-self.log_likelihood(batch.images, labels=y)))
        return out

    def log_likelihood(self, x: torch.Tensor, num_samples: int | None = None, labels: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Importance-weighted ``log p(x|y)`` in nats per image ``(B,)`` (as :meth:`VAE.log_likelihood`), the labels
        given or those of :meth:`conditioned_on`."""
        y = self.check_labels(labels, x.shape[0])
        q, decode = self.posterior(x, y), partial(self.decode, labels=y)  # each image's samples with its label
        return importance_weighted_log_likelihood(lambda n: self.log_weights(x, q, q.rsample((n,)), decode),
                                                  num_samples or self.iw_samples, self.iw_batch)

    def encode_batch(self, batch: Batch) -> torch.Tensor:
        """The posterior mean of ``q(z|x, y)`` of the batch."""
        return self.posterior(batch.images, self.batch_labels(batch)).mode()

    def decode_batch(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``p(x|z, y)``'s parameters for codes ``z`` of the batch."""
        return self.decode(z, self.batch_labels(batch))
