"""Tools benchmark: does a policy trained with the `crop` tool answer what the prompt's pixel budget
hides, where the same model and budget without tools cannot? (mmgrpo/demo/tools_task.py: four dots
at the centre of a 448 x 448 image shown at 56 x 56; the question asks for the top-left one.)

Per seed and condition (mmgrpo/demo/tools_bench.py): tiny model -> SFT on the format (with tools: the
crop call, the real tool answer and a random answer letter; without: a random answer letter) ->
held-out eval -> GRPO -> held-out eval. Greedy evaluation, multi-turn with tools.

    python scripts/bench_tools.py                    # 3 seeds x 2 conditions, CPU
    python scripts/bench_tools.py --seeds 0 --rl-steps 10 --out-dir /tmp/tools-bench   # a quick look
    python scripts/bench_tools.py --seeds 1 --docs /tmp/s1 & ...                       # seeds in parallel,
    python scripts/bench_tools.py --merge /tmp/s0/bench_tools.json /tmp/s1/bench_tools.json ...  # then one report

Writes docs/bench_tools.json, docs/bench_tools.md and docs/bench_tools.png (with --docs elsewhere).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mmgrpo.demo.tools_bench import run_condition
from mmgrpo.demo.tools_task import ToolTaskSpec


def table(results: list[dict]) -> str:
    lines = ["| condition | seed | accuracy after SFT | accuracy after GRPO | tool-call rate after GRPO |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {'with tools' if r['tools'] else 'without tools'} | {r['seed']} | {r['before']['accuracy']:.3f} "
                     f"| {r['after']['accuracy']:.3f} | {r['after']['call_rate']:.3f} |")
    for tools in (True, False):
        acc = [r["after"]["accuracy"] for r in results if r["tools"] == tools]
        calls = [r["after"]["call_rate"] for r in results if r["tools"] == tools]
        if acc:
            lines.append(f"| **{'with tools' if tools else 'without tools'}, mean** | {len(acc)} seeds | | "
                         f"**{statistics.mean(acc):.3f}** | {statistics.mean(calls):.3f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, tools in enumerate((False, True)):
        rows = [r for r in results if r["tools"] == tools]
        for j, stage in enumerate(("before", "after")):
            values = [r[stage]["accuracy"] for r in rows]
            x = k * 3 + j
            ax.bar(x, statistics.mean(values), color=("#bbb", "#4a7")[tools], alpha=0.5 + 0.5 * j)
            ax.scatter([x] * len(values), values, color="k", s=12, zorder=3)
    ax.axhline(0.25, color="r", ls="--", lw=1, label="chance")
    ax.set_xticks([0, 1, 3, 4], ["SFT", "GRPO", "SFT", "GRPO"])
    ax.set_title("held-out accuracy: without tools (grey) / with crop (green)")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--rl-steps", type=int, default=250)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-heldout", type=int, default=64)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/bench_tools"))
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--merge", type=Path, nargs="+", help="only write the report from these runs' bench_tools.json")
    args = ap.parse_args(argv)
    if args.merge:
        runs = [json.loads(p.read_text()) for p in args.merge]
        settings = {**runs[0]["settings"], "seconds": sum(r["settings"]["seconds"] for r in runs)}
        return report(settings, sorted((x for r in runs for x in r["results"]), key=lambda x: (not x["tools"], x["seed"])),
                      args.docs)
    torch.set_num_threads(1)  # the tiny model gains nothing from threads on a shared machine
    spec = ToolTaskSpec(n_train=args.n_train, n_heldout=args.n_heldout, size=448, dot=4, noise=30.0, seed=0)
    results, t0 = [], time.perf_counter()
    for seed in args.seeds:
        for tools in (True, False):
            results.append(run_condition(args.out_dir, seed, tools, spec, args.sft_steps, args.rl_steps))
            print(json.dumps(results[-1]), flush=True)
    settings = {"spec": spec.__dict__, "sft_steps": args.sft_steps, "rl_steps": args.rl_steps,
                "seconds": round(time.perf_counter() - t0, 1)}
    report(settings, results, args.docs)


def report(settings: dict, results: list[dict], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "bench_tools.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
    (docs / "bench_tools.md").write_text(
        "# Tools benchmark (scripts/bench_tools.py)\n\n"
        f"Settings: {json.dumps(settings)}\n\n{table(results)}\n\n![accuracy](bench_tools.png)\n")
    plot(results, docs / "bench_tools.png")
    print(table(results))


if __name__ == "__main__":
    main()
