#!/usr/bin/env bash
# clang-format (must produce no changes) and clang-tidy (must report nothing) over fedmm's C sources.
# Usage: scripts/lint.sh [build-dir-with-compile_commands.json]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mapfile -t files < <(git ls-files -co --exclude-standard '*.c' '*.h' | grep -v '^build' | sort)
echo "clang-format: ${#files[@]} files"
clang-format --dry-run -Werror "${files[@]}"
mapfile -t csrc < <(printf '%s\n' "${files[@]}" | grep '\.c$' | grep -v '^tests/fuzz/')
echo "clang-tidy: ${#csrc[@]} files"
out=$(mktemp)
printf '%s\n' "${csrc[@]}" | xargs -P "$(nproc)" -n 8 clang-tidy -p "$build" --quiet >"$out" 2>/dev/null || true
if grep -E 'warning:|error:' "$out"; then
  echo "clang-tidy found problems"; rm -f "$out"; exit 1
fi
rm -f "$out"
echo "lint clean"
