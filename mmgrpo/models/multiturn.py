"""Multi-turn rollouts with tools: each of the G trajectories of each prompt alternates model turns
and tool turns until the model ends with EOS or a cap is hit.

    turn 1: the batched group sampler (generate._decode_shared): each prompt prefilled once, its
            cache repeated to G rows, one decode loop; a turn stops at EOS or at `</tool_call>`
    then:   every live trajectory's context (prompt + its tokens so far, tool images included) is
            prefilled as a prompt of its own and sampled one row each, all trajectories of all
            groups in one batch, each with its own generator: a trajectory's draws depend neither on
            the other trajectories nor on which process rolls it out.
    after a turn that ends with `</tool_call>`: `respond(b, g, turn text)` runs the call and returns
            the tool turn's tokens (processors.toolturn), appended as ids (token-in/token-out).

Caps (Mini-o3 §3.3): `max_turns` model turns per trajectory (per group: a sample may lower it) and
`max_total_tokens` tokens of the completion, model and tool tokens together. A trajectory that
calls a tool in its last allowed turn, or whose next turn would not fit, ends as capped.
Vision placeholders stay banned from sampling in every turn (models.special).

A trajectory without any tool call is exactly what `generate_groups` (shared) samples (tested).
Later turns prefill the whole context again rather than keeping each trajectory's cache: simpler,
and the cost is one prefill per turn (the vision tower runs again on the prompt's media).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from mmgrpo.models.generate import Sampling, _decode_shared
from mmgrpo.models.layout import CompletionMedia, extended, pad_last
from mmgrpo.models.special import SpecialIds
from mmgrpo.processors.sample import PromptInputs
from mmgrpo.processors.toolturn import ToolTurn

Ending = Literal["eos", "length", "turns", "tokens"]  # EOS; a turn's max_new_tokens; the turn cap; the token cap
Respond = Callable[[int, int, str], ToolTurn]  # (group b, trajectory g, the model turn's text) -> tool turn


@dataclass(frozen=True)
class TurnCaps:
    max_turns: tuple[int, ...]  # [B] model turns per trajectory, per group
    max_total_tokens: int  # completion tokens, model and tool turns together
    stop_id: int  # `</tool_call>`: ends a model turn that calls a tool


@dataclass(frozen=True)
class Trajectory:
    """One completion of several turns, kept as token ids."""

    ids: Tensor  # [C] long, model and tool tokens in order
    model_mask: Tensor  # [C] long, 1 on tokens the policy sampled, 0 on tool turns
    mm_token_type_ids: Tensor  # [C] int, 1 on tool images' placeholders
    pixel_values: Tensor | None  # [patches, D] of the tool images, in order
    image_grid_thw: Tensor | None  # [k, 3] long
    image_ends: tuple[int, ...]  # [k] column after each tool image's last placeholder
    turns: tuple[str, ...]  # the model's turns, decoded (special tokens skipped)
    answers: tuple[ToolTurn, ...]  # the tool turns, in order (turn i's call -> answers[i])
    ending: Ending | None  # None while the rollout goes on

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def capped(self) -> bool:
        """Stopped by a cap (turns or tokens) before the model ended it: Mini-o3's over-turn case."""
        return self.ending in ("turns", "tokens")


def start_trajectory(device: torch.device | str) -> Trajectory:
    """A trajectory before its first turn."""
    return Trajectory(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device),
                      torch.zeros(0, dtype=torch.int, device=device), None, None, (), (), (), None)


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else torch.cat([a, b.to(a.device, a.dtype)])


def append_turn(t: Trajectory, ids: Tensor, model: bool, turn: ToolTurn | None, text: str | None) -> Trajectory:
    """A trajectory with `ids` [n] appended (a model turn, or the tool turn `turn`)."""
    n = int(ids.shape[0])
    kinds = turn.mm_token_type_ids if turn is not None else torch.zeros(n, dtype=t.mm_token_type_ids.dtype)
    ends = t.image_ends
    if turn is not None and turn.image_grid_thw is not None:  # each image's placeholders end where its run ends
        is_image = (kinds == 1).int()
        run_ends = ((is_image[:-1] - is_image[1:]) == 1).nonzero().squeeze(1) + 1  # [k] within the turn
        ends = ends + tuple(t.length + int(e) for e in run_ends.tolist())
    return dataclasses.replace(
        t,
        ids=torch.cat([t.ids, ids.to(t.ids.device)]),
        model_mask=torch.cat([t.model_mask, torch.full((n,), int(model), dtype=torch.long, device=t.ids.device)]),
        mm_token_type_ids=torch.cat([t.mm_token_type_ids, kinds.to(t.ids.device, t.mm_token_type_ids.dtype)]),
        pixel_values=t.pixel_values if turn is None else _cat(t.pixel_values, turn.pixel_values),
        image_grid_thw=t.image_grid_thw if turn is None else _cat(t.image_grid_thw, turn.image_grid_thw),
        image_ends=ends,
        turns=t.turns + ((text,) if text is not None else ()),
        answers=t.answers + ((turn,) if turn is not None else ()),
    )


def context(prompt: PromptInputs, t: Trajectory) -> PromptInputs:
    """The prompt followed by the trajectory so far, as one prompt (its tool images after the prompt's)."""
    return extended(prompt, t.ids, t.mm_token_type_ids, t.pixel_values, t.image_grid_thw)


def _turn_seed(seed: int, g: int, turn: int) -> int:
    """Trajectory g's seed for turn `turn` > 0, from its group's seed."""
    return (seed * 1_000_003 + g * 10_007 + turn * 101) % (2**63 - 1)


def _advance(t: Trajectory, tokens: Tensor, limit: int, b: int, g: int, special: SpecialIds, caps: TurnCaps,
             tokenizer, respond: Respond) -> Trajectory:
    """The trajectory after one sampled turn `tokens` [n] (cut at its first stop and at `limit`):
    finished (`ending` set) or extended by the tool's answer."""
    stops = torch.isin(tokens[:limit], torch.tensor(special.eos + (caps.stop_id,), device=tokens.device))
    cut = int(stops.int().argmax()) + 1 if bool(stops.any()) else min(limit, int(tokens.shape[0]))
    turn_ids = tokens[:cut]
    text = tokenizer.decode(turn_ids, skip_special_tokens=True)
    t = append_turn(t, turn_ids, True, None, text)
    last = int(turn_ids[-1]) if cut else -1
    if last in special.eos:
        return dataclasses.replace(t, ending="eos")
    if last != caps.stop_id:
        return dataclasses.replace(t, ending="tokens" if t.length >= caps.max_total_tokens else "length")
    if len(t.turns) >= caps.max_turns[b]:
        return dataclasses.replace(t, ending="turns")
    reply = respond(b, g, text)
    if t.length + reply.length >= caps.max_total_tokens:  # no room left for the model's next turn
        return dataclasses.replace(t, ending="tokens")
    return append_turn(t, reply.input_ids, False, reply, None)


def generate_trajectories(model: torch.nn.Module, tokenizer, special: SpecialIds, prompts: list[PromptInputs],
                          num_generations: int, sampling: Sampling, seeds: list[int], caps: TurnCaps,
                          respond: Respond) -> list[list[Trajectory]]:
    """B x G trajectories (on the model's device), group b's first turn drawn from `seeds[b]` as
    `generate_groups` would. The caller sets the model's train/eval mode (eval for sampling)."""
    if len(seeds) != len(prompts) or len(caps.max_turns) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts, {len(seeds)} seeds, {len(caps.max_turns)} max_turns")
    G, device = num_generations, (prompts[0].input_ids.device if prompts else torch.device("cpu"))
    stops = dataclasses.replace(special, eos=special.eos + (caps.stop_id,))
    out = [[start_trajectory(device)] * G for _ in prompts]
    live = [(b, g) for b in range(len(prompts)) for g in range(G)]
    turn = 0
    with torch.no_grad():
        while live:
            room = [caps.max_total_tokens - out[b][g].length for b, g in live]
            turn_sampling = dataclasses.replace(sampling, max_new_tokens=min(sampling.max_new_tokens, max(room)))
            if turn == 0:
                gens = [torch.Generator(device).manual_seed(s) for s in seeds]
                tokens = _decode_shared(model, stops, prompts, G, turn_sampling, gens)  # [B*G, n]
            else:
                gens = [torch.Generator(device).manual_seed(_turn_seed(seeds[b], g, turn)) for b, g in live]
                contexts = [context(prompts[b], out[b][g]) for b, g in live]
                tokens = _decode_shared(model, stops, contexts, 1, turn_sampling, gens)  # [n_live, n]
            for row, ((b, g), r) in enumerate(zip(live, room)):
                limit = min(r, turn_sampling.max_new_tokens)
                out[b][g] = _advance(out[b][g], tokens[row], limit, b, g, special, caps, tokenizer, respond)
            live = [(b, g) for b, g in live if out[b][g].ending is None]
            turn += 1
    return out


def group_tensors(trajectories: list[Trajectory], pad_id: int, mask_capped: bool) -> tuple[Tensor, Tensor, CompletionMedia]:
    """A group's trajectories as the training record's tensors: (completion_ids [G, C] right-padded,
    loss mask [G, C]: 1 on model tokens only, all 0 for capped trajectories when `mask_capped`
    (Mini-o3's over-turn masking), the tool media of each completion)."""
    C = max(t.length for t in trajectories)
    ids = torch.stack([pad_last(t.ids, C, pad_id) for t in trajectories])  # [G, C]
    mask = torch.stack([pad_last(t.model_mask * int(not (mask_capped and t.capped)), C, 0)
                        for t in trajectories])  # [G, C]
    media = CompletionMedia(
        mm_token_type_ids=torch.stack([pad_last(t.mm_token_type_ids, C, 0) for t in trajectories]),  # [G, C]
        pixel_values=tuple(t.pixel_values for t in trajectories),
        image_grid_thw=tuple(t.image_grid_thw for t in trajectories),
        image_ends=tuple(t.image_ends for t in trajectories),
    )
    return ids, mask, media
