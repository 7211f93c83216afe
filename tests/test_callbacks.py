"""Callbacks and the image logging helper: every callback, every variant, every logger kind (CSV / no logger as
PNG files, TensorBoard read back with EventAccumulator, W&B offline read back from the run's files)."""

from __future__ import annotations

import csv
import io
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from matplotlib.image import imread

from lightning_ae import (
    VAE,
    VQVAE,
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    FakeImageDataModule,
    PixelCNNPrior,
    SparseAutoencoder,
    VectorQuantizer,
)
from lightning_ae.callbacks import (
    CodebookUsageMonitor,
    LatentInterpolation,
    LatentSpaceVisualizer,
    ReconstructionGrid,
    SampleGrid,
    log_image,
    make_grid,
    project_2d,
    scatter_figure,
)
from lightning_ae.callbacks.grid import stack_rows, to_rgb_uint8
from lightning_ae.callbacks.logging import png_path
from lightning_ae.quantizers import perplexity_of_counts

SHAPE = (1, 16, 16)  # images of the tests; cells of a grid are 16 + 2 pixels apart
COMMON = {"image_shape": SHAPE, "num_classes": 4}
NUM_CODES = 16
VQ_ARGS = {"latent_dim": 8, "hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1}


def vqvae() -> VQVAE:
    return VQVAE(quantizer=VectorQuantizer(NUM_CODES, code_dim=8), **VQ_ARGS, **COMMON)


AUTOENCODERS: dict[str, Callable[[], LightningModule]] = {
    "Autoencoder": lambda: Autoencoder(latent_dim=8, **COMMON),
    "DenoisingAutoencoder": lambda: DenoisingAutoencoder(latent_dim=8, **COMMON),
    "SparseAutoencoder": lambda: SparseAutoencoder(latent_dim=8, **COMMON),
    "ContractiveAutoencoder": lambda: ContractiveAutoencoder(latent_dim=8, **COMMON),
    "VAE": lambda: VAE(latent_dim=8, **COMMON),
    "VQVAE": lambda: vqvae(),
}
VARIANTS = [*AUTOENCODERS, "PixelCNNPrior"]
FIGURE = (600, 700)  # LatentSpaceVisualizer figure: 7 x 6 inches at 100 dpi
GRIDS = {  # key -> (height, width) for the callbacks below
    "val/reconstructions": (2 * 18 + 2, 8 * 18 + 2),  # 8 inputs above 8 reconstructions
    "val/interpolations": (2 * 18 + 2, 6 * 18 + 2),  # 2 pairs, 4 steps + the two inputs
    "val/latent_traversals": (3 * 18 + 2, 4 * 18 + 2),  # 3 dimensions, 4 values
    "val/samples": (2 * 18 + 2, 3 * 18 + 2),  # 6 samples, 3 a row
    "val/latent_space": FIGURE,
    "val/codebook_usage": (400, 700),
}


def callbacks_for(variant: str) -> list[Callback]:
    """The callbacks that fit a variant, with the sizes of GRIDS."""
    if variant == "PixelCNNPrior":
        return [SampleGrid(num_samples=6, nrow=3)]
    callbacks: list[Callback] = [
        ReconstructionGrid(num_images=8, nrow=8),
        LatentInterpolation(num_pairs=2, steps=4, traversal_dims=3),
        LatentSpaceVisualizer(num_samples=100),
    ]
    if variant == "VAE":
        callbacks.append(SampleGrid(num_samples=6, nrow=3))
    if variant == "VQVAE":
        callbacks.append(CodebookUsageMonitor(min_used_fraction=0.0))
    return callbacks


def expected_keys(variant: str) -> set[str]:
    keys = {"PixelCNNPrior": {"val/samples"}, "VAE": {"val/samples", "val/latent_traversals"},
            "VQVAE": {"val/codebook_usage"}}.get(variant, set())
    return keys if variant == "PixelCNNPrior" else keys | {"val/reconstructions", "val/interpolations",
                                                           "val/latent_space"}


def datamodule(**kwargs: object) -> FakeImageDataModule:
    args = {"image_shape": SHAPE, "num_classes": 4, "num_train": 64, "num_test": 16, "val_size": 24,
            "batch_size": 16, "noise": 0.05} | kwargs
    return FakeImageDataModule(**args)  # 24 validation images: two batches (16 + 8)


def trainer(root: Path, logger: Logger | bool, callbacks: list[Callback], **kwargs: object) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, default_root_dir=root,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


@pytest.fixture(scope="module")
def vqvae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VQ-VAE checkpoint for the prior, trained for a few steps so that it decodes to more than one colour."""
    root = tmp_path_factory.mktemp("vqvae")
    fit = trainer(root, False, [], max_steps=30, limit_val_batches=0)
    fit.fit(vqvae(), datamodule=datamodule())
    path = root / "vqvae.ckpt"
    fit.save_checkpoint(path)
    return path


def build(variant: str, checkpoint: Callable[[], Path]) -> LightningModule:
    if variant == "PixelCNNPrior":
        return PixelCNNPrior(str(checkpoint()), channels=8, num_layers=2, kernel_size=3, **COMMON)
    return AUTOENCODERS[variant]()


# ---- reading the images back from each logger ----------------------------------------------------------------------
def png_images(log_dir: Path) -> dict[str, np.ndarray]:
    images = {}
    for path in sorted((log_dir / "images").glob("*/*.png")):
        key = "val/" + path.parent.name.removeprefix("val_")
        images[key] = to_rgb_uint8(imread(path))
    return images


def tensorboard_images(log_dir: Path) -> dict[str, np.ndarray]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    images = {}
    for tag in events.Tags()["images"]:
        event = events.Images(tag)[-1]
        array = to_rgb_uint8(imread(io.BytesIO(event.encoded_image_string), format="png"))
        assert array.shape[:2] == (event.height, event.width)
        images[tag] = array
    return images


def tensorboard_scalars(log_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def wandb_run_dir(save_dir: Path) -> Path:
    (run,) = (save_dir / "wandb").glob("offline-run-*")
    return run


def wandb_images(save_dir: Path) -> dict[str, np.ndarray]:
    """``files/media/images/val/<name>_<step>_<hash>.png`` of the offline run."""
    media = wandb_run_dir(save_dir) / "files" / "media" / "images"
    return {f"val/{p.name.rsplit('_', 2)[0]}": to_rgb_uint8(imread(p)) for p in sorted(media.glob("val/*.png"))}


def wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-log blocks of
    32 KiB whose records carry a 7-byte header (crc32, little-endian length, type: 1 full, 2 first, 3 middle,
    4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def wandb_history(save_dir: Path) -> list[dict[str, object]]:
    """The history rows (``wandb.log`` calls) of the offline run, decoded with wandb's own protobuf."""
    import json

    from wandb.proto import wandb_internal_pb2

    (path,) = wandb_run_dir(save_dir).glob("*.wandb")
    rows = []
    for raw in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def csv_metrics(log_dir: Path) -> dict[str, float]:
    with open(log_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}


# ---- checks ------------------------------------------------------------------------------------------------------
def assert_grid_not_blank(image: np.ndarray, cell: int = 16, pad: int = 2) -> None:
    """Every cell of a grid is inside the padding, and the cells together are not one flat colour."""
    rows, cols = (image.shape[0] - pad) // (cell + pad), (image.shape[1] - pad) // (cell + pad)
    cells = [image[pad + r * (cell + pad) : pad + r * (cell + pad) + cell,
                   pad + c * (cell + pad) : pad + c * (cell + pad) + cell] for r in range(rows) for c in range(cols)]
    content = np.stack(cells).astype(float)
    assert content.std() > 1.0, "the grid's images are blank"
    assert (image[:pad] == 255).all(), "the padding should be white"


def assert_figure_not_blank(image: np.ndarray) -> None:
    pixels = image.reshape(-1, 3)
    assert (pixels != 255).any(axis=1).mean() > 0.01, "the figure is (almost) white"
    colored = np.ptp(pixels.astype(int), axis=1) > 60  # saturated pixels: the markers / bars, not black text
    assert colored.mean() > 0.001, "the figure has no coloured marks"


def check_images(images: dict[str, np.ndarray], keys: set[str]) -> None:
    assert set(images) == keys
    for key, image in images.items():
        assert image.shape == (*GRIDS[key], 3), key
        if key in ("val/latent_space", "val/codebook_usage"):
            assert_figure_not_blank(image)
        else:
            assert_grid_not_blank(image)


def logger_and_reader(kind: str, root: Path, monkeypatch: pytest.MonkeyPatch):
    if kind == "none":
        return False, lambda: png_images(root), lambda: {}
    if kind == "csv":
        logger = CSVLogger(root)
        return logger, lambda: png_images(Path(logger.log_dir)), lambda: csv_metrics(Path(logger.log_dir))
    if kind == "tensorboard":
        logger = TensorBoardLogger(root)
        return (logger, lambda: tensorboard_images(Path(logger.log_dir)),
                lambda: tensorboard_scalars(Path(logger.log_dir)))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(root), offline=True, project="lightning-ae-tests")

    def finish() -> None:
        import wandb

        wandb.finish()

    def read_images() -> dict[str, np.ndarray]:
        finish()
        return wandb_images(root)

    def read_metrics() -> dict[str, float]:
        return {k: v for row in wandb_history(root) for k, v in row.items() if isinstance(v, int | float)}

    return logger, read_images, read_metrics


SLOW = pytest.mark.slow
CASES = (
    [pytest.param(v, "csv", id=f"{v}-csv") for v in VARIANTS]
    + [pytest.param(v, "tensorboard", id=f"{v}-tensorboard", marks=[SLOW] if v == "PixelCNNPrior" else [])
       for v in VARIANTS]
    + [pytest.param("Autoencoder", "none", id="Autoencoder-none"), pytest.param("VQVAE", "wandb", id="VQVAE-wandb")]
    + [pytest.param(v, "wandb", id=f"{v}-wandb", marks=SLOW) for v in VARIANTS if v != "VQVAE"]
)


@pytest.mark.parametrize(("variant", "kind"), CASES)
def test_every_callback_every_variant_every_logger(
    variant: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    model = build(variant, lambda: request.getfixturevalue("vqvae_checkpoint"))
    logger, read_images, read_metrics = logger_and_reader(kind, tmp_path, monkeypatch)
    trainer(tmp_path, logger, callbacks_for(variant)).validate(model, datamodule=datamodule(), verbose=False)
    check_images(read_images(), expected_keys(variant))
    metrics = read_metrics()
    if variant == "VQVAE" and kind != "none":  # the logged figures, recomputed from the validation indices
        data = datamodule()
        data.setup("validate")
        with torch.no_grad():
            indices = model.encode_indices(data.transform(data.val_set.images, training=False))
        counts = torch.bincount(indices.flatten(), minlength=NUM_CODES)
        assert metrics["val/codebook_perplexity"] == pytest.approx(perplexity_of_counts(counts).item(), rel=1e-5)
        assert metrics["val/codebook_dead_codes"] == (counts == 0).sum().item()


# ---- the pieces --------------------------------------------------------------------------------------------------
def test_make_grid_places_images_in_rows() -> None:
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 3, 4) / 10
    grid = make_grid(images, nrow=2, padding=1, pad_value=1.0)
    assert grid.shape == (1, 3 * 4 + 1, 2 * 5 + 1)
    assert grid[0, 1, 1] == 0.0 and grid[0, 1, 6] == pytest.approx(0.1) and grid[0, 9, 1] == pytest.approx(0.4)
    assert grid[0, 9, 6] == 1.0  # the empty sixth cell is padding
    assert stack_rows([images[:2], images[:1]], ncol=3).shape == (6, 1, 3, 4)
    with pytest.raises(ValueError, match="nrow"):
        make_grid(images, nrow=0)
    with pytest.raises(ValueError, match="images"):
        make_grid(images[0])


def test_log_image_writes_one_png_per_log_dir_atomically(tmp_path: Path) -> None:
    run = trainer(tmp_path, [CSVLogger(tmp_path), CSVLogger(tmp_path, name="other")], [])
    grid = make_grid(torch.rand(4, 3, 5, 5), nrow=2)
    written = log_image(run, "val/some key", grid, step=7)
    assert [p.parent.parent.parent for p in written] == [Path(lg.log_dir) for lg in run.loggers]
    assert written[0] == png_path(run.loggers[0].log_dir, "val/some key", 7)
    assert written[0].name == "step_0000007.png" and written[0].parent.name == "val_some_key"
    np.testing.assert_array_equal(to_rgb_uint8(imread(written[0])), to_rgb_uint8(grid))
    assert not list(written[0].parent.glob(".*")), "no temporary file is left behind"
    none = trainer(tmp_path / "bare", False, [])
    (path,) = log_image(none, "x", np.zeros((4, 4), dtype=np.uint8) + 9)
    assert path.is_relative_to(tmp_path / "bare") and to_rgb_uint8(imread(path)).max() == 9


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ReconstructionGrid(every_n_epochs=0), "every_n_epochs"),
        (lambda: ReconstructionGrid(num_images=0), "num_images"),
        (lambda: SampleGrid(nrow=0), "nrow"),
        (lambda: LatentInterpolation(steps=1), "steps"),
        (lambda: LatentInterpolation(traversal_dims=-1), "traversal_dims"),
        (lambda: LatentSpaceVisualizer(projection="umap"), "projection"),  # type: ignore[arg-type]
        (lambda: LatentSpaceVisualizer(num_samples=1), "num_samples"),
        (lambda: CodebookUsageMonitor(min_used_fraction=1.5), "min_used_fraction"),
    ],
)
def test_bad_arguments_are_named(make: Callable[[], Callback], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_callback_on_a_model_without_the_method_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"SampleGrid needs a model with sample\(\)"):
        trainer(tmp_path, False, [SampleGrid()]).validate(Autoencoder(**COMMON), datamodule=datamodule())


def test_projection_identity_pca() -> None:
    points = torch.randn(50, 2)
    torch.testing.assert_close(project_2d(points), points)
    with pytest.raises(ValueError, match="identity"):
        project_2d(torch.randn(5, 3), "identity")
    line = torch.linspace(-1, 1, 20).unsqueeze(1) * torch.tensor([[3.0, 4.0, 0.0]])  # a line along (3, 4, 0)
    projected = project_2d(line + 0.01 * torch.randn(20, 3), "pca")
    assert projected.shape == (20, 2) and projected[:, 0].std() > 10 * projected[:, 1].std()


def test_scatter_legend_names_the_classes() -> None:
    figure = scatter_figure(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]), ["zero", "one", "two"])
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["zero", "one", "two"]


def test_drawn_on_every_nth_epoch_and_the_last(tmp_path: Path) -> None:
    run = trainer(tmp_path, False, [ReconstructionGrid(every_n_epochs=2)], max_epochs=5, limit_train_batches=1,
                  num_sanity_val_steps=1)
    run.fit(Autoencoder(**COMMON), datamodule=datamodule())
    steps = sorted(p.stem for p in (tmp_path / "images" / "val_reconstructions").glob("*.png"))
    assert steps == ["step_0000002", "step_0000004", "step_0000005"]  # epochs 2, 4 and the last (5); no sanity


def test_codebook_monitor_counts_every_validation_code_and_warns_on_collapse(tmp_path: Path) -> None:
    model, data = vqvae(), datamodule()
    collapsed = CodebookUsageMonitor(min_used_fraction=1.0)
    with pytest.warns(UserWarning, match="codebook usage collapsed"):
        trainer(tmp_path, False, [collapsed]).validate(model, datamodule=data, verbose=False)
    codes = torch.cat([model.encode_indices(x.float() / 255) for x in data.val_set.images.split(16)])
    torch.testing.assert_close(collapsed.last_counts, torch.bincount(codes.flatten(), minlength=16))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="codebook usage collapsed")
        trainer(tmp_path, False, [CodebookUsageMonitor(min_used_fraction=0.0)]).validate(model, datamodule=data)


def test_latent_scatter_separates_the_clusters(tmp_path: Path) -> None:
    """A tiny AE trained on clustered synthetic data: the 2-D points the callback draws fall into their
    clusters (nearest-centroid accuracy), and the labels drawn are those of the points."""
    torch.manual_seed(0)
    visualizer = LatentSpaceVisualizer(num_samples=200, projection="pca")
    data = datamodule(num_train=400, val_size=200, noise=0.15, batch_size=32)
    run = trainer(tmp_path, False, [visualizer], max_epochs=4)
    run.fit(Autoencoder(latent_dim=8, **COMMON), datamodule=data)
    points, labels = visualizer.last_points, visualizer.last_labels
    assert points.shape == (200, 2)
    torch.testing.assert_close(labels, data.val_set.labels)

    def nearest_centroid_accuracy(y: torch.Tensor) -> float:
        centroids = torch.stack([points[y == c].mean(0) for c in range(4)])
        return (torch.cdist(points, centroids).argmin(1) == y).float().mean().item()

    assert nearest_centroid_accuracy(labels) > 0.95
    assert nearest_centroid_accuracy(labels[torch.randperm(200)]) < 0.6  # the check can fail
    assert (tmp_path / "images" / "val_latent_space").is_dir()


CLI_CONFIG = """
trainer:
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args: {offline: true, project: lightning-ae-tests}
  callbacks:
    - class_path: lightning_ae.callbacks.ReconstructionGrid
      init_args: {every_n_epochs: 2, num_images: 16, nrow: 4}
    - class_path: lightning_ae.callbacks.SampleGrid
      init_args: {num_samples: 9, seed: 3}
    - class_path: lightning_ae.callbacks.LatentInterpolation
      init_args: {num_pairs: 3, traversal_dims: 2}
    - class_path: lightning_ae.callbacks.LatentSpaceVisualizer
      init_args: {projection: tsne, num_samples: 500}
model: {class_path: lightning_ae.VAE}
data: {class_path: lightning_ae.FakeImageDataModule}
"""


@pytest.mark.parametrize("progress_bar", [True, False])
def test_cli_yaml_callbacks_wandb_logger_and_rich_defaults(
    progress_bar: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar

    from lightning_ae.cli import LightningAECLI

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text(CLI_CONFIG)
    cli = LightningAECLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         auto_configure_optimizers=False, run=False, save_config_kwargs={"overwrite": True},
                         args=["--config", str(config), "--trainer.logger.save_dir", str(tmp_path),
                               "--trainer.enable_progress_bar", str(progress_bar).lower()])
    assert isinstance(cli.trainer.logger, WandbLogger)
    found = {type(c): c for c in cli.trainer.callbacks}
    assert found[ReconstructionGrid].every_n_epochs == 2 and found[ReconstructionGrid].max_rows == 16
    assert found[SampleGrid].num_samples == 9 and found[SampleGrid].seed == 3
    assert found[LatentInterpolation].traversal_dims == 2 and found[LatentSpaceVisualizer].projection == "tsne"
    assert (RichProgressBar in found) is progress_bar  # the config's callbacks are kept, Rich ones added
    assert RichModelSummary in found
    if progress_bar:
        return
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)  # run them: images from each, t-SNE
    points = found[LatentSpaceVisualizer].last_points
    assert points is not None and points.shape[1] == 2 and torch.isfinite(points).all()
    wandb_files = list(tmp_path.rglob("*.wandb"))
    assert wandb_files, "the offline W&B run wrote nothing"


def test_codebook_monitor_on_a_model_without_codes_is_a_clear_error(tmp_path: Path) -> None:
    """A YAML config that gives CodebookUsageMonitor to a VAE fails at setup, naming what the model lacks."""
    with pytest.raises(TypeError, match=r"CodebookUsageMonitor needs a model with codebook_usage\(\); VAE has none"):
        trainer(tmp_path, False, [CodebookUsageMonitor()]).validate(build("VAE", lambda: None), datamodule=datamodule())


def test_tsne_projection_keeps_clusters_apart() -> None:
    """project_2d(..., "tsne") (scikit-learn) on two far-apart 10-D clusters gives two separable 2-D groups."""
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(40, 10, generator=generator), torch.randn(40, 10, generator=generator) + 20])
    embedded = project_2d(points, "tsne", perplexity=10.0)
    assert embedded.shape == (80, 2)
    a, b = embedded[:40], embedded[40:]
    assert torch.cdist(a.mean(0, keepdim=True), b).min() > torch.cdist(a.mean(0, keepdim=True), a).max()


def test_reconstruction_grid_cells_are_the_inputs_and_their_reconstructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cell of the drawn grid, by position: row 0 the first validation images, row 1 ``model(x)`` of them."""
    import lightning_ae.callbacks.images as images_module

    drawn: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(images_module, "log_image", lambda trainer, key, image, step=None: drawn.update({key: image}))
    model = Autoencoder(latent_dim=8, **COMMON).eval()
    data = datamodule()
    trainer(tmp_path, False, [ReconstructionGrid(num_images=4, nrow=4)]).validate(model, datamodule=data)
    grid = drawn["val/reconstructions"]
    x = data.transform(data.val_set.images[:4], training=False)
    with torch.no_grad():
        expected = {0: x, 1: model(x).clamp(0, 1)}
    height, width = SHAPE[1:]
    for row, images in expected.items():
        for col in range(4):
            top, left = 2 + row * (height + 2), 2 + col * (width + 2)
            torch.testing.assert_close(grid[:, top:top + height, left:left + width], images[col])
