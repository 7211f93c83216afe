"""The quantizers: one small module each, all :class:`Quantizer` ``nn.Module`` s returning a
:class:`QuantizerOutput`, injected into :class:`~lightning_ae.models.VQVAE` with ``quantizer=...``.

- :class:`VectorQuantizer`: the VQ-VAE's (EMA, k-means, restarts, cosine, factorized codes, rotation trick).
- :class:`FSQ`: finite scalar quantization (Mentzer et al. 2023).
- :class:`LFQ`: lookup-free quantization (MAGVIT-v2, Yu et al. 2023).
- :class:`ResidualVQ`: residual vector quantization (SoundStream, Zeghidour et al. 2021).

Their shared pure functions are in :mod:`lightning_ae.quantizers.functional`.
"""

from lightning_ae.quantizers.base import Quantizer, QuantizerOutput, check_quantizer
from lightning_ae.quantizers.fsq import FSQ
from lightning_ae.quantizers.functional import (
    all_reduce_sum,
    broadcast_from_rank0,
    count_codes,
    ema_codebook,
    entropy,
    initial_codebook,
    laplace_smoothed,
    perplexity_of_counts,
    rotation_trick,
    sample_rows,
    straight_through,
    vq_losses,
)
from lightning_ae.quantizers.lfq import LFQ
from lightning_ae.quantizers.residual import ResidualVQ
from lightning_ae.quantizers.vq import VectorQuantizer

__all__ = [
    "FSQ", "LFQ", "Quantizer", "QuantizerOutput", "ResidualVQ", "VectorQuantizer", "all_reduce_sum",
    "broadcast_from_rank0", "check_quantizer", "count_codes", "ema_codebook", "entropy", "initial_codebook",
    "laplace_smoothed", "perplexity_of_counts", "rotation_trick", "sample_rows", "straight_through", "vq_losses",
]
