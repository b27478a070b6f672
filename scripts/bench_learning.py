"""Learning benchmarks: the same step budget for every method, several seeds, held-out accuracy
every --eval-every steps. One command per task rewrites its document:

    python scripts/bench_learning.py                      # --task demo -> docs/bench_learning.{json,md,png}
    python scripts/bench_learning.py --task counting [--ablations]
                                                          # -> docs/bench_learning_counting.{json,md,png}

demo: colour of a moving square, answer-only completions; GRPO, Reg-GRPO, Reg-GRPO + DA, GRPO + DA,
T-GRPO, TIC-GRPO on the demo's settings (configs/demo.yaml), 3 seeds.
counting: which colour the square has most often over 6 scenes, with a counting trace
(<think>red 3 green 2 ...</think><answer>A</answer>), easy and hard held-out strata
(mmgrpo/demo/counting.py); GRPO, Reg-GRPO, Reg-GRPO + DA, GRPO + DA, DAPO, GSPO with their paper
presets (loss.preset), 5 seeds; --ablations adds DeepVideo-R1's DA and Reg-GRPO ablations.

Per seed, every method starts from the same tiny model, task and SFT checkpoint, so the methods
differ only in the RL objective and augmentation. A finished run (its last checkpoint at --steps)
is reused, so an interrupted invocation continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import bench_learning_report as report

DEMO_METHODS = {
    "grpo": ["loss.objective=clipped_token", "augment.enabled=false"],
    "reg_grpo": ["loss.objective=reg_grpo", "augment.enabled=false"],
    "reg_grpo+da": ["loss.objective=reg_grpo", "augment.enabled=true"],
    "grpo+da": ["loss.objective=clipped_token", "augment.enabled=true"],
    # GRPO + Video-R1's temporal contrast (G/2 = 4 completions per clip on shuffled frames, bonus 0.3)
    "t_grpo": ["loss.objective=clipped_token", "augment.enabled=false", "temporal.enabled=true"],
    # trajectory-level ratio clipped from above at 1.2; on-policy: sequence-level REINFORCE
    "tic_grpo": ["loss.objective=tic_grpo", "augment.enabled=false"],
}
# DA settings used for both demo "+da" methods: perturb easy (all-correct) groups with frame noise and
# masking; hints for hard groups need a reasoning trace, which the demo's answer-only completions
# do not have, so in this task DA acts through the "harder" branch.
DEMO_DA = ["augment.harder=[gaussian_noise,frame_mask]", "augment.dead_zone=0.05", "augment.max_extra_rollouts=4"]

# Counting: each method is its paper's preset (mmgrpo/presets.py, docs/methods.md). DA as DeepVideo-R1
# §3.3 describes it: every group outside the dead zone is augmented, not only all-equal-reward ones
# (our default, only_zero_variance, would make DA a near no-op here: with the format reward and a
# half-right policy, 1-2% of the groups had equal rewards in the first 50 steps of GRPO and
# Reg-GRPO); window 100, dead zone 0.1, at most 4 augmented groups a step, Gaussian frame noise
# as the harder input (configs/counting.yaml).
DA = ["augment.enabled=true", "augment.only_zero_variance=false"]
COUNTING_METHODS = {
    "grpo": ["loss.preset=grpo"],
    "reg_grpo": ["loss.preset=reg_grpo"],
    "reg_grpo+da": ["loss.preset=reg_grpo", *DA],
    "grpo+da": ["loss.preset=grpo", *DA],
    "dapo": ["loss.preset=dapo"],
    "gspo": ["loss.preset=gspo"],
}
# DeepVideo-R1 §4.3's ablations that apply here (compare with reg_grpo+da / reg_grpo above)
COUNTING_ABLATIONS = {
    "reg_grpo+da_harder_only": ["loss.preset=reg_grpo", *DA, "augment.easier=false"],
    "reg_grpo+da_easier_only": ["loss.preset=reg_grpo", *DA, "augment.harder=[]"],
    "reg_grpo+da_fixed": ["loss.preset=reg_grpo", *DA, "augment.adaptive=false"],  # strength 0.5 always
    "reg_grpo_ratio_mean": ["loss.preset=reg_grpo", "loss.reg_ratio=mean"],  # token-mean log-ratio
    # eps only matters in the paper's unweighted loss: with reg_scale=std the on-policy gradient does
    # not depend on it (docs/methods.md), so the eps pair runs with reg_scale=none
    "reg_grpo_paper_eps1e-6": ["loss.preset=reg_grpo", "loss.reg_scale=none", "loss.reg_eps=1e-6"],
    "reg_grpo_paper_eps1e-2": ["loss.preset=reg_grpo", "loss.reg_scale=none", "loss.reg_eps=1e-2"],
}
FIRST = ("grpo", "reg_grpo", "reg_grpo+da")  # Table 4: Reg-GRPO + DA > Reg-GRPO > GRPO
TASKS = {
    "demo": {"doc": "bench_learning", "steps": 300, "seeds": [0, 1, 2], "sft_steps": 40},
    "counting": {"doc": "bench_learning_counting", "steps": 100, "seeds": [0, 1, 2, 3, 4], "sft_steps": 60},
}


def methods(task: str, ablations: bool) -> dict[str, list[str]]:
    if task == "demo":
        return {m: [*o, *DEMO_DA] for m, o in DEMO_METHODS.items()}
    return {**COUNTING_METHODS, **(COUNTING_ABLATIONS if ablations else {})}


def prepare(task: str, root: Path, seed: int, sft_steps: int) -> dict:
    """Tiny model, task data and SFT checkpoint of one seed (shared by every method)."""
    from mmgrpo.models.tiny import TinySpec, save_tiny
    from mmgrpo.trainer.checkpoint import latest_checkpoint
    from mmgrpo.trainer.sft import sft

    ckpt = latest_checkpoint(root / "sft")  # a finished earlier invocation is reused
    fresh = ckpt is None or not ckpt.name.endswith(f"-{sft_steps}")
    if task == "demo":
        from mmgrpo.demo.run import accuracy, demo_vision, sft_config
        from mmgrpo.demo.task import TaskSpec, make_task

        files = make_task(root / "data", TaskSpec(seed=seed))  # deterministic: regenerated identically
        if fresh:
            ckpt = sft(sft_config(save_tiny(root / "base-model", TinySpec(seed=seed)), files.sft_format,
                                  root / "sft", sft_steps, "qwen2_5_vl"))
        return {"sft": str(ckpt), "train": str(files.train), "heldout": str(files.heldout),
                "accuracy_sft": accuracy(ckpt, files.heldout, demo_vision())}
    from mmgrpo.demo.counting import CountingSpec, make_counting
    from mmgrpo.demo.counting_run import heldout_scores, trace_sft_config

    spec = CountingSpec(seed=seed)
    files = make_counting(root / "data", spec)
    if fresh:  # warm-up on the reference traces of easy clips only (CountingSpec.sft_strata)
        base = save_tiny(root / "base-model", TinySpec(seed=seed))
        ckpt = sft(trace_sft_config(base, files.sft, root / "sft", sft_steps, spec, seed=seed))
    cache = root / "sft_scores.json"  # greedy scores of this checkpoint, kept for later invocations
    if fresh or not cache.is_file():
        cache.write_text(json.dumps(heldout_scores(ckpt, files.heldout, spec)))
    return {"sft": str(ckpt), "train": str(files.train), "heldout": str(files.heldout),
            "scores_sft": json.loads(cache.read_text())}


def train_or_reuse(cfg, out: Path, steps: int, report_only: bool):
    """(final checkpoint, seconds): a run whose last checkpoint is at `steps` is not run again;
    with `report_only` an unfinished one is not run at all: (None, None)."""
    from mmgrpo.trainer.checkpoint import latest_checkpoint, load_trainer_state
    from mmgrpo.trainer.loop import train

    final = latest_checkpoint(out)
    if final is not None and load_trainer_state(final).step == steps and (out / "run_seconds.json").is_file():
        return final, json.loads((out / "run_seconds.json").read_text())["seconds"]
    if report_only:
        return None, None
    t0 = time.perf_counter()
    final = train(cfg)
    seconds = time.perf_counter() - t0
    (out / "run_seconds.json").write_text(json.dumps({"seconds": seconds}))
    return final, seconds


def run_one(job: dict) -> dict | None:
    """The run's record; None for an unfinished run under --report-only."""
    import torch

    torch.set_num_threads(1)  # two runs share the 2 cores
    out = Path(job["out"])
    overrides = [f"seed={job['seed']}", f"max_steps={job['steps']}", f"eval.every={job['eval_every']}",
                 "progress_bar=false", "report_to=[jsonl]", *job["overrides"]]
    if job["task"] == "demo":
        from mmgrpo.demo.run import rl_config

        overrides += ["eval.batch_size=16", "eval.max_new_tokens=8"]
        cfg = rl_config(Path(job["sft"]), Path(job["train"]), Path(job["heldout"]), out, overrides)
    else:
        from mmgrpo.demo.counting import CountingSpec
        from mmgrpo.demo.counting_run import counting_rl_config

        cfg = counting_rl_config(Path(job["sft"]), Path(job["train"]), Path(job["heldout"]), out,
                                 CountingSpec(seed=job["seed"]), overrides)
    final, seconds = train_or_reuse(cfg, out, job["steps"], job["report_only"])
    if final is None:
        return None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    record = {"method": job["method"], "seed": job["seed"], "seconds": round(seconds, 1),
              "step_time_median": statistics.median(r["step_time"] for r in rows)}
    if job["task"] == "demo":
        return {**record, **demo_record(final, Path(job["heldout"]), cfg.vision, rows)}
    return {**record, **counting_record(final, out, Path(job["heldout"]), job["seed"], rows)}


def demo_record(final: Path, heldout: Path, vision, rows: list[dict]) -> dict:
    from mmgrpo.demo.run import accuracy

    curve = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    zero = [r.get("augment/zero_std_frac_after", r["zero_std_frac"]) for r in rows]
    return {
        "final_accuracy": accuracy(final, heldout, vision),
        "steps_to_80": next((s for s, a in curve if a >= 0.8), None),
        "zero_std_frac": statistics.fmean(zero), "zero_std_frac_before": statistics.fmean(r["zero_std_frac"] for r in rows),
        "curve": curve,
    }


def counting_record(final: Path, out: Path, heldout: Path, seed: int, rows: list[dict]) -> dict:
    """Final greedy scores per stratum, the eval curve, DA's counts, the zero-std shares; for DAPO
    the rollout rounds per step (dynamic sampling's cost: the same steps, more rollouts)."""
    from mmgrpo.demo.counting import CountingSpec
    from mmgrpo.demo.counting_run import heldout_scores

    cache = out / f"final_scores-{final.name}.json"  # a rewrite of the document does not evaluate again
    if not cache.is_file():
        cache.write_text(json.dumps(heldout_scores(final, heldout, CountingSpec(seed=seed))))
    curve = [(r["step"], r["eval/accuracy"], r.get("eval/task/easy"), r.get("eval/task/hard"))
             for r in rows if r.get("eval/accuracy") is not None]
    return {
        "final": json.loads(cache.read_text()),
        "curve": curve,
        "zero_std_frac_before": statistics.fmean(r["zero_std_frac"] for r in rows),
        "zero_std_frac_after": statistics.fmean(r.get("augment/zero_std_frac_after", r["zero_std_frac"]) for r in rows),
        "da_harder": sum(r.get("augment/harder", 0.0) for r in rows),
        "da_easier": sum(r.get("augment/easier", 0.0) for r in rows),
        "dynamic_rounds_mean": statistics.fmean(r.get("dynamic/rounds", 1.0) for r in rows),
        "reward_mean_last50": statistics.fmean(r["reward/mean"] for r in rows[-50:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="demo")
    ap.add_argument("--steps", type=int, help="RL steps per run (default: the task's)")
    ap.add_argument("--seeds", type=int, nargs="+", help="default: the task's")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--sft-steps", type=int, help="default: the task's")
    ap.add_argument("--ablations", action="store_true", help="counting: also run the ablations")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true",
                    help="write the document from the finished runs, train nothing; it names the runs left")
    ap.add_argument("--out", type=Path, help="default: runs/<doc name>")
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = ap.parse_args()
    t = TASKS[args.task]
    args.steps, args.seeds = args.steps or t["steps"], args.seeds or t["seeds"]
    args.sft_steps, args.out = args.sft_steps or t["sft_steps"], args.out or Path("runs") / t["doc"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    table = methods(args.task, args.ablations)
    with ProcessPoolExecutor(args.workers) as pool:
        n = len(args.seeds)
        preps = list(pool.map(prepare, [args.task] * n, [args.out / f"seed{s}" for s in args.seeds], args.seeds,
                              [args.sft_steps] * n))
        prep = dict(zip(map(str, args.seeds), preps))
        jobs = [{"task": args.task, "method": m, "overrides": o, "seed": s, "steps": args.steps,
                 "eval_every": args.eval_every, "report_only": args.report_only, "out": str(args.out / f"seed{s}" / m.replace("+", "_")), **prep[str(s)]}
                for s in args.seeds for m, o in table.items()]
        # the methods of DeepVideo-R1's ordering first, every seed, then the others: an interrupted
        # invocation has the comparison the benchmark exists for
        jobs.sort(key=lambda j: j["method"] not in FIRST)
        results = list(pool.map(run_one, jobs))
    missing = [f"{j['method']} seed {j['seed']}" for j, r in zip(jobs, results) if r is None]
    results = [r for r in results if r is not None]
    args.docs.mkdir(exist_ok=True)
    doc = args.docs / f"{t['doc']}.md"
    if args.task == "demo":
        report.write_demo(args.docs, args, prep, results, list(table))
    else:
        report.write_counting(args.docs, args, prep, results, table, list(COUNTING_METHODS), missing)
    print(doc.read_text())


if __name__ == "__main__":
    main()
