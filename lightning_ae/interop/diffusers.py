"""Two-way interop with diffusers: our :class:`~lightning_ae.AutoencoderKL` (and a Gaussian VAE with the LDM
networks) <-> ``diffusers.AutoencoderKL``, and a :class:`~lightning_ae.VQVAE` with the LDM networks and a plain
:class:`~lightning_ae.VectorQuantizer` <-> ``diffusers.VQModel``.

The LDM networks name their parameters as diffusers' ``Encoder`` / ``Decoder`` do, so the map is the identity
under the ``encoder.`` / ``decoder.`` prefixes, except latent diffusion's 1x1 convolutions, which diffusers keeps
beside the networks: ``encoder.quant_conv`` <-> ``quant_conv``, ``decoder.post_quant_conv`` <-> ``post_quant_conv``,
and the codebook ``quantizer.codebook`` <-> ``quantize.embedding.weight``. A diffusers folder is
``config.json`` plus ``diffusion_pytorch_model.safetensors``, read and written without diffusers itself (a pickled
``.bin`` is refused: it could run code); diffusers is needed only to verify an export by loading it.

    lightning-ae export --ckpt_path model/ --format diffusers --out sd-vae/
    >>> # AutoencoderKL.from_pretrained("sd-vae/") in diffusers
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_ae.errors import InputError
from lightning_ae.nets.ldm import LDMDecoder, LDMEncoder
from lightning_ae.pretrained import state_dict_mismatch

CONFIG, WEIGHTS = "config.json", "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.30.0"  # written when diffusers is not installed; any later diffusers reads the format


class DiffusersError(InputError, ValueError):
    """A model that has no diffusers counterpart, or a diffusers folder that does not fit a model (one line)."""


# ---- the layout ------------------------------------------------------------------------------------------------------
def _networks(model: nn.Module) -> tuple[LDMEncoder, LDMDecoder]:
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    encoder = getattr(encoder, "_orig_mod", encoder)
    if not isinstance(encoder, LDMEncoder) or not isinstance(decoder, LDMDecoder):
        raise DiffusersError(f"{type(model).__name__} has networks {type(encoder).__name__} / "
                             f"{type(decoder).__name__}; diffusers' autoencoders are the LDM networks (network: ldm)")
    return encoder, decoder


def _attention_types(encoder: LDMEncoder, decoder: LDMDecoder) -> tuple[list[str], list[str]]:
    down = ["AttnDownEncoderBlock2D" if level.attentions is not None else "DownEncoderBlock2D"
            for level in encoder.down_blocks]
    up = ["AttnUpDecoderBlock2D" if level.attentions is not None else "UpDecoderBlock2D" for level in decoder.up_blocks]
    return down, up


def _common_config(model: nn.Module, encoder: LDMEncoder, decoder: LDMDecoder) -> dict[str, Any]:
    checks = [("block channels", encoder.block_channels, decoder.block_channels),
              ("ResNet blocks per level", encoder.num_res_blocks, decoder.num_res_blocks),
              ("z_channels", encoder.z_channels, decoder.z_channels),
              ("mid_attention", encoder.mid_attention, decoder.mid_attention)]
    for what, a, b in checks:
        if a != b:
            raise DiffusersError(f"the encoder and decoder differ in {what} ({a} vs {b}); diffusers has one value")
    channels = model.image_shape[0]
    if decoder.out_channels != channels:
        raise DiffusersError(f"the decoder outputs {decoder.out_channels} channels for {channels}-channel images (a "
                             "per-pixel variance or mixture); diffusers' autoencoders decode to the image itself")
    down, up = _attention_types(encoder, decoder)
    return {"in_channels": encoder.in_channels, "out_channels": channels, "down_block_types": down,
            "up_block_types": up, "block_out_channels": list(encoder.block_channels),
            "layers_per_block": encoder.num_res_blocks, "act_fn": "silu", "latent_channels": encoder.z_channels,
            "norm_num_groups": 32, "sample_size": model.image_shape[1],
            "mid_block_add_attention": encoder.mid_attention}


def diffusers_config(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """``(class_name, config)`` of the diffusers model that ``model`` maps onto: ``"AutoencoderKL"`` for a KL
    autoencoder (or a Gaussian VAE of fixed variance) with the LDM networks, ``"VQModel"`` for a VQ-VAE with the
    LDM networks and a plain ``VectorQuantizer``.

    Raises:
        DiffusersError: one line saying why a model has no diffusers counterpart.
    """
    from lightning_ae.models import VAE, VQVAE, AutoencoderKL

    encoder, decoder = _networks(model)
    config = _common_config(model, encoder, decoder)
    if isinstance(model, VQVAE):
        return "VQModel", {**config, **_vq_config(model, encoder, decoder)}
    if not isinstance(model, VAE):
        raise DiffusersError(f"{type(model).__name__} has no diffusers counterpart: diffusers has the KL autoencoder "
                             "(AutoencoderKL) and the VQ model (VQModel)")
    likelihood = model.pixel_likelihood
    if not isinstance(model, AutoencoderKL) and (likelihood.kind != "gaussian" or likelihood.channels_per_pixel != 1):
        raise DiffusersError(f"{type(model).__name__} decodes {model.pixel_likelihood.kind} parameters; diffusers' "
                             "AutoencoderKL decodes images (use AutoencoderKL, or a VAE with a fixed-std Gaussian)")
    if not encoder.double_z or encoder.embed_dim != encoder.z_channels:
        raise DiffusersError("diffusers' AutoencoderKL needs double_z and embed_dim == z_channels")
    scaling = float(model.scaling_factor) if isinstance(model, AutoencoderKL) else 1.0
    return "AutoencoderKL", {**config, "scaling_factor": scaling, "shift_factor": None, "latents_mean": None,
                             "latents_std": None, "force_upcast": True,
                             "use_quant_conv": encoder.quant_conv is not None,
                             "use_post_quant_conv": decoder.post_quant_conv is not None}


def _vq_config(model: nn.Module, encoder: LDMEncoder, decoder: LDMDecoder) -> dict[str, Any]:
    from lightning_ae.quantizers import VectorQuantizer

    quantizer = model.quantizer
    if type(quantizer) is not VectorQuantizer:
        raise DiffusersError(f"diffusers' VQModel has a plain nearest-neighbour codebook; {type(quantizer).__name__} "
                             "has no counterpart there")
    if quantizer.cosine or quantizer.codebook_dim != quantizer.code_dim:
        raise DiffusersError("diffusers' VQModel looks codes up by Euclidean distance in the code space; a cosine or "
                             "factorized (codebook_dim) VectorQuantizer has no counterpart there")
    if encoder.double_z or encoder.quant_conv is None or decoder.post_quant_conv is None:
        raise DiffusersError("diffusers' VQModel needs a single-valued latent with quant_conv and post_quant_conv")
    return {"num_vq_embeddings": quantizer.num_codes, "vq_embed_dim": quantizer.code_dim, "scaling_factor": 1.0,
            "norm_type": "group", "lookup_from_codebook": False, "force_upcast": False}


def _diffusers_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors (sharing its storage) under their names in the diffusers model (the map of the
    module docstring)."""
    encoder, decoder = _networks(model)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, network, moved in (("encoder.", encoder, "quant_conv."), ("decoder.", decoder, "post_quant_conv.")):
        for key, value in network.state_dict().items():
            tensors[key if key.startswith(moved) else prefix + key] = value
    quantizer = getattr(model, "quantizer", None)
    if quantizer is not None:
        tensors["quantize.embedding.weight"] = quantizer.codebook.detach()
    return tensors


def to_diffusers_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the diffusers model :func:`diffusers_config` names (contiguous fp32 copies)."""
    return {k: v.detach().float().contiguous().clone() for k, v in _diffusers_tensors(model).items()}


# ---- reading a diffusers folder --------------------------------------------------------------------------------------
def read_diffusers_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers model folder; every problem is a one-line :class:`DiffusersError`
    naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffusersError(f"{folder} is not a folder (a diffusers model folder holds {CONFIG} and {WEIGHTS})")
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not config_path.is_file():
        raise DiffusersError(f"{config_path} is missing: not a diffusers model folder (save_pretrained writes it)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DiffusersError(f"{config_path} is not readable JSON: {err}") from None
    if not weights_path.is_file():
        pickled = folder / "diffusion_pytorch_model.bin"
        hint = (f"; {pickled.name} is a pickle, which is not read (it could run code): save the model with "
                "safe_serialization=True") if pickled.exists() else ""
        raise DiffusersError(f"{weights_path} is missing{hint}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return config, load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffusersError(f"{weights_path} is not a readable safetensors file: {err}") from None


LAYOUT_KEYS = ("_class_name", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
               "down_block_types", "up_block_types", "act_fn", "latent_channels", "norm_num_groups",
               "mid_block_add_attention", "use_quant_conv", "use_post_quant_conv", "num_vq_embeddings", "vq_embed_dim",
               "norm_type")
_DEFAULTS = {"act_fn": "silu", "norm_num_groups": 32, "mid_block_add_attention": True, "use_quant_conv": True,
             "use_post_quant_conv": True, "norm_type": "group"}


def _check_layout(model: nn.Module, config: dict[str, Any], folder: Path) -> None:
    name, ours = diffusers_config(model)
    ours = {"_class_name": name, **ours}
    for key in LAYOUT_KEYS:
        if key not in ours:
            continue
        theirs = config.get(key, _DEFAULTS.get(key, ours[key] if key == "vq_embed_dim" else None))
        if key == "vq_embed_dim" and theirs is None:
            theirs = config.get("latent_channels")
        if (list(theirs) if isinstance(theirs, list | tuple) else theirs) != ours[key]:
            raise DiffusersError(f"{folder / CONFIG} has {key}={theirs!r} but the model has {ours[key]!r}: build the "
                                 f"model from the folder ({type(model).__name__}.from_diffusers) or match its layout")


def load_diffusers_weights(model: nn.Module, folder: str | Path) -> None:
    """Copies the weights of the diffusers folder into ``model``'s networks (and codebook), after checking that the
    folder's layout is the model's (:func:`diffusers_config`); ``scaling_factor`` stays the model's.

    Raises:
        DiffusersError: one line naming the file or the config entry that does not fit.
    """
    folder = Path(folder)
    config, state = read_diffusers_folder(folder)
    _check_layout(model, config, folder)
    own = _diffusers_tensors(model)
    problem = state_dict_mismatch(own, state)
    if problem:
        raise DiffusersError(f"{folder / WEIGHTS} does not fit the model: {problem}")
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(state[key])


def autoencoder_kl_arguments(folder: str | Path) -> dict[str, Any]:
    """The :class:`~lightning_ae.AutoencoderKL` arguments of the layout in a ``diffusers.AutoencoderKL`` folder:
    ``latent_dim``, ``network_options``, ``image_shape``, ``scaling_factor`` and ``pixel_range`` (-1, 1), the range
    diffusers' VAEs work on.

    Raises:
        DiffusersError: for a folder of another class, or a layout the LDM networks do not build.
    """
    folder = Path(folder)
    config, _ = read_diffusers_folder(folder)
    path = folder / CONFIG
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise DiffusersError(f"{path} describes a {config['_class_name']}, not an AutoencoderKL")
    for key, wanted in (("act_fn", "silu"), ("norm_num_groups", 32)):
        if config.get(key, wanted) != wanted:
            raise DiffusersError(f"{path} has {key}={config[key]!r}; the LDM networks use {wanted!r}")
    if config.get("use_quant_conv", True) != config.get("use_post_quant_conv", True):
        raise DiffusersError(f"{path} has use_quant_conv != use_post_quant_conv; the LDM networks keep both or none")
    channels = list(config.get("block_out_channels", [64]))
    if any(c % channels[0] for c in channels):
        raise DiffusersError(f"{path} has block_out_channels {channels}, not multiples of the first")
    size = int(config.get("sample_size", 32) if not isinstance(config.get("sample_size"), list)
               else config["sample_size"][0])
    down = config.get("down_block_types", ["DownEncoderBlock2D"] * len(channels))
    up = config.get("up_block_types", ["UpDecoderBlock2D"] * len(channels))
    attn = [size // 2**i for i, t in enumerate(down) if t.startswith("Attn")]
    attn_up = [size // 2 ** (len(up) - 1 - i) for i, t in enumerate(up) if t.startswith("Attn")]
    if sorted(attn) != sorted(attn_up):
        raise DiffusersError(f"{path} has attention at other levels in the encoder ({down}) and the decoder ({up})")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise DiffusersError(f"{path} has in_channels != out_channels; an autoencoder reconstructs its input")
    options = {"ch": channels[0], "ch_mult": [c // channels[0] for c in channels],
               "num_res_blocks": int(config.get("layers_per_block", 1)), "attn_resolutions": attn,
               "resolution": size, "mid_attention": bool(config.get("mid_block_add_attention", True)),
               "quant_conv": bool(config.get("use_quant_conv", True))}
    return {"latent_dim": int(config.get("latent_channels", 4)), "network": "ldm", "network_options": options,
            "image_shape": (int(config.get("in_channels", 3)), size, size), "pixel_range": (-1.0, 1.0),
            "scaling_factor": float(config.get("scaling_factor", 0.18215))}


# ---- writing ------------------------------------------------------------------------------------------------
def _diffusers_version() -> str:
    try:
        import diffusers
    except ImportError:
        return DIFFUSERS_VERSION
    return diffusers.__version__


def verify_diffusers_export(model: nn.Module, folder: Path, atol: float = 1e-5) -> float:
    """Loads ``folder`` with diffusers and compares its ``encode`` (posterior mean / pre-quantization latents) and
    ``decode`` with the model's on random images in fp32; returns the largest difference.

    Raises:
        ImportError: without diffusers (names the package).
        DiffusersError: when a difference exceeds ``atol``.
    """
    try:
        import diffusers
    except ImportError:
        raise ImportError("verifying a diffusers export needs diffusers: pip install diffusers (or verify=False)"
                          ) from None
    name, _ = diffusers_config(model)
    theirs = getattr(diffusers, name).from_pretrained(str(folder)).eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    low, high = model.pixel_range
    x = (low + (high - low) * torch.rand(2, *model.image_shape, generator=generator)).to(device)
    with torch.no_grad():
        theirs = theirs.to(device)
        if name == "VQModel":
            ours_z, their_z = model.encode(x), theirs.encode(x).latents
            ours_x, their_x = model.decode(ours_z), theirs.decode(ours_z).sample
        else:
            ours_z, their_z = model.encode(x), theirs.encode(x).latent_dist.mean
            ours_x, their_x = model.decode(ours_z), theirs.decode(ours_z).sample
    worst = max(float((ours_z - their_z).abs().max()), float((ours_x - their_x).abs().max()))
    if worst > atol:
        raise DiffusersError(f"the diffusers {name} in {folder} differs from the model by {worst:.3g} > atol {atol}")
    return worst


def export_diffusers(model: nn.Module, out: str | Path, verify: bool = True, atol: float = 1e-5) -> Path:
    """Writes ``model`` as a diffusers folder (``config.json``, ``diffusion_pytorch_model.safetensors``) that
    ``diffusers.AutoencoderKL.from_pretrained(out)`` (or ``VQModel``) loads, ``scaling_factor`` set.

    Written into a temporary folder beside ``out``, verified there with diffusers (``verify``), and moved into
    place (the config last), so a refused export leaves a previous one untouched. Returns the config's path.

    Raises:
        DiffusersError: for a model with no diffusers counterpart (one line saying why) or an export that differs.
    """
    from safetensors.torch import save_file

    from lightning_ae.export import staged_folder

    name, config = diffusers_config(model)
    with staged_folder(model, out, last=CONFIG) as staged:
        save_file(to_diffusers_state_dict(model), str(staged / WEIGHTS))
        full = {"_class_name": name, "_diffusers_version": _diffusers_version(), **config}
        (staged / CONFIG).write_text(json.dumps(full, indent=2) + "\n")
        if verify:
            verify_diffusers_export(model, staged, atol)
    return Path(out) / CONFIG
