"""The quantizer family (VQ with its options, FSQ, LFQ, residual VQ) behind one contract, and each one's own
behaviour against hand computations."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightning_ae.quantizers import FSQ, LFQ, Quantizer, ResidualVQ, VectorQuantizer, entropy

FACTORIES: dict[str, Callable[[], Quantizer]] = {
    "vq": lambda: VectorQuantizer(num_codes=16, code_dim=6),
    "vq_learned_kmeans_restart": lambda: VectorQuantizer(num_codes=16, code_dim=6, ema=False, kmeans_init=True,
                                                         restart_threshold=0.5),
    "vq_rotation": lambda: VectorQuantizer(num_codes=16, code_dim=6, rotation_trick=True),
    "vq_factorized_cosine": lambda: VectorQuantizer(num_codes=16, code_dim=6, codebook_dim=3, cosine=True),
    "fsq": lambda: FSQ(levels=[4, 3, 5], code_dim=6),
    "lfq": lambda: LFQ(num_codes=16, code_dim=6),
    "rvq": lambda: ResidualVQ(num_quantizers=3, num_codes=16, code_dim=6, kmeans_init=True, restart_threshold=0.5),
}
SYNCING = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "bincount", "unique",
           "cpu", "numpy", "masked_select"}


def make(name: str) -> Quantizer:
    torch.manual_seed(0)
    return FACTORIES[name]()


def index_shape(q: Quantizer, z: torch.Tensor) -> tuple[int, ...]:
    levels = () if q.indices_per_position == 1 else (q.indices_per_position,)
    return (z.shape[0], *levels, *z.shape[2:])


class SyncCounter(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device (a value read back, a shape that
    depends on values)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name in ("__getitem__", "__setitem__") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flat(args[1:2]))
        if name in SYNCING or masked:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _flat(items) -> list:
    out = []
    for item in items:
        out.extend(_flat(item) if isinstance(item, (tuple, list)) else [item])
    return out


# ---- the contract ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FACTORIES)
def test_contract(name: str) -> None:
    q = make(name).train()
    z = torch.randn(4, 6, 3, 5, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == index_shape(q, z) and out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    for scalar in (out.loss, out.codebook_loss, out.commitment_loss, out.perplexity, *out.terms.values()):
        assert scalar.shape == () and torch.isfinite(scalar)
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    q.eval()
    with torch.no_grad():
        out = q(z)
        torch.testing.assert_close(q.indices_to_codes(out.indices), out.quantized)
        rows = q(z.movedim(1, -1).reshape(-1, 6))  # (N, D) rows: (N,) or (N, Q) indices of the same positions
        grid = out.indices.movedim(1, -1) if q.indices_per_position > 1 else out.indices
        assert torch.equal(rows.indices, grid.reshape(rows.indices.shape))
        torch.testing.assert_close(rows.quantized, out.quantized.movedim(1, -1).reshape(-1, 6))
    with pytest.raises(ValueError, match="code_dim=6"):
        q(torch.randn(2, 5, 3, 3))


@pytest.mark.parametrize("name", FACTORIES)
def test_evaluation_leaves_the_state_alone(name: str) -> None:
    q = make(name).eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(4, 6, 3, 3))
    q.train()(torch.randn(4, 6, 3, 3), update=False)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("name", FACTORIES)
def test_bf16_autocast_quantizes_in_fp32(name: str) -> None:
    q = make(name).eval()
    z = torch.randn(8, 6, 4, 4)
    with torch.no_grad():
        reference = q(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = q(z)
            out_bf16 = q(z.bfloat16())
        exact = q(z.bfloat16().float())
    assert torch.equal(out.indices, reference.indices) and out.quantized.dtype == torch.float32
    assert torch.equal(out_bf16.indices, exact.indices) and out_bf16.quantized.dtype == torch.bfloat16


@pytest.mark.parametrize("name", FACTORIES)
def test_no_host_sync_in_a_training_step(name: str) -> None:
    """After its first step (k-means, restarts set up), a training forward+backward never reads a value back."""
    q = make(name).train()
    q(torch.randn(8, 6, 4, 4))
    z = torch.randn(8, 6, 4, 4, requires_grad=True)
    with SyncCounter() as counter:
        out = q(z)
        (out.quantized.sum() + out.loss).backward()
    assert counter.calls == []


@pytest.mark.parametrize("name", FACTORIES)
def test_torch_compile(name: str) -> None:
    q = make(name).eval()
    z = torch.randn(2, 6, 3, 3, requires_grad=True)
    compiled = torch.compile(q, backend="aot_eager")
    eager, out = q(z), compiled(z)
    assert torch.equal(out.indices, eager.indices)
    torch.testing.assert_close(out.quantized, eager.quantized)
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.autograd.grad(eager.quantized.sum(), z)[0])


# ---- FSQ ---------------------------------------------------------------------------------------------------------
def fsq_inputs_for(fsq: FSQ, indices: torch.Tensor) -> torch.Tensor:
    """Pre-bound inputs ``(N, d)`` that land exactly on the codes of ``indices``: the inverse of the bound."""
    levels = torch.tensor(fsq.levels, dtype=torch.float64)
    half = (levels - 1) * (1 + fsq.eps) / 2
    offset = (torch.tensor(fsq.levels) % 2 == 0).double() * 0.5
    rounded = fsq.indices_to_grid_codes(indices).double() * torch.tensor([level // 2 for level in fsq.levels])
    return (torch.atanh((rounded + offset) / half) - torch.atanh(offset / half)).float()


def test_fsq_indices_codes_round_trip_and_every_code_is_reachable() -> None:
    fsq = FSQ(levels=[8, 5, 5, 5])
    assert fsq.codebook_size == 1000
    every = torch.arange(1000)
    codes = fsq.indices_to_codes(every)  # (1000, 4)
    assert torch.equal(fsq.codes_to_indices(codes), every)
    assert codes.unique(dim=0).shape[0] == 1000
    out = fsq(fsq_inputs_for(fsq, every))
    assert torch.equal(out.indices, every)  # every code is reached by some input
    torch.testing.assert_close(out.quantized, codes)
    assert (out.loss == 0) and (out.codebook_loss == 0) and (out.commitment_loss == 0)
    assert out.perplexity.item() == pytest.approx(1000, rel=1e-4)


def test_fsq_outputs_within_bounds_on_the_grid() -> None:
    fsq = FSQ(levels=[8, 5, 3, 4])
    codes = fsq(torch.randn(4, 4, 6, 6) * 10).quantized
    half = torch.tensor([4, 2, 1, 2]).view(1, 4, 1, 1)
    assert codes.abs().max() <= 1
    steps = codes * half  # integers in [-L//2, L - 1 - L//2]
    assert torch.equal(steps, steps.round())
    assert (steps >= -half).all() and (steps <= torch.tensor([3, 2, 1, 1]).view(1, 4, 1, 1)).all()
    assert (steps == -half).any() and (steps == 3).any()  # both ends are reached


def test_fsq_gradient_is_straight_through_the_rounding() -> None:
    fsq = FSQ(levels=[5, 5])
    z = torch.randn(10, 2, requires_grad=True)
    g = torch.randn(10, 2)
    fsq(z).quantized.backward(g)
    bound_grad = torch.autograd.functional.vjp(lambda x: fsq.bound(x) / 2, z.detach(), g)[1]  # d round = 1
    torch.testing.assert_close(z.grad, bound_grad)


def test_fsq_projects_when_the_dimension_differs() -> None:
    fsq = FSQ(levels=[8, 5, 5, 5], code_dim=16)
    out = fsq(torch.randn(2, 16, 3, 3))
    assert out.quantized.shape == (2, 16, 3, 3)
    torch.testing.assert_close(fsq.indices_to_codes(out.indices), out.quantized)
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels=[8, 1])


# ---- LFQ ---------------------------------------------------------------------------------------------------------
def test_lfq_indices_bits_round_trip() -> None:
    lfq = LFQ(num_codes=32)
    every = torch.arange(32)
    bits = lfq.indices_to_codes(every)  # (32, 5) of +-1, the first channel the most significant bit
    assert torch.equal(bits[5], torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0]))  # 5 = 0b00101
    assert torch.equal(lfq(bits).indices, every)
    assert torch.equal(lfq(bits * 0.3).quantized, bits)
    with pytest.raises(ValueError, match="power of two"):
        LFQ(num_codes=24)


def test_lfq_entropy_terms_match_a_hand_computation() -> None:
    """p(c|z) over the 4 codes of 2 bits is a product of per-bit sigmoids: an independent route to both terms."""
    lfq = LFQ(num_codes=4, beta=0.5, entropy_weight=0.2, diversity_gamma=0.7, temperature=2.0)
    z = torch.tensor([[0.3, -1.0], [2.0, 0.1], [-0.5, -0.2]])
    out = lfq.train()(z)
    p_one = torch.sigmoid(4 * z / 2.0)  # p(bit = +1): exp(2 z/T) / (exp(2 z/T) + exp(-2 z/T))
    probs = torch.stack([(p_one[:, 0] if b0 else 1 - p_one[:, 0]) * (p_one[:, 1] if b1 else 1 - p_one[:, 1])
                         for b0, b1 in itertools.product([0, 1], [0, 1])], 1)  # codes 0..3 = bits (b0 b1)
    per_sample = (-(probs * probs.log()).sum(1)).mean()
    batch = -(probs.mean(0) * probs.mean(0).log()).sum()
    codes = torch.where(z > 0, 1.0, -1.0)
    commitment = 0.5 * ((z - codes) ** 2).mean()
    torch.testing.assert_close(out.terms["per_sample_entropy"], per_sample)
    torch.testing.assert_close(out.terms["codebook_entropy"], batch)
    torch.testing.assert_close(out.terms["entropy_penalty"], per_sample - 0.7 * batch)
    torch.testing.assert_close(out.commitment_loss, commitment)
    torch.testing.assert_close(out.loss, commitment + 0.2 * (per_sample - 0.7 * batch))
    assert out.indices.tolist() == [2, 3, 0] and out.codebook_loss == 0
    assert entropy(probs.mean(0)).item() == pytest.approx(batch.item())


# ---- residual VQ -------------------------------------------------------------------------------------------------
def test_residual_error_does_not_grow_with_levels() -> None:
    torch.manual_seed(0)
    rvq = ResidualVQ(num_quantizers=4, num_codes=8, code_dim=4, kmeans_init=True)
    z = torch.randn(64, 4, 2, 2)
    rvq.train()(z)  # k-means of every level on its residuals
    out = rvq.eval()(z)
    errors = [F.mse_loss(rvq.indices_to_codes(out.indices[:, :n]), z).item() for n in range(1, 5)]
    assert all(a >= b for a, b in itertools.pairwise([z.square().mean().item(), *errors])), errors
    assert errors[-1] < 0.5 * errors[0]
    torch.testing.assert_close(rvq.indices_to_codes(out.indices), out.quantized)
    assert rvq.usage_per_step().shape == (4, 8)


def test_residual_levels_quantize_the_residuals_with_identity_gradient() -> None:
    rvq = make("rvq").eval()
    z = torch.randn(3, 6, 2, 2, requires_grad=True)
    out = rvq(z)
    residual = z.detach()
    for q, layer in enumerate(rvq.layers):
        level = layer(residual)
        assert torch.equal(level.indices, out.indices[:, q])
        residual = residual - level.quantized
    g = torch.randn_like(z)
    torch.autograd.grad(out.quantized, z, g)
    torch.testing.assert_close(torch.autograd.grad(out.quantized, z, g)[0], g)


def test_residual_quantizer_dropout_keeps_a_prefix_per_sample() -> None:
    torch.manual_seed(0)
    rvq = ResidualVQ(num_quantizers=3, num_codes=8, code_dim=4, quantizer_dropout=True).train()
    z = torch.randn(200, 4, 2, 2)
    with torch.no_grad():
        out = rvq(z, update=False)
        prefixes = torch.stack([rvq.indices_to_codes(out.indices[:, :n]) for n in (1, 2, 3)])  # (3, B, D, h, w)
    match = (prefixes - out.quantized).abs().amax(dim=(2, 3, 4)) < 1e-6  # (3, B): which prefix each sample used
    assert match.any(0).all()
    assert set(match.float().argmax(0).tolist()) == {0, 1, 2}  # all bitrates occur
    rvq.eval()
    torch.testing.assert_close(rvq(z).quantized, prefixes[-1])


# ---- the VQ options ----------------------------------------------------------------------------------------------
def test_rotation_trick_value_and_closed_form_gradient() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, code_dim=3, rotation_trick=True).eval()
    z = torch.randn(5, 3, requires_grad=True)
    out = vq(z)
    e = vq.codebook.detach()[out.indices]
    torch.testing.assert_close(out.quantized, e)  # the forward value is the code
    g = torch.randn(5, 3)
    out.quantized.backward(g)
    for zi, ei, gi, grad in zip(z.detach(), e, g, z.grad, strict=True):
        u, q_hat = zi / zi.norm(), ei / ei.norm()
        r = (u + q_hat) / (u + q_hat).norm()
        rotation = torch.eye(3) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, u)  # R z^ = q^ (eq. 3)
        torch.testing.assert_close(rotation @ u, q_hat)
        torch.testing.assert_close(rotation.t() @ rotation, torch.eye(3))  # a rotation
        torch.testing.assert_close(grad, ei.norm() / zi.norm() * rotation.t() @ gi)
    assert not torch.allclose(z.grad, g)  # unlike the straight-through estimator


def test_factorized_cosine_lookup_in_the_low_dimension() -> None:
    vq = make("vq_factorized_cosine").eval()
    z = torch.randn(4, 6, 3, 3)
    out = vq(z)
    low = F.normalize(vq.project_in(z.movedim(1, -1)), dim=-1)  # (B, h, w, 3)
    codes = F.normalize(vq.codebook.detach(), dim=1)
    assert torch.equal(out.indices, torch.cdist(low.reshape(-1, 3), codes).argmin(1).reshape(4, 3, 3))
    torch.testing.assert_close(out.quantized, vq.project_out(codes[out.indices]).movedim(-1, 1))
    assert vq.codebook.shape == (16, 3) and vq.embed_sum.shape == (16, 3)
    with pytest.raises(ValueError, match="codebook_dim"):
        VectorQuantizer(codebook_dim=0)


def test_state_dict_of_the_default_quantizer_is_unchanged() -> None:
    """Checkpoints written before the quantizer family still load: same keys, same shapes."""
    assert set(VectorQuantizer().state_dict()) == {"codebook", "cluster_size", "embed_sum", "ema_steps",
                                                  "initialized"}
    assert math.prod(VectorQuantizer().codebook.shape) == 512 * 64


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vq_rotation", "vq_factorized_cosine", "fsq", "lfq", "rvq"])
def test_torch_compile_inductor_trains(name: str) -> None:
    """The default backend (inductor, C++ on a CPU) compiles a training step of each quantizer, updates included."""
    eager, compiled = make(name).train(), make(name).train()
    step = torch.compile(compiled)
    for seed in range(2):
        z = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)  # the same k-means seeds and restart candidates
        a = eager(z)
        torch.manual_seed(seed)
        b = step(z)
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.loss, b.loss)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value)
