"""The tools benchmark (scripts/bench_tools.py): the same tiny model and budget trained with and
without the `crop` tool on the dots task (demo/tools_task.py), held-out accuracy and tool-call
rate per seed.

    with tools:    SFT on tool-call traces (the crop call, the real tool answer, a *random* answer
                   letter: the format, not the task) -> GRPO with tools -> greedy multi-turn eval
    without tools: SFT on the answer format (random letters) -> GRPO -> greedy eval

Reward: accuracy + 0.5 x `tool_bonus` (DeepEyes' conditional tool reward), which keeps the calls
alive while the policy learns to read their answers (docs/bench_tools.md). Deviation from the plan
of random arguments: the traces' crop box is the top-left dot's; what RL has to learn here is
reading the tool's answer, not where to look.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch

from mmgrpo.config import TrainConfig, load_config
from mmgrpo.demo.task import LETTERS
from mmgrpo.demo.tools_task import SUFFIX, SYSTEM, ToolTaskSpec, crop_call, make_tool_task
from mmgrpo.models.generate import Sampling
from mmgrpo.models.loading import load_model, load_processor
from mmgrpo.models.logprobs import batch_logprobs
from mmgrpo.models.multiturn import Trajectory, TurnCaps, append_turn, generate_trajectories, group_tensors, start_trajectory
from mmgrpo.models.special import special_ids
from mmgrpo.models.tiny import TinySpec, save_tiny
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.formats import load_samples
from mmgrpo.trainer.rewards import accuracy
from mmgrpo.trainer.tool_rollout import build_tool_env, conversation


def run_config(model_dir: Path, train: Path, out: Path, tools: bool, steps: int, seed: int) -> TrainConfig:
    """The GRPO run of one condition: the demo's settings, multi-turn with the crop tool or not."""
    tool_settings = ["tools.enabled=true", "tools.names=[crop]", "tools.max_turns=2", "tools.max_total_tokens=160",
                     "tools.min_pixels=3136", "tools.max_pixels=3136", "reward.functions=[accuracy,tool_bonus,tool_format]",
                     # DeepEyes' conditional tool bonus keeps the calls alive while reading is learned;
                     # tool_format logged, not rewarded (a direct answer would score it higher than an errored call)
                     "reward.weights=[1.0,0.5,0.0]",
                     "generation.max_new_tokens=64"]
    plain = ["reward.functions=[accuracy,format]", "reward.weights=[1.0,0.2]", "generation.max_new_tokens=8"]
    cfg = load_config(TrainConfig, None, [
        f"model.name_or_path={model_dir}", "model.dtype=fp32", "model.freeze_vision=false", "lora.enabled=false",
        f"data.train=[{train}]", f"data.system_prompt={SYSTEM!r}" if tools else "data.system_prompt=null",
        "vision.min_pixels=784", "vision.max_pixels=3136", "vision.max_prompt_length=512",
        "generation.num_generations=8", "loss.preset=grpo", "loss.beta=0.04",
        "loss.aggregation=seq_sum",  # identical calls across a group cancel exactly; the answer token keeps its weight
        "optim.lr=5e-4", "prompts_per_step=8", f"max_steps={steps}", "save_every=0", f"seed={seed}",
        f"output_dir={out}", "progress_bar=false", "report_to=[jsonl]", "sample_every=0",
        *(tool_settings if tools else plain),
    ])
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompt_suffix=SUFFIX))  # a newline: not a CLI value


def samples_of(path: Path, cfg: TrainConfig):
    return load_samples(str(path), "auto", "raise", cfg.data.system_prompt, cfg.data.prompt_suffix).samples


def traces(cfg: TrainConfig, processor, samples, spec: ToolTaskSpec, tools: bool, rng: random.Random):
    """(prompt, trajectory) SFT pairs: [crop call -> real tool answer ->] <answer>random letter</answer>."""
    encoder = PromptEncoder(processor, cfg.vision)
    env = build_tool_env(cfg, processor) if tools else None
    tok = processor.tokenizer
    end = torch.tensor([tok.convert_tokens_to_ids("<|im_end|>")])
    ids = lambda text: torch.tensor(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    out = []
    for sample in samples:
        prompt, t = encoder.encode(sample), start_trajectory("cpu")
        if env is not None:
            call = crop_call(spec)
            t = append_turn(t, ids(call), True, None, call)
            reply = env.respond_for([sample])(0, 0, call)
            t = append_turn(t, reply.input_ids, False, reply, None)
        answer = f"<answer>{rng.choice(LETTERS)}</answer>"
        out.append((prompt, append_turn(t, torch.cat([ids(answer), end]), True, None, answer)))
    return out


def sft(model, pairs: list[tuple], steps: int, lr: float, batch: int, pad: int, seed: int) -> float:
    """Full fine-tuning on the traces' model tokens (tool tokens masked) through the multi-turn
    log-prob forward; returns the last loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order = random.Random(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        chunk = order.sample(pairs, min(batch, len(pairs)))
        groups = [group_tensors([t], pad, mask_capped=False) for _, t in chunk]
        logp = batch_logprobs(model, [p for p, _ in chunk], [g[0] for g in groups], [g[1] for g in groups], "shared",
                              1.0, pad, media=[g[2] for g in groups])
        loss = -sum(lp.sum() for lp in logp) / sum(g[1].sum() for g in groups)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return float(loss.detach())


def evaluate(model, processor, cfg: TrainConfig, samples, tools: bool) -> dict[str, float]:
    """Greedy held-out accuracy and tool-call rate: multi-turn rollouts with tools, one turn without
    (a single turn never reaches a tool call's answer: `respond` is not called)."""
    model.eval()
    encoder, tok = PromptEncoder(processor, cfg.vision), processor.tokenizer
    env = build_tool_env(cfg, processor)
    special = special_ids(model, tok)
    turns, budget = (cfg.tools.max_turns, cfg.tools.max_total_tokens) if tools else (1, cfg.generation.max_new_tokens)
    greedy = Sampling(cfg.generation.max_new_tokens, 0.0, 1.0, 0)
    trajs: list[Trajectory] = []
    for start in range(0, len(samples), 16):
        part = samples[start : start + 16]
        caps = TurnCaps((turns,) * len(part), budget, tok.convert_tokens_to_ids("</tool_call>"))
        rolled = generate_trajectories(model, tok, special, [encoder.encode(s) for s in part], 1, greedy,
                                       [0] * len(part), caps, env.respond_for(part))
        trajs += [group[0] for group in rolled]
    scores = accuracy([conversation(t) for t in trajs], answer=[s.answer for s in samples],
                      problem_type=[s.problem_type for s in samples], options=[s.options for s in samples])
    return {"accuracy": sum(scores) / len(scores), "call_rate": sum(bool(t.answers) for t in trajs) / len(trajs)}


def run_condition(root: Path, seed: int, tools: bool, spec: ToolTaskSpec, sft_steps: int, rl_steps: int) -> dict:
    """One seed of one condition: tiny model -> SFT -> eval -> GRPO -> eval."""
    from mmgrpo.trainer.loop import train

    torch.manual_seed(seed)
    name = "tools" if tools else "no_tools"
    base = save_tiny(root / f"base-{seed}", TinySpec(tool_tokens=True, seed=seed))
    train_file, heldout_file = make_tool_task(root / f"task-{seed}", dataclasses.replace(spec, seed=seed))
    cfg = run_config(base, train_file, root / f"{name}-{seed}" / "rl", tools, rl_steps, seed)
    processor = load_processor(str(base))
    model = load_model(base, "fp32", "cpu", trainable=True)
    pairs = traces(cfg, processor, samples_of(train_file, cfg), spec, tools, random.Random(seed))
    sft_loss = sft(model, pairs, sft_steps, 1e-3, 8, processor.tokenizer.pad_token_id, seed)
    held = samples_of(heldout_file, cfg)
    before = evaluate(model, processor, cfg, held, tools)
    start = root / f"{name}-{seed}" / "sft"
    model.save_pretrained(start)
    processor.save_pretrained(start)
    final = train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=str(start))))
    trained = load_model(final, "fp32", "cpu")
    after = evaluate(trained, processor, cfg, held, tools)
    return {"seed": seed, "tools": tools, "sft_loss": sft_loss, "before": before, "after": after}
