# Helpers for the end-to-end tests of the fedmm binary (sourced). Needs only bash, awk and sed.
set -euo pipefail
FEDMM=${1:?usage: test_x.sh path/to/fedmm}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-cli.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# json_num KEY < line: the number after "KEY": in a one-line JSON object.
json_num() { sed -n "s/.*\"$1\": *\([-0-9.eE+]*\).*/\1/p"; }
# ge A B: A >= B as numbers.
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
finish() {
  if [ "$fails" -gt 0 ]; then echo "$fails check(s) failed"; exit 1; fi
  echo "all checks passed"
}
