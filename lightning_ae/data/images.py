"""Image files to uint8 arrays: finding them in a folder (three layouts) and decoding one to ``(C, H, W)``.

Pure functions of paths and options (no torch, no Lightning), shared by :class:`ImageFolderDataModule` and the
LitData preparation step, and picklable so decoding can run in worker processes.

Layouts (``split`` of a file: ``train``, ``val``, ``test`` or ``""`` for a pool that the datamodule splits):

- ``root/{train,val,test}/<class>/*`` (or ``root/{train,val,test}/*`` without classes): splits given;
- ``root/<class>/*``: one labelled pool;
- ``root/*``: one unlabelled pool.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from lightning_ae.data.formats import DatasetFileError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
Resize = Literal["center_crop", "resize", "none"]
Size = int | tuple[int, int] | list[int]


class ImageDecodeError(DatasetFileError):
    """An image file that cannot be read, is truncated, or does not fit the decode options."""


def as_size(size: Size, name: str) -> tuple[int, int]:
    """``64`` or ``[H, W]`` -> ``(H, W)`` of positive ints; a ``ValueError`` naming ``name`` otherwise."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s >= 1 for s in hw):
        raise ValueError(f"{name} must be a positive int or [height, width], got {size!r}")
    return int(hw[0]), int(hw[1])


@dataclass(frozen=True)
class DecodeOptions:
    """How every image becomes ``uint8 (channels, height, width)``.

    Args:
        image_size: ``(H, W)`` of the decoded images.
        resize: ``center_crop`` (scale the short side to fit, then crop the centre), ``resize`` (stretch), or
            ``none`` (every image must already be ``image_size``).
        crop_size: ``(H, W)`` centre crop taken from the original image first (CelebA: 148, then 64), or None.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA).
    """

    image_size: tuple[int, int]
    resize: Resize = "center_crop"
    crop_size: tuple[int, int] | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        if self.resize not in ("center_crop", "resize", "none"):
            raise ValueError(f"resize must be 'center_crop', 'resize' or 'none', got {self.resize!r}")
        if self.channels not in (1, 3, 4):
            raise ValueError(f"channels must be 1, 3 or 4, got {self.channels}")

    @classmethod
    def of(cls, image_size: Size, resize: Resize, crop_size: Size | None, channels: int) -> DecodeOptions:
        """From user arguments: sizes as an int or ``[H, W]``, checked."""
        crop = None if crop_size is None else as_size(crop_size, "crop_size")
        return cls(as_size(image_size, "image_size"), resize, crop, channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)


# ---- finding files ------------------------------------------------------------------------------------------
def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _image_entries(folder: str, recursive: bool) -> list[str]:
    """Paths of the image files in ``folder`` (and below it when ``recursive``), from the directory entries alone
    (``DirEntry.is_file`` reads the entry's type: no ``stat`` per file)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if recursive and entry.is_dir():
                found += _image_entries(entry.path, recursive)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(entry.path)
    return found


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    paths = [Path(p) for p in _image_entries(str(folder), recursive)]
    return sorted((p for p in paths if _visible(p)), key=lambda p: p.parts)  # Path order, without Path.__lt__


def _subfolders(folder: Path, skip: Path | None) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p) and p.resolve() != skip)


def class_names_of(root: Path, skip: Path | None = None) -> list[str]:
    """Sorted class folder names (of ``root/train`` in the split layout); ``[]`` for unlabelled layouts."""
    if not root.is_dir():
        raise DatasetFileError(f"image folder {root} does not exist or is not a folder")
    subs = _subfolders(root, skip)
    if (root / "train").is_dir() and {p.name for p in subs} <= set(SPLITS):
        subs = _subfolders(root / "train", skip)
    return [p.name for p in subs]


Scan = tuple[list[Path], list[int], list[str]]


def _scan_pool(folder: Path, split: str, classes: list[str], skip: Path | None) -> Scan:
    """Files, labels (``-1``: none) and splits of one folder of class folders, or of loose images."""
    subs = _subfolders(folder, skip)
    if not subs:
        files = _images_in(folder, recursive=False)
        if not files:
            raise DatasetFileError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
        if classes:
            raise DatasetFileError(f"{folder} holds loose images, but the training split has class folders")
        return files, [-1] * len(files), [split] * len(files)
    loose = _images_in(folder, recursive=False)
    if loose:
        raise DatasetFileError(f"{folder} mixes class folders and loose images (e.g. {loose[0].name}); use one")
    files: list[Path] = []
    labels: list[int] = []
    for sub in subs:
        if sub.name not in classes:
            raise DatasetFileError(f"class folder {sub} is not among the training classes {classes}")
        found = _images_in(sub, recursive=True)
        if not found:
            raise DatasetFileError(f"class folder {sub} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += found
        labels += [classes.index(sub.name)] * len(found)
    return files, labels, [split] * len(files)


def scan_folder(root: str | os.PathLike[str], skip: Path | None = None) -> Scan:
    """Every image under ``root`` in a stable order: ``(files, labels, splits)``; see the module docstring.

    Args:
        root: the image folder.
        skip: a folder to leave out (the cache, when it lies inside ``root``).
    """
    root = Path(root)
    classes = class_names_of(root, skip)
    present = [s for s in SPLITS if (root / s).is_dir()]
    if "train" in present and {p.name for p in _subfolders(root, skip)} <= set(SPLITS):
        parts = [_scan_pool(root / s, s, classes, skip) for s in present]
        return [f for p in parts for f in p[0]], [y for p in parts for y in p[1]], [s for p in parts for s in p[2]]
    return _scan_pool(root, "", classes, skip)


# ---- decoding one file --------------------------------------------------------------------------------------
def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grey images scaled to 8 bits (PIL's ``convert`` would clip them)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))
    return image


def _center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    h, w = size
    if image.height < h or image.width < w:
        raise ValueError(f"is {image.width}x{image.height}, smaller than the crop {w}x{h}")
    top, left = (image.height - h) // 2, (image.width - w) // 2
    return image.crop((left, top, left + w, top + h))


def _fit(image: Image.Image, options: DecodeOptions) -> Image.Image:
    h, w = options.image_size
    if options.crop_size is not None:
        image = _center_crop(image, options.crop_size)
    if (image.height, image.width) == (h, w):
        return image
    if options.resize == "none":
        raise ValueError(f"is {image.width}x{image.height}, not {w}x{h} (resize='none')")
    if options.resize == "resize":
        return image.resize((w, h), Image.Resampling.BICUBIC)
    scale = max(h / image.height, w / image.width)  # the short side (relative to the target) fits exactly
    size = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    return _center_crop(image.resize(size, Image.Resampling.BICUBIC), (h, w))


def decode_image(path: str | os.PathLike[str], options: DecodeOptions) -> np.ndarray:
    """One file -> ``uint8 (channels, H, W)``; an :class:`ImageDecodeError` naming the file if it cannot be."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[options.channels]
    try:
        with Image.open(path) as opened:
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)  # turned as its EXIF says, without a copy per image
            image = _to_8bit(opened)
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            image = _fit(image if image.mode == mode else image.convert(mode), options)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{path}: {err}") from err
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_many(paths: Sequence[str], options: DecodeOptions) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decodes ``paths`` (a worker's chunk): ``(uint8 (n_good, C, H, W), [(position, error), ...] of the bad)``."""
    out = np.empty((len(paths), *options.shape), dtype=np.uint8)
    bad: list[tuple[int, str]] = []
    good = 0
    for i, path in enumerate(paths):
        try:
            out[good] = decode_image(path, options)
            good += 1
        except ImageDecodeError as err:
            bad.append((i, str(err)))
    return out[:good], bad
