"""``lightning-ae evaluate``: scores a model folder or checkpoint on a datamodule's split with the reconstruction
yardsticks (:class:`~lightning_ae.callbacks.ReconstructionMetrics`) and prints one table, the protocol above it.

    lightning-ae evaluate --ckpt_path my-vae/ --data lightning_ae.CIFAR10DataModule --data.data_dir data \\
        --metrics '[psnr, ssim, fd]' --feature_network cifar10-classifier/ --fd_name fd_c10
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, Trainer

from lightning_ae.callbacks.evaluation import ReconstructionMetrics, Yardstick


def evaluate_model(model: Any, data: LightningDataModule, metrics: list[Yardstick], split: Literal["val", "test"]
                   = "test", accelerator: str = "auto", devices: int | str = "auto", **options: Any
                   ) -> dict[str, float]:
    """Runs ``Trainer.test`` (or ``validate``) of ``model`` on ``data`` with :class:`ReconstructionMetrics`
    (``options``: its other arguments); returns every logged ``{split}/...`` figure."""
    model_shape, data_shape = tuple(getattr(model, "image_shape", ())), tuple(getattr(data, "image_shape", ()))
    if data_shape and model_shape and model_shape != data_shape:
        raise ValueError(f"the model takes images {model_shape} but the data gives {data_shape}")
    callback = ReconstructionMetrics(metrics, **options)
    trainer = Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    run = trainer.test if split == "test" else trainer.validate
    run(model, datamodule=data, verbose=False)
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(f"{split}/")}


def evaluate_command(ckpt_path: str, data: LightningDataModule, metrics: list[Yardstick] | None = None,
                     split: Literal["val", "test"] = "test", max_images: int | None = None,
                     feature_network: str | None = None, fd_name: str = "fd", inception_weights: str | None = None,
                     lpips_vgg: str | None = None, lpips_heads: str | None = None, accelerator: str = "auto",
                     devices: int | str = "auto") -> dict[str, float]:
    """``lightning-ae evaluate``: scores a model folder or checkpoint on a datamodule's split and prints a table.

    Args:
        ckpt_path: a model folder or a checkpoint written by ``lightning-ae fit``.
        data: the datamodule (``--data lightning_ae.CIFAR10DataModule --data.data_dir ...``).
        metrics: yardsticks of :class:`ReconstructionMetrics` (default ``[psnr, ssim]``; ``lpips`` and ``rfid``
            need their weight files).
        split: ``test`` or ``val``.
        max_images: score only this many images (default: the whole split).
        feature_network, fd_name, inception_weights, lpips_vgg, lpips_heads: as :class:`ReconstructionMetrics`.
        accelerator, devices: of the Trainer.
    """
    from lightning_ae.pretrained import load_model

    model = load_model(ckpt_path)
    results = evaluate_model(model, data, metrics or ["psnr", "ssim"], split, accelerator, devices,
                             max_images=max_images, feature_network=feature_network, fd_name=fd_name,
                             inception_weights=inception_weights, lpips_vgg=lpips_vgg, lpips_heads=lpips_heads)
    low, high = model.pixel_range
    c, h, w = model.image_shape
    print(f"{type(model).__name__} from {ckpt_path} on {type(data).__name__} {split} split "
          f"({'all' if max_images is None else f'first {max_images}'} images, {c}x{h}x{w}, pixels [{low:g}, {high:g}]"
          " -> [0, 1]; Inception features after a bilinear resize to 299x299)")
    width = max(len(k) for k in results) if results else 10
    print(f"{'metric':<{width}}  value")
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.4f}")
    return results


def evaluate_main(args: Sequence[str], debug: bool = False) -> None:
    """Parses ``lightning-ae evaluate`` arguments and runs :func:`evaluate_command`; bad input is one line on
    stderr and exit status 2 (``debug``: the traceback)."""
    from jsonargparse import ArgumentParser

    from lightning_ae.errors import InputError

    parser = ArgumentParser(prog="lightning-ae evaluate", description=evaluate_command.__doc__)
    parser.add_function_arguments(evaluate_command, as_group=False)
    cfg = parser.parse_args(list(args))
    try:
        init = parser.instantiate_classes(cfg)
        evaluate_command(**{k: v for k, v in init.as_dict().items() if k != "config"} | {"data": init.data})
    except (InputError, ImportError, ValueError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"lightning-ae evaluate: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
