"""Batch and shape helpers that models, data and callbacks all use (a neutral module: it imports none of them).

>>> import torch
>>> x = torch.zeros(2, 1, 4, 4)
>>> extract_images({"image": x, "label": torch.tensor([0, 1])}) is x
True
>>> extract_labels((x, torch.tensor([3, 4]))).tolist()
[3, 4]
>>> check_image_shape([3, 32, 32])
(3, 32, 32)
>>> Batch.of((x, torch.tensor([3, 4]))).labels.tolist()
[3, 4]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

ImageShape = tuple[int, int, int]


def _is_sequence(batch: Any) -> bool:
    """A tuple, list or other sequence (tuple and list tested first: a test against the ABC costs a few times more,
    on every step)."""
    return isinstance(batch, (tuple, list)) or (isinstance(batch, Sequence) and not isinstance(batch, str))


def extract_images(batch: Any) -> torch.Tensor:
    """The image tensor of a batch that is a tensor, a tuple/list (image first) or a mapping (key ``image``)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if _is_sequence(batch) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"a dict batch needs an 'image' key; got keys {sorted(batch)}")
        return batch["image"]
    raise TypeError(f"cannot find images in a batch of type {type(batch).__name__}: use a tensor, (image, ...) or "
                    "{'image': ...}")


def extract_labels(batch: Any) -> torch.Tensor | None:
    """The labels of a batch, when it carries them (second item, or key ``label``)."""
    if isinstance(batch, torch.Tensor):
        return None
    if _is_sequence(batch):
        return batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    if isinstance(batch, Mapping):
        return batch.get("label")
    return None


@dataclass(frozen=True)
class Batch:
    """A batch as a variant sees it (``AutoencoderBase.batch_loss``): the images and, when the data has them, the
    labels.

    Attributes:
        images: ``(B, C, H, W)`` float images in the model's ``pixel_range``.
        labels: ``(B,)`` class indices, or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None

    @classmethod
    def of(cls, batch: Any) -> Batch:
        """The :class:`Batch` of a tensor, tuple/list or mapping batch (see :func:`extract_images`)."""
        return batch if isinstance(batch, Batch) else cls(extract_images(batch), extract_labels(batch))


def check_image_shape(image_shape: Sequence[int]) -> ImageShape:
    """Validates a ``(C, H, W)`` shape and returns it as a tuple of ints."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (channels, height, width) of positive ints, got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]
