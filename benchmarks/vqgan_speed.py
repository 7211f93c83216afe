"""VQGAN training speed: our ``VQGAN`` through ``Trainer.fit`` (generator + discriminator + adaptive weight, manual
optimization) against a hand-written PyTorch loop doing the same work on the same networks, losses and optimizers
(the loop calls the same encoder, quantizer, decoder, discriminator and loss functions), batch 32 of CIFAR-10-sized
images held in memory, the discriminator on from the first step. Runs alternate; medians and spreads of the
per-step time over the repetitions, and the ratio loop/ours (1.0: no overhead).

    python benchmarks/vqgan_speed.py --steps 40 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from timing import StepTimer

from lightning_ae import VQGAN, FakeImageDataModule, VectorQuantizer
from lightning_ae.losses import adaptive_weight, discriminator_loss, generator_loss
from lightning_ae.nets import PatchGANDiscriminator

NET = {"ch": 64, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": []}


def build() -> VQGAN:
    seed_everything(0)
    return VQGAN(image_shape=(3, 32, 32), pixel_range=(-1.0, 1.0), latent_dim=64, network_options=NET,
                 quantizer=VectorQuantizer(1024, code_dim=64), disc_start=0,
                 discriminator=PatchGANDiscriminator(ndf=64, n_layers=2),
                 optimizer=lambda p: torch.optim.Adam(p, lr=2e-4, betas=(0.5, 0.9)))


def ours(data: FakeImageDataModule, steps: int, warmup: int) -> tuple[float, float]:
    timer = StepTimer(warmup)
    trainer = Trainer(max_steps=steps + warmup, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(build(), datamodule=data)
    return timer.wall_s / steps, timer.cpu_s / steps


def loop(data: FakeImageDataModule, steps: int, warmup: int) -> tuple[float, float]:
    model = build().train()
    disc = model.discriminator
    generator_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt_g = torch.optim.Adam(generator_params, lr=2e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.9))
    data.setup("fit")
    images = data.train_set.images
    generator = torch.Generator().manual_seed(0)
    start = cpu = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            start, cpu = time.perf_counter(), time.process_time()
        index = torch.randint(len(images), (32,), generator=generator)
        x = images[index].float().div(127.5).sub(1.0)
        q = model.quantizer(model.encoder(x), update=True)
        x_hat = model.decoder(q.quantized)
        rec = (x - x_hat).abs().mean()
        disc.requires_grad_(False)
        g_adv = generator_loss(disc(x_hat), "hinge")
        weight = adaptive_weight(rec, g_adv, model.decoder.last_layer) * 0.8
        loss = rec + q.loss + weight * g_adv
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        d_loss = discriminator_loss(disc(x), disc(x_hat.detach()), "hinge")
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vqgan_speed.json")
    args = parser.parse_args()
    data = FakeImageDataModule(image_shape=(3, 32, 32), num_train=4096, val_size=32, batch_size=32,
                               pixel_range=(-1.0, 1.0))
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "loop": []}
    for rep in range(args.repeats):
        order = [("ours", ours), ("loop", loop)]
        for name, run in order if rep % 2 == 0 else order[::-1]:
            runs[name].append(run(data, args.steps, args.warmup))
        print(f"rep {rep}: ours {runs['ours'][-1][0] * 1e3:.1f} ms/step, loop {runs['loop'][-1][0] * 1e3:.1f} ms/step",
              flush=True)
    ratios = [lp[0] / o[0] for o, lp in zip(runs["ours"], runs["loop"], strict=True)]
    cpu_ratios = [lp[1] / o[1] for o, lp in zip(runs["ours"], runs["loop"], strict=True)]
    summary = {name: {"median_ms": statistics.median(w for w, _ in v) * 1e3,
                      "min_ms": min(w for w, _ in v) * 1e3, "max_ms": max(w for w, _ in v) * 1e3} for name, v in
               runs.items()}
    print(f"VQGAN step, batch 32, 32x32: ours {summary['ours']['median_ms']:.1f} ms (min "
          f"{summary['ours']['min_ms']:.1f}, max {summary['ours']['max_ms']:.1f}), "
          f"loop {summary['loop']['median_ms']:.1f}"
          f" ms; loop/ours median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"per CPU second {statistics.median(cpu_ratios):.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "per_step": summary,
                                    "ratio_wall": ratios, "ratio_cpu": cpu_ratios, "torch": torch.__version__},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
