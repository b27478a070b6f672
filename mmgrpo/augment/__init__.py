"""Difficulty-aware augmentation, DA (DeepVideo-R1 §3.3): pure parts.

`DifficultyScheduler` decides per group ("harder" / "easier" / "none") from ΔR against a replay
window; `perturb` makes easy videos harder; `make_hint` + `hint_prompt` make hard prompts easier,
with `answer_shown_prompt` to roll out a trace when no completion has scored yet.
"""
from mmgrpo.augment.hints import answer_shown_prompt, hint_prompt, make_hint, reasoning_part
from mmgrpo.augment.perturb import PERTURBATIONS, check_names, perturb
from mmgrpo.augment.scheduler import Decision, DifficultyScheduler

__all__ = [
    "PERTURBATIONS",
    "Decision",
    "DifficultyScheduler",
    "answer_shown_prompt",
    "check_names",
    "hint_prompt",
    "make_hint",
    "perturb",
    "reasoning_part",
]
