"""The demo's report: a reward-curve PNG from metrics.jsonl and a short markdown summary."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_rewards(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("reward/accuracy/mean", "accuracy reward"), ("reward/mean", "total reward"),
                       ("zero_std_frac", "zero-std groups")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(steps, _smooth(values), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("value (moving average, 10 steps)")
    ax.set_title("mmgrpo demo: training rewards")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _smooth(values: list[float | None], k: int = 10) -> list[float]:
    out, window = [], []
    for v in values:
        window = (window + [v if v is not None else float("nan")])[-k:]
        finite = [w for w in window if w == w]
        out.append(sum(finite) / len(finite) if finite else float("nan"))
    return out


def write_report(out: Path, summary: dict) -> None:
    rows = read_metrics(out / "metrics.jsonl")
    plot_rewards(rows, out / "reward_curve.png")
    lines = [
        "# mmgrpo demo report",
        "",
        "Task: colour of a moving square in 8-frame 56x56 clips, 4 options (chance 25%).",
        f"Pipeline: tiny Qwen2.5-VL (random init) -> SFT on the answer format (random labels) -> "
        f"{summary['loss']} for {summary['steps']} steps (difficulty-aware augmentation: "
        f"{'on' if summary['augment'] else 'off'}).",
        "",
        "| held-out accuracy | value |",
        "| --- | --- |",
        f"| after SFT (format only) | {summary['accuracy_sft']:.3f} |",
        f"| after RL | {summary['accuracy_rl']:.3f} |",
        f"| after RL, every frame replaced by noise | {summary['accuracy_rl_noise_video']:.3f} |",
        f"| chance | {summary['chance']:.3f} |",
        "",
        f"Wall time: {summary['seconds']:.0f} s. Final checkpoint: `{summary['final_checkpoint']}`.",
        "",
        "![reward curve](reward_curve.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
