"""Rewrite docs/config.md from the config dataclasses: `python scripts/config_doc.py`."""
from __future__ import annotations

from pathlib import Path

from mmgrpo.config.doc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")
