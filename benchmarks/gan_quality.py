"""Does the GAN do its job? The same networks and quantizer (configs/cifar10/vqgan.yaml's: LDM networks of 64
channels, f4, 1,024-code VQ with k-means and restarts) trained on CIFAR-10 for the same wall-clock budget as a
VQ-VAE (L1 + the quantizer's loss: ``VQGAN`` without a discriminator) and as a VQGAN (+ the PatchGAN's hinge loss,
adaptive weight, from a third of the budget on; perceptual off: the LPIPS weights cannot be had here); likewise
AutoencoderKL without and with its discriminator. Scored on the 10,000 test images: PSNR, SSIM and FD-C10
(benchmarks/fd_c10.py's protocol). One JSON per run in ``--out``.

    python benchmarks/gan_quality.py --model vqgan --minutes 20 --seed 0 --classifier cifar10-classifier
    python benchmarks/gan_quality.py --model vqvae --minutes 20 --seed 0 --classifier cifar10-classifier
    python benchmarks/gan_quality.py --summary 30   # the table of every 30-minute result, GAN against non-GAN

Runs compared with each other should share a sitting: started together with ``--threads 1`` each, they get the same
wall-clock budget and the same share of the machine (two on a 2-core machine get a core each; three, two thirds of
one: give them 30 minutes for about the steps of 20 on a core). Each JSON records the training steps and the CPU
seconds the run got, and is named ``gan_quality_<model>[_dw<disc_weight>]_<minutes>min_seed<seed>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_ae import VQGAN, AutoencoderKL, CIFAR10DataModule, VectorQuantizer
from lightning_ae.evaluate import evaluate_model
from lightning_ae.nets import PatchGANDiscriminator

NET = {"ch": 64, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": []}
MODELS = ("vqvae", "vqgan", "kl", "kl_gan")
NEVER = 10**12
DISC_WEIGHT = {"vq": 0.8, "kl": 0.5}  # taming's ImageNet VQGAN and latent diffusion's KL-f8


def build(name: str, disc_weight: float | None = None) -> torch.nn.Module:
    """The model named ``name``; ``disc_weight`` overrides the GAN variants' default (``DISC_WEIGHT``)."""
    weight = DISC_WEIGHT[name[:2]] if disc_weight is None else disc_weight
    common: dict[str, Any] = {"image_shape": (3, 32, 32), "pixel_range": (-1.0, 1.0), "network_options": NET,
                              "disc_start": NEVER}
    if name.endswith("gan"):  # clipped by the model (manual optimization); the others by the Trainer, the same norm
        common |= {"discriminator": PatchGANDiscriminator(ndf=64, n_layers=2), "gradient_clip_norm": 1.0,
                   "disc_gradient_clip_norm": 1.0}
    if name.startswith("vq"):
        return VQGAN(latent_dim=64, quantizer=VectorQuantizer(1024, code_dim=64, kmeans_init=True,
                                                              restart_threshold=1.0),
                     optimizer=lambda p: torch.optim.Adam(p, lr=2e-4, betas=(0.5, 0.9)), disc_weight=weight, **common)
    return AutoencoderKL(optimizer=lambda p: torch.optim.Adam(p, lr=4e-4, betas=(0.5, 0.9)),
                         disc_weight=weight, **common)


class StartDiscriminator(Callback):
    """Sets ``disc_start`` to the current generator step once ``fraction`` of the budget has passed."""

    def __init__(self, budget_s: float, fraction: float) -> None:
        self.at, self.start, self.step = budget_s * fraction, 0.0, None

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.step is None and time.perf_counter() - self.start >= self.at:
            self.step = trainer.global_step
            if pl_module.discriminator is not None:
                pl_module.disc_start = self.step


PAIR = {"vqgan": "vqvae", "kl_gan": "kl"}  # each GAN variant's non-GAN twin
PSNR_DROP = 1.5  # floor: the GAN's per-image PSNR at most this many dB below its twin's, and a lower FD-C10


def summary(folder: Path, minutes: float) -> None:
    """Prints a Markdown table of the ``minutes``-budget results in ``folder``: each run, then, per GAN setting, its
    differences to its non-GAN twin of the same seed (same sitting) and whether each seed meets the floor."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob(f"gan_quality_*_{minutes:g}min_seed*.json"))]
    if not runs:
        raise SystemExit(f"no gan_quality_*_{minutes:g}min_seed*.json in {folder}")
    for r in runs:
        r.setdefault("disc_weight", None)  # the first results did not record it for the non-GAN variants
    print("| model | disc_weight | seed | steps | PSNR per image (dB) | SSIM | FD-C10 |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(runs, key=lambda r: (r["model"], r["disc_weight"] or 0, r["seed"])):
        print(f"| {r['model']} | {r['disc_weight'] or '-'} | {r['seed']} | {r['steps']:,} | "
              f"{r['test/psnr_per_image']:.2f} | {r['test/ssim']:.4f} | {r['test/fd_c10']:.2f} |")
    twins = {(r["model"], r["seed"]): r for r in runs if r["model"] in PAIR.values()}
    settings = sorted({(r["model"], r["disc_weight"]) for r in runs if r["model"] in PAIR})
    print("\n| GAN setting | seeds | PSNR change (dB), per seed | FD-C10 change, per seed | floor met |\n"
          "| --- | --- | --- | --- | --- |")
    for model, weight in settings:
        pairs = [(r, twins[PAIR[model], r["seed"]]) for r in runs
                 if (r["model"], r["disc_weight"]) == (model, weight) and (PAIR[model], r["seed"]) in twins]
        if not pairs:
            continue
        dpsnr = [g["test/psnr_per_image"] - t["test/psnr_per_image"] for g, t in pairs]
        dfd = [g["test/fd_c10"] - t["test/fd_c10"] for g, t in pairs]
        met = all(dp >= -PSNR_DROP and df < 0 for dp, df in zip(dpsnr, dfd, strict=True))
        print(f"| {model} dw {weight:g} | {', '.join(str(g['seed']) for g, _ in pairs)} | "
              f"{', '.join(f'{d:+.2f}' for d in dpsnr)} (mean {statistics.mean(dpsnr):+.2f}) | "
              f"{', '.join(f'{d:+.1f}' for d in dfd)} (mean {statistics.mean(dfd):+.1f}) | {'yes' if met else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--summary", type=float, metavar="MINUTES", default=None,
                        help="print the table of the results of this budget in --out instead of training")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--disc-weight", type=float, default=None,
                        help="the GAN variants' disc_weight (default: 0.8 for vqgan, 0.5 for kl_gan)")
    parser.add_argument("--cifar-dir", default=os.environ.get("LIGHTNING_AE_CIFAR10"))
    parser.add_argument("--classifier", help="the FD-C10 classifier's model folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--save", type=Path, default=None, help="also save the trained model as a model folder here")
    args = parser.parse_args()
    if args.summary is not None:
        summary(args.out, args.summary)
        return
    if args.model is None or args.classifier is None:
        parser.error("--model and --classifier are required to train (or give --summary MINUTES)")
    if not args.cifar_dir:
        parser.error("--cifar-dir (or LIGHTNING_AE_CIFAR10) must name the folder holding cifar-10-batches-py")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    gan = args.model.endswith("gan")
    if args.disc_weight is not None and not gan:
        parser.error("--disc-weight applies to vqgan and kl_gan only")
    model = build(args.model, args.disc_weight)
    data = CIFAR10DataModule(data_dir=args.cifar_dir, download=False, pixel_range=(-1.0, 1.0),
                             batch_size=args.batch_size, val_size=5000, seed=args.seed)
    budget = args.minutes * 60
    starter = StartDiscriminator(budget, 1 / 3)
    trainer = Trainer(max_time={"seconds": budget}, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=[starter], max_epochs=-1,
                      **({} if gan else {"gradient_clip_val": 1.0}))
    cpu_start = time.process_time()
    trainer.fit(model, datamodule=data)
    train_cpu_s = time.process_time() - cpu_start
    steps = trainer.global_step
    if args.save is not None:
        model.save_pretrained(args.save)
    score_data = CIFAR10DataModule(data_dir=args.cifar_dir, download=False, pixel_range=(-1.0, 1.0), batch_size=250)
    figures = evaluate_model(model, score_data, ["psnr", "ssim", "fd"], "test", "cpu", 1,
                             feature_network=args.classifier, fd_name="fd_c10")
    result = {"model": args.model, "seed": args.seed, "minutes": args.minutes, "threads": args.threads,
              "steps": steps, "train_cpu_s": round(train_cpu_s, 1), "date": time.strftime("%Y-%m-%d"),
              "disc_start_step": starter.step if gan else None,
              "disc_weight": model.disc_weight if gan else None,
              **figures, "torch": torch.__version__}
    print(json.dumps(result))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_dw{model.disc_weight:g}" if gan else ""
    path = args.out / f"gan_quality_{args.model}{suffix}_{args.minutes:g}min_seed{args.seed}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
