"""DPO / SimPO / ORPO / NLL losses against their formulas written out with python floats."""

from __future__ import annotations

import math

import pytest
import torch

from polyalign.errors import UserError
from polyalign.losses import dpo_loss, nll_loss, orpo_loss, simpo_loss


def _logsig(x: float) -> float:
    # log(sigmoid(x)) = -log(1 + exp(-x)), written to stay exact for large |x|
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _random_logps(seed: int, batch: int = 7) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # summed log-probs of responses of ~10-60 tokens: tens of nats, negative
    return [-(torch.rand(batch, generator=gen, dtype=torch.float64) * 60 + 1) for _ in range(4)]


def _reference_dpo(pc, pr, rc, rr, beta, loss_type, eps, nc=None, nr=None):
    out = []
    for i in range(len(pc)):
        cl, rl = pc[i] - rc[i], pr[i] - rr[i]
        d = cl - rl
        if loss_type == "sigmoid":
            out.append(-(1 - eps) * _logsig(beta * d) - eps * _logsig(-beta * d))
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - beta * d))
        elif loss_type == "ipo":
            if nc is not None:
                cl, rl = cl / max(1.0, nc[i]), rl / max(1.0, nr[i])
            out.append((cl - rl - 1 / (2 * beta)) ** 2)
        elif loss_type == "robust":
            out.append((-(1 - eps) * _logsig(beta * d) + eps * _logsig(-beta * d)) / (1 - 2 * eps))
    return out


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
@pytest.mark.parametrize("beta", [0.1, 1.5])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_matches_formula(loss_type, beta, eps):
    pc, pr, rc, rr = _random_logps(int(beta * 10) + int(eps * 100))
    losses, ch_rew, rj_rew = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    expected = _reference_dpo(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, loss_type, eps)
    assert losses.shape == (7,)
    assert losses.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-9)
    assert ch_rew.tolist() == pytest.approx([beta * (a - b) for a, b in zip(pc.tolist(), rc.tolist())], abs=1e-9)
    assert rj_rew.tolist() == pytest.approx([beta * (a - b) for a, b in zip(pr.tolist(), rr.tolist())], abs=1e-9)
    assert not ch_rew.requires_grad


def test_dpo_hinge_and_sigmoid_cover_both_sides_of_the_margin():
    # margins chosen so relu is active for some rows and zero for others (a test of max(0, .))
    pc = torch.tensor([-5.0, -5.0, -5.0], dtype=torch.float64)
    pr = torch.tensor([-50.0, -5.0, -1.0], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    losses, _, _ = dpo_loss(pc, pr, zeros, zeros, beta=0.1, loss_type="hinge")
    assert losses.tolist() == pytest.approx([0.0, 1.0, 1.4])
    losses, _, _ = dpo_loss(pc, pr, zeros, zeros, beta=0.1, loss_type="sigmoid")
    assert losses[1].item() == pytest.approx(math.log(2))


def test_ipo_length_normalisation_like_trl():
    pc, pr, rc, rr = _random_logps(3)
    nc = torch.tensor([5, 1, 9, 0, 12, 3, 7])  # a zero count is clamped to 1, as in TRL
    nr = torch.tensor([8, 2, 4, 6, 1, 0, 10])
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="ipo", chosen_n_tokens=nc, rejected_n_tokens=nr)
    expected = _reference_dpo(
        pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), 0.3, "ipo", 0.0, nc.tolist(), nr.tolist()
    )
    assert losses.tolist() == pytest.approx(expected, abs=1e-9)
    # passing averaged log-probs instead is the same loss
    nc1, nr1 = nc.clamp(min=1), nr.clamp(min=1)
    avg_losses, _, _ = dpo_loss(pc / nc1, pr / nr1, rc / nc1, rr / nr1, beta=0.3, loss_type="ipo")
    assert torch.allclose(avg_losses, losses, atol=1e-9)


def test_dpo_gradient_direction():
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-12.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.5)
    losses.sum().backward()
    # d/dpc -log sig(beta d) = -beta * sig(-beta d), d = 1 + 1 = 2
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.exp(1.0)), abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.5 / (1 + math.exp(1.0)), abs=1e-6)


def test_dpo_rejects_bad_settings():
    x = torch.zeros(2)
    with pytest.raises(UserError, match="loss_type|unknown"):
        dpo_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(UserError, match="robust"):
        dpo_loss(x, x, x, x, loss_type="robust", label_smoothing=0.5)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (10.0, 1.4)])
def test_simpo_matches_formula(beta, gamma):
    gen = torch.Generator().manual_seed(7)
    c = -torch.rand(9, generator=gen, dtype=torch.float64) * 3
    r = -torch.rand(9, generator=gen, dtype=torch.float64) * 3
    losses, cr, rr = simpo_loss(c, r, beta=beta, gamma=gamma)
    expected = [-_logsig(beta * (a - b) - gamma) for a, b in zip(c.tolist(), r.tolist())]
    assert losses.tolist() == pytest.approx(expected, abs=1e-9)
    assert cr.tolist() == pytest.approx([beta * a for a in c.tolist()])
    assert rr.tolist() == pytest.approx([beta * b for b in r.tolist()])


def test_simpo_gamma_is_trl_simpo_gamma():
    # TRL CPOTrainer(loss_type="simpo"): logits = (c - r) - simpo_gamma / beta; loss = -logsig(beta * logits)
    c, r = torch.tensor([-0.7, -1.9]), torch.tensor([-1.2, -0.4])
    beta, simpo_gamma = 2.5, 0.8
    trl = -torch.nn.functional.logsigmoid(beta * ((c - r) - simpo_gamma / beta))
    ours, _, _ = simpo_loss(c, r, beta=beta, gamma=simpo_gamma)
    assert torch.allclose(ours, trl, atol=1e-6)


def test_orpo_matches_formula_including_near_zero_logps():
    # average log-probs from tiny (-1e-6: odds ~ 1e6) to very negative (-20)
    c = torch.tensor([-1e-6, -0.01, -0.5, -0.69, -0.7, -3.0, -20.0], dtype=torch.float64)
    r = torch.tensor([-2.0, -0.02, -0.1, -0.7, -0.69, -1e-3, -19.0], dtype=torch.float64)
    beta = 0.25
    losses, cr, rr = orpo_loss(c, r, beta=beta)
    expected = []
    for a, b in zip(c.tolist(), r.tolist()):
        log_odds = (a - b) - (math.log(1 - math.exp(a)) - math.log(1 - math.exp(b)))
        expected.append(-beta * _logsig(log_odds))
    assert losses.tolist() == pytest.approx(expected, rel=1e-7, abs=1e-9)
    assert cr.tolist() == pytest.approx([beta * a for a in c.tolist()])
    # float32 inputs: still finite and close (stable log(1 - exp(x)) on both branches)
    l32, _, _ = orpo_loss(c.float(), r.float(), beta=beta)
    assert torch.isfinite(l32).all()
    assert l32.double().tolist()[1:] == pytest.approx(expected[1:], rel=1e-4)


def test_nll_loss():
    x = torch.tensor([-0.5, -2.25])
    assert nll_loss(x).tolist() == [0.5, 2.25]
