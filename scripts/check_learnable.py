"""Can supervised training learn the counting task at this model size? (issue 15, step 1)

    python scripts/check_learnable.py [--hidden 128] [--layers 2] [--steps 300 600] [--seed 0]

SFT on the true reference traces of the training clips (both strata), then greedy held-out
accuracy per stratum and the share of exactly right counts in the traces. This is the learnability
check: a task the model cannot learn with true labels is no benchmark for RL (direction of
motion was such a task at 0.75M parameters). Prints one JSON line per checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 600], help="checkpoints to evaluate (cumulative)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/check_learnable"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from mmgrpo.demo.counting import CountingSpec, make_counting
    from mmgrpo.demo.counting_run import heldout_scores, trace_sft_config
    from mmgrpo.models.tiny import TinySpec, build_tiny, save_tiny
    from mmgrpo.trainer.sft import sft

    spec = CountingSpec(seed=args.seed)
    out = args.out / f"h{args.hidden}-l{args.layers}-s{args.seed}"
    files = make_counting(out / "data", spec)
    tiny = TinySpec(hidden=args.hidden, layers=args.layers, intermediate=2 * args.hidden, seed=args.seed)
    params = sum(p.numel() for p in build_tiny(tiny)[0].parameters())
    start, done, t0 = save_tiny(out / "base-model", tiny), 0, time.perf_counter()
    for i, steps in enumerate(args.steps):
        # one SFT run per checkpoint, continuing from the previous one (SFT does not resume)
        start = sft(trace_sft_config(start, files.train, out / f"sft-{i}", steps - done, spec, args.lr, args.seed))
        done = steps
        row = {"hidden": args.hidden, "layers": args.layers, "params": params, "sft_steps": steps,
               "seconds": round(time.perf_counter() - t0, 1), **heldout_scores(start, files.heldout, spec)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
