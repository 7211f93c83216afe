"""Training-step speed and peak memory of Stable Diffusion's VAE layout (our AutoencoderKL: L1 NLL + 1e-6 KL,
Adam, one optimizer step) at a given resolution, in fp32, bf16 autocast, or bf16 with compiled networks.

    python benchmarks/ldm_step.py --device cuda --size 256 --batch 8 --precision bf16 --compile

Prints and writes (``--json``) images/s over ``--steps`` timed steps after ``--warmup`` steps (the median of
``--repeats`` blocks, with min and max) and the peak CUDA memory. On the CPU (``--device cpu``) it runs as a smoke
test of the same code with a small layout (``--small``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from lightning_ae import AutoencoderKL

SD = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": []}
SMALL = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a small layout (CPU smoke runs)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    options = {"compile_networks": True, "compile_options": {"backend": args.compile_backend}} if args.compile else {}
    model = AutoencoderKL(image_shape=(3, args.size, args.size), pixel_range=(-1.0, 1.0),
                          network_options=SMALL if args.small else SD, **options).to(device).train()
    if args.compile:
        model.compile_now()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.5, 0.9))
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext())

    def step() -> None:
        with autocast:
            loss = model.loss_terms(x, "train").loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        rates.append(args.steps * args.batch / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result = {"device": name, "size": args.size, "batch": args.batch, "precision": args.precision,
              "compile": args.compile, "layout": "small" if args.small else "stable-diffusion",
              "images_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
              "peak_memory_gib": peak, "torch": torch.__version__}
    print(f"AutoencoderKL {result['layout']} {args.size}x{args.size} batch {args.batch} {args.precision}"
          f"{' + compile' if args.compile else ''} on {name}: {result['images_per_s']['median']:.1f} images/s "
          f"(min {min(rates):.1f}, max {max(rates):.1f}), peak memory {peak:.2f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
