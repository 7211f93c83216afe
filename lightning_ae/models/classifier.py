"""A small residual image classifier: the feature network of the "FD-C10" yardstick (a Fréchet distance on a
CIFAR-10 classifier's penultimate features, which a CPU can train in minutes where Inception's weights cannot be
downloaded), and a linear-probe reference. Trained from the command line like every model:

    lightning-ae fit --config configs/cifar10/classifier.yaml --save_pretrained cifar10-classifier
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.batch import Batch, check_image_shape
from lightning_ae.configurable import Configurable
from lightning_ae.models.base import build_optimization
from lightning_ae.pretrained import PretrainedMixin, describe_parts


def _conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + f(x)``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNet9(Configurable, nn.Module):
    """The "ResNet-9" of the DAWNBench CIFAR-10 entries (Page 2018): prep conv, then three stages (conv, max-pool,
    with a residual pair of convs after the first and last), global max-pool: images ``(B, C, H, W)`` ->
    ``(B, channels[-1])`` features.

    Args:
        in_channels: image channels.
        channels: widths of the prep layer and the three stages (DAWNBench: ``[64, 128, 256, 512]``).
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if len(channels) != 4 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be four positive widths, got {list(channels)}")
        c0, c1, c2, c3 = channels
        self.net = nn.Sequential(
            _conv_bn(in_channels, c0),
            _conv_bn(c0, c1, pool=True), Residual(nn.Sequential(_conv_bn(c1, c1), _conv_bn(c1, c1))),
            _conv_bn(c1, c2, pool=True),
            _conv_bn(c2, c3, pool=True), Residual(nn.Sequential(_conv_bn(c3, c3), _conv_bn(c3, c3))),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.num_features = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, channels[-1])
        return self.net(x)


class ImageClassifier(PretrainedMixin, LightningModule):
    """Cross-entropy classifier of a datamodule's labelled images; ``features(x)`` gives the penultimate features
    ``(B, D)`` (what :class:`~lightning_ae.metrics.FrechetDistance` measures on). Logs ``{stage}/loss`` and
    ``{stage}/accuracy``.

    Args:
        backbone: images -> ``(B, D)`` features with a ``num_features`` attribute (default :class:`ResNet9`).
        num_classes: classes of the labels (linked from the datamodule).
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule).
        pixel_range: pixel range of the images (linked from the datamodule).
        label_smoothing: of the cross-entropy.
        logit_scale: multiplies the logits (the DAWNBench ResNet-9's 0.125: max-pooled ReLU features are large, and
            unscaled logits saturate the softmax at the start).
        optimizer: optimizer factory (default: SGD, lr 0.05, Nesterov momentum 0.9, weight decay 5e-4).
        lr_scheduler: optional scheduler factory (stepped per epoch).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        num_classes: int | None = 10,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        pixel_range: tuple[float, float] = (0.0, 1.0),
        label_smoothing: float = 0.0,
        logit_scale: float = 0.125,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        describe_parts(self)  # a backbone given from Python: its config, so checkpoints hold no pickled module
        if num_classes is None or num_classes < 2:
            raise ValueError(f"ImageClassifier needs num_classes >= 2 (a labelled datamodule), got {num_classes}")
        self.image_shape = check_image_shape(image_shape)
        self.pixel_range = (float(pixel_range[0]), float(pixel_range[1]))
        self.backbone = backbone if backbone is not None else ResNet9(self.image_shape[0])
        self.head = nn.Linear(self.backbone.num_features, num_classes)
        self.label_smoothing, self.logit_scale = label_smoothing, logit_scale
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)`` of images in ``pixel_range``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes) logits
        return self.head(self.features(x)) * self.logit_scale

    def _step(self, raw: Any, stage: str) -> torch.Tensor:
        batch = Batch.of(raw)
        if batch.labels is None:
            raise ValueError("ImageClassifier needs labelled batches (images, labels)")
        logits = self(batch.images)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.label_smoothing if stage == "train" else 0)
        accuracy = (logits.argmax(1) == batch.labels).float().mean()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/accuracy": accuracy}, on_step=stage == "train",
                      on_epoch=stage != "train", sync_dist=stage != "train", batch_size=batch.images.shape[0])
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        def default(params: Any) -> torch.optim.Optimizer:
            return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

        return build_optimization(self.parameters(), self.optimizer_factory or default, self.lr_scheduler_factory)
