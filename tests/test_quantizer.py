"""The vector quantizer and the codebook-usage metric, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ae import CodebookUsage, VectorQuantizer
from lightning_ae.quantizers import laplace_smoothed, vq_losses


def quantizer(**kwargs) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(**{"num_codes": 16, "code_dim": 4, **kwargs})


def brute_force(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    flat = z.movedim(1, -1).reshape(-1, codebook.shape[1])
    return torch.cdist(flat, codebook).argmin(1).reshape(z.shape[0], *z.shape[2:])


@pytest.mark.parametrize("ema", [True, False])
def test_indices_are_the_nearest_codes(ema: bool) -> None:
    vq = quantizer(ema=ema).eval()
    z = torch.randn(3, 4, 5, 6) * (1.0 if ema else 0.1)
    out = vq(z)
    assert out.indices.shape == (3, 5, 6) and out.indices.dtype == torch.long
    assert torch.equal(out.indices, brute_force(z, vq.codebook.detach()))
    torch.testing.assert_close(out.quantized, vq.indices_to_codes(out.indices))
    flat = torch.randn(50, 4)
    assert torch.equal(vq(flat).indices, torch.cdist(flat, vq.codebook.detach()).argmin(1))


def test_cosine_lookup_uses_normalised_vectors() -> None:
    vq = quantizer(cosine=True).eval()
    z = torch.randn(2, 4, 3, 3) * 5
    out = vq(z)
    assert torch.equal(out.indices, brute_force(F.normalize(z, dim=1), F.normalize(vq.codebook.detach(), dim=1)))
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(2, 3, 3))


def test_straight_through_gradient_is_the_identity() -> None:
    vq = quantizer().eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    vq(z).quantized.backward(g)
    torch.testing.assert_close(z.grad, g)


def test_loss_terms_match_hand_computation() -> None:
    vq = quantizer(ema=False, beta=0.3).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    e = vq.codebook.detach()[out.indices].movedim(-1, 1)  # (B, D, h, w) nearest codes
    sq = ((z.detach() - e) ** 2).mean()
    torch.testing.assert_close(out.codebook_loss, sq)
    torch.testing.assert_close(out.commitment_loss, 0.3 * sq)
    torch.testing.assert_close(out.loss, 1.3 * sq)
    # eq. 3: the codebook loss moves only the codes, the commitment loss only the encoder output
    out.codebook_loss.backward(retain_graph=True)
    assert z.grad is None or torch.all(z.grad == 0)
    assert vq.codebook.grad.abs().sum() > 0
    vq.codebook.grad = None
    out.commitment_loss.backward()
    torch.testing.assert_close(z.grad, 0.3 * 2 * (z.detach() - e) / z.numel())
    assert vq.codebook.grad is None or torch.all(vq.codebook.grad == 0)


def test_vq_losses_function() -> None:
    z, e = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    codebook, commitment = vq_losses(z, e, beta=0.25)
    assert codebook.item() == pytest.approx(2.5) and commitment.item() == pytest.approx(0.625)


def test_ema_update_matches_hand_computed_steps() -> None:
    vq = quantizer(decay=0.9, epsilon=1e-3).train()
    size, embed_sum = torch.zeros(16), torch.zeros(16, 4)
    for step in (1, 2):
        codebook0 = vq.codebook.detach().clone()
        z = torch.randn(2, 4, 3, 3) + step
        out = vq(z)
        flat = z.movedim(1, -1).reshape(-1, 4)
        onehot = F.one_hot(out.indices.reshape(-1), 16).float()
        size = 0.9 * size + 0.1 * onehot.sum(0)
        embed_sum = 0.9 * embed_sum + 0.1 * onehot.t() @ flat
        bias = 1 - 0.9**step  # zero-debiased statistics
        n = size.sum() / bias
        smoothed = (size / bias + 1e-3) / (n + 16 * 1e-3) * n
        torch.testing.assert_close(vq.cluster_size, size)
        torch.testing.assert_close(vq.embed_sum, embed_sum)
        torch.testing.assert_close(vq.codebook.detach(), (embed_sum / bias) / smoothed[:, None])
        torch.testing.assert_close(vq.usage_per_step(), size / bias)
        # the output used the codebook before the step
        torch.testing.assert_close(out.quantized, codebook0[out.indices].movedim(-1, 1))
    # the EMA codebook loss carries no gradient
    assert not out.codebook_loss.requires_grad
    torch.testing.assert_close(out.loss, out.commitment_loss)


def test_laplace_smoothing_keeps_the_total() -> None:
    size = torch.tensor([0.0, 3.0, 1.0])
    smoothed = laplace_smoothed(size, 0.1)
    assert smoothed.sum().item() == pytest.approx(4.0) and smoothed.min() > 0


def test_evaluation_never_changes_the_codebook() -> None:
    vq = quantizer(kmeans_init=True, restart_threshold=5.0).eval()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, 4, 3, 3))
    vq.train()(torch.randn(2, 4, 3, 3), update=False)
    assert all(torch.equal(v, vq.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("ema", [True, False])
def test_restart_revives_dead_codes(ema: bool) -> None:
    vq = quantizer(ema=ema, restart_threshold=0.5).train()
    with torch.no_grad():
        vq.codebook[8:] = 100.0  # far from every input: never chosen
    z = torch.randn(4, 4, 4, 4)
    flat = z.movedim(1, -1).reshape(-1, 4)
    unused = torch.ones(16, dtype=torch.bool)
    unused[vq.eval()(z).indices.unique()] = False
    assert unused[8:].all()
    vq.train()(z)  # debiased usage after one step = this step's counts: unused codes (< 0.5) restart now
    revived = vq.codebook.detach()[unused]
    assert ((revived[:, None] - flat[None]) ** 2).sum(-1).min(1).values.max() < 1e-10  # encoder outputs
    assert (vq.usage_per_step()[unused] == 0.5).all()
    assert (vq.eval()(z).indices >= 8).any()  # and they are used
    vq.train()(z)
    if ema:  # the next EMA step keeps what the restart set, up to smoothing
        assert vq.codebook.detach()[8:].abs().max() < 10


def test_kmeans_init_finds_the_clusters() -> None:
    torch.manual_seed(0)
    centers = torch.randn(4, 4) * 10
    data = (centers[torch.arange(400) % 4] + 0.01 * torch.randn(400, 4))
    vq = VectorQuantizer(num_codes=4, code_dim=4, kmeans_init=True, kmeans_iters=20).train()
    assert not bool(vq.initialized)
    vq(data)
    assert bool(vq.initialized)
    assert torch.cdist(centers, vq.codebook.detach()).min(1).values.max() < 0.1
    assert not vq.codebook.requires_grad and (vq.cluster_size > 0).all()


def test_bf16_autocast_gives_the_fp32_indices() -> None:
    vq = quantizer(num_codes=64, code_dim=8).eval()
    z = torch.randn(8, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
        z_bf16 = torch.nn.Linear(8, 8).to(z)(z.movedim(1, -1)).movedim(-1, 1)  # a bf16 activation from autocast
        assert z_bf16.dtype == torch.bfloat16
        out_bf16 = vq(z_bf16)
    assert torch.equal(out.indices, vq(z).indices)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out_bf16.indices, brute_force(z_bf16.float(), vq.codebook.detach()))
    assert out_bf16.quantized.dtype == torch.bfloat16


def test_bad_arguments_name_the_problem() -> None:
    for kwargs, name in [({"num_codes": 0}, "num_codes"), ({"code_dim": 0}, "code_dim"), ({"beta": -1}, "beta"),
                         ({"decay": 1.0}, "decay"), ({"epsilon": 0}, "epsilon"), ({"kmeans_iters": 0}, "kmeans_iters"),
                         ({"restart_threshold": -1}, "restart_threshold")]:
        with pytest.raises(ValueError, match=name):
            VectorQuantizer(**kwargs)
    with pytest.raises(ValueError, match="code_dim=4"):
        quantizer()(torch.randn(2, 3, 4, 4))


def test_codebook_usage_metric() -> None:
    metric = CodebookUsage(num_codes=8)
    metric.update(torch.tensor([[0, 1], [2, 3]]))
    metric.update(torch.tensor([0, 1, 2, 3]))
    out = metric.compute()
    assert out["perplexity"].item() == pytest.approx(4.0)
    assert out["used_fraction"].item() == pytest.approx(0.5)
    assert out["dead_codes"].item() == 4
    metric.reset()
    metric.update(torch.tensor([5, 5, 5, 6]))
    p = torch.tensor([0.75, 0.25])
    assert metric.compute()["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        metric.update(torch.tensor([8]))
    with pytest.raises(ValueError, match="num_codes"):
        CodebookUsage(0)


def test_initial_codebook_scales() -> None:
    """Both quantizers start as sonnet 2's: VarianceScaling uniform, +-sqrt(3/D) (variance 1/D)."""
    torch.manual_seed(0)
    for ema in (True, False):
        codebook = VectorQuantizer(num_codes=4096, code_dim=64, ema=ema).codebook.detach()
        assert codebook.abs().max() <= (3 / 64) ** 0.5 and codebook.var().item() == pytest.approx(1 / 64, rel=0.02)
