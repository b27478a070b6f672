"""Loss variants: hand-computed values, gradient flow, edge cases, micro-batch additivity."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mmgrpo.config import PRESETS, LossConfig, TrainConfig, load_config
from mmgrpo.trainer.losses import (
    OBJECTIVES,
    LossInputs,
    Normalizer,
    aggregate,
    compute_loss,
)

NEG_INF = float("-inf")


def _inputs(logp, old, adv, mask, ref=None, zero_std=None):
    logp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    mask_t = torch.tensor(mask, dtype=torch.float64)
    zs = torch.zeros(logp.shape[0], dtype=torch.bool) if zero_std is None else torch.tensor(zero_std)
    return LossInputs(
        logp=logp,
        old_logp=torch.tensor(old, dtype=torch.float64),
        ref_logp=None if ref is None else torch.tensor(ref, dtype=torch.float64),
        advantages=torch.tensor(adv, dtype=torch.float64),
        mask=mask_t,
        zero_std=zs,
    )


def _clip_case(ref=None):
    """B=1, G=2, T=2; old_logp = 0 so ratio = exp(logp). Seq 1 has one real token, then -inf padding.

    seq0 (A=+1): r = 1.5 -> min(1.5, clip 1.2) = 1.2 -> -1.2 ; r = 0.9 -> min(0.9, 0.9) -> -0.9
    seq1 (A=-1): r = 0.5 -> min(-0.5, -0.8) = -0.8 -> +0.8 ; second token masked (padding)
    """
    logp = [[[math.log(1.5), math.log(0.9)], [math.log(0.5), NEG_INF]]]
    old = [[[0.0, 0.0], [0.0, 0.0]]]
    return _inputs(logp, old, [[1.0, -1.0]], [[[1, 1], [1, 0]]], ref=ref)


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("seq_mean_token_mean", ((-1.2 - 0.9) / 2 + 0.8 / 1) / 2),  # mean of seq means = -0.125
        ("token_mean", (-1.2 - 0.9 + 0.8) / 3),  # 3 real tokens = -0.4333
        ("seq_sum_const", (-1.2 - 0.9 + 0.8) / (2 * 4)),  # 2 sequences x budget 4 = -0.1625
    ],
)
def test_grpo_hand_computed_each_aggregation(aggregation, expected):
    x = _clip_case()
    cfg = LossConfig(objective="clipped_token", aggregation=aggregation, beta=0.0, epsilon_low=0.2, epsilon_high=0.2)
    out = compute_loss(x, cfg, Normalizer.local(x, max_completion_len=4))
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # clipped tokens: 1.5 (A>0, above 1.2) and 0.5 (A<0, below 0.8): 2 of 3 real tokens
    assert out.metrics["clip_frac"].item() == pytest.approx(2 / 3)
    out.loss.backward()
    assert torch.isfinite(x.logp.grad).all()  # the -inf padding does not leak NaN into the gradient
    # only the unclipped token (r=0.9, A=+1) has a gradient: d(-r A)/dlogp = -r A = -0.9, / 2 tokens / 2 seqs
    if aggregation == "seq_mean_token_mean":
        assert x.logp.grad.flatten().tolist() == pytest.approx([0.0, -0.9 / 4, 0.0, 0.0])


def test_grpo_kl_added_to_loss_not_reward():
    # ref - logp = d: seq0 [0, ln 2], seq1 [ln 2, pad]; k3(d) = e^d - d - 1: k3(0) = 0, k3(ln 2) = 1 - ln 2
    x0 = _clip_case()
    d = [[[0.0, math.log(2)], [math.log(2), 0.0]]]
    ref = (x0.logp.detach() + torch.tensor(d, dtype=torch.float64)).tolist()
    x = _clip_case(ref=ref)
    cfg = LossConfig(objective="clipped_token", aggregation="seq_mean_token_mean", beta=0.1)
    out = compute_loss(x, cfg, Normalizer.local(x, 4))
    k = 1 - math.log(2)  # 0.306853
    seq0 = (-1.2 + (-0.9 + 0.1 * k)) / 2
    seq1 = 0.8 + 0.1 * k
    assert out.loss.item() == pytest.approx((seq0 + seq1) / 2, abs=1e-12)
    assert out.metrics["kl"].item() == pytest.approx(2 * k / 3)  # mean over the 3 real tokens
    with pytest.raises(ValueError, match="ref_logp"):
        compute_loss(_clip_case(), cfg, Normalizer.local(x, 4))


def test_dapo_clip_higher_differs_from_grpo():
    # A=+1, r=1.25: grpo clips at 1.2 (loss -1.2), dapo's eps_high=0.28 lets 1.25 through (loss -1.25)
    x = _inputs([[[math.log(1.25)], [0.0]]], [[[0.0], [0.0]]], [[1.0, -1.0]], [[[1], [1]]])
    grpo_cfg = dataclasses.replace(preset("grpo"), beta=0.0)  # no reference here
    grpo = compute_loss(x, grpo_cfg, Normalizer.local(x, 1)).loss.item()
    dapo = compute_loss(x, preset("dapo"), Normalizer.local(x, 1)).loss.item()
    # second sequence: r=1, A=-1 -> +1. grpo: (-1.2 + 1)/2 ; dapo: (-1.25 + 1)/2
    assert grpo == pytest.approx((-1.2 + 1.0) / 2)
    assert dapo == pytest.approx((-1.25 + 1.0) / 2)


def test_gspo_hand_computed_sequence_clip():
    # seq0 log ratios [0.001, 0] -> s = e^0.0005 = 1.0005 > 1 + 4e-4, A=+1 -> clipped: -1.0004
    # seq1 log ratios [-0.001, 0] -> s = e^-0.0005 = 0.9995 < 1 - 3e-4, A=-1: min(-0.9995, -0.9997) -> +0.9997
    x = _inputs([[[0.001, 0.0], [-0.001, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[1.0, -1.0]], [[[1, 1], [1, 1]]])
    cfg = preset("gspo")
    out = compute_loss(x, cfg, Normalizer.local(x, 2))
    assert out.loss.item() == pytest.approx((-1.0004 + 0.9997) / 2, abs=1e-12)
    assert out.metrics["clip_frac"].item() == 1.0
    out.loss.backward()
    assert x.logp.grad.abs().max().item() == 0.0  # both sequences clipped: no gradient


def test_gspo_equals_grpo_on_policy():
    """On-policy s_i = 1 and d s_i/d logp_t = 1/|y_i| (GSPO §4.2): same value and gradient as GRPO."""
    torch.manual_seed(0)
    logp = torch.randn(2, 3, 5, dtype=torch.float64)
    mask = (torch.rand(2, 3, 5) > 0.3).double()
    adv = torch.randn(2, 3, dtype=torch.float64)
    grads = []
    for name in ("clipped_token", "gspo"):
        lp = logp.clone().requires_grad_(True)
        x = LossInputs(lp, lp.detach(), None, adv, mask, torch.zeros(2, dtype=torch.bool))
        cfg = LossConfig(objective=name, aggregation="seq_mean_token_mean")
        compute_loss(x, cfg, Normalizer.local(x, 5)).loss.backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def _reg_case():
    """B=2, G=3, T=2. Group 0: log ratios seq0 [0.3, 0.1], seq1 [-0.2, 0], seq2 [0.1, pad].
    Group 1 has identical rewards (zero_std) and is skipped."""
    old = [[[0.0] * 2] * 3] * 2
    logp = [[[0.3, 0.1], [-0.2, 0.0], [0.1, NEG_INF]], [[0.5, 0.2], [0.0, 0.0], [-0.4, 0.0]]]
    mask = [[[1, 1], [1, 1], [1, 0]], [[1, 1], [1, 1], [1, 1]]]
    return _inputs(logp, old, [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], mask, zero_std=[False, True])


@pytest.mark.parametrize("reg_scale", ["none", "std"])
def test_reg_grpo_hand_computed(reg_scale):
    x = _reg_case()
    cfg = LossConfig(objective="reg_grpo", beta=0.0, reg_eps=1e-6, reg_ratio="sum", reg_scale=reg_scale)
    out = compute_loss(x, cfg, Normalizer.local(x, 2))
    # rho = [0.4, -0.2, 0.1]; mean 0.1; centred [0.3, -0.3, 0]; var = 0.18 / 3 = 0.06
    s = math.sqrt(0.06 + 1e-6)  # 0.2449510
    z = 0.3 / s  # 1.2247346
    mse = ((1 - z) ** 2 + (-1 + z) ** 2 + 0.0) / 3  # 0.0336704; one contributing group: / 1
    weight = 1.0 if reg_scale == "none" else s / 2  # "std": the group's detached std, halved
    assert out.loss.item() == pytest.approx(weight * mse, abs=1e-12)
    assert out.metrics["regression_mse"].item() == pytest.approx(mse, abs=1e-12)  # unweighted either way
    assert out.metrics["skipped_groups"].item() == 1.0
    out.loss.backward()
    assert torch.isfinite(x.logp.grad).all()
    assert x.logp.grad[1].abs().max().item() == 0.0  # skipped group: no gradient
    assert x.logp.grad[0, 2, 1].item() == 0.0  # padding
    # token mean ablation: rho = [0.2, -0.1, 0.1]; mean 0.0667; centred [0.1333, -0.1667, 0.0333]
    out_mean = compute_loss(x, dataclasses.replace(cfg, reg_ratio="mean"), Normalizer.local(x, 2))
    rho = torch.tensor([0.2, -0.1, 0.1], dtype=torch.float64)
    c = rho - rho.mean()
    zm = c / torch.sqrt((c**2).mean() + 1e-6)
    wm = 1.0 if reg_scale == "none" else math.sqrt((c**2).mean().item() + 1e-6) / 2
    assert out_mean.loss.item() == pytest.approx(wm * ((torch.tensor([1.0, -1.0, 0.0]) - zm) ** 2).mean().item())


def test_reg_grpo_divides_by_contributing_groups_only():
    """Two groups, the second flat: the regression is summed over contributing groups and divided by
    their number (norm.groups = 1), not by B = 2; a divisor of 2 would halve the loss."""
    x = _reg_case()
    cfg = LossConfig(objective="reg_grpo", beta=0.0, reg_scale="none")
    one = compute_loss(x, cfg, Normalizer.local(x, 2)).loss.item()
    assert Normalizer.local(x, 2).groups == 1.0
    assert one == pytest.approx(0.0336704, abs=1e-6)  # the contributing group's MSE (hand value above)
    two = compute_loss(x, cfg, Normalizer(tokens=11, sequences=6, groups=2, max_completion_len=2)).loss.item()
    assert two == pytest.approx(one / 2)


@pytest.mark.parametrize("reg_ratio", ["sum", "mean"])
@pytest.mark.parametrize("reg_scale", ["none", "std"])
def test_reg_grpo_on_policy_closed_form(reg_ratio, reg_scale):
    """logp == old_logp: every rho = 0, var = 0, s = sqrt(eps). The paper's loss (reg_scale none)
    has gradient -(2/(G s)) sum_k A_k grad log pi(y_k): per token of y_k -(2/(G s)) A_k, 1000x at
    eps = 1e-6 (divided by |y_k| for the token-mean ratio); with reg_scale std the weight s/2 makes
    it -(1/G) A_k, the policy gradient, whatever eps."""
    torch.manual_seed(1)
    G, T, eps = 4, 5, 1e-6
    logp = torch.randn(1, G, T, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]], dtype=torch.float64)
    adv = torch.tensor([[1.5, -0.5, 0.5, -1.5]], dtype=torch.float64)  # centred, as group advantages are
    x = LossInputs(logp, logp.detach(), None, adv, mask, torch.zeros(1, dtype=torch.bool))
    cfg = LossConfig(objective="reg_grpo", beta=0.0, reg_eps=eps, reg_ratio=reg_ratio, reg_scale=reg_scale)
    out = compute_loss(x, cfg, Normalizer.local(x, T))
    # z = 0 everywhere: mean_i A_i^2 = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, times the weight
    sigma = math.sqrt(eps)
    assert out.loss.item() == pytest.approx(1.25 if reg_scale == "none" else 1.25 * sigma / 2)
    out.loss.backward()
    per_seq = -(2 / (G * sigma)) * adv[0] if reg_scale == "none" else -(1 / G) * adv[0]  # [G]
    if reg_ratio == "mean":
        per_seq = per_seq / mask[0].sum(-1)
    expected = per_seq[:, None] * mask[0]  # [G, T]
    torch.testing.assert_close(logp.grad[0], expected)


def test_reg_grpo_on_policy_is_the_policy_gradient_and_its_kl_matches_grpo():
    """On-policy with reg_scale std and the seq_sum aggregation, Reg-GRPO's gradient (regression and
    KL together) equals clipped_token's with the same aggregation and beta: beta means the same."""
    torch.manual_seed(5)
    logp = torch.randn(3, 4, 5, dtype=torch.float64)
    mask = (torch.rand(3, 4, 5) > 0.3).double()
    mask[..., 0] = 1
    ref = logp + 0.3 * torch.randn(3, 4, 5, dtype=torch.float64)
    adv = torch.randn(3, 4, dtype=torch.float64)
    adv = adv - adv.mean(1, keepdim=True)
    grads = []
    for name in ("reg_grpo", "clipped_token"):
        lp = logp.clone().requires_grad_(True)
        x = LossInputs(lp, lp.detach(), ref, adv, mask, torch.zeros(3, dtype=torch.bool))
        cfg = LossConfig(objective=name, aggregation="seq_sum", beta=0.1, reg_scale="std")
        compute_loss(x, cfg, Normalizer.local(x, 5)).loss.backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_reg_grpo_kl_is_added_and_pulls_towards_the_reference():
    """The paper's "- beta KL" is a typo: the KL is added to the minimised loss. On-policy, one group,
    G = 2, T = 1, advantages 0 (the regression contributes nothing):
    ref - logp = d = [ln 2, -ln 2]; k3(d) = e^d - d - 1 = [1 - ln 2, 1/2 + ln 2 - 1] = [0.306853, 0.193147]
    seq_sum: (1/G) sum = 0.25; loss = beta * 0.25 = 0.025 for beta 0.1.
    d k3 / d logp = 1 - e^d = [-1, 0.5]: descending raises the token the reference likes more
    (logp below ref) and lowers the other."""
    logp = torch.tensor([[[math.log(0.25)], [math.log(0.5)]]], dtype=torch.float64, requires_grad=True)
    ref = logp.detach() + torch.tensor([[[math.log(2)], [-math.log(2)]]], dtype=torch.float64)
    x = LossInputs(logp, logp.detach(), ref, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, 1),
                   torch.tensor([False]))
    cfg = LossConfig(objective="reg_grpo", aggregation="seq_sum", beta=0.1)
    out = compute_loss(x, cfg, Normalizer.local(x, 1))
    assert out.loss.item() == pytest.approx(0.1 * (1 - math.log(2) + 0.5 + math.log(2) - 1) / 2, abs=1e-12)
    assert out.loss.item() > compute_loss(x, dataclasses.replace(cfg, beta=0.0), Normalizer.local(x, 1)).loss.item()
    out.loss.backward()
    # beta * (1 - e^d) / G: [0.1 * -1 / 2, 0.1 * 0.5 / 2]
    assert x.logp.grad.flatten().tolist() == pytest.approx([-0.05, 0.025])


def test_seq_sum_aggregation_hand_computed():
    # per-token values seq0 [1, 2], seq1 [3, pad]: (1 + 2 + 3) / 2 sequences = 3
    per_token = torch.tensor([[[1.0, 2.0], [3.0, float("nan")]]])  # [1, 2, 2]
    norm = Normalizer(tokens=3, sequences=2, groups=1, max_completion_len=2)
    assert aggregate(per_token, torch.tensor([[[1, 1], [1, 0]]]), "seq_sum", norm).item() == pytest.approx(3.0)


def _tic_case():
    """B=1, G=3, T=2, old_logp = 0, so the trajectory log-ratio is the sum of logp.
    seq0: [ln 1.5, 0] -> w = 1.5, A=+1: clipped at 1.2 -> -1.2 (no gradient)
    seq1: [ln 0.5, ln 0.5] -> w = 0.25, A=-1: no lower clip -> +0.25 (gradient A * w = -0.25 per token)
    seq2: [ln 1.1, pad] -> w = 1.1, A=+1: inside -> -1.1 (gradient -1.1 on its one token)"""
    logp = [[[math.log(1.5), 0.0], [math.log(0.5), math.log(0.5)], [math.log(1.1), NEG_INF]]]
    return _inputs(logp, [[[0.0, 0.0]] * 3], [[1.0, -1.0, 1.0]], [[[1, 1], [1, 1], [1, 0]]])


def test_tic_grpo_hand_computed():
    x = _tic_case()
    cfg = preset("tic_grpo")
    assert (cfg.objective, cfg.epsilon_high, cfg.aggregation, cfg.beta) == ("tic_grpo", 0.2, "seq_mean_token_mean", 0.0)
    out = compute_loss(x, cfg, Normalizer.local(x, 2))
    # seq_mean_token_mean of sequence terms spread over tokens = mean of the terms: (-1.2 + 0.25 - 1.1) / 3
    assert out.loss.item() == pytest.approx((-1.2 + 0.25 - 1.1) / 3, abs=1e-12)
    assert out.metrics["clip_frac"].item() == pytest.approx(2 / 5)  # seq0's 2 of the 5 real tokens
    out.loss.backward()
    # d/dlogp_t of -w A = -w A (d log w / d logp_t = 1), / G = 3 sequences
    expected = [0.0, 0.0, 0.25 / 3, 0.25 / 3, -1.1 / 3, 0.0]
    assert x.logp.grad.flatten().tolist() == pytest.approx(expected, abs=1e-12)
    # GRPO's token ratios on the same input: seq1's tokens r = 0.5 < 0.8 with A < 0 are clipped there
    grpo = compute_loss(_tic_case(), LossConfig(objective="clipped_token"), Normalizer.local(x, 2))
    assert grpo.loss.item() != pytest.approx(out.loss.item())


def test_tic_grpo_clips_from_above_only_and_in_log_space():
    """A trajectory log-ratio of 2000 (A > 0) is clipped before the exponential: loss -1.2, no inf, no
    gradient; one of -2000 with A < 0 has w = e^-2000 = 0 (no lower clip lifts it to 0.8)."""
    logp = torch.full((1, 2, 100), 20.0, dtype=torch.float32)
    logp[0, 1] = -20.0
    logp.requires_grad_(True)
    x = LossInputs(logp, torch.zeros(1, 2, 100), None, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, 100),
                   torch.tensor([False]))
    out = compute_loss(x, preset("tic_grpo"), Normalizer.local(x, 100))
    assert math.isfinite(out.loss.item()) and out.loss.item() == pytest.approx((-1.2 + 0.0) / 2)
    out.loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad.abs().max().item() == 0.0
    # the product of the token ratios overflows float32 where the sum of logs does not
    assert not math.isfinite(torch.exp(torch.full((100,), 20.0)).prod().item())


def test_tic_grpo_on_policy_is_sequence_level_reinforce():
    """On-policy w = 1: the gradient is -(1/G) A_i per token (no 1/|y_i| as in GRPO), as
    clipped_token's with the seq_sum aggregation."""
    torch.manual_seed(6)
    logp = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = (torch.rand(2, 3, 4) > 0.3).double()
    adv = torch.randn(2, 3, dtype=torch.float64)
    grads = []
    for name, aggregation in (("tic_grpo", "seq_mean_token_mean"), ("clipped_token", "seq_sum")):
        lp = logp.clone().requires_grad_(True)
        x = LossInputs(lp, lp.detach(), None, adv, mask, torch.zeros(2, dtype=torch.bool))
        compute_loss(x, LossConfig(objective=name, aggregation=aggregation), Normalizer.local(x, 4)).loss.backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], -(adv / 6)[..., None] * mask)  # B * G = 6 sequences


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_all_equal_rewards_finite_and_no_signal(name):
    from mmgrpo.trainer.advantages import compute_advantages

    torch.manual_seed(2)
    rewards = torch.ones(1, 4, 1)  # every completion scores 1
    adv = compute_advantages(rewards, [1.0], "sum_then_normalize", "group", 1e-4)
    assert adv.advantages.abs().max().item() == 0.0 and adv.zero_std.tolist() == [True]
    logp = torch.randn(1, 4, 3, requires_grad=True)
    x = LossInputs(logp, logp.detach(), None, adv.advantages, torch.ones(1, 4, 3), adv.zero_std)
    out = compute_loss(x, LossConfig(objective=name), Normalizer.local(x, 3))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
    assert logp.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_gradient_flows_only_through_mask(name):
    torch.manual_seed(3)
    logp = torch.randn(2, 3, 4, dtype=torch.float64)
    logp[0, 1, 2:] = NEG_INF  # padding may be -inf
    logp.requires_grad_(True)
    mask = torch.ones(2, 3, 4, dtype=torch.float64)
    mask[0, 1, 2:] = 0
    mask[1, 0, 3] = 0
    old = (logp.detach() + 0.05 * torch.randn(2, 3, 4, dtype=torch.float64)).where(mask.bool(), logp.detach())
    ref = logp.detach() - 0.1
    adv = torch.tensor([[1.0, -0.5, -0.5], [0.3, -0.6, 0.3]], dtype=torch.float64)
    x = LossInputs(logp, old, ref, adv, mask, torch.zeros(2, dtype=torch.bool))
    cfg = LossConfig(objective=name, beta=0.04, epsilon_low=0.5, epsilon_high=0.5)  # wide clip: nothing clipped
    compute_loss(x, cfg, Normalizer.local(x, 4)).loss.backward()
    g = logp.grad
    assert torch.isfinite(g).all()
    assert (g[mask == 0] == 0).all()
    assert (g[mask == 1] != 0).all()


def _random_inputs(seed, B=4, G=3, T=6):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, G, T, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.2 * torch.randn(B, G, T, generator=gen, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, G, T, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B, G), generator=gen)
    mask = (torch.arange(T)[None, None] < lengths[..., None]).double()  # [B, G, T]
    adv = torch.randn(B, G, generator=gen, dtype=torch.float64)
    zero_std = torch.tensor([False, True, False, False])
    adv[1] = 0.0
    return logp, old, ref, adv, mask, zero_std


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_sum_const", "seq_sum"])
def test_micro_batches_sum_to_full_batch(name, aggregation):
    logp, old, ref, adv, mask, zero_std = _random_inputs(4)
    cfg = LossConfig(objective=name, aggregation=aggregation, beta=0.04, epsilon_low=0.1, epsilon_high=0.1)

    full_lp = logp.clone().requires_grad_(True)
    full = LossInputs(full_lp, old, ref, adv, mask, zero_std)
    full_loss = compute_loss(full, cfg, Normalizer.local(full, 6)).loss
    full_loss.backward()

    split_lp = logp.clone().requires_grad_(True)
    parts = [slice(0, 1), slice(1, 4)]  # uneven split, the zero-std group in the second part
    norm = Normalizer.from_counts([mask[s] for s in parts], [zero_std[s] for s in parts], 6)
    total = sum(
        compute_loss(LossInputs(split_lp[s], old[s], ref[s], adv[s], mask[s], zero_std[s]), cfg, norm).loss
        for s in parts
    )
    total.backward()
    assert total.item() == pytest.approx(full_loss.item(), abs=1e-12)
    torch.testing.assert_close(split_lp.grad, full_lp.grad)
    # combining per-part local counts gives the same step normalizer
    combined = Normalizer.combine(
        Normalizer.local(LossInputs(logp[s], old[s], ref[s], adv[s], mask[s], zero_std[s]), 6) for s in parts
    )
    assert combined == norm


def test_aggregate_ignores_masked_nan():
    per_token = torch.tensor([[[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]]])  # [1, 2, 3]
    mask = torch.tensor([[[1, 1, 0], [1, 0, 1]]])
    norm = Normalizer(tokens=4, sequences=2, groups=1, max_completion_len=3)
    assert aggregate(per_token, mask, "seq_mean_token_mean", norm).item() == pytest.approx((1.5 + 4.0) / 2)
    assert aggregate(per_token, mask, "token_mean", norm).item() == pytest.approx(11 / 4)
    assert aggregate(per_token, mask, "seq_sum_const", norm).item() == pytest.approx(11 / 6)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(per_token, mask, "sum", norm)


def test_presets_are_valid_config_settings():
    assert {p["loss"]["objective"] for p in PRESETS.values()} == set(OBJECTIVES)
    dr = load_config(TrainConfig, None, ["loss.preset=dr_grpo"])
    assert (dr.loss.aggregation, dr.advantage.scale, dr.loss.beta) == ("seq_sum_const", "none", 0.0)
    dapo = preset("dapo")
    assert (dapo.objective, dapo.aggregation, dapo.epsilon_high) == ("clipped_token", "token_mean", 0.28)
    gspo = preset("gspo")
    assert (gspo.objective, gspo.epsilon_low, gspo.epsilon_high) == ("gspo", 3e-4, 4e-4)
    reg = preset("reg_grpo")
    assert (reg.objective, reg.aggregation, reg.reg_scale, reg.beta) == ("reg_grpo", "seq_sum", "std", 0.1)
    # the loss functions use cfg as given: a preset is never applied behind the caller's back
    x = _clip_case()
    plain = compute_loss(x, LossConfig(objective="clipped_token", aggregation="seq_mean_token_mean"),
                         Normalizer.local(x, 4))
    assert plain.loss.item() == pytest.approx(-0.125)
    with pytest.raises(ValueError, match="unknown loss.objective 'dapo'"):
        compute_loss(x, LossConfig(objective="dapo"), Normalizer.local(x, 4))


def preset(name: str) -> LossConfig:
    """The loss settings `loss.preset=NAME` gives."""
    return load_config(TrainConfig, None, [f"loss.preset={name}"]).loss


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_zero_counts_give_zero_loss_not_nan(name):
    """A step where every group is flat (groups = 0) or nothing is unmasked (tokens = 0)."""
    logp = torch.randn(1, 2, 3, requires_grad=True)
    x = LossInputs(logp, logp.detach(), None, torch.zeros(1, 2), torch.zeros(1, 2, 3), torch.tensor([True]))
    out = compute_loss(x, LossConfig(objective=name), Normalizer(tokens=0, sequences=2, groups=0, max_completion_len=3))
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.isfinite(logp.grad).all()
