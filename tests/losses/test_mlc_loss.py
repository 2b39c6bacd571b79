"""MLC loss and collinearity metrics against numpy float64, plus degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polyalign.errors import UserError
from polyalign.losses import mean_pairwise_cosine, mlc_loss, rank1_share


def _np_normalise(z: np.ndarray) -> np.ndarray:
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)


def _np_mlc(z: np.ndarray, tau: float, scale: str, frozen_s1: float | None = None) -> float:
    """One example [L, D]: the formula written out (the paper's / released code's)."""
    s = np.linalg.svd(_np_normalise(z), compute_uv=False)
    s1 = s[0] if frozen_s1 is None else frozen_s1
    logits = s / (s1 * tau) if scale == "released" else s / tau
    return float(-logits[0] + math.log(sum(math.exp(v) for v in logits)))


@pytest.mark.parametrize("scale", ["released", "paper"])
@pytest.mark.parametrize("tau", [0.2, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mlc_matches_formula(scale, tau, dtype):
    rng = np.random.default_rng(3)
    # a shared direction plus noise, so singular values are spread out as in training
    z = rng.normal(size=(5, 1, 16)) + 0.7 * rng.normal(size=(5, 6, 16))
    losses = mlc_loss(torch.tensor(z, dtype=dtype), tau=tau, scale=scale)
    expected = [_np_mlc(z[b], tau, scale) for b in range(5)]
    assert losses.shape == (5,)
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)


def test_mlc_gradient_matches_finite_differences_with_stopgrad():
    rng = np.random.default_rng(4)
    z0 = rng.normal(size=(3, 5))
    tau = 0.2
    z = torch.tensor(z0[None], requires_grad=True)
    for scale in ("released", "paper"):
        z.grad = None
        mlc_loss(z, tau=tau, scale=scale).sum().backward()
        s1_0 = np.linalg.svd(_np_normalise(z0), compute_uv=False)[0]
        numeric = np.zeros_like(z0)
        h = 1e-6
        for i in range(z0.shape[0]):
            for j in range(z0.shape[1]):
                zp, zm = z0.copy(), z0.copy()
                zp[i, j] += h
                zm[i, j] -= h
                # released: s_1 in the denominator is a constant (stopgrad) at the base point
                frozen = s1_0 if scale == "released" else None
                numeric[i, j] = (_np_mlc(zp, tau, scale, frozen) - _np_mlc(zm, tau, scale, frozen)) / (2 * h)
        assert np.allclose(z.grad[0].numpy(), numeric, atol=1e-6), scale


def test_collinear_rows_give_the_minimum():
    rng = np.random.default_rng(5)
    v = rng.normal(size=8)
    z = np.stack([v * c for c in (1.0, 2.0, 0.5, 3.0)])[None]  # rank one after normalisation
    loss = mlc_loss(torch.tensor(z), tau=0.2, scale="released").item()
    # s = (2, 0, 0, 0): logits (5, 0, 0, 0) -> loss = log(1 + 3 e^-5)
    assert loss == pytest.approx(math.log(1 + 3 * math.exp(-5)), abs=1e-9)
    noisy = mlc_loss(torch.tensor(z + 0.5 * rng.normal(size=z.shape)), tau=0.2).item()
    assert noisy > loss


@pytest.mark.parametrize(
    "name,z",
    [
        ("L=1", torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(0))),
        ("identical rows", torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(1)).repeat(2, 4, 1)),
        ("two identical", torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(2)).repeat(2, 2, 1)),
        (
            "zero row",
            torch.cat([torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(3)), torch.zeros(2, 1, 8)], 1),
        ),
        ("all zero", torch.zeros(2, 3, 8)),
        ("L > D", torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(4))),
    ],
)
@pytest.mark.parametrize("scale", ["released", "paper"])
def test_degenerate_inputs_are_finite(name, z, scale):
    z = z.clone().requires_grad_()
    losses = mlc_loss(z, tau=0.2, scale=scale)
    assert torch.isfinite(losses).all(), name
    losses.sum().backward()
    assert torch.isfinite(z.grad).all(), name
    assert z.grad.abs().max().item() < 1e3, name  # no 1/eps blow-up
    if name == "all zero":
        # s = 0: logits all 0 (released: s_1 clamped to 1e-12 before dividing) -> log L
        assert losses.tolist() == pytest.approx([math.log(3)] * 2, abs=1e-6)
        return
    # the forward value is still the formula (numpy, with the same eps normalisation)
    expected = [
        _np_mlc(z[b].detach().numpy().astype(np.float64), 0.2, scale) if z.shape[1] >= 2 else 0.0
        for b in range(z.shape[0])
    ]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6), name
    if name == "L=1":
        assert losses.tolist() == [0.0, 0.0]


def test_zero_row_gets_zero_gradient_others_do_not():
    z = torch.cat([torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(6)), torch.zeros(1, 1, 8)], 1)
    z.requires_grad_()
    mlc_loss(z).sum().backward()
    assert z.grad[0, 3].abs().sum().item() == 0.0
    assert z.grad[0, :3].abs().sum().item() > 0.0


def test_mask_equals_loss_on_present_rows_only():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(3, 5, 6)) + rng.normal(size=(3, 1, 6))
    mask = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 1, 0, 0]], dtype=bool)
    zt = torch.tensor(z, requires_grad=True)
    for scale in ("released", "paper"):
        zt.grad = None
        losses = mlc_loss(zt, tau=0.2, scale=scale, mask=torch.tensor(mask))
        expected = [_np_mlc(z[b][mask[b]], 0.2, scale) if mask[b].sum() >= 2 else 0.0 for b in range(3)]
        assert losses.tolist() == pytest.approx(expected, abs=1e-9)
        losses.sum().backward()
        # masked rows receive no gradient; an example with one present row has loss 0 and no gradient
        assert zt.grad[torch.tensor(~mask)].abs().sum().item() == 0.0
        assert zt.grad[2].abs().sum().item() == 0.0
        assert torch.isfinite(zt.grad).all()


def test_mlc_rejects_bad_settings():
    with pytest.raises(UserError, match="scale"):
        mlc_loss(torch.randn(1, 2, 3), scale="both")
    with pytest.raises(UserError, match="tau"):
        mlc_loss(torch.randn(1, 2, 3), tau=0.0)


def test_rank1_share_and_mean_pairwise_cosine():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(4, 5, 7)) + rng.normal(size=(4, 1, 7))
    mask = np.ones((4, 5), dtype=bool)
    mask[1, [0, 3]] = False
    mask[2, 1:] = False  # one present row
    share = rank1_share(torch.tensor(z), torch.tensor(mask)).tolist()
    cos = mean_pairwise_cosine(torch.tensor(z), torch.tensor(mask)).tolist()
    for b in range(4):
        rows = _np_normalise(z[b][mask[b]])
        s = np.linalg.svd(rows, compute_uv=False)
        assert share[b] == pytest.approx(s[0] ** 2 / (s**2).sum(), abs=1e-9)
        pairs = [
            float(rows[i] @ rows[j]) for i in range(len(rows)) for j in range(i + 1, len(rows))
        ]
        if pairs:
            assert cos[b] == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)
        else:
            assert math.isnan(cos[b])
    assert share[2] == pytest.approx(1.0)
    # unmasked: sum of squared singular values of unit rows is L
    s_all = rank1_share(torch.tensor(z)).tolist()
    assert all(1 / 5 - 1e-9 <= v <= 1 + 1e-9 for v in s_all)
