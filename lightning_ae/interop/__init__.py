"""Other ecosystems' model formats: :mod:`lightning_ae.interop.diffusers` (``AutoencoderKL`` and ``VQModel``)."""

from lightning_ae.interop.diffusers import (
    DiffusersError,
    diffusers_config,
    export_diffusers,
    load_diffusers_weights,
    read_diffusers_folder,
    to_diffusers_state_dict,
)

__all__ = [
    "DiffusersError",
    "diffusers_config",
    "export_diffusers",
    "load_diffusers_weights",
    "read_diffusers_folder",
    "to_diffusers_state_dict",
]
