"""Model folders: save_pretrained / from_pretrained round trips for every variant and the prior, configs with
class_paths, refusal of code outside lightning_ae / torch.nn / torch.optim, and loading any model source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from lightning_ae import (
    FSQ,
    LFQ,
    VAE,
    VQGAN,
    VQVAE,
    Autoencoder,
    AutoencoderBase,
    AutoencoderKL,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    FakeImageDataModule,
    PixelCNNPrior,
    ResidualVQ,
    SparseAutoencoder,
    VectorQuantizer,
)
from lightning_ae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, PatchGANDiscriminator
from lightning_ae.pretrained import from_config, load_model

VARIANTS = {
    "ae": lambda: Autoencoder(latent_dim=4, network="conv", recon_loss="bce"),
    "dae": lambda: DenoisingAutoencoder(latent_dim=4, corruption="gaussian", noise_std=0.3),
    "sae-topk": lambda: SparseAutoencoder(latent_dim=8, sparsity="topk", k=3),
    "cae": lambda: ContractiveAutoencoder(latent_dim=4, penalty="sigmoid", network="sigmoid", contractive_weight=0.5),
    "vae": lambda: VAE(latent_dim=4, likelihood="gaussian", gaussian_std=None, beta=2.0),
    "vqvae": lambda: VQVAE(latent_dim=8, quantizer=VectorQuantizer(16, code_dim=8), hidden_channels=16, res_channels=8,
                           pixel_range=(-0.5, 0.5)),
}


def _perturbed(model: nn.Module) -> nn.Module:
    """The model with its saved float tensors moved off their initial values (as after training)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in model.state_dict().values():  # shares storage with the parameters and persistent buffers
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model = _perturbed(VARIANTS[name]())
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = type(model).from_pretrained(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.rand(3, *model.image_shape) - (0.5 if name == "vqvae" else 0.0)
    assert torch.equal(model(x), loaded(x))
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert type(AutoencoderBase.from_pretrained(tmp_path)) is type(model)  # any variant through the base


def test_prior_folder_holds_its_vqvae(tmp_path: Path) -> None:
    vqvae = _perturbed(VARIANTS["vqvae"]())
    vqvae.save_pretrained(tmp_path / "vq")
    prior = _perturbed(PixelCNNPrior(str(tmp_path / "vq"), channels=8, num_layers=2, pixel_range=(-0.5, 0.5)))
    prior.save_pretrained(tmp_path / "prior")
    (tmp_path / "vq" / "model.safetensors").unlink()  # the prior's folder does not depend on the original
    loaded = PixelCNNPrior.from_pretrained(tmp_path / "prior")
    assert json.loads((tmp_path / "prior/config.json").read_text())["init_args"]["vqvae_checkpoint"] == "vqvae"
    indices = torch.randint(16, (2, 7, 7))
    assert torch.equal(prior(indices), loaded(indices))
    x = torch.rand(2, 1, 28, 28) - 0.5
    assert torch.equal(prior.vqvae.encode_indices(x), loaded.vqvae.encode_indices(x))


def test_networks_from_class_paths_are_stored_as_such(tmp_path: Path) -> None:
    encoder = {"class_path": "lightning_ae.nets.MLPEncoder", "init_args": {"image_shape": [1, 8, 8], "out_dim": 3}}
    decoder = {"class_path": "lightning_ae.nets.MLPDecoder", "init_args": {"image_shape": [1, 8, 8], "latent_dim": 3}}
    optimizer = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}
    model = from_config({"class_path": "lightning_ae.Autoencoder", "init_args": {
        "encoder": encoder, "decoder": decoder, "image_shape": [1, 8, 8], "optimizer": optimizer}})
    model.save_pretrained(tmp_path)
    init_args = json.loads((tmp_path / "config.json").read_text())["init_args"]
    assert init_args["encoder"] == encoder and init_args["decoder"] == decoder and init_args["optimizer"] == optimizer
    loaded = Autoencoder.from_pretrained(tmp_path)
    assert type(loaded.encoder).__name__ == "MLPEncoder" and loaded.configure_optimizers().defaults["lr"] == 0.5
    # and its Lightning checkpoint loads with no arguments, like one written by lightning-ae fit
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(loaded, datamodule=FakeImageDataModule(image_shape=(1, 8, 8), num_train=32, val_size=8))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert type(Autoencoder.load_from_checkpoint(tmp_path / "m.ckpt").encoder).__name__ == "MLPEncoder"


class MyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("encoder", [MyEncoder, lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 4))],
                         ids=["own-class", "torch-container"])
def test_a_module_of_another_class_is_refused_naming_it(tmp_path: Path, encoder) -> None:
    module = encoder()
    model = Autoencoder(encoder=module, latent_dim=4)
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    with pytest.raises(ValueError, match=rf"encoder is a {name}, a class outside lightning_ae") as info:
        model.save_pretrained(tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


PYTHON_BUILT = {
    "vqvae-fsq": lambda: VQVAE(latent_dim=8, hidden_channels=16, res_channels=8,
                               quantizer=FSQ(levels=[4, 3], code_dim=8)),
    "vqvae-lfq": lambda: VQVAE(latent_dim=8, hidden_channels=16, res_channels=8, quantizer=LFQ(16, code_dim=8)),
    "vqvae-rvq": lambda: VQVAE(latent_dim=8, hidden_channels=16, res_channels=8,
                               quantizer=ResidualVQ(num_quantizers=2, num_codes=8, code_dim=8, cosine=True)),
    "vqvae-vq-rotation": lambda: VQVAE(latent_dim=8, hidden_channels=16, res_channels=8,
                                       quantizer=VectorQuantizer(8, code_dim=8, rotation_trick=True, ema=False)),
    "ae-nets": lambda: Autoencoder(encoder=MLPEncoder((1, 28, 28), 5, hidden_dims=(32,)),
                                   decoder=MLPDecoder((1, 28, 28), 5, hidden_dims=(32,)), latent_dim=5),
    "vae-conv-nets": lambda: VAE(encoder=ConvEncoder((1, 28, 28), 8, hidden_channels=16),
                                 decoder=ConvDecoder((1, 28, 28), 4, hidden_channels=16), latent_dim=4),
    "autoencoder-kl-gan": lambda: AutoencoderKL(image_shape=(1, 16, 16), network_options={"ch": 32, "ch_mult": [1, 2]},
                                                discriminator=PatchGANDiscriminator(1, ndf=8, n_layers=2)),
    "vqgan-fsq": lambda: VQGAN(image_shape=(3, 16, 16), latent_dim=3, network_options={"ch": 32, "ch_mult": [1, 2]},
                               quantizer=FSQ(levels=[4, 3, 2], code_dim=3),
                               discriminator=PatchGANDiscriminator(ndf=8, n_layers=2, norm="group")),
}


@pytest.mark.parametrize("name", sorted(PYTHON_BUILT))
def test_a_model_built_in_python_from_library_parts_saves_and_loads_equal(tmp_path: Path, name: str) -> None:
    """Parts given as Python objects are written as their class_path/init_args: the folder rebuilds the same
    model, and the Lightning checkpoint holds no pickled module (it loads with weights_only=True)."""
    model = _perturbed(PYTHON_BUILT[name]())
    model.save_pretrained(tmp_path / "folder")
    loaded = type(model).from_pretrained(tmp_path / "folder")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.rand(3, *model.image_shape)
    assert torch.equal(model(x), loaded(x))
    trainer = Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = type(model).load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    assert torch.equal(restored(x), model(x))


def test_an_edited_or_broken_config_is_named(tmp_path: Path) -> None:
    VARIANTS["ae"]().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "init_args": {**config["init_args"], "latent_dim": 5}}))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match the model its config\.json describes"):
        Autoencoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"class_path": ')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        Autoencoder.from_pretrained(tmp_path)


@pytest.mark.parametrize(("key", "value"), [
    ("encoder", {"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}}),
    ("optimizer", {"class_path": "builtins.eval"}),
    ("encoder", "os.system"),
])
def test_config_naming_other_code_is_refused(tmp_path: Path, key: str, value: object) -> None:
    VARIANTS["ae"]().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["init_args"][key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="refused"):
        Autoencoder.from_pretrained(tmp_path)


def test_top_level_class_is_checked(tmp_path: Path) -> None:
    VARIANTS["ae"]().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a VAE"):
        VAE.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "class_path": "collections.OrderedDict"}))
    with pytest.raises(ValueError, match="refused"):
        AutoencoderBase.from_pretrained(tmp_path)


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a model folder nor"):
        Autoencoder.from_pretrained(tmp_path / "nope" / "deeper")
    with pytest.raises(FileNotFoundError, match=r"needs config\.json and model\.safetensors"):
        Autoencoder.from_pretrained(tmp_path)


def test_load_model_reads_folders_and_checkpoints(tmp_path: Path) -> None:
    model = _perturbed(VARIANTS["vae"]())
    model.save_pretrained(tmp_path / "folder")
    trainer = Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    x = torch.rand(2, 1, 28, 28)
    for source, model_class in ((tmp_path / "folder", None), (tmp_path / "m.ckpt", "VAE")):
        assert torch.equal(load_model(source, model_class)(x), model(x))
    with pytest.raises(ValueError, match="names no model class"):
        load_model(tmp_path / "m.ckpt")
