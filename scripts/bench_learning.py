"""Learning benchmark on the demo task: GRPO, Reg-GRPO, Reg-GRPO + DA, GRPO + DA, T-GRPO and
TIC-GRPO, 3 seeds each, the same step budget. Writes docs/bench_learning.{json,md,png}.

    python scripts/bench_learning.py [--steps 300] [--seeds 0 1 2] [--workers 2]

Per seed, every method starts from the same tiny model, task and SFT (format) checkpoint, so the
methods differ only in the RL objective and augmentation. Reported: final held-out accuracy
(mean ± std over seeds), steps to reach 80% held-out accuracy (evaluated every --eval-every
steps), and the mean fraction of zero-std groups among the groups trained on (after augmentation).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

METHODS = {
    "grpo": ["loss.objective=clipped_token", "augment.enabled=false"],
    "reg_grpo": ["loss.objective=reg_grpo", "augment.enabled=false"],
    "reg_grpo+da": ["loss.objective=reg_grpo", "augment.enabled=true"],
    "grpo+da": ["loss.objective=clipped_token", "augment.enabled=true"],
    # GRPO + Video-R1's temporal contrast (G/2 = 4 completions per clip on shuffled frames, bonus 0.3)
    "t_grpo": ["loss.objective=clipped_token", "augment.enabled=false", "temporal.enabled=true"],
    # trajectory-level ratio clipped from above at 1.2; on-policy: sequence-level REINFORCE
    "tic_grpo": ["loss.objective=tic_grpo", "augment.enabled=false"],
}
# DA settings used for both "+da" methods: perturb easy (all-correct) groups with frame noise and
# masking; hints for hard groups need a reasoning trace, which the demo's answer-only completions
# do not have, so in this task DA acts through the "harder" branch.
DA = ["augment.harder=[gaussian_noise,frame_mask]", "augment.dead_zone=0.05", "augment.max_extra_rollouts=4"]


def prepare(root: Path, seed: int, sft_steps: int) -> dict:
    """Tiny model, task and SFT checkpoint of one seed (shared by every method)."""
    from mmgrpo.demo.run import accuracy, demo_vision, sft_config
    from mmgrpo.demo.task import TaskSpec, make_task
    from mmgrpo.models.tiny import TinySpec, save_tiny
    from mmgrpo.trainer.sft import sft

    from mmgrpo.trainer.checkpoint import latest_checkpoint

    files = make_task(root / "data", TaskSpec(seed=seed))  # deterministic: regenerated identically
    ckpt = latest_checkpoint(root / "sft")  # a finished earlier invocation is reused
    if ckpt is None or not ckpt.name.endswith(f"-{sft_steps}"):
        base = save_tiny(root / "base-model", TinySpec(seed=seed))
        ckpt = sft(sft_config(base, files.sft_format, root / "sft", sft_steps))
    return {"sft": str(ckpt), "train": str(files.train), "heldout": str(files.heldout),
            "accuracy_sft": accuracy(ckpt, files.heldout, demo_vision())}


def run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)  # two runs share the 2 cores
    from mmgrpo.demo.run import accuracy, rl_config
    from mmgrpo.trainer.loop import train

    out = Path(job["out"])
    overrides = [f"seed={job['seed']}", f"max_steps={job['steps']}", f"eval.every={job['eval_every']}",
                 "eval.batch_size=16", "eval.max_new_tokens=8", "progress_bar=false", "report_to=[jsonl]",
                 *METHODS[job["method"]], *DA]
    cfg = rl_config(Path(job["sft"]), Path(job["train"]), Path(job["heldout"]), out, overrides)
    from mmgrpo.trainer.checkpoint import latest_checkpoint, load_trainer_state

    final = latest_checkpoint(out)
    if final is not None and load_trainer_state(final).step == job["steps"]:  # finished earlier: reuse
        seconds = json.loads((out / "run_seconds.json").read_text())["seconds"]
    else:
        t0 = time.perf_counter()
        final = train(cfg)
        seconds = time.perf_counter() - t0
        (out / "run_seconds.json").write_text(json.dumps({"seconds": seconds}))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    zero = [r.get("augment/zero_std_frac_after", r["zero_std_frac"]) for r in rows]
    return {
        "method": job["method"], "seed": job["seed"], "seconds": round(seconds, 1),
        "final_accuracy": accuracy(final, Path(job["heldout"]), cfg.vision),
        "steps_to_80": next((s for s, a in curve if a >= 0.8), None),
        "zero_std_frac": statistics.fmean(zero), "zero_std_frac_before": statistics.fmean(r["zero_std_frac"] for r in rows),
        "curve": curve,
    }


def summarise(results: list[dict]) -> dict:
    table = {}
    for method in METHODS:
        rs = [r for r in results if r["method"] == method]
        accs = [r["final_accuracy"] for r in rs]
        reached = [r["steps_to_80"] for r in rs if r["steps_to_80"] is not None]
        table[method] = {
            "final_accuracy_mean": statistics.fmean(accs), "final_accuracy_std": statistics.pstdev(accs),
            "steps_to_80_mean": statistics.fmean(reached) if reached else None,
            "seeds_reaching_80": len(reached), "seeds": len(rs),
            "zero_std_frac_mean": statistics.fmean(r["zero_std_frac"] for r in rs),
            "seconds_mean": statistics.fmean(r["seconds"] for r in rs),
        }
    return table


def write_docs(docs: Path, args, prep: dict, results: list[dict], table: dict) -> None:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"settings": settings, "sft": prep, "runs": results, "summary": table}
    (docs / "bench_learning.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# Learning benchmark (demo task)", "",
        f"`python scripts/bench_learning.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}`: "
        f"colour of a moving square, 4 options (chance 25%), tiny Qwen2.5-VL, full fine-tuning, "
        f"{args.steps} RL steps x 8 prompts x G=8 after a format-only SFT; held-out accuracy every "
        f"{args.eval_every} steps. 2-core CPU, two runs in parallel.", "",
        "| method | final held-out accuracy (mean ± std) | steps to 80% (mean; seeds reaching) | "
        "zero-std groups trained on | s/run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, t in table.items():
        steps = f"{t['steps_to_80_mean']:.0f}" if t["steps_to_80_mean"] is not None else "—"
        lines.append(f"| {m} | {t['final_accuracy_mean']:.3f} ± {t['final_accuracy_std']:.3f} | {steps} "
                     f"({t['seeds_reaching_80']}/{t['seeds']}) | {t['zero_std_frac_mean']:.3f} | {t['seconds_mean']:.0f} |")
    lines += ["", "![held-out accuracy](bench_learning.png)", "", ANALYSIS, keep_analysis(docs / "bench_learning.md")]
    (docs / "bench_learning.md").write_text("\n".join(lines))
    plot(docs / "bench_learning.png", results)


ANALYSIS = "<!-- analysis: written by hand below this line; the script keeps it when it rewrites the table -->"


def keep_analysis(md: Path) -> str:
    text = md.read_text() if md.is_file() else ""
    return text.split(ANALYSIS, 1)[1].lstrip("\n") if ANALYSIS in text else "## Analysis\n\n(not written yet)\n"


def plot(png: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(METHODS):
        for j, r in enumerate(x for x in results if x["method"] == method):
            steps, accs = zip(*r["curve"]) if r["curve"] else ([], [])
            ax.plot(steps, accs, color=f"C{i}", alpha=0.7, label=method if j == 0 else None)
    ax.axhline(0.25, color="grey", ls=":", label="chance")
    ax.axhline(0.8, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_learning"))
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(args.workers) as pool:
        preps = list(pool.map(prepare, [args.out / f"seed{s}" for s in args.seeds], args.seeds,
                              [args.sft_steps] * len(args.seeds)))
        prep = dict(zip(map(str, args.seeds), preps))
        jobs = [{"method": m, "seed": s, "steps": args.steps, "eval_every": args.eval_every,
                 "out": str(args.out / f"seed{s}" / m.replace("+", "_")), **prep[str(s)]}
                for s in args.seeds for m in METHODS]
        results = list(pool.map(run_one, jobs))
    table = summarise(results)
    args.docs.mkdir(exist_ok=True)
    write_docs(args.docs, args, prep, results, table)
    print((args.docs / "bench_learning.md").read_text())


if __name__ == "__main__":
    main()
