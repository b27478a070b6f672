"""Paper settings as data: `loss.preset=NAME` fills every setting of the sections listed here that
the YAML / overrides leave unset (mmgrpo.config.load.with_preset). The trainer reads only the resulting
settings, never a preset's name. docs/methods.md lists every method with its paper section and
our deviations. This module imports nothing from mmgrpo."""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # DeepSeekMath §4.1 / §5.2: clip 0.2, beta 0.04, group std normalisation, length-normalised mean
    "grpo": {"loss": {"objective": "clipped_token", "aggregation": "seq_mean_token_mean", "epsilon_low": 0.2,
                      "epsilon_high": 0.2, "beta": 0.04}, "advantage": {"scale": "group"}},
    # Dr. GRPO (arXiv 2503.20783) §3.2: no std, constant (generation budget) normaliser, no KL
    "dr_grpo": {"loss": {"objective": "clipped_token", "aggregation": "seq_sum_const", "epsilon_low": 0.2,
                         "epsilon_high": 0.2, "beta": 0.0}, "advantage": {"scale": "none"}},
    # DAPO (arXiv 2503.14476) §3.1 clip-higher 0.2 / 0.28, §3.2 dynamic sampling, §3.3 token-level
    # loss, §3.4 soft overlong punishment (weight 1), no KL (§2.3)
    "dapo": {"loss": {"objective": "clipped_token", "aggregation": "token_mean", "epsilon_low": 0.2,
                      "epsilon_high": 0.28, "beta": 0.0}, "advantage": {"scale": "group"},
             "dynamic_sampling": {"enabled": True}, "reward": {"overlong_penalty": 1.0}},
    # GSPO (arXiv 2507.18071) §5.1: sequence ratio clipped at 3e-4 (left) / 4e-4 (right), no KL
    "gspo": {"loss": {"objective": "gspo", "aggregation": "seq_mean_token_mean", "epsilon_low": 3e-4,
                      "epsilon_high": 4e-4, "beta": 0.0}, "advantage": {"scale": "group"}},
    # T-GRPO (Video-R1, arXiv 2503.21776, eq. 1): GRPO's settings plus the temporal contrast (G/2
    # shuffled completions, mu 0.8, alpha 0.3)
    "t_grpo": {"loss": {"objective": "clipped_token", "aggregation": "seq_mean_token_mean", "epsilon_low": 0.2,
                        "epsilon_high": 0.2, "beta": 0.04}, "advantage": {"scale": "group"},
               "temporal": {"enabled": True, "margin": 0.8, "bonus": 0.3}},
    # TIC-GRPO (arXiv 2508.02833): one trajectory-level ratio clipped from above only (1 + 0.2); the
    # sequence terms averaged over the group; no KL (set loss.beta to add one)
    "tic_grpo": {"loss": {"objective": "tic_grpo", "aggregation": "seq_mean_token_mean", "epsilon_high": 0.2,
                          "beta": 0.0}, "advantage": {"scale": "group"}},
    # DeepVideo-R1 (arXiv 2506.07464) §4, SEED-Bench-R1 runs: beta 0.1, group z-score target, sum log-ratio;
    # ours: the regression weighted by its detached std and the KL of whole sequences (seq_sum), so that
    # beta acts on-policy (trainer.losses.reg_grpo_loss, docs/methods.md)
    "reg_grpo": {"loss": {"objective": "reg_grpo", "aggregation": "seq_sum", "beta": 0.1,
                          "reg_ratio": "sum", "reg_scale": "std"}, "advantage": {"scale": "group"}},
}

# Keys of earlier releases, with what replaced them (an old config fails with this hint).
RENAMED = {
    "loss.name": "loss.objective (clipped_token | gspo | reg_grpo) and loss.preset (a paper's settings: grpo, "
                 "dr_grpo, dapo, gspo, reg_grpo)",
    "loss.advantage_scale": "advantage.scale",
    "loss.adv_eps": "advantage.eps",
    "reward.combine": "advantage.combine",
}
