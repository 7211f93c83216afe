"""Test NLL of the MNIST VAE: ours vs pythae on the same networks and data, and our best config.

Usage (``LIGHTNING_AE_DATA`` must hold ``MNIST/raw``)::

    python benchmarks/vae_nll.py compare [--epochs 20] [--k 1000]   # ours vs pythae, static binarization
    python benchmarks/vae_nll.py best [--epochs 55] [--k 1000]     # our best config, dynamic binarization
    python -m benchmarks.vae_nll budget --model vae|iwae|vamp --minutes 30 --k 5000 [--pythae | --pythae-only]

``compare``: MLP 784-512-256-32 (ReLU, Bernoulli, Adam 1e-3, batch 128), 60k train / 10k test binarized once
(seed 0 / 1), trained ``--epochs`` epochs by our ``Trainer.fit`` and by pythae's ``BaseTrainer``; both scored
with OUR importance-weighted estimator (K samples, Burda et al. 2015) on the 10k test images, and pythae's own
``get_nll`` on the first ``--pythae-nll-images`` test images (it loops over images one at a time).

``best``: the same networks with 64 latent dims, dynamically binarized training data (a fresh Bernoulli sample
of every batch), Adam 1e-3 decayed by a cosine schedule to 1e-5 over ``--epochs`` epochs
(training stops at 29 minutes in any case), KL warm-up over the first 10 epochs; scored on one fixed-seed
binarization of the test set.

``budget``: ``--model vae`` (ELBO), ``iwae`` (the k-sample bound, ``--k-train``, ``--estimator``) or
``vamp`` (VampPrior, ``--pseudo-inputs``) on the same MLP (``--latent-dim``, default 64), dynamically binarized
training data, ``--threads`` torch threads, batch ``--batch-size``, Adam ``--lr`` decayed along a cosine of the
elapsed training time to 1e-5 at ``--minutes``; KL warm-up over ``--warmup-steps`` (vae, vamp). Every
``--curve-every`` training minutes it prints the test NLL with K = ``--curve-k`` on the first ``--curve-images``
test images (evaluation time not counted), then the final NLL with K = ``--k`` on all 10,000. ``--pythae`` also
trains pythae's VAE or IWAE (same networks, batch, data binarized once: pythae has no dynamic binarization) for
the number of epochs that fits the same budget (timed on one epoch) and scores it with our estimator (K = ``--k``
and each ``--also-k``); ``--pythae-only`` trains and scores pythae's model alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_ae import IWAE, VAE, MNISTDataModule, VampVAE

sys.path.insert(0, str(Path(__file__).parent))  # runs as python benchmarks/<name>.py too
from vae_common import (
    BATCH_SIZE,
    IMAGE_SHAPE,
    LR,
    TimeBudget,
    fit_for,
    make_vae,
    mnist,
    networks,
    pythae_model,
    pythae_trainer,
    static_test_images,
    test_nll,
)


class EpochTimer(Callback):
    """Prints the elapsed time and the last training ELBO every ``every`` epochs."""

    def __init__(self, every: int = 5) -> None:
        self.every, self.start = every, time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            elbo = trainer.callback_metrics.get("train/elbo", torch.tensor(float("nan"))).item()
            print(f"epoch {trainer.current_epoch + 1}: {time.perf_counter() - self.start:.0f} s, "
                  f"train/elbo {elbo:.2f}", flush=True)


def fit_ours(model: VAE, dm: MNISTDataModule, epochs: int, max_time: str | None = None) -> float:
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, max_time=max_time, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0,                       callbacks=[EpochTimer()])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start


def compare(args: argparse.Namespace) -> dict:
    dm = mnist("static")
    test_x = static_test_images(dm)
    out: dict = {"epochs": args.epochs, "k": args.k}

    seed_everything(0)
    ours = make_vae(*networks())
    out["ours_train_s"] = fit_ours(ours, dm, args.epochs)
    out["ours_nll"] = test_nll(ours, test_x, args.k)
    print(json.dumps(out), flush=True)

    seed_everything(0)
    enc, dec = networks()
    pmodel = pythae_model(enc, dec)
    train_x = dm.train_set.images.float() / 255.0
    with tempfile.TemporaryDirectory() as tmp:
        ptrainer = pythae_trainer(pmodel, train_x, args.epochs, tmp)
        start = time.perf_counter()
        ptrainer.train()
        out["pythae_train_s"] = time.perf_counter() - start
    trained = ptrainer.model  # pythae keeps the last model here (best on train is saved to disk)
    out["pythae_nll_our_estimator"] = test_nll(make_vae(trained.encoder.net, trained.decoder.net), test_x, args.k)
    n = args.pythae_nll_images
    if n > 0:
        trained.eval()
        start = time.perf_counter()
        with torch.no_grad():
            out["pythae_own_get_nll_subset"] = -float(trained.get_nll(test_x[:n], n_samples=args.k, batch_size=100))
        out["pythae_get_nll_s"] = time.perf_counter() - start
        out["pythae_nll_our_estimator_subset"] = test_nll(make_vae(trained.encoder.net, trained.decoder.net),
                                                         test_x[:n], args.k)
        out["ours_nll_subset"] = test_nll(ours, test_x[:n], args.k)
        out["subset_images"] = n
    return out


def best(args: argparse.Namespace) -> dict:
    dm = mnist("dynamic")
    test_x = static_test_images(dm)
    steps_per_epoch = math.ceil(60000 / BATCH_SIZE)

    def cosine(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=1e-5)

    seed_everything(0)
    model = make_vae(*networks(latent_dim=64), latent_dim=64, kl_warmup_steps=10 * steps_per_epoch,
                     optimizer=lambda params: torch.optim.Adam(params, lr=LR), lr_scheduler=cosine)
    out: dict = {"epochs": args.epochs, "k": args.k, "latent_dim": 64, "binarize": "dynamic",
                 "schedule": "cosine 1e-3 -> 1e-5 per epoch", "kl_warmup_epochs": 10}
    out["train_s"] = fit_ours(model, dm, args.epochs, max_time="00:00:29:00")  # a hard 29-minute cap
    out["epochs_done"] = model.current_epoch
    start = time.perf_counter()
    out["nll"] = test_nll(model, test_x, args.k)
    out["eval_s"] = time.perf_counter() - start
    return out


def budget_model(args: argparse.Namespace) -> VAE:
    enc, dec = networks(latent_dim=args.latent_dim)
    common = dict(encoder=enc, decoder=dec, latent_dim=args.latent_dim, image_shape=IMAGE_SHAPE, likelihood="bernoulli",
                  optimizer=lambda params: torch.optim.Adam(params, lr=args.lr))
    if args.model == "iwae":
        return IWAE(k=args.k_train, estimator=args.estimator, iw_batch=max(args.k_train, 1), **common)
    if args.model == "vamp":
        return VampVAE(num_pseudo_inputs=args.pseudo_inputs, kl_warmup_steps=args.warmup_steps, **common)
    return VAE(kl_warmup_steps=args.warmup_steps, **common)


def budget(args: argparse.Namespace) -> dict:
    dm = mnist("dynamic", batch_size=args.batch_size)
    test_x = static_test_images(dm)
    if args.pythae_only:  # pythae's row alone, beside ours from an earlier run with the same arguments
        return {"model": args.model, "minutes": args.minutes, **pythae_budget(args, dm, test_x)}
    seed_everything(0)
    model = budget_model(args)
    timer = TimeBudget(args.minutes, args.curve_every,
                       lambda m: test_nll(m, test_x[: args.curve_images], args.curve_k))
    out: dict = {k: v for k, v in vars(args).items() if k not in ("mode", "epochs", "pythae_nll_images")}
    out["fit_wall_s"] = fit_for(model, dm, timer)
    out["steps"], out["epochs_done"] = model.global_step, model.current_epoch
    out["curve_minutes_nll"] = timer.curve  # (training minutes, NLL with curve_k on curve_images)
    start = time.perf_counter()
    out["test_nll"] = test_nll(model, test_x, args.k)
    out["eval_s"] = time.perf_counter() - start
    for k in args.also_k:  # the same model scored with other K (e.g. K=100 to compare with an earlier row)
        out[f"test_nll_k{k}"] = test_nll(model, test_x, k)
    print(json.dumps(out), flush=True)
    if args.pythae and args.model in ("vae", "iwae"):
        out.update(pythae_budget(args, dm, test_x))
    return out


def pythae_budget(args: argparse.Namespace, dm: MNISTDataModule, test_x: torch.Tensor) -> dict:
    """pythae's VAE or IWAE for as many epochs as fit ``--minutes`` (one timed epoch first, then a fresh run)."""
    train_x = torch.bernoulli(dm.train_set.images.float() / 255.0, generator=torch.Generator().manual_seed(0))

    def train(epochs: int) -> tuple[object, float]:
        seed_everything(0)
        enc, dec = networks(latent_dim=args.latent_dim)
        pmodel = pythae_model(enc, dec, args.latent_dim, kind=args.model, k=args.k_train)
        with tempfile.TemporaryDirectory() as tmp:
            ptrainer = pythae_trainer(pmodel, train_x, epochs, tmp, batch_size=args.batch_size)
            start = time.perf_counter()
            ptrainer.train()
            return ptrainer.model, time.perf_counter() - start

    _, epoch_s = train(1)
    epochs = max(1, int(60.0 * args.minutes / epoch_s))
    trained, train_s = train(epochs)
    ours = make_vae(trained.encoder.net, trained.decoder.net, latent_dim=args.latent_dim)
    scores = {f"pythae_test_nll_our_estimator_k{k}": test_nll(ours, test_x, k) for k in args.also_k}
    return {"pythae_model": args.model, "pythae_epochs": epochs, "pythae_epoch_s": epoch_s, "pythae_train_s": train_s,
            "pythae_test_nll_our_estimator": test_nll(ours, test_x, args.k), "k": args.k, **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["compare", "best", "budget"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--pythae-nll-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared)")
    budget_args = parser.add_argument_group("budget")
    budget_args.add_argument("--model", choices=["vae", "iwae", "vamp"], default="vae")
    budget_args.add_argument("--minutes", type=float, default=30.0, help="training wall minutes")
    budget_args.add_argument("--k-train", type=int, default=5, help="IWAE samples per input in training")
    budget_args.add_argument("--estimator", choices=["iwae", "dreg"], default="iwae")
    budget_args.add_argument("--pseudo-inputs", type=int, default=500, help="VampPrior components")
    budget_args.add_argument("--latent-dim", type=int, default=64)
    budget_args.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    budget_args.add_argument("--lr", type=float, default=LR)
    budget_args.add_argument("--warmup-steps", type=int, default=5000, help="KL warm-up (vae, vamp)")
    budget_args.add_argument("--curve-every", type=float, default=5.0, help="training minutes between points")
    budget_args.add_argument("--curve-k", type=int, default=100)
    budget_args.add_argument("--curve-images", type=int, default=2000)
    budget_args.add_argument("--also-k", type=int, nargs="*", default=[], help="also score with these K")
    budget_args.add_argument("--pythae", action="store_true", help="also pythae's vae/iwae at the same budget")
    budget_args.add_argument("--pythae-only", action="store_true", help="only pythae's vae/iwae (ours not trained)")
    args = parser.parse_args()
    if args.pythae_only and args.model not in ("vae", "iwae"):
        parser.error(f"--pythae-only: pythae's counterpart exists for --model vae or iwae, not {args.model}")
    if args.epochs is None:
        args.epochs = 20 if args.mode == "compare" else 55
    torch.set_num_threads(args.threads)
    out = {"compare": compare, "best": best, "budget": budget}[args.mode](args)
    print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
