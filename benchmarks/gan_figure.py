"""The picture beside benchmarks/gan_quality.py's table: the first CIFAR-10 test images (top row) and their
reconstructions by each model folder given (one row each, in order), as ``predict_step`` makes them (what the
scores are computed on), tiled and written as a PNG.

    python benchmarks/gan_quality.py --model vqvae ... --save runs/vqvae
    python benchmarks/gan_quality.py --model vqgan ... --save runs/vqgan
    python benchmarks/gan_figure.py --cifar-dir .cache/cifar --models runs/vqvae runs/vqgan --out gan.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from PIL import Image

from lightning_ae import CIFAR10DataModule
from lightning_ae.callbacks.grid import make_grid, normalize_images, to_rgb_uint8
from lightning_ae.pretrained import load_model


def rows(models: list[str], cifar_dir: str, count: int) -> torch.Tensor:
    """``(1 + len(models)) * count`` images in [0, 1]: the test images, then each model's reconstructions."""
    out = []
    for i, folder in enumerate(models):
        model = load_model(folder)
        data = CIFAR10DataModule(data_dir=cifar_dir, download=False, pixel_range=model.pixel_range, batch_size=count)
        data.setup("test")
        images = data.on_after_batch_transfer(data.test_set.__getitems__(list(range(count))), 0)[0]
        if i == 0:
            out.append(normalize_images(images, model.pixel_range))
        with torch.no_grad():
            out.append(normalize_images(model.predict_step(images, 0)["reconstruction"], model.pixel_range))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders, one row each")
    parser.add_argument("--cifar-dir", default=os.environ.get("LIGHTNING_AE_CIFAR10"))
    parser.add_argument("--count", type=int, default=10, help="test images per row")
    parser.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling of the PNG")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not args.cifar_dir:
        parser.error("--cifar-dir (or LIGHTNING_AE_CIFAR10) must name the folder holding cifar-10-batches-py")
    grid = make_grid(rows(args.models, args.cifar_dir, args.count), nrow=args.count)
    image = Image.fromarray(to_rgb_uint8(grid))
    image = image.resize((args.scale * image.width, args.scale * image.height), Image.NEAREST)
    tmp = args.out.with_suffix(".tmp.png")
    image.save(tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
