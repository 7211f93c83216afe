"""The latent space in 2-D: codes of validation images, projected and scattered, coloured by class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from matplotlib import colormaps
from matplotlib.figure import Figure

from lightning_ae.callbacks.base import Rows, ValidationCollector, epoch_label, require_methods
from lightning_ae.callbacks.logging import log_image, new_figure

Projection = Literal["auto", "identity", "pca", "tsne"]
PROJECTIONS = ("auto", "identity", "pca", "tsne")


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Projects ``(N, D)`` points onto their two principal axes (float64 SVD; signs fixed so that the largest
    loading of each axis is positive). Fewer than two dimensions are padded with zeros."""
    x = points.detach().double().cpu()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True))).clamp_min(0) * 2 - 1
    projected = x @ (axes * signs).T
    if projected.shape[1] < 2:
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 2 - projected.shape[1])], 1)
    return projected.float()


def tsne_2d(points: torch.Tensor, perplexity: float = 30.0, seed: int = 0) -> torch.Tensor:
    """t-SNE embedding of ``(N, D)`` points in 2-D via scikit-learn (the ``tsne`` extra)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("projection='tsne' needs scikit-learn: pip install 'lightning-ae[tsne]'") from err
    x = points.detach().double().cpu().numpy()
    perplexity = min(perplexity, max((x.shape[0] - 1) / 3.0, 1.0))
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return torch.from_numpy(np.asarray(embedding)).float()


def project_2d(points: torch.Tensor, projection: Projection = "auto", perplexity: float = 30.0) -> torch.Tensor:
    """``(N, D)`` -> ``(N, 2)``: ``identity`` (D must be 2), ``pca``, ``tsne``; ``auto`` is identity for 2-D
    codes and PCA otherwise."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    dim = points.shape[1]
    if projection == "identity" and dim != 2:
        raise ValueError(f"projection='identity' needs a 2-D latent, got {dim} dimensions")
    if projection == "identity" or (projection == "auto" and dim == 2):
        return points.detach().float().cpu()
    if projection == "tsne":
        return tsne_2d(points, perplexity)
    return pca_2d(points)


def scatter_figure(
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "latent space",
    point_size: float = 8.0,
) -> Figure:
    """A scatter of ``(N, 2)`` points coloured by class, with a legend of class names."""
    figure = new_figure(7.0, 6.0)
    ax = figure.add_subplot()
    xy = points.numpy()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size, alpha=0.7)
    else:
        classes = sorted(set(labels.tolist()))
        colors = _palette(max(len(class_names or []), classes[-1] + 1))  # a class keeps its colour across plots
        for cls in classes:
            color = colors[cls] if cls >= 0 else "gray"
            mask = (labels == cls).numpy()
            name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
            ax.scatter(xy[mask, 0], xy[mask, 1], s=point_size, alpha=0.7, color=color, label=name)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=2, frameon=False)
    ax.set_title(title)
    ax.set_xlabel("dimension 1")
    ax.set_ylabel("dimension 2")
    figure.tight_layout()
    return figure


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct colours: tab10/tab20 for up to 20 classes, evenly spaced hues beyond."""
    if n > 20:
        return [colormaps["hsv"](i / n) for i in range(n)]
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(n)]


class LatentSpaceVisualizer(ValidationCollector):
    """Scatters the codes of validation images in 2-D, coloured by class (``val/latent_space``).

    The code is ``pl_module.encode(x)``, flattened per image: the code of an AE/DAE/SAE/CAE, the posterior mean
    of the VAE, the pre-quantization grid ``z_e`` of the VQ-VAE. Up to ``num_samples`` images are gathered from
    all ranks; rank zero projects them (and keeps the result in ``last_points``/``last_labels``) and draws.

    Args:
        every_n_epochs: draw on every n-th validation epoch (and on the last one).
        num_samples: validation images encoded (over all ranks).
        projection: ``auto`` (identity for a 2-D latent, else PCA), ``identity``, ``pca`` (torch SVD) or
            ``tsne`` (scikit-learn).
        perplexity: t-SNE perplexity (capped at ``(N - 1) / 3``).
        point_size: marker size of the scatter.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 1000,
        projection: Projection = "auto",
        perplexity: float = 30.0,
        point_size: float = 8.0,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if perplexity <= 0:
            raise ValueError(f"perplexity must be > 0, got {perplexity}")
        super().__init__(every_n_epochs, max_rows=num_samples)
        self.projection, self.perplexity, self.point_size = projection, perplexity, point_size
        self.last_points: torch.Tensor | None = None
        self.last_labels: torch.Tensor | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("encode",))

    def collect(self, pl_module: LightningModule, images: torch.Tensor, labels: torch.Tensor | None) -> Rows:
        rows = {"latent": pl_module.encode(images).flatten(1).float()}
        if labels is not None:
            rows["label"] = labels
        return rows

    def render(self, trainer: Trainer, pl_module: LightningModule, rows: Rows) -> None:
        if not trainer.is_global_zero:
            return
        self.last_points = project_2d(rows["latent"], self.projection, self.perplexity)
        self.last_labels = rows.get("label")
        datamodule = getattr(trainer, "datamodule", None)
        class_names = getattr(datamodule, "class_names", None) or None
        method = self._method(rows["latent"].shape[1])
        title = f"{type(pl_module).__name__} latent space ({method}){epoch_label(trainer)}"
        figure = scatter_figure(self.last_points, self.last_labels, class_names, title, self.point_size)
        log_image(trainer, "val/latent_space", figure)

    def _method(self, dim: int) -> str:
        if self.projection == "auto":
            return "identity" if dim == 2 else "PCA"
        return {"identity": "identity", "pca": "PCA", "tsne": "t-SNE"}[self.projection]
