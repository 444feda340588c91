#!/usr/bin/env bash
# docker/docker-compose.yml's topology as plain processes on 127.0.0.1, for machines without a Docker engine:
# one `fedmm server` and four `fedmm client`s with the compose file's arguments (experiments/quickstart.yaml as
# 4 sites, all 4 each round; mutual TLS with certificates from scripts/make-test-certs.sh: the server's verified
# for the name localhost, each site's own client certificate required by the server; site tokens derived from
# FEDMM_SECRET). As in the compose file each site sees only its own key: WORKDIR/site-certs/k holds ca.pem and
# site k's certificate and key as client.pem and client.key. Differences from the compose file: the server listens
# on 127.0.0.1 on a free port (not 0.0.0.0:7070), and the certificate and output paths are under WORKDIR.
# Extra arguments (e.g. --set fl.rounds=2) go to all five processes. Exits 0 when all five exited 0, else 1.
#
# Usage: scripts/compose-local.sh [-b PATH/TO/fedmm] [-w WORKDIR] [-t TIMEOUT_S] [--set key=value ...]
#        scripts/compose-local.sh --print-args    # the server's and a client's arguments, paths as in compose
# Defaults: build/fedmm, a new directory under /tmp, 1800 s per process. Logs: WORKDIR/server.log and
# WORKDIR/client<k>.log; the global model and metrics: WORKDIR/runs/server.
set -euo pipefail
cd "$(dirname "$0")/.."
fedmm=build/fedmm work="" limit=1800
print_args=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -b) fedmm=$2; shift 2 ;;
    -w) work=$2; shift 2 ;;
    -t) limit=$2; shift 2 ;;
    --print-args) print_args=1; shift ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "usage: scripts/compose-local.sh [-b fedmm] [-w WORKDIR] [-t TIMEOUT_S] [--set key=value ...]" >&2; exit 2 ;;
  esac
done

# the arguments of docker/docker-compose.yml: args SERVER_CERTS CLIENT_CERTS (each stands for a /certs volume)
args() {
  common=(--config experiments/quickstart.yaml --set fl.sites=4 --set fl.sites_per_round=4)
  server_args=(--set "net.tls_cert=$1/server.pem" --set "net.tls_key=$1/server.key" --set "net.tls_ca=$1/ca.pem"
               --set net.mtls=true)
  client_args=(--set "net.tls_ca=$2/ca.pem" --set net.tls_server_name=localhost --set "net.tls_cert=$2/client.pem"
               --set "net.tls_key=$2/client.key")
}
if [ $print_args -eq 1 ]; then
  args /certs /certs
  echo "server: ${common[*]} ${server_args[*]}"
  echo "client: ${common[*]} ${client_args[*]}"
  exit 0
fi

[ -x "$fedmm" ] || { echo "compose-local: $fedmm is not an executable fedmm (build it, or pass -b)" >&2; exit 2; }
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-compose.XXXXXX")
mkdir -p "$work"
if [ -z "${FEDMM_SECRET:-}" ]; then
  FEDMM_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "compose-local: FEDMM_SECRET not set: a random one for this run"
fi
export FEDMM_SECRET
[ -f "$work/certs/client3.pem" ] || bash scripts/make-test-certs.sh "$work/certs" 2 >/dev/null
for k in 0 1 2 3; do # what site k's container sees
  mkdir -p "$work/site-certs/$k"
  cp "$work/certs/ca.pem" "$work/site-certs/$k/ca.pem"
  cp "$work/certs/client$k.pem" "$work/site-certs/$k/client.pem"
  cp "$work/certs/client$k.key" "$work/site-certs/$k/client.key"
done
args "$work/certs" /nowhere

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

timeout "$limit" "$fedmm" server "${common[@]}" "${server_args[@]}" "${extra[@]}" --listen 127.0.0.1:0 \
  --out "$work/runs/server" >"$work/server.log" 2>&1 &
spid=$!
pids+=("$spid")
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$work/server.log" 2>/dev/null || true)
  [ -n "$port" ] && break
  kill -0 "$spid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "compose-local: the server did not start:" >&2
  tail -n 5 "$work/server.log" >&2
  exit 1
fi
echo "compose-local: server on 127.0.0.1:$port (mutual TLS), logs in $work"
cpids=()
for k in 0 1 2 3; do
  args "$work/certs" "$work/site-certs/$k"
  timeout "$limit" "$fedmm" client "${common[@]}" "${client_args[@]}" "${extra[@]}" --site "$k" \
    --server "127.0.0.1:$port" >"$work/client$k.log" 2>&1 &
  cpids+=($!)
  pids+=($!)
done
bad=0
for k in 0 1 2 3; do
  rc=0
  wait "${cpids[$k]}" || rc=$?
  echo "compose-local: client$k exited $rc"
  [ $rc -eq 0 ] || { tail -n 3 "$work/client$k.log" >&2; bad=1; }
done
rc=0
wait "$spid" || rc=$?
echo "compose-local: server exited $rc"
[ $rc -eq 0 ] || { tail -n 3 "$work/server.log" >&2; bad=1; }
pids=()
[ $bad -eq 0 ] && echo "compose-local: all five exited 0; global model in $work/runs/server"
exit $bad
