"""Linear probe: how linearly separable the classes are in a frozen model's codes.

A multinomial logistic regression is fitted on the codes of the training split and scored on the codes of the
test split — the usual representation-learning figure of an autoencoder. Written in torch (full-batch L-BFGS),
so it needs no extra dependency. :func:`linear_probe` is single-process (call it after training, or through the
:class:`LinearProbe` callback, which runs it on rank zero during ``fit``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch import nn

from lightning_ae.batch import extract_images, extract_labels
from lightning_ae.callbacks.base import is_last_epoch, require_methods


@torch.no_grad()
def encode_batches(
    model: LightningModule,
    batches: Iterable[Any],
    datamodule: LightningDataModule | None = None,
    max_samples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and labels of every batch: ``(N, d)`` float32 and ``(N,)`` int64, on the CPU.

    Args:
        model: the (frozen) model; ``model.encode`` gives the codes, flattened to vectors.
        batches: batches holding images and labels (a tuple ``(image, label)`` or a dict).
        datamodule: when given, its ``on_after_batch_transfer`` converts each batch (uint8 -> float...).
        max_samples: stop after this many samples.
    """
    was_training = model.training
    model.eval()
    codes, labels = [], []
    count = 0
    try:
        for batch in batches:
            batch = model.transfer_batch_to_device(batch, model.device, 0)
            if datamodule is not None:
                batch = datamodule.on_after_batch_transfer(batch, 0)
            y = extract_labels(batch)
            if y is None:
                raise ValueError("the batches carry no labels: a linear probe needs (image, label) batches")
            codes.append(model.encode(extract_images(batch)).flatten(1).float().cpu())
            labels.append(y.long().cpu())
            count += labels[-1].shape[0]
            if max_samples is not None and count >= max_samples:
                break
    finally:
        model.train(was_training)
    z, y = torch.cat(codes), torch.cat(labels)
    return (z[:max_samples], y[:max_samples]) if max_samples is not None else (z, y)


def fit_logistic_regression(
    codes: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 200
) -> nn.Module:
    """Multinomial logistic regression on standardized codes, fitted by full-batch L-BFGS.

    Args:
        codes: ``(N, d)`` features.
        labels: ``(N,)`` class indices in ``[0, num_classes)``.
        num_classes: number of classes.
        weight_decay: L2 penalty on the weights (added to the mean cross-entropy).
        max_iter: L-BFGS iterations.

    Returns:
        A module mapping raw codes ``(N, d)`` to logits ``(N, num_classes)`` (standardization included).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    mean, std = codes.mean(0), codes.std(0).clamp_min(1e-6)
    linear = nn.Linear(codes.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    x = (codes - mean) / std
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(x), labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return nn.Sequential(_Standardize(mean, std), linear).requires_grad_(False)


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def linear_probe(
    model: LightningModule,
    datamodule: LightningDataModule,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    max_train_samples: int | None = None,
) -> float:
    """Test accuracy of a logistic regression fitted on the frozen training-set codes of ``model``.

    Args:
        model: a trained autoencoder (its ``encode`` is used; put it on the device you want first).
        datamodule: gives ``train_dataloader`` (fit) and ``test_dataloader`` (score) with labelled batches.
        num_classes: classes (default: ``datamodule.num_classes``, else ``model.num_classes``).
        weight_decay: L2 penalty of the logistic regression.
        max_iter: L-BFGS iterations.
        max_train_samples: fit on at most this many training samples.

    Returns:
        Accuracy in [0, 1] on the test split.
    """
    num_classes = num_classes or getattr(datamodule, "num_classes", None) or model.num_classes
    if not num_classes:
        raise ValueError("num_classes is unknown: pass num_classes or use a datamodule that defines it")
    datamodule.setup("fit")
    datamodule.setup("test")
    train_z, train_y = encode_batches(model, datamodule.train_dataloader(), datamodule, max_train_samples)
    test_z, test_y = encode_batches(model, datamodule.test_dataloader(), datamodule)
    classifier = fit_logistic_regression(train_z, train_y, int(num_classes), weight_decay, max_iter)
    return (classifier(test_z).argmax(1) == test_y).float().mean().item()


class LinearProbe(Callback):
    """Runs :func:`linear_probe` during ``fit`` and logs ``probe/accuracy`` through ``pl_module.log`` (so to every
    logger, the progress bar and ``trainer.callback_metrics``).

    The probe runs at the end of a training epoch (after that epoch's validation): every ``every_n_epochs``
    epochs, and always at the last one (``max_epochs`` reached, ``max_steps`` reached or a requested stop). It
    is computed on global rank zero only, on the trainer's datamodule (its ``train_dataloader`` to fit,
    ``test_dataloader`` to score, both unsharded); the other ranks do not wait for it, and the value is logged
    with ``rank_zero_only=True``. The last accuracy is also kept in :attr:`accuracy`.

    Args:
        every_n_epochs: also probe every this many epochs; ``0``: only at the last epoch.
        max_train_samples: fit the logistic regression on at most this many training samples.
        weight_decay: L2 penalty of the logistic regression.
        max_iter: L-BFGS iterations.
        num_classes: classes (default: the datamodule's, else the model's).
        name: the logged key.
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        max_train_samples: int | None = None,
        weight_decay: float = 1e-4,
        max_iter: int = 200,
        num_classes: int | None = None,
        name: str = "probe/accuracy",
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if max_train_samples is not None and max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {max_train_samples}")
        self.every_n_epochs = every_n_epochs
        self.max_train_samples = max_train_samples
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.num_classes = num_classes
        self.name = name
        self.accuracy: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("encode",))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not (due or is_last_epoch(trainer)):
            return
        if trainer.datamodule is None:
            raise ValueError("LinearProbe needs the trainer's datamodule (trainer.fit(model, datamodule=...))")
        if not trainer.is_global_zero:
            return
        self.accuracy = linear_probe(pl_module, trainer.datamodule, self.num_classes, self.weight_decay,
                                     self.max_iter, self.max_train_samples)
        pl_module.log(self.name, self.accuracy, on_step=False, on_epoch=True, rank_zero_only=True)
