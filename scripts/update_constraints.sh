#!/usr/bin/env bash
# Regenerate constraints.txt: the exact version of every package in a fresh install of the
# project, tested before it is written.
#
# Usage: scripts/update_constraints.sh [--no-test] [--keep]
#   --no-test  write the pins without running the suite first (then run .ci/run before committing)
#   --keep     keep the temp dir (clone + venv) and print its path
#
# Steps: clone the current commit (HEAD: committed files only) into a temp dir, make a fresh
# venv, upgrade pip, `pip install -e ".[dev]"` with NO constraints file (pip takes the newest
# releases that pyproject.toml's ranges allow), run the README's test command
# (`python -m pytest`), and only if it passes write `pip freeze --all` (less the editable
# mmgrpo itself, setuptools and wheel, which come with the venv) to constraints.txt at the repo
# root, under a header saying when and how. Commit the new file after reading its diff.
#
# The machine's own pip configuration applies as it is. On this project's dev and CI machines
# /etc/xdg/pip/pip.conf caps torch<=2.14.1 and torchvision<=0.29.1 (the releases that lie on
# their disk), so the pins stay installable there without downloading a newer torch. To see
# what the newest releases would do, run scripts/check_latest.sh instead.
#
# The pins are those of this platform (Linux x86_64, CPython 3.11 on the dev machines): pins of
# packages another platform does not install (nvidia-*, triton, decord) are simply unused there.
set -euo pipefail

run_tests=1 keep=0
for arg in "$@"; do
    case "$arg" in
        --no-test) run_tests=0 ;;
        --keep) keep=1 ;;
        *) echo "usage: $0 [--no-test] [--keep]" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$root" rev-parse --short HEAD)
tmp=$(mktemp -d)
if [ "$keep" = 1 ]; then echo "temp dir (kept): $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi

start=$(date +%s)
git clone -q "$root" "$tmp/src"
git -C "$tmp/src" checkout -q "$commit"
python3 -m venv "$tmp/src/.venv"
py="$tmp/src/.venv/bin/python"
"$py" -m pip install -q --upgrade pip
(cd "$tmp/src" && "$py" -m pip install -q -e ".[dev]")

# The machine's pip cap, if any (its config's `constraint` files), named in the header.
cap=$("$py" -m pip config list 2>/dev/null | sed -n "s/^[^=]*constraint='\(.*\)'$/\1/p" | tr '\n' ' ' || true)
for f in $cap; do
    if [ -r "$f" ]; then cap="${cap% } [$(grep -v '^#' "$f" | tr '\n' ' ' | sed 's/ *$//')] "; fi
done
cap=${cap% }

if [ "$run_tests" = 1 ]; then
    (cd "$tmp/src" && "$py" -m pytest)
    tested="the suite (python -m pytest) passed with them"
else
    tested="written with --no-test: the suite was NOT run with them"
fi

{
    echo "# Exact versions the project is tested with: a fresh install of mmgrpo at commit $commit,"
    echo "# made on $(date -u +%Y-%m-%d) ($(uname -s) $(uname -m), $("$py" -V)) by scripts/update_constraints.sh:"
    echo "# a fresh venv, \`pip install --upgrade pip\`, \`pip install -e \".[dev]\"\` (newest releases within"
    echo "# pyproject.toml's ranges), then \`pip freeze --all\`; $tested."
    echo "# Constraints from this machine's pip config: ${cap:-none}."
    echo "# Use: pip install -e \".[dev]\" -c constraints.txt   (README's Set-up, .ci/run)"
    echo "# Regenerate: scripts/update_constraints.sh   (newest releases unpinned: scripts/check_latest.sh)"
    echo "# Pins of packages another platform does not install (nvidia-*, triton, decord) go unused there."
    "$py" -m pip freeze --all --exclude-editable | grep -viE '^(#|-e |setuptools==|wheel==|mmgrpo[= @])' | LC_ALL=C sort -f
} > "$tmp/constraints.txt"
cp "$tmp/constraints.txt" "$root/constraints.txt"
echo "wrote $root/constraints.txt ($(grep -vc '^#' "$root/constraints.txt") pins) in $(( $(date +%s) - start )) s"
git -C "$root" diff --stat -- constraints.txt || true
