"""A decoder-only transformer over a grid of code indices (the prior of a discrete autoencoder): pre-norm blocks,
causal ``scaled_dot_product_attention``, learned or rotary positions, a class (or start) token in front, tied
input/output embeddings, a KV cache for sampling, and for residual codes (several indices per position) a depth
transformer over the levels of each position (RQ-Transformer, Lee et al. 2022, section 3.2).

The sequence of ``L`` raster-ordered positions, each with ``Q`` indices (``Q = 1`` but for residual VQ), is
modelled as ``p(c) = prod_t prod_q p(c_{t,q} | c_{<t}, c_{t,<q}, y)``: the spatial transformer reads the class
token and the positions before ``t`` (a position's ``Q`` level embeddings summed) and gives ``h_t``; with ``Q = 1``
the logits are ``h_t`` times the code embeddings, with ``Q > 1`` a small causal depth transformer reads ``h_t`` and
the cumulative sums of the level embeddings of ``c_{t,<q}`` and gives level ``q``'s logits.

>>> import torch
>>> net = PriorTransformer(vocab_size=16, length=6, dim=32, num_layers=2, num_heads=4)
>>> net(torch.randint(16, (2, 6, 1))).shape
torch.Size([2, 6, 1, 16])
>>> g = torch.Generator().manual_seed(0)
>>> a = net.sample(3, generator=g.manual_seed(1))
>>> b = net.sample(3, generator=g.manual_seed(1), use_cache=False)
>>> a.shape, bool((a == b).all())
(torch.Size([3, 6, 1]), True)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Positions = Literal["learned", "rope"]


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated ``(B, heads, max_len, d)``."""

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0  # positions stored (advanced once per forward, after the last layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores ``k, v`` ``(B, H, T, d)`` after the cached positions; returns all keys and values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` ``(length, head_dim / 2)`` of rotary position embeddings (Su et al. 2021, eq. 34)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None]
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the pairs ``(x_{2i}, x_{2i+1})`` of ``x`` ``(B, H, T, d)`` by the angles of ``cos, sin`` ``(T, d/2)``."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``, with an optional KV cache."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        prefix = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, prefix + T, d)
        if prefix and t > 1:
            raise ValueError("the KV cache takes a prefix from position 0, then one position at a time")
        # causal from position 0 (teacher forcing, or the cache's first prefix); a cached step sees the whole prefix
        y = F.scaled_dot_product_attention(q, k, v, is_causal=prefix == 0,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, ``mlp_ratio`` wide)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, layer)
        return x + self.mlp(self.norm2(x))


class PriorTransformer(nn.Module):
    """Autoregressive transformer over ``length`` positions of ``levels`` code indices each (see the module
    docstring for the factorization).

    Args:
        vocab_size: codes per level (the quantizer's ``codebook_size``).
        length: positions of the raster-ordered grid (``h * w``).
        levels: indices per position (``ResidualVQ``'s ``num_quantizers``; 1 for every other quantizer).
        num_classes: classes of a class-conditional prior (a class token in front, plus a "no class" token for
            classifier-free guidance); 0 for an unconditional prior (a learned start token).
        dim: width of the embeddings and blocks.
        num_layers: blocks of the spatial transformer.
        num_heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: width of the MLP relative to ``dim``.
        dropout: dropout of the attention and the MLP (training only).
        positions: ``learned`` absolute position embeddings or ``rope`` (rotary, in every attention layer).
        tie_embeddings: the output layer is the transpose of the code embeddings (per level with ``levels > 1``).
        depth_layers: blocks of the depth transformer over the levels (used when ``levels > 1``).
    """

    def __init__(self, vocab_size: int, length: int, levels: int = 1, num_classes: int = 0, dim: int = 256,
                 num_layers: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 positions: Positions = "learned", tie_embeddings: bool = True, depth_layers: int = 2) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("length", length), ("levels", levels), ("dim", dim),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', got {positions!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if positions == "rope" and (dim // num_heads) % 2:
            raise ValueError(f"rotary positions need an even head width, got dim {dim} / num_heads {num_heads}")
        self.vocab_size, self.length, self.levels, self.num_classes = vocab_size, length, levels, num_classes
        self.num_heads, self.positions, self.tie_embeddings = num_heads, positions, tie_embeddings
        self.codes = nn.Embedding(levels * vocab_size, dim)  # level q's code k is row q * V + k
        self.start = nn.Embedding(num_classes + 1 if num_classes else 1, dim)  # classes, then "no class"
        self.position = nn.Parameter(torch.zeros(length, dim)) if positions == "learned" else None
        if positions == "rope":
            cos, sin = rotary_tables(length, dim // num_heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = None if tie_embeddings else nn.Linear(dim, levels * vocab_size, bias=False)
        if levels > 1:
            self.depth_position = nn.Parameter(torch.zeros(levels, dim))
            self.depth_blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, dropout)
                                              for _ in range(max(depth_layers, 1)))
            self.depth_norm = nn.LayerNorm(dim)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * (num_layers + (depth_layers if levels > 1 else 0))))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ---- parts ---------------------------------------------------------------------------------------------------
    @property
    def null_class(self) -> int:
        """The index of the "no class" token (classifier-free guidance; the start token when unconditional)."""
        return self.num_classes

    def start_tokens(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """``(n, 1, dim)``: the class tokens of ``labels`` (``null_class`` for "no class"), or the start token."""
        if labels is None:
            labels = torch.full((n,), self.null_class if self.num_classes else 0, dtype=torch.long, device=device)
        elif not self.num_classes:
            raise ValueError("labels given to an unconditional prior (num_classes is 0)")
        return self.start(labels)[:, None]

    def embed_positions(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, T, Q)`` -> the sum of their level embeddings ``(B, T, dim)``."""
        offsets = torch.arange(self.levels, device=codes.device) * self.vocab_size
        return self.codes(codes + offsets).sum(2)

    def logits_of(self, h: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Hidden states ``(..., dim)`` -> logits ``(..., V)`` of ``level`` (``(..., Q, V)`` over all levels for
        ``level=None`` with inputs ``(..., Q, dim)``)."""
        weight = self.codes.weight if self.head is None else self.head.weight  # (Q * V, dim)
        weight = weight.view(self.levels, self.vocab_size, -1)
        if level is not None:
            return h @ weight[level].t()
        return torch.einsum("...qd,qvd->...qv", h, weight)

    def spatial(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Input embeddings ``(B, T, dim)`` of positions ``cache.length ...`` -> normed hidden states."""
        start = 0 if cache is None else cache.length
        t = x.shape[1]
        rope = None
        if self.position is not None:
            x = x + self.position[start:start + t]
        else:
            rope = (self.rope_cos[start:start + t], self.rope_sin[start:start + t])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length += t
        return self.norm(x)

    def depth(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Levels of each position: ``h`` ``(N, dim)`` and the codes of levels ``< k`` ``(N, k)`` (``k < Q``) ->
        hidden states ``(N, k + 1, dim)``, the last predicting level ``k``."""
        offsets = torch.arange(codes.shape[1], device=codes.device) * self.vocab_size
        partial = self.codes(codes + offsets).cumsum(1)  # (N, k, dim): the partial sums of the levels so far
        x = torch.cat([h[:, None], partial], 1) + self.depth_position[: codes.shape[1] + 1]
        for block in self.depth_blocks:
            x = block(x)
        return self.depth_norm(x)

    # ---- likelihood ----------------------------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: codes ``(B, L, Q)`` -> logits ``(B, L, Q, V)`` of each code given the ones before it."""
        b, length, levels = codes.shape
        if (length, levels) != (self.length, self.levels):
            raise ValueError(f"codes of shape (B, {length}, {levels}), expected (B, {self.length}, {self.levels})")
        x = torch.cat([self.start_tokens(b, labels, codes.device), self.embed_positions(codes[:, :-1])], 1)
        h = self.spatial(x)  # (B, L, dim): position t sees the class token and codes < t
        if self.levels == 1:
            return self.logits_of(h, 0)[:, :, None]
        hd = self.depth(h.reshape(b * length, -1), codes.reshape(b * length, levels)[:, :-1])  # (B*L, Q, dim)
        return self.logits_of(hd).view(b, length, levels, -1)

    # ---- sampling ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, cfg_scale: float = 1.0, generator: torch.Generator | None = None,
               use_cache: bool = True) -> torch.Tensor:
        """``n`` code sequences ``(n, L, Q)`` in raster order.

        Args:
            n: sequences drawn.
            labels: ``(n,)`` classes of a conditional prior (None: "no class", unguided).
            temperature: logits are divided by it.
            top_k: keep the ``top_k`` most likely codes of each step.
            top_p: keep the smallest set of codes whose probability reaches ``top_p`` (nucleus sampling).
            cfg_scale: classifier-free guidance, ``logits = u + s (c - u)`` of the conditional ``c`` and the
                "no class" ``u`` logits (1: no guidance; needs ``labels``).
            generator: the random generator of the draws.
            use_cache: keep every layer's keys and values (one new position per step) instead of recomputing the
                whole prefix; both give the same codes.
        """
        check_sampling(temperature, top_k, top_p, cfg_scale, self.vocab_size)
        device = self.start.weight.device
        guided = cfg_scale != 1.0
        if guided and labels is None:
            raise ValueError("cfg_scale != 1 needs labels (guidance contrasts a class with no class)")
        if labels is not None:
            if not self.num_classes:
                raise ValueError("labels given to an unconditional prior (num_classes is 0)")
            labels = torch.as_tensor(labels, device=device).long()
            if labels.shape != (n,):
                raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"labels must be in [0, {self.num_classes}) of a conditional prior")
            if guided:
                labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        rows = 2 * n if guided else n
        x = self.start_tokens(rows, labels, device)  # (rows, 1, dim)
        cache = None
        if use_cache:
            cache = KVCache(len(self.blocks), rows, self.num_heads, self.length, x.shape[-1] // self.num_heads,
                            x.dtype, device)
        out = torch.empty(n, self.length, self.levels, dtype=torch.long, device=device)
        inputs = x
        for t in range(self.length):
            h = self.spatial(inputs, cache)[:, -1]  # (rows, dim)
            out[:, t] = self._sample_position(h, n, guided, cfg_scale, temperature, top_k, top_p, generator)
            nxt = self.embed_positions(out[:, t:t + 1].repeat(2 if guided else 1, 1, 1))  # (rows, 1, dim)
            inputs = nxt if use_cache else torch.cat([inputs, nxt], 1)
        return out

    def _sample_position(self, h: torch.Tensor, n: int, guided: bool, cfg_scale: float, temperature: float,
                         top_k: int | None, top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
        """The ``Q`` codes ``(n, Q)`` of one position from its hidden states ``h`` ``(rows, dim)``."""
        codes = torch.empty(n, 0, dtype=torch.long, device=h.device)
        for level in range(self.levels):
            hl = h if self.levels == 1 else self.depth(h, codes.repeat(2 if guided else 1, 1))[:, -1]
            logits = self.logits_of(hl, level).float()  # (rows, V)
            if guided:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            pick = draw(logits, temperature, top_k, top_p, generator)  # (n,)
            codes = torch.cat([codes, pick[:, None]], 1)
        return codes


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, cfg_scale: float,
                   vocab_size: int) -> None:
    """Raises ``ValueError`` naming the first sampling option out of range."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [1, {vocab_size}], got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """``logits`` ``(N, V)`` with everything outside the ``top_k`` codes and outside the nucleus of mass ``top_p``
    (Holtzman et al. 2020, eq. 2; the most likely code is always kept) set to ``-inf``."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (N, V): the mass of the codes more likely than each
        drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
         generator: torch.Generator | None) -> torch.Tensor:
    """One code per row of ``logits`` ``(N, V)`` from ``softmax(filter(logits) / temperature)``."""
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
