"""Callbacks that show what a model learned, for every variant, every logger and under DDP.

Images reach the loggers through one helper, :func:`log_image` (W&B, TensorBoard, or PNG files).
"""

from lightning_ae.callbacks.codebook import CodebookUsageMonitor, usage_figure
from lightning_ae.callbacks.evaluation import ReconstructionMetrics
from lightning_ae.callbacks.grid import make_grid
from lightning_ae.callbacks.images import LatentInterpolation, ReconstructionGrid, SampleGrid
from lightning_ae.callbacks.latent import LatentSpaceVisualizer, pca_2d, project_2d, scatter_figure
from lightning_ae.callbacks.logging import log_image
from lightning_ae.callbacks.predictions import PredictionWriter
from lightning_ae.callbacks.probe import LinearProbe, linear_probe

__all__ = [
    "CodebookUsageMonitor",
    "LatentInterpolation",
    "LatentSpaceVisualizer",
    "LinearProbe",
    "PredictionWriter",
    "ReconstructionGrid",
    "ReconstructionMetrics",
    "SampleGrid",
    "linear_probe",
    "log_image",
    "make_grid",
    "pca_2d",
    "project_2d",
    "scatter_figure",
    "usage_figure",
]
