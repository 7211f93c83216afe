"""torchmetrics Metrics of the autoencoders."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightning_ae.quantizers import perplexity_of_counts


class CodebookUsage(Metric):
    """Codebook health of a quantizer: how the code indices seen since the last reset spread over K codes.

    ``compute()`` returns ``{"perplexity": exp(-sum p log p), "used_fraction": share of codes used at least once,
    "dead_codes": number of codes never used}``. Counts are summed over DDP ranks (``dist_reduce_fx="sum"``), so
    the figures are those of all ranks' data together. With ``levels`` Q > 1 (a residual quantizer, indices
    ``(B, Q, ...)``) each level is counted on its own, ``counts`` is ``(Q, K)``, the perplexity is the mean of the
    levels' and the used fraction and dead codes are over all ``Q * K`` codes.

    Args:
        num_codes: codebook size K (of one level).
        levels: indices per position Q (the quantizer's ``indices_per_position``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    counts: torch.Tensor

    def __init__(self, num_codes: int, levels: int = 1) -> None:
        super().__init__()
        if num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.num_codes, self.levels = num_codes, levels
        shape = (num_codes,) if levels == 1 else (levels, num_codes)
        self.add_state("counts", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:
        """Counts code ``indices`` (any shape; ``(B, levels, ...)`` when ``levels`` > 1; values in
        ``[0, num_codes)``)."""
        if self.levels > 1 and (indices.ndim < 2 or indices.shape[1] != self.levels):
            raise ValueError(f"expected indices (B, {self.levels}, ...) with levels={self.levels}, "
                             f"got {tuple(indices.shape)}")
        per_level = indices.movedim(1, 0) if self.levels > 1 else indices.unsqueeze(0)
        counts = [torch.bincount(level.reshape(-1).long(), minlength=self.num_codes) for level in per_level]
        longest = max(c.numel() for c in counts)  # the size, not a value, tells an index out of range
        if longest != self.num_codes:
            raise ValueError(f"indices must lie in [0, {self.num_codes}), got a maximum of {longest - 1}")
        self.counts += torch.stack(counts).reshape(self.counts.shape)

    def compute(self) -> dict[str, torch.Tensor]:
        used = (self.counts > 0).sum()
        return {
            "perplexity": perplexity_of_counts(self.counts).mean(),
            "used_fraction": used.float() / self.counts.numel(),
            "dead_codes": (self.counts.numel() - used).float(),
        }


class ActiveUnits(Metric):
    """Number of active latent units, ``#{i : Cov_x(E_q[z_i | x]) > threshold}`` (Burda et al. 2015, sec. 5.2).

    Accumulates the sum and sum of squares of the posterior means over an epoch (float64); states are summed
    across DDP ranks, so the variance is over the whole evaluation set.

    Args:
        latent_dim: number of latent dimensions.
        threshold: activity threshold on the variance (Burda et al. use 1e-2).
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = 1e-2) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, means: torch.Tensor) -> None:
        means = means.detach().to(torch.float64)
        self.count += means.shape[0]
        self.total += means.sum(dim=0)
        self.total_sq += means.pow(2).sum(dim=0)

    def variances(self) -> torch.Tensor:
        """Per-dimension variance of the posterior means (unbiased)."""
        mean = self.total / self.count
        return (self.total_sq - self.count * mean.pow(2)) / (self.count - 1).clamp(min=1)

    def compute(self) -> torch.Tensor:
        return (self.variances() > self.threshold).sum()


class LatentStd(Metric):
    """The standard deviation of every value of the latents seen since the last reset (one number, over all
    channels and positions): latent diffusion's ``scale_factor`` is its inverse (Rombach et al. 2022, sec. G).

    Sums, sums of squares and counts are float64 states summed over DDP ranks, so the figure is that of all ranks'
    data together.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("count", "total", "total_sq"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, latents: torch.Tensor) -> None:
        values = latents.detach().to(torch.float64)
        self.count += values.numel()
        self.total += values.sum()
        self.total_sq += values.pow(2).sum()

    def compute(self) -> torch.Tensor:
        mean = self.total / self.count
        return ((self.total_sq - self.count * mean.pow(2)) / (self.count - 1).clamp(min=1)).clamp(min=0).sqrt()


# ---- reconstruction yardsticks -------------------------------------------------------------------------------------
def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
                     ) -> torch.Tensor:
    """The Fréchet distance of two Gaussians (Dowson & Landau 1982; the FID of Heusel et al. 2017, eq. 6):
    ``||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``, in float64.

    ``Tr((C_a C_b)^(1/2))`` is computed as ``sum sqrt(eig(S C_b S))`` with ``S = C_a^(1/2)`` (symmetric, so both
    square roots come from ``eigh``; the eigenvalues of a product of PSD matrices are those of ``S C_b S``).
    """
    mean_a, cov_a, mean_b, cov_b = (t.to(torch.float64) for t in (mean_a, cov_a, mean_b, cov_b))
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return (mean_a - mean_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root


class FrechetDistance(Metric):
    """The Fréchet distance between the feature distributions of real and reconstructed (or generated) images.

    ``update(real, fake)`` runs ``features`` (``[0, 1]`` images -> ``(B, D)``) on each and accumulates the sums
    and sums of outer products of the features in float64, summed over DDP ranks, so ``compute()``
    (:func:`frechet_distance` of the two Gaussians' means and unbiased covariances) is that of the whole split.
    ``rFID`` is this with :class:`~lightning_ae.perceptual.InceptionV3Features`; "FD-C10" with the CIFAR-10
    classifier of ``benchmarks/``. Either set may be given on its own with ``update_real`` / ``update_fake``.

    Args:
        features: the feature network (kept in eval mode, without gradients).
        num_features: ``D``.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, features: torch.nn.Module, num_features: int) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def _add(self, side: str, images: torch.Tensor) -> None:
        with torch.no_grad():
            f = self.features(images.float()).to(torch.float64)  # (B, D)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        self._update_count += 1  # torchmetrics counts calls of update() only

    def update_real(self, images: torch.Tensor) -> None:
        self._add("real", images)

    def update_fake(self, images: torch.Tensor) -> None:
        self._add("fake", images)

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        self.update_real(real)
        self.update_fake(fake)

    def statistics(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, unbiased covariance)`` of one side's features."""
        n, total, outer = (getattr(self, f"{side}_{k}") for k in ("n", "sum", "outer"))
        mean = total / n
        return mean, (outer - n * torch.outer(mean, mean)) / (n - 1)

    def compute(self) -> torch.Tensor:
        if self.real_n < 2 or self.fake_n < 2:
            raise ValueError(f"a Fréchet distance needs >= 2 images per side, got {int(self.real_n)} real and "
                             f"{int(self.fake_n)} fake")
        return frechet_distance(*self.statistics("real"), *self.statistics("fake"))


class MeanScore(Metric):
    """The mean of a per-image score over a split, summed in float64 over DDP ranks (LPIPS: ``score(fake, real)``
    -> ``(B,)``)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, score: torch.nn.Module) -> None:
        super().__init__()
        self.score = score.eval().requires_grad_(False)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        with torch.no_grad():
            values = self.score(fake.float(), real.float()).to(torch.float64)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count
