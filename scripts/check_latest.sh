#!/usr/bin/env bash
# Does mmgrpo still install and pass its tests with the NEWEST releases its pyproject.toml
# ranges allow, i.e. with what a user's plain `pip install` gets today? Run it now and then
# (and before a release) to catch an upstream break before a user does.
#
# Usage: scripts/check_latest.sh [--lowest] [--keep]
#   (default)  newest releases within the ranges, no constraints file
#   --lowest   the other end: every dependency with a lower bound (">=X", dev extra included)
#              pinned at that bound ("==X"), the rest newest: the test of the lower bounds
#   --keep     keep the temp dir (clone + venv) and print its path
#
# Steps: clone the current commit (HEAD: committed files only) into a temp dir, make a fresh
# venv there, upgrade pip to the newest, `pip install -e ".[dev]"`, print the resolved versions
# beside constraints.txt's pins (the tested set), then run the README's test command
# (`python -m pytest`) in the clone. Exit status: the test command's (or the install's).
#
# This machine's pip cap: the dev and CI machines' /etc/xdg/pip/pip.conf adds a global
# constraint file (torch<=2.14.1, torchvision<=0.29.1: the releases on their disk). A user's pip
# has no such cap, so in the default mode this script lifts it for its own pip calls only:
# PIP_CONSTRAINT=/dev/null overrides the config file's `constraint` with an empty file (the rest
# of the config, certificates and local wheel folders, still applies; /etc/xdg/pip is left as
# it is). The newest torch then comes from PyPI: a CUDA build (several GB download, about
# 5-6 GB in the venv; it runs on the CPU). --lowest keeps the machine's config as it is (its
# pins lie below the cap). The temp dir is removed at the end unless --keep.
set -euo pipefail

mode=latest keep=0
for arg in "$@"; do
    case "$arg" in
        --lowest) mode=lowest ;;
        --keep) keep=1 ;;
        *) echo "usage: $0 [--lowest] [--keep]" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$root" rev-parse HEAD)
tmp=$(mktemp -d)
if [ "$keep" = 1 ]; then echo "temp dir (kept): $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
start=$(date +%s)
echo "== check_latest ($mode): mmgrpo at ${commit:0:12}, in $tmp"

git clone -q "$root" "$tmp/src"
git -C "$tmp/src" checkout -q "$commit"
cd "$tmp/src"
python3 -m venv .venv
. .venv/bin/activate                     # as README's Set-up and .ci/run: mmgrpo on PATH
py="$tmp/src/.venv/bin/python"

extra=()
if [ "$mode" = latest ]; then
    export PIP_CONSTRAINT=/dev/null       # lift the machine's cap, for this script's pip only
else
    # ">=X" of each dependency in pyproject.toml (project + dev extra) -> "name==X"
    python3 - pyproject.toml > "$tmp/lowest.txt" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
for req in reqs:
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)
    low = re.search(r">=\s*([^,;\s]+)", req.split(";")[0])
    if low:
        print(f"{name}=={low.group(1)}")
EOF
    echo "-- lower bounds pinned:"; sed 's/^/   /' "$tmp/lowest.txt"
    extra=(-c "$tmp/lowest.txt")
fi

"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -e ".[dev]" "${extra[@]}"
install_s=$(( $(date +%s) - start ))

echo "-- resolved versions ($("$py" -V), $("$py" -m pip -V | cut -d' ' -f1-2)) against constraints.txt:"
"$py" -m pip freeze --all --exclude-editable > "$tmp/resolved.txt"
python3 - "$tmp/resolved.txt" constraints.txt pyproject.toml <<'EOF'
import re, sys, tomllib
import os
def pins(path):
    out = {}
    for line in open(path) if os.path.exists(path) else []:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out
got, pinned = pins(sys.argv[1]), pins(sys.argv[2])
project = tomllib.load(open(sys.argv[3], "rb"))["project"]
direct = {re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)).lower()
          for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
skip = {"setuptools", "wheel"}
rows = []
for name in sorted(set(got) | set(pinned)):
    if name in skip:
        continue
    a, b = pinned.get(name, "-"), got.get(name, "-")
    if a != b or name in direct:
        rows.append((("* " if name in direct else "  ") + name, a, b, "" if a == b else "differs"))
w = max(len(r[0]) for r in rows)
print(f"   {'package (* = direct)':<{w}}  {'constraints.txt':<16} {'resolved':<16}")
for r in rows:
    print(f"   {r[0]:<{w}}  {r[1]:<16} {r[2]:<16} {r[3]}")
same = sum(1 for n in got if n not in skip and pinned.get(n) == got[n])
print(f"   ({same} packages the same as constraints.txt, {sum(1 for r in rows if r[3])} differ)")
EOF

echo "-- python -m pytest"
set +e
"$py" -m pytest
rc=$?
set -e
echo "== check_latest ($mode): pytest exit $rc; install ${install_s} s, total $(( $(date +%s) - start )) s"
exit "$rc"
