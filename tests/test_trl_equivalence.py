"""Our `grpo` / `gspo` losses against TRL's own GRPOTrainer._compute_loss on identical inputs.

How TRL is called (no model, no re-typed formula): `GRPOTrainer._compute_loss(self, model, inputs)` is
called unbound with a `SimpleNamespace` standing in for the trainer. The stand-in holds
- the settings that `GRPOTrainer.__init__` copies from a real `GRPOConfig` (same attribute names,
  same derivations, e.g. epsilon_high falling back to epsilon);
- the runtime state `_compute_loss` reads: `model.training`, `current_gradient_accumulation_steps`,
  `_metrics`, and a single-process `accelerator` whose gather / reduce are the identity;
- `_get_per_token_logps_and_entropies`, the model forward, replaced by a function returning the given
  policy log-probs (a leaf tensor that requires grad) and zero entropies.
`inputs` is the dict the trainer builds in `_generate_and_score_completions`: dummy prompt /
completion ids (only their shapes are read), `completion_mask`, `advantages` [B*G],
`old_per_token_logps`, `ref_per_token_logps`, `num_items_in_batch`. TRL's loss and its gradient
with respect to the log-probs are then compared with ours, in float64, to 1e-6.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mmgrpo.config import LossConfig
from mmgrpo.trainer.losses import LossInputs, Normalizer, compute_loss

trl = pytest.importorskip("trl")

B, G, T, MAX_LEN = 2, 3, 5, 7  # MAX_LEN > T: Dr. GRPO must divide by the budget, not the padded length

# TRL loss_type -> our aggregation (and how our Normalizer's token count is built)
AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "seq_sum_const"}


def _args(tmp_path, **kw):
    from trl import GRPOConfig

    base = dict(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=B * G,
        num_generations=G, max_completion_length=MAX_LEN,
    )
    return GRPOConfig(**{**base, **kw})


class _SingleProcess:
    num_processes = 1

    def gather(self, t):
        return t

    gather_for_metrics = gather

    def reduce(self, t, reduction="sum"):
        return t


def _trl_loss(args, logp_flat, inputs, grad_accum=1):
    from trl import GRPOTrainer

    stub = SimpleNamespace(
        # copied from args exactly as GRPOTrainer.__init__ does
        args=args,
        beta=args.beta,
        loss_type=args.loss_type,
        epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        importance_sampling_level=args.importance_sampling_level,
        top_entropy_quantile=args.top_entropy_quantile,
        off_policy_mask_threshold=args.off_policy_mask_threshold,
        use_vllm=args.use_vllm,
        vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
        max_completion_length=args.max_completion_length,
        _entropy_bonus_enabled=args.entropy_coef != 0.0 or args.use_adaptive_entropy,
        aux_loss_enabled=False,  # not a mixture-of-experts model
        # runtime state
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=grad_accum,
        accelerator=_SingleProcess(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        # the model forward, replaced by the given log-probs
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp_flat, torch.zeros_like(logp_flat), None),
    )
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, stub._metrics["train"]


def _data(seed, b=B):
    gen = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(b, G, T, generator=gen, dtype=torch.float64)
    old = logp + 0.3 * torch.randn(b, G, T, generator=gen, dtype=torch.float64)  # off-policy: clipping active
    ref = logp + 0.5 * torch.randn(b, G, T, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (b, G), generator=gen)
    mask = (torch.arange(T)[None, None] < lengths[..., None]).double()  # [b, G, T]
    adv = torch.randn(b, G, generator=gen, dtype=torch.float64)
    return logp, old, ref, mask, adv


def _trl_inputs(old, ref, mask, adv, num_items):
    n = mask.shape[0] * G
    return {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, T, dtype=torch.long),
        "completion_mask": mask.reshape(n, T),
        "advantages": adv.reshape(n),
        "old_per_token_logps": old.reshape(n, T),
        "ref_per_token_logps": ref.reshape(n, T),
        "num_items_in_batch": torch.tensor(float(num_items)),
    }


def _both(args, cfg, data, grad_accum=1):
    logp, old, ref, mask, adv = data
    trl_lp = logp.reshape(-1, T).clone().requires_grad_(True)
    trl_loss, trl_metrics = _trl_loss(args, trl_lp, _trl_inputs(old, ref, mask, adv, mask.sum()), grad_accum)
    trl_loss.backward()
    our_lp = logp.clone().requires_grad_(True)
    x = LossInputs(our_lp, old, ref if cfg.beta else None, adv, mask, torch.zeros(mask.shape[0], dtype=torch.bool))
    out = compute_loss(x, cfg, Normalizer.local(x, MAX_LEN))
    out.loss.backward()
    return (trl_loss, trl_lp.grad.reshape(logp.shape), trl_metrics), (out.loss, our_lp.grad, out.metrics)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta, bias_kl", [(0.0, False), (0.04, False), (0.04, True)])
@pytest.mark.parametrize("epsilon, epsilon_high", [(0.2, None), (0.2, 0.28)])
def test_token_level_matches_trl(tmp_path, loss_type, beta, bias_kl, epsilon, epsilon_high):
    args = _args(tmp_path, loss_type=loss_type, beta=beta, epsilon=epsilon, epsilon_high=epsilon_high,
                 use_bias_correction_kl=bias_kl)
    cfg = LossConfig(objective="clipped_token", aggregation=AGGREGATION[loss_type], beta=beta, epsilon_low=epsilon,
                     epsilon_high=epsilon_high or epsilon, kl_importance_weight=bias_kl)
    (t_loss, t_grad, t_metrics), (o_loss, o_grad, o_metrics) = _both(args, cfg, _data(0))
    assert o_grad.abs().sum() > 0
    torch.testing.assert_close(o_loss, t_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(o_grad, t_grad, atol=1e-6, rtol=0)
    assert o_metrics["clip_frac"].item() == pytest.approx(t_metrics["clip_ratio/region_mean"][0], abs=1e-6)
    assert 0 < o_metrics["clip_frac"].item() < 1  # the inputs exercise both clipped and unclipped tokens


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_matches_trl_sequence_level(tmp_path, beta):
    """GSPO = TRL's importance_sampling_level="sequence" with loss_type="grpo" (TRL's recommended GSPO setup)."""
    args = _args(tmp_path, loss_type="grpo", importance_sampling_level="sequence", beta=beta, epsilon=3e-4,
                 epsilon_high=4e-4, use_bias_correction_kl=False)
    cfg = LossConfig(objective="gspo", aggregation="seq_mean_token_mean", beta=beta, epsilon_low=3e-4, epsilon_high=4e-4)
    logp, old, ref, mask, adv = _data(1)
    old = logp + 1e-3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (t_loss, t_grad, _), (o_loss, o_grad, _) = _both(args, cfg, (logp, old, ref, mask, adv))
    assert o_grad.abs().sum() > 0
    torch.testing.assert_close(o_loss, t_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(o_grad, t_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_matches_trl(tmp_path, loss_type):
    """Two micro-batches with TRL's accumulation scaling == ours with one step-level Normalizer."""
    args = _args(tmp_path, loss_type=loss_type, beta=0.04, gradient_accumulation_steps=2,
                 use_bias_correction_kl=False)
    cfg = LossConfig(objective="clipped_token", aggregation=AGGREGATION[loss_type], beta=0.04)
    logp, old, ref, mask, adv = _data(2, b=2 * B)
    parts = [slice(0, B), slice(B, 2 * B)]
    n_items = mask.sum()  # dapo: TRL's num_items_in_batch spans the whole generation batch
    zs = torch.zeros(2 * B, dtype=torch.bool)
    norm = Normalizer.from_counts([mask[s] for s in parts], [zs[s] for s in parts], MAX_LEN)
    trl_lp = logp.reshape(-1, T).clone().requires_grad_(True)
    our_lp = logp.clone().requires_grad_(True)
    trl_total, our_total = 0.0, 0.0
    for s in parts:
        flat = slice(s.start * G, s.stop * G)
        trl_inputs = _trl_inputs(old[s], ref[s], mask[s], adv[s], n_items)
        trl_total = trl_total + _trl_loss(args, trl_lp[flat], trl_inputs, grad_accum=2)[0]
        ours = LossInputs(our_lp[s], old[s], ref[s], adv[s], mask[s], zs[s])
        our_total = our_total + compute_loss(ours, cfg, norm).loss
    trl_total.backward()
    our_total.backward()
    torch.testing.assert_close(our_total, trl_total, atol=1e-6, rtol=0)
    torch.testing.assert_close(our_lp.grad, trl_lp.grad.reshape(logp.shape), atol=1e-6, rtol=0)
