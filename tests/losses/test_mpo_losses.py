"""MPO reward-gap loss and retention loss against brute-force loops in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyalign.errors import UserError
from polyalign.losses import mpo_loss, pool_hidden, retention_loss, retention_width


def test_mpo_loss_matches_formula():
    rng = np.random.default_rng(0)
    tc, tr, dc, dr = (-(rng.random(6) * 3 + 0.01) for _ in range(4))
    for beta in (1.0, 1.5, 0.3):
        losses = mpo_loss(*(torch.tensor(x) for x in (tc, tr, dc, dr)), beta=beta)
        expected = [(beta * (tc[i] - tr[i]) - (dc[i] - dr[i])) ** 2 for i in range(6)]
        assert losses.shape == (6,)
        assert losses.tolist() == pytest.approx(expected, abs=1e-12)


def test_mpo_loss_gradient_only_reaches_target_side():
    tc = torch.tensor([-1.0], requires_grad=True)
    tr = torch.tensor([-2.0], requires_grad=True)
    dc = torch.tensor([-0.5], requires_grad=True)
    dr = torch.tensor([-3.0], requires_grad=True)
    mpo_loss(tc, tr, dc, dr, beta=1.5).sum().backward()
    # d/dtc (b(tc-tr) - g)^2 = 2 b (b(tc-tr) - g); here b=1.5, tc-tr=1, g=2.5 -> 2*1.5*(-1) = -3
    assert tc.grad.item() == pytest.approx(-3.0)
    assert tr.grad.item() == pytest.approx(3.0)
    assert dc.grad is None and dr.grad is None


def _brute_pool(h: np.ndarray, m: np.ndarray, pooling: str) -> np.ndarray:
    """masked_mean: mean over real tokens. unmasked_mean, the released code at per-device batch 1:
    the pair (rows b and b + B) padded to its longer row rounded up to a multiple of 8, then
    ``mean(dim=1)`` over that width, padding included."""
    b_, t_, h_ = h.shape
    out = np.zeros((b_, h_))
    for b in range(b_):
        if pooling == "unmasked_mean":
            pair = b % (b_ // 2)
            longer = max(int(m[pair].sum()), int(m[pair + b_ // 2].sum()))
            width = longer if longer % 8 == 0 else longer + 8 - longer % 8
        count = 0
        for t in range(t_):
            if (pooling == "unmasked_mean" and t < width) or (pooling == "masked_mean" and m[b, t]):
                out[b] += h[b, t]
                count += 1
        out[b] /= max(count, 1)
    return out


@pytest.fixture
def hidden_batch():
    rng = np.random.default_rng(1)
    h_pol = rng.normal(size=(3, 5, 4))
    h_ref = rng.normal(size=(3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return h_pol, h_ref, mask


@pytest.fixture
def pair_batch():
    """Two chosen/rejected pairs (rows c0, c1, r0, r1), right-padded to 16 columns: pair 0 is
    16 and 5 tokens long (released width 16), pair 1 is 3 and 2 (released width 8)."""
    rng = np.random.default_rng(2)
    lengths = [16, 3, 5, 2]
    mask = np.array([[1] * n + [0] * (16 - n) for n in lengths])
    return rng.normal(size=(4, 16, 4)), rng.normal(size=(4, 16, 4)), mask


@pytest.mark.parametrize(("batch", "pooling"), [("hidden_batch", "masked_mean"), ("pair_batch", "masked_mean"),
                                               ("pair_batch", "unmasked_mean")])
def test_retention_loss_matches_brute_force(request, batch, pooling):
    h_pol, h_ref, mask = request.getfixturevalue(batch)
    p = _brute_pool(h_pol, mask, pooling)
    r = _brute_pool(h_ref, mask, pooling)
    expected = float(((p - r) ** 2).mean())
    args = (torch.tensor(h_pol), torch.tensor(h_ref), torch.tensor(mask))
    assert retention_loss(*args, pooling=pooling).item() == pytest.approx(expected, abs=1e-12)
    # the reference may come already pooled (the reference cache stores pool_hidden output)
    pooled_ref = pool_hidden(torch.tensor(h_ref), torch.tensor(mask), pooling)
    assert np.allclose(pooled_ref.numpy(), r, atol=1e-12)
    assert retention_loss(args[0], pooled_ref, args[2], pooling=pooling).item() == pytest.approx(expected, abs=1e-12)


def test_pooling_modes_differ_with_padding(pair_batch):
    h_pol, _, mask = pair_batch
    masked = pool_hidden(torch.tensor(h_pol), torch.tensor(mask), "masked_mean")
    unmasked = pool_hidden(torch.tensor(h_pol), torch.tensor(mask), "unmasked_mean")
    assert torch.allclose(masked[0], unmasked[0])  # row 0 fills its pair's released width 16
    assert not torch.allclose(masked[2], unmasked[2])  # row 2: 5 tokens, pooled over 16 positions


def test_unmasked_pooling_needs_the_released_width_and_pairs(pair_batch):
    h_pol, _, mask = pair_batch
    # 9 and 5 tokens in 9 columns: the pair's released width is 16, the rows are too narrow
    short = torch.tensor([[1] * 9, [1] * 3 + [0] * 6, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
    assert retention_width(torch.tensor(mask), "unmasked_mean") == 16
    assert retention_width(torch.tensor(mask), "masked_mean") == 16  # the rows' own width: nothing to add
    assert retention_width(short, "masked_mean") == 9
    assert retention_width(torch.tensor(mask[1::2]), "unmasked_mean") == 8
    with pytest.raises(ValueError, match="retention_width"):
        pool_hidden(torch.tensor(h_pol[:, :9]), short, "unmasked_mean")
    with pytest.raises(ValueError, match="pairs"):
        pool_hidden(torch.tensor(h_pol[:3]), torch.tensor(mask[:3]), "unmasked_mean")


def test_retention_loss_float32_and_gradient(hidden_batch):
    h_pol, h_ref, mask = hidden_batch
    hp = torch.tensor(h_pol, dtype=torch.bfloat16, requires_grad=True)
    loss = retention_loss(hp, torch.tensor(h_ref, dtype=torch.bfloat16), torch.tensor(mask))
    assert loss.dtype == torch.float32  # pooled in float32 even for bf16 hidden states
    loss.backward()
    # padded positions get no gradient under masked_mean
    assert hp.grad[2, 1:].abs().sum().item() == 0.0
    assert hp.grad[2, 0].abs().sum().item() > 0.0


def test_retention_rejects_bad_inputs(hidden_batch):
    h_pol, _, mask = hidden_batch
    with pytest.raises(UserError, match="pooling"):
        pool_hidden(torch.tensor(h_pol), torch.tensor(mask), "max")
    with pytest.raises(ValueError, match="shape"):
        retention_loss(torch.tensor(h_pol), torch.zeros(2, 4, dtype=torch.float64), torch.tensor(mask))
