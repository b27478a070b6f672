"""`mmgrpo check-data DATA... [--model M | --family F] [--config C.yaml] [--report out.jsonl] [--allow-bad]`

Loads every sample through the processors before a run does: rows are parsed, every media file is
decoded at the budget and, with `--model`, the prompt goes through that model's processor (chat
template, fit to `max_prompt_length`). Without a model, media are sized on the patch grid of
`--family` (default Qwen2.5-VL's) and only vision tokens are counted. One JSON line per sample; a summary with the bad samples by
reason and token-count percentiles. Exit status 1 when any sample is bad, unless `--allow-bad`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from mmgrpo.config import TrainConfig, VisionConfig, load_config
from mmgrpo.models.families import FAMILIES
from mmgrpo.processors.budget import Grid, vision_tokens
from mmgrpo.processors.cache import MediaCache
from mmgrpo.processors.encode import PromptEncoder, count_tokens, decode_media
from mmgrpo.processors.formats import load_samples
from mmgrpo.processors.peers import EasyR1Keys
from mmgrpo.processors.sample import BadSampleError, MediaError, Sample
from mmgrpo.parsers import check_data_parser


@dataclass
class Record:
    """One report line. Token counts are None without --model (no tokenizer to count text)."""

    id: str
    ok: bool
    source: str
    error: str | None = None
    kind: str | None = None
    text: int | None = None
    image: int | None = None
    video: int | None = None
    total: int | None = None
    frames: list[int] | None = None
    resolution: list[list[int]] | None = None  # (H, W) per media item
    notes: list[str] | None = None  # what loading added to the row (inserted media placeholders)


def _parse(argv: list[str]) -> argparse.Namespace:
    return check_data_parser(__doc__.split("\n\n")[1]).parse_args(argv)


def check_sample(sample: Sample, encoder: PromptEncoder | None, vision: VisionConfig, cache: MediaCache,
                 grid: Grid = Grid()) -> Record:
    """Encode (with a processor) or decode (without) one sample; errors become a bad Record."""
    try:
        if encoder is not None:
            inputs = encoder.encode(sample)
            counts = count_tokens(inputs)
            return Record(id=sample.id, ok=True, source=sample.source, **counts, total=inputs.length,
                          frames=inputs.num_frames, resolution=[list(r) for r in inputs.resolutions])
        media = [decode_media(m, vision, cache, grid) for m in sample.media]
        tokens = {"image": 0, "video": 0}
        for m in media:
            tokens[m.kind] += vision_tokens(*m.frames.shape[:1], *m.frames.shape[2:], grid)  # (T, H, W)
        return Record(id=sample.id, ok=True, source=sample.source, **tokens,
                      frames=[int(m.frames.shape[0]) for m in media if m.kind == "video"],
                      resolution=[[int(m.frames.shape[2]), int(m.frames.shape[3])] for m in media])
    except BadSampleError as e:
        return Record(id=sample.id, ok=False, source=sample.source, error=str(e), kind=e.kind)
    except MediaError as e:  # from decode_media, which does not know the sample
        bad = e.for_sample(sample.ref, sample.id)
        return Record(id=sample.id, ok=False, source=sample.source, error=str(bad), kind=bad.kind)
    except Exception as e:  # noqa: BLE001 - an unexpected failure is reported per sample, not a crash
        return Record(id=sample.id, ok=False, source=sample.source, error=f"{type(e).__name__}: {e}", kind="internal_error")


def summarize(records: list[Record]) -> str:
    ok = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    lines = [f"{len(records)} samples: {len(ok)} ok, {len(bad)} bad"]
    for kind, n in sorted(Counter(r.kind for r in bad).items()):
        lines.append(f"  {kind}: {n}")
    lines += [f"  BAD {r.error}" for r in bad]
    for note, n in sorted(Counter(note for r in records for note in r.notes or []).items()):
        lines.append(f"  {n} sample{'s' if n > 1 else ''}: {note}")
    for name in ("total", "text", "image", "video"):
        values = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        if values:
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            lines.append(f"  {name} tokens: p50 {p50:.0f}  p90 {p90:.0f}  p99 {p99:.0f}  max {max(values)}")
    return "\n".join(lines)


@contextlib.contextmanager
def quiet_skips():
    """The loader's per-row "skipping ..." warnings off while check-data loads (it lists them itself)."""
    logger = logging.getLogger("mmgrpo.processors.formats")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    cfg = load_config(TrainConfig, args.config) if args.config else TrainConfig()
    cache = MediaCache(0, cfg.vision.disk_cache)  # nothing kept in memory; a disk cache gets warmed
    encoder = None
    if args.model:
        from mmgrpo.models.loading import load_processor

        encoder = PromptEncoder(load_processor(args.model, cfg.model.trust_remote_code), cfg.vision, cache)
    records: list[Record] = []
    for path in args.data:
        try:
            with quiet_skips():  # skipped rows are reported below, once each
                result = load_samples(path, cfg.data.format, "skip", cfg.data.system_prompt, cfg.data.prompt_suffix,
                                      media_root=cfg.data.media_root, keys=EasyR1Keys.of(cfg.data))
        except (OSError, ValueError) as e:  # the file itself is unusable: nothing per sample to report
            print(f"mmgrpo check-data: {path}: {e}", file=sys.stderr)
            return 2
        for e in result.skipped:
            records.append(Record(id=e.sample_id or e.sample_ref, ok=False, source=str(path), error=str(e), kind=e.kind))
        for s in result.samples:
            record = check_sample(s, encoder, cfg.vision, cache, FAMILIES[args.family].grid)
            record.notes = list(s.notes) or None
            records.append(record)
    if args.report:
        with open(args.report, "w") as f:
            for r in records:
                f.write(json.dumps({k: v for k, v in asdict(r).items() if v is not None}) + "\n")
    print(summarize(records))
    return 1 if any(not r.ok for r in records) and not args.allow_bad else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
