"""Synthetic images of any shape: class-dependent prototypes plus noise, for tests and quick model checks."""

from __future__ import annotations

from typing import Any

import torch

from lightning_ae.batch import check_image_shape
from lightning_ae.data.base import Batch, ImageDataModule


class FakeImageDataModule(ImageDataModule):
    """Clustered synthetic data: each class is a fixed random prototype image; samples add Gaussian noise.

    The classes are separable, so a model that learns anything shows it in its latent space.

    Args:
        image_shape: ``(C, H, W)`` of the images.
        num_classes: number of classes (prototypes).
        num_train: images in the training split (before the validation hold-out).
        num_test: images in the test split.
        noise: standard deviation of the per-pixel noise, in [0, 1] pixel units.
        batch_size: images per batch on each device (a smaller default than the base's).
        val_size: images held out from the training split for validation (a smaller default than the base's).
        **kwargs: other arguments: as :class:`ImageDataModule` (``seed`` also seeds the prototypes and samples;
            nothing is read from disk, so there is no ``data_dir``, ``download`` or ``num_workers``).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        num_train: int = 512,
        num_test: int = 128,
        noise: float = 0.1,
        batch_size: int = 32,
        val_size: int | float = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir="", download=False, num_workers=0, batch_size=batch_size, val_size=val_size, **kwargs)
        self.image_shape = check_image_shape(image_shape)
        if num_classes < 1 or num_train < 1 or num_test < 1:
            raise ValueError(
                f"num_classes, num_train, num_test must be >= 1, got {num_classes}, {num_train}, {num_test}"
            )
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.num_classes = num_classes
        self.class_names = [f"class {i}" for i in range(num_classes)]
        self.num_train, self.num_test, self.noise = num_train, num_test, noise

    def _load_split(self, train: bool) -> Batch:
        gen = torch.Generator().manual_seed(self.seed)
        prototypes = torch.rand(self.num_classes, *self.image_shape, generator=gen)
        n = self.num_train if train else self.num_test
        gen.manual_seed(self.seed + (1 if train else 2))
        labels = torch.randint(0, self.num_classes, (n,), generator=gen)
        images = prototypes[labels] + self.noise * torch.randn(n, *self.image_shape, generator=gen)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
