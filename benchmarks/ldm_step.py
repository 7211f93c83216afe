"""Training-step speed and peak memory of the latent-diffusion autoencoders through ``Trainer.fit``: Stable
Diffusion's VAE layout (``autoencoder_kl``: L1 NLL + 1e-6 KL), the same with its PatchGAN and adaptive weight from
the first step (``autoencoder_kl_gan``), and a VQGAN (taming's f16 layout, 16,384 codes, PatchGAN: ``vqgan``), at a
given resolution, in fp32, bf16 autocast, or bf16 with compiled networks.

    python benchmarks/ldm_step.py --variant vqgan --device cuda --size 256 --batch 8 --precision bf16 --compile

Prints and writes (``--json``) images/s over the steps after ``--warmup`` (the median of ``--repeats`` fits, with
min and max) and the peak CUDA memory. ``--small`` uses small layouts (the CPU smoke run of ``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from timing import StepTimer

from lightning_ae import VQGAN, AutoencoderKL, FakeImageDataModule, VectorQuantizer
from lightning_ae.nets import PatchGANDiscriminator

SD = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": []}
TAMING_F16 = {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "resolution": 256,
              "z_channels": 256}
SMALL = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}
VARIANTS = ("autoencoder_kl", "autoencoder_kl_gan", "vqgan")


def build(variant: str, size: int, small: bool, compile_options: dict[str, Any] | None) -> torch.nn.Module:
    seed_everything(0)
    common: dict[str, Any] = {"image_shape": (3, size, size), "pixel_range": (-1.0, 1.0),
                              "optimizer": lambda p: torch.optim.Adam(p, lr=1e-5, betas=(0.5, 0.9))}
    if compile_options is not None:
        common |= {"compile_networks": True, "compile_options": compile_options}
    disc = {"discriminator": PatchGANDiscriminator(ndf=16 if small else 64, n_layers=2 if small else 3),
            "disc_start": 0}
    if variant == "vqgan":
        return VQGAN(latent_dim=8 if small else 256, network_options=SMALL if small else TAMING_F16,
                     quantizer=VectorQuantizer(64 if small else 16384, code_dim=8 if small else 256, ema=False),
                     **disc, **common)
    return AutoencoderKL(network_options=SMALL if small else SD, **(disc if variant.endswith("_gan") else {}),
                         **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="autoencoder_kl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="small layouts (CPU smoke runs)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    total = args.warmup + args.steps
    data = FakeImageDataModule(image_shape=(3, args.size, args.size), num_train=args.batch * total + 8, val_size=8,
                               batch_size=args.batch, pixel_range=(-1.0, 1.0), num_classes=2)
    rates = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeats):
        model = build(args.variant, args.size, args.small, {"backend": args.compile_backend} if args.compile else None)
        timer = StepTimer(args.warmup)
        trainer = Trainer(max_steps=total, accelerator="gpu" if cuda else "cpu", devices=1, logger=False,
                          precision="bf16-mixed" if args.precision == "bf16" else "32-true", limit_val_batches=0,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, callbacks=[timer])
        trainer.fit(model, datamodule=data)
        rates.append(args.steps * args.batch / timer.wall_s)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    result = {"variant": args.variant, "device": name, "size": args.size, "batch": args.batch,
              "precision": args.precision, "compile": args.compile, "layout": "small" if args.small else "full",
              "images_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
              "peak_memory_gib": peak, "torch": torch.__version__}
    print(f"{args.variant} ({result['layout']}) {args.size}x{args.size} batch {args.batch} {args.precision}"
          f"{' + compile' if args.compile else ''} on {name}: {result['images_per_s']['median']:.1f} images/s "
          f"(min {min(rates):.1f}, max {max(rates):.1f}), peak memory {peak:.2f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
