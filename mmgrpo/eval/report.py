"""report.md and the per-task accuracy chart of one evaluation; the side-by-side comparison of several.

Charts are drawn on a bare `matplotlib.figure.Figure` with the Agg canvas: no pyplot, so nothing
global changes and it works on headless machines.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmgrpo.eval.metrics import EvalMetrics, GroupStats, PredictionRecord
from mmgrpo.eval.store import CHART, METRICS, REPORT, RunInfo, read_run_info

MAX_EXAMPLES = 5  # wrong answers and errors quoted in the report
BAR_WIDTH = 20  # characters of the text bars in the tables


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def text_bar(x: float) -> str:
    filled = round(x * BAR_WIDTH)
    return "`" + "█" * filled + "·" * (BAR_WIDTH - filled) + "`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _group_table(title: str, groups: dict[str, GroupStats]) -> list[str]:
    if not groups:
        return []
    rows = [[name, str(g.n), pct(g.accuracy), text_bar(g.accuracy), str(g.errors)] for name, g in groups.items()]
    return [f"## {title}", ""] + _table([title.split()[-1], "n", "acc %", "", "errors"], rows) + [""]


def _summary(m: EvalMetrics) -> list[str]:
    rows = [
        ["samples", str(m.n)],
        ["evaluated", str(m.n_evaluated)],
        ["errors", f"{m.n_errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in m.errors_by_kind.items())})" if m.n_errors else "")],
        ["**accuracy %**", f"**{pct(m.accuracy)}**"],
        ["accuracy % without errors", pct(m.accuracy_valid)],
        ["mean score", f"{m.mean_score:.3f}"],
        ["invalid format %", pct(m.invalid_format_rate)],
        ["mean output tokens", f"{m.mean_output_tokens:.1f}"],
        ["samples / s", f"{m.samples_per_s:.2f}"],
    ]
    if m.sampling is not None:
        k = m.sampling.k
        rows += [[f"pass@{k} %", pct(m.sampling.pass_at_k)], [f"mean@{k} % (pass@1 estimate)", pct(m.sampling.mean_at_k)]]
    return _table(["metric", "value"], rows)


def _examples(records: list[PredictionRecord]) -> list[str]:
    errors = [r for r in records if r.error is not None][:MAX_EXAMPLES]
    wrong = [r for r in records if r.error is None and not r.correct][:MAX_EXAMPLES]
    lines: list[str] = []
    if errors:
        lines += ["## Errors", ""] + [f"- `{r.id}` ({r.error_kind}): {r.error}" for r in errors] + [""]
    if wrong:
        lines += ["## Wrong answers (first few)", ""]
        for r in wrong:
            out = r.raw_outputs[0] if r.raw_outputs else ""
            out = out if len(out) <= 200 else out[:200] + "…"
            lines.append(f"- `{r.id}` [{r.task}] reference `{r.reference}`, parsed `{r.answer}`: {out!r}")
        lines.append("")
    return lines


NOTES = """## How to read this

- Every sample counts: one that could not be evaluated (missing video, bad row) is an error and
  scores 0 in `accuracy`; `accuracy without errors` leaves them out.
- Multiple choice: options are shown as `A. ...` lines and the answer letter is parsed from the
  `<answer>` tag, `(B)`, `B.`, `answer: B`, ...; an output with no parsable answer is an invalid format.
- With K sampled completions the answer is the majority vote of the valid parses; pass@K counts a
  sample when any completion is correct.
- Latency per sample = batch wall time / batch size; samples/s = evaluated samples / total latency.
"""


def write_report(out_dir: str | Path, metrics: EvalMetrics, records: list[PredictionRecord], info: RunInfo | None) -> Path:
    """report.md and the chart in `out_dir`; returns the report path."""
    out = Path(out_dir)
    plot_task_accuracy(metrics, out / CHART, title=info.name if info else "")
    lines = ["# Evaluation report", ""]
    if info is not None:
        lines += [f"- model: `{info.model}`" + (f", adapter `{info.adapter}`" if info.adapter else "")]
        lines += [f"- data: {', '.join(f'`{d}`' for d in info.data)}"]
        lines += [f"- {info.num_samples} completion(s) per prompt, max {info.max_new_tokens} new tokens", ""]
    lines += _summary(metrics) + ["", f"![per-task accuracy]({CHART})", ""]
    lines += _group_table("Per task", metrics.per_task)
    lines += _group_table("Per category", metrics.per_category)
    lines += _group_table("Per problem type", metrics.per_problem_type)
    lines += _group_table("Per video duration", metrics.per_duration)
    lines += _examples(records) + [NOTES]
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path


def plot_task_accuracy(metrics: EvalMetrics, path: str | Path, title: str = "") -> Path:
    """Horizontal bars, one per task, with the overall accuracy as a dashed line."""
    tasks = list(metrics.per_task)
    fig = Figure(figsize=(7, 1.2 + 0.35 * max(len(tasks), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    acc = [100 * metrics.per_task[t].accuracy for t in tasks]
    ax.barh(range(len(tasks)), acc, color="#4C72B0")
    for i, (t, a) in enumerate(zip(tasks, acc)):
        ax.text(min(a + 1, 92), i, f"{a:.1f} (n={metrics.per_task[t].n})", va="center", fontsize=8)
    ax.axvline(100 * metrics.accuracy, color="k", linestyle="--", linewidth=1, label=f"overall {pct(metrics.accuracy)}%")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.invert_yaxis()  # first task on top, as in the table
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title or "per-task accuracy")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# comparison of several eval folders


@dataclass
class CompareResult:
    names: list[str]  # one per run, in the order given
    tasks: list[str]  # union of the runs' tasks, first run's order first
    table: str  # markdown
    markdown_path: Path | None
    chart_path: Path | None


def load_run(run_dir: str | Path) -> tuple[str, EvalMetrics]:
    d = Path(run_dir)
    if not (d / METRICS).exists():
        raise FileNotFoundError(f"{d}: no {METRICS}; run `mmgrpo eval --out {d}` first")
    info = read_run_info(d)
    name = (info.name if info and info.name else "") or d.name
    return name, EvalMetrics.from_json(json.loads((d / METRICS).read_text()))


def _cell(g: GroupStats | None) -> str:
    return pct(g.accuracy) if g is not None else "–"


def _delta(g: GroupStats | None, base: GroupStats | None) -> str:
    if g is None or base is None:
        return "–"
    d = 100 * (g.accuracy - base.accuracy)
    return f"{d:+.1f}"


def compare_table(names: list[str], runs: list[EvalMetrics], tasks: list[str]) -> str:
    """Rows: overall then each task; columns: each run's accuracy %, then deltas vs the first run."""
    header = ["task"] + names + [f"Δ {n}" for n in names[1:]]
    overall = [GroupStats(n=m.n, accuracy=m.accuracy) for m in runs]
    rows = [["**overall**"] + [f"**{_cell(g)}**" for g in overall] + [f"**{_delta(g, overall[0])}**" for g in overall[1:]]]
    for t in tasks:
        cells = [m.per_task.get(t) for m in runs]
        rows.append([t] + [_cell(g) for g in cells] + [_delta(g, cells[0]) for g in cells[1:]])
    rows.append(["invalid format %"] + [pct(m.invalid_format_rate) for m in runs] + ["" for _ in runs[1:]])
    rows.append(["errors"] + [str(m.n_errors) for m in runs] + ["" for _ in runs[1:]])
    return "\n".join(_table(header, rows))


def plot_compare(names: list[str], runs: list[EvalMetrics], tasks: list[str], path: str | Path) -> Path:
    """Grouped horizontal bars: per task (and overall), one bar per run."""
    groups = ["overall"] + tasks
    fig = Figure(figsize=(8, 1.5 + 0.3 * len(groups) * len(runs)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    height = 0.8 / len(runs)
    for j, (name, m) in enumerate(zip(names, runs)):
        acc = [100 * m.accuracy] + [100 * m.per_task[t].accuracy if t in m.per_task else 0.0 for t in tasks]
        ax.barh([i + j * height for i in range(len(groups))], acc, height=height, label=name)
    ax.set_yticks([i + height * (len(runs) - 1) / 2 for i in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return Path(path)


def compare(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> CompareResult:
    """Side-by-side table (and, with `out_dir`, compare.md + compare.png) of earlier eval folders."""
    loaded = [load_run(d) for d in run_dirs]
    names = [n for n, _ in loaded]
    if len(set(names)) < len(names):  # two runs named alike: fall back to the paths given
        names = [str(d) for d in run_dirs]
    runs = [m for _, m in loaded]
    tasks = list(dict.fromkeys(t for m in runs for t in m.per_task))
    table = compare_table(names, runs, tasks)
    md_path = chart_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        chart_path = plot_compare(names, runs, tasks, out / "compare.png")
        md = ["# Model comparison", "", "Accuracy % per task; Δ = points vs the first run.", "", table, "", "![comparison](compare.png)", ""]
        md_path = out / "compare.md"
        md_path.write_text("\n".join(md))
    return CompareResult(names, tasks, table, md_path, chart_path)
