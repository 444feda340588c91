# Helpers for the end-to-end tests of the fedmm binary (sourced). Needs only bash, awk and sed.
set -euo pipefail
FEDMM=${1:?usage: test_x.sh path/to/fedmm}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-cli.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fails=0
# needs_control_plane: skip the test (exit 77, visibly) when this fedmm was built without gRPC
needs_control_plane() {
  if ! "$FEDMM" server --help >/dev/null 2>&1; then
    echo "SKIP: this fedmm has no gRPC control plane"; exit 77
  fi
}
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

# ---- fedmm server + fedmm client processes on 127.0.0.1 (the multi-process tests) ---------------------------------
# The caller sets base=(--config ... --set ...), the arguments every process gets, and T, each process's `timeout`.
# Waits poll files and log lines, never fixed sleeps.

# wait_for CMD...: polls CMD every 0.05 s for up to 240 s; 1 when it never succeeded.
wait_for() {
  for _ in $(seq 1 4800); do "$@" && return 0; sleep 0.05; done
  return 1
}
# port_of OUT: the port a server printed ("listening on port N"), or nothing yet
port_of() { sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$1" 2>/dev/null || true; }
# up_or_gone OUT PID: the server printed its port, or its process is gone
up_or_gone() { [ -n "$(port_of "$1")" ] || ! kill -0 "$2" 2>/dev/null; }
# has_or_gone FILE PATTERN PID: FILE has a line matching PATTERN, or the process is gone
has_or_gone() { grep -q "$2" "$1" 2>/dev/null || ! kill -0 "$3" 2>/dev/null; }
# child_of PID: the fedmm process under a `timeout` wrapper (a signal to the wrapper would not reach it as sent)
child_of() { ps -o pid= --ppid "$1" | tr -d ' '; }
# round1_closed METRICS: the server logged round 1
round1_closed() { grep -q '"round": 1' "$1" 2>/dev/null; }

# start_server NAME [ARGS...]: `fedmm server` on a free port with output in $WORK/NAME-srv; sets spid and port
# (the test ends here if it does not come up).
start_server() {
  local name=$1; shift
  timeout $T "$FEDMM" server "${base[@]}" "$@" --listen 127.0.0.1:0 --out "$WORK/$name-srv" \
    >"$WORK/$name-srv.out" 2>"$WORK/$name-srv.err" &
  spid=$!
  wait_for up_or_gone "$WORK/$name-srv.out" $spid || true
  port=$(port_of "$WORK/$name-srv.out")
  [ -n "$port" ] && pass "$name: server listening on 127.0.0.1:$port" \
    || { cat "$WORK/$name-srv.err"; fail "$name: server did not start"; finish; }
}

# start_client NAME K [ARGS...]: site K in the background (pid in cpid), its --out $WORK/NAME-cK, its logs
# appended to $WORK/NAME-cK.{out,err} (a site started again keeps one log).
start_client() {
  local name=$1 k=$2; shift 2
  timeout $T "$FEDMM" client "${base[@]}" "$@" --site $k --server 127.0.0.1:$port --out "$WORK/$name-c$k" \
    >>"$WORK/$name-c$k.out" 2>>"$WORK/$name-c$k.err" &
  cpid=$!
}

# wait_sites NAME: waits for the clients pids[i] (site ks[i], or i when ks is empty), each must exit 0, then the
# server (spid).
wait_sites() {
  local name=$1 i k rc
  for i in "${!pids[@]}"; do
    k=${ks[$i]:-$i}
    rc=0; wait ${pids[$i]} || rc=$?
    [ $rc -eq 0 ] && pass "$name: client $k exited 0" || { tail -5 "$WORK/$name-c$k.err"; fail "$name: client $k exited $rc"; }
  done
  rc=0; wait $spid || rc=$?
  [ $rc -eq 0 ] && pass "$name: server exited 0" || { tail -5 "$WORK/$name-srv.err"; fail "$name: server exited $rc"; }
}
