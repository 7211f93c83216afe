"""Stable Diffusion's VAE layout, ours against diffusers' AutoencoderKL: the parameter count (must be equal) and the
time of one training forward+backward (encode, reparameterized sample, decode, L1 + 1e-6 KL, backward) on the same
64x64 batch of 2 with the same weights, interleaved rep by rep so that both see the same machine load.

    python benchmarks/ldm_speed.py --reps 7 --size 64 --batch 2

Prints per-rep wall and CPU seconds, the medians with their spread (min-max), and diffusers/ours ratios (above 1:
ours is faster). Run it alone: another process on the same cores makes both sides slower, unevenly.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

SD = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": []}


def build(size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    import diffusers

    from lightning_ae import AutoencoderKL
    from lightning_ae.interop.diffusers import diffusers_config, to_diffusers_state_dict

    torch.manual_seed(0)
    ours = AutoencoderKL(image_shape=(3, size, size), pixel_range=(-1.0, 1.0), network_options=SD)
    _, config = diffusers_config(ours)
    theirs = diffusers.AutoencoderKL(**config)
    theirs.load_state_dict(to_diffusers_state_dict(ours))
    return ours.train(), theirs.train()


def step_ours(model: torch.nn.Module, x: torch.Tensor) -> None:
    q = model.posterior(x)
    out = model.decode(q.rsample())
    loss = (out - x).abs().mean() + 1e-6 * q.kl().mean()
    loss.backward()


def step_theirs(model: torch.nn.Module, x: torch.Tensor) -> None:
    posterior = model.encode(x).latent_dist
    out = model.decode(posterior.sample()).sample
    loss = (out - x).abs().mean() + 1e-6 * posterior.kl().mean()
    loss.backward()


def timed(step: Callable[[torch.nn.Module, torch.Tensor], None], model: torch.nn.Module, x: torch.Tensor
          ) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    step(model, x)
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ldm_speed.json")
    args = parser.parse_args()
    ours, theirs = build(args.size)
    count_ours = sum(p.numel() for p in [*ours.encoder.parameters(), *ours.decoder.parameters()])
    count_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"parameters: ours {count_ours:,}, diffusers {count_theirs:,}, equal: {count_ours == count_theirs}")
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for step, model in ((step_ours, ours), (step_theirs, theirs)):  # warm-up: allocator, kernels
        timed(step, model, x)
    rows: dict[str, list[tuple[float, float]]] = {"ours": [], "diffusers": []}
    for rep in range(args.reps):
        order = [("ours", step_ours, ours), ("diffusers", step_theirs, theirs)]
        for name, step, model in order if rep % 2 == 0 else order[::-1]:
            rows[name].append(timed(step, model, x))
        print(f"rep {rep}: ours {rows['ours'][-1][0]:.3f} s ({rows['ours'][-1][1]:.3f} CPU s), diffusers "
              f"{rows['diffusers'][-1][0]:.3f} s ({rows['diffusers'][-1][1]:.3f} CPU s)")
    wall = {k: summary([w for w, _ in v]) for k, v in rows.items()}
    cpu = {k: summary([c for _, c in v]) for k, v in rows.items()}
    ratios = [t[0] / o[0] for o, t in zip(rows["ours"], rows["diffusers"], strict=True)]
    cpu_ratios = [t[1] / o[1] for o, t in zip(rows["ours"], rows["diffusers"], strict=True)]
    print(f"forward+backward, {args.size}x{args.size}, batch {args.batch}, {args.reps} interleaved reps:")
    for name in rows:
        print(f"  {name:<9} wall median {wall[name]['median']:.3f} s (min {wall[name]['min']:.3f}, max "
              f"{wall[name]['max']:.3f}); CPU median {cpu[name]['median']:.3f} s")
    print(f"  diffusers/ours wall ratio: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f}); per CPU second: median {statistics.median(cpu_ratios):.3f}")
    result = {"parameters": {"ours": count_ours, "diffusers": count_theirs}, "size": args.size, "batch": args.batch,
              "reps": args.reps, "wall_s": wall, "cpu_s": cpu, "ratio_wall": summary(ratios),
              "ratio_cpu": summary(cpu_ratios), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
