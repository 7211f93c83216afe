"""Test bits/dim of a convolutional VAE with the discretized logistic mixture likelihood on CIFAR-10.

Usage (``LIGHTNING_AE_CIFAR10`` must hold ``cifar-10-batches-py``; for a JPEG copy, write the pickle layout
first)::

    python -m benchmarks.vae_cifar_bpd --minutes 60 --k 10 --threads 2   # K=100 takes ~25 min more on 2 cores

The model: ``VAE(network="conv", likelihood="logistic", logistic_mixtures=--mixtures, latent_dim=--latent-dim)``
(the residual conv encoder/decoder of ``lightning_ae.nets``), Adam ``--lr`` decayed along a cosine of the elapsed
training time to 1e-5 at ``--minutes``, KL warm-up over ``--warmup-steps``, 50,000 training images. Every
``--curve-every`` training minutes it prints the importance-weighted test bits/dim (K = ``--curve-k``, first
``--curve-images`` test images; evaluation time not counted), then the final figure with K = ``--k`` on all
10,000 test images. Bits/dim of the 8-bit pixels: the likelihood is a probability, no bin correction.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from lightning_ae import VAE, CIFAR10DataModule

sys.path.insert(0, str(Path(__file__).parent))  # runs as python benchmarks/<name>.py too
from vae_common import TimeBudget, fit_for

DIMS = 3 * 32 * 32


@torch.no_grad()
def test_bpd(model: VAE, images: torch.Tensor, k: int, batch: int = 100) -> float:
    """Mean importance-weighted bits/dim of uint8 ``images`` (Burda et al. 2015's estimate, K samples)."""
    model.eval()
    total = 0.0
    for start in range(0, images.shape[0], batch):
        x = images[start:start + batch].float() / 255.0  # the datamodule's pixel_range (0, 1)
        total += -model.log_likelihood(x, k).sum().item()
    return total / images.shape[0] / (DIMS * math.log(2.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--k", type=int, default=100, help="importance samples of the final test figure")
    parser.add_argument("--mixtures", type=int, default=5)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=2000)
    parser.add_argument("--curve-every", type=float, default=10.0)
    parser.add_argument("--curve-k", type=int, default=10)
    parser.add_argument("--curve-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    root = os.environ.get("LIGHTNING_AE_CIFAR10")
    if not root:
        sys.exit("set LIGHTNING_AE_CIFAR10 to the folder holding cifar-10-batches-py")
    torch.set_num_threads(args.threads)
    dm = CIFAR10DataModule(data_dir=root, download=False, val_size=0, batch_size=args.batch_size)
    dm.setup("fit")
    dm.setup("test")
    test_images = dm.test_set.images
    seed_everything(0)
    model = VAE(network="conv", image_shape=(3, 32, 32), likelihood="logistic", logistic_mixtures=args.mixtures,
                latent_dim=args.latent_dim, kl_warmup_steps=args.warmup_steps, iw_batch=min(args.k, 25),
                optimizer=lambda params: torch.optim.Adam(params, lr=args.lr))
    timer = TimeBudget(args.minutes, args.curve_every,
                       lambda m: test_bpd(m, test_images[: args.curve_images], args.curve_k))
    out: dict = vars(args)
    out["fit_wall_s"] = fit_for(model, dm, timer)
    out["steps"], out["epochs_done"] = model.global_step, model.current_epoch
    out["curve_minutes_bpd"] = timer.curve
    start = time.perf_counter()
    out["test_bpd"] = test_bpd(model, test_images, args.k)
    out["eval_s"] = time.perf_counter() - start
    print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
