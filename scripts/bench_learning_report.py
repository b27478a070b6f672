"""Tables, intervals and plots of scripts/bench_learning.py (one writer per task).

Intervals are 95% percentile bootstrap intervals over seeds (10,000 resamples of the seeds, with
replacement; fixed resampling seed, so a rewrite gives the same numbers). Differences between two
methods are paired by seed: both start from the same SFT checkpoint and data of that seed. With 5
seeds a percentile bootstrap is optimistic (it undercovers for small n); an ordering counts as
holding only when its whole interval lies above 0.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

ANALYSIS = "<!-- analysis: written by hand below this line; the script keeps it when it rewrites the table -->"
BOOT = 10_000
# DeepVideo-R1 Table 4 (SEED-Bench-R1 L1): Reg-GRPO + DA 48.1 > Reg-GRPO 44.2 > GRPO 39.6
ORDERINGS = [("reg_grpo+da", "reg_grpo"), ("reg_grpo", "grpo"), ("reg_grpo+da", "grpo"), ("grpo+da", "grpo")]
# each ablation against what it changes (DeepVideo-R1 §4.3: both DA branches and the adaptive
# strength beat each one alone / a fixed strength)
ABLATION_PAIRS = [("reg_grpo+da", "reg_grpo+da_harder_only"), ("reg_grpo+da", "reg_grpo+da_easier_only"),
                  ("reg_grpo+da", "reg_grpo+da_fixed"), ("reg_grpo", "reg_grpo_ratio_mean"),
                  ("reg_grpo_paper_eps1e-6", "reg_grpo_paper_eps1e-2"), ("reg_grpo", "reg_grpo_paper_eps1e-6")]


def bootstrap(values: list[float]) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means)."""
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(0).integers(0, len(v), (BOOT, len(v)))  # [BOOT, n]
    means = v[idx].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def keep_analysis(md: Path) -> str:
    text = md.read_text() if md.is_file() else ""
    return text.split(ANALYSIS, 1)[1].lstrip("\n") if ANALYSIS in text else "## Analysis\n\n(not written yet)\n"


def settings_of(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ----------------------------------------------------------------------------------------------
# counting


def late(run: dict) -> float:
    """Mean held-out accuracy over the evaluations in the second half of the run (75 and 100 of
    100 steps): one evaluation swings by up to 0.15 between neighbours, two halve the variance."""
    last = max(c[0] for c in run["curve"])
    return statistics.fmean(c[1] for c in run["curve"] if c[0] > last / 2)


def score(run: dict, key: str) -> float:
    return late(run) if key == "late" else run["final"][key]


def by_method(results: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in results:
        out.setdefault(r["method"], {})[r["seed"]] = r
    return out


def counting_summary(results: list[dict], names: list[str]) -> dict:
    table = {}
    for m, runs in by_method(results).items():
        rs = list(runs.values())
        final = {k: bootstrap([score(r, k) for r in rs]) for k in ("accuracy", "late", "easy", "hard", "trace_exact")}
        table[m] = {**{f"{k}_ci": v for k, v in final.items()}, "seeds": len(rs),
                    "zero_std_before": statistics.fmean(r["zero_std_frac_before"] for r in rs),
                    "zero_std_after": statistics.fmean(r["zero_std_frac_after"] for r in rs),
                    "da_harder": statistics.fmean(r["da_harder"] for r in rs),
                    "da_easier": statistics.fmean(r["da_easier"] for r in rs),
                    "rounds": statistics.fmean(r["dynamic_rounds_mean"] for r in rs),
                    "seconds": statistics.fmean(r["seconds"] for r in rs),
                    "step_time": statistics.fmean(r["step_time_median"] for r in rs)}
    return {m: table[m] for m in names if m in table}


def paired(results: list[dict], a: str, b: str, key: str) -> tuple[float, float, float] | None:
    runs = by_method(results)
    if a not in runs or b not in runs:
        return None
    seeds = sorted(set(runs[a]) & set(runs[b]))
    return bootstrap([score(runs[a][s], key) - score(runs[b][s], key) for s in seeds]) if seeds else None


MIN_SEEDS = 5  # fewer paired seeds give no verdict: two seeds' bootstrap is just their range


def verdict(ci: tuple[float, float, float], seeds: int) -> str:
    if seeds < MIN_SEEDS:
        return f"too few seeds (< {MIN_SEEDS})"
    if ci[1] > 0:
        return "holds"
    if ci[2] < 0:
        return "reversed"
    return "not resolved (interval contains 0)"


def method_rows(table: dict) -> list[str]:
    lines = ["| method | seeds | held-out accuracy | easy | hard | late mean (2nd half) | traces with every count "
             "right | zero-std groups (before → after DA) | DA harder / easier per run | rollout rounds / step | "
             "s/run | s/step (median) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m, t in table.items():
        lines.append(f"| {m} | {t['seeds']} | {fmt(t['accuracy_ci'])} | {fmt(t['easy_ci'])} | {fmt(t['hard_ci'])} | "
                     f"{fmt(t['late_ci'])} | "
                     f"{fmt(t['trace_exact_ci'])} | {t['zero_std_before']:.3f} → {t['zero_std_after']:.3f} | "
                     f"{t['da_harder']:.0f} / {t['da_easier']:.0f} | {t['rounds']:.2f} | {t['seconds']:.0f} | "
                     f"{t['step_time']:.2f} |")
    return lines


def ordering_rows(results: list[dict], pairs: list[tuple[str, str]] = ORDERINGS,
                  keys: tuple[str, ...] = ("accuracy", "easy", "hard", "late")) -> list[str]:
    lines = ["| ordering | held-out accuracy | seeds paired | mean paired difference [95% CI] | verdict |",
             "| --- | --- | --- | --- | --- |"]
    names = {"accuracy": "final, all", "easy": "final, easy", "hard": "final, hard", "late": "late mean, all"}
    runs = by_method(results)
    for a, b in pairs:
        for key in keys:
            name = names[key]
            ci = paired(results, a, b, key)
            if ci is not None:
                n = len(set(runs[a]) & set(runs[b]))
                lines.append(f"| {a} > {b} | {name} | {n} | {ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}] | {verdict(ci, n)} |")
    return lines


def sft_rows(prep: dict) -> list[str]:
    lines = ["| seed | accuracy | easy | hard | traces with every count right |", "| --- | --- | --- | --- | --- |"]
    for seed, p in prep.items():
        s = p["scores_sft"]
        lines.append(f"| {seed} | {s['accuracy']:.3f} | {s['easy']:.3f} | {s['hard']:.3f} | {s['trace_exact']:.3f} |")
    return lines


def write_counting(docs: Path, args, prep: dict, results: list[dict], methods: dict[str, list[str]],
                   main_names: list[str], missing: list[str]) -> None:
    names = list(methods)
    table = counting_summary(results, names)
    payload = {"settings": settings_of(args), "methods": methods, "sft": prep, "runs": results, "summary": table,
               "missing": missing}
    (docs / "bench_learning_counting.json").write_text(json.dumps(payload, indent=2))
    seeds = " ".join(map(str, args.seeds))
    main = {m: t for m, t in table.items() if m in main_names}
    ablations = {m: t for m, t in table.items() if m not in main_names}
    lines = [
        "# Learning benchmark: counting with a reasoning trace", "",
        f"`python scripts/bench_learning.py --task counting --steps {args.steps} --seeds {seeds}"
        f"{' --ablations' if args.ablations else ''}`: which colour the square has most often over 6 scenes "
        "(12 frames of 56x56), 4 options (chance 25%), completions `<think>red 3 green 2 blue 1 yellow 0</think>"
        "<answer>A</answer>`; tiny Qwen2.5-VL (0.70M parameters), full fine-tuning; SFT warm-up on the traces of "
        f"easy clips only ({args.sft_steps} steps x 8), then {args.steps} RL steps x 8 prompts x G=8 with each "
        f"method's paper preset; held-out 64 easy + 64 hard clips, greedy, every {args.eval_every} steps. "
        "Means over seeds with 95% bootstrap intervals over seeds. 2-core CPU shared with other jobs, "
        "two runs in parallel.", "",
        *([f"**Not run yet ({len(missing)} runs; the tables use the finished runs only):** {', '.join(missing)}.", ""]
          if missing else []),
        "## After the SFT warm-up (every method's start)", "", *sft_rows(prep), "",
        "## Methods (final held-out accuracy)", "", *method_rows(main), "",
        "## DeepVideo-R1's orderings (Table 4: Reg-GRPO + DA 48.1 > Reg-GRPO 44.2 > GRPO 39.6)", "",
        *ordering_rows(results), "",
    ]
    if ablations:
        lines += ["## Ablations (DeepVideo-R1 §4.3)", "", *method_rows(ablations), "",
                  *ordering_rows(results, ABLATION_PAIRS, ("accuracy", "late")), ""]
    lines += ["![held-out accuracy per stratum](bench_learning_counting.png)", "", ANALYSIS,
              keep_analysis(docs / "bench_learning_counting.md")]
    (docs / "bench_learning_counting.md").write_text("\n".join(lines))
    plot_counting(docs / "bench_learning_counting.png", results, [m for m in names if m in main], prep)


def plot_counting(png: Path, results: list[dict], names: list[str], prep: dict) -> None:
    """Mean held-out accuracy over seeds per eval step (step 0: the seed's SFT checkpoint), easy and
    hard panels, 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = by_method(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, col, title in zip(axes, (2, 3), ("easy", "hard")):
        for i, m in enumerate(names):
            start = {s: prep[str(s)]["scores_sft"] for s in runs.get(m, {})}
            curves = [[(0, start[s]["accuracy"], start[s]["easy"], start[s]["hard"]), *r["curve"]]
                      for s, r in runs.get(m, {}).items()]
            steps = [row[0] for row in curves[0]] if curves else []
            if not steps:
                continue
            cis = [bootstrap([c[j][col] for c in curves]) for j in range(len(steps))]
            ax.plot(steps, [c[0] for c in cis], color=f"C{i}", label=m)
            ax.fill_between(steps, [c[1] for c in cis], [c[2] for c in cis], color=f"C{i}", alpha=0.15)
        ax.axhline(0.25, color="grey", ls=":", label="chance")
        ax.set_title(f"{title} held-out clips")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (mean over seeds, 95% CI)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# demo (the table and plot as before issue 15)


def demo_summary(results: list[dict], names: list[str]) -> dict:
    table = {}
    for method in names:
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


def write_demo(docs: Path, args, prep: dict, results: list[dict], names: list[str]) -> None:
    table = demo_summary(results, names)
    payload = {"settings": settings_of(args), "sft": prep, "runs": results, "summary": table}
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
    plot_demo(docs / "bench_learning.png", results, names)


def plot_demo(png: Path, results: list[dict], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(names):
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
