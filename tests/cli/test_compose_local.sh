#!/usr/bin/env bash
# scripts/compose-local.sh, docker/docker-compose.yml's topology as processes on 127.0.0.1 (1 server + 4 clients
# over mutual TLS), with a short run: all five exit 0, the server served mutual TLS and wrote the global model and
# every round's metrics, and each site had only its own key. Its arguments are the compose file's (checked word for
# word against the file's text).
source "$(dirname "$0")/lib.sh"
needs_control_plane
command -v openssl >/dev/null || { echo "SKIP: openssl not found (the script makes test certificates)"; exit 77; }

# the same arguments as the compose file: every word of the script's argument lists appears in its commands
args=$(bash scripts/compose-local.sh --print-args)
compose=$(tr -d '\n' <docker/docker-compose.yml | tr -s ' ')
missing=0
for w in $(echo "$args" | sed 's/^[a-z]*: //'); do
  case $w in --*) continue ;; esac
  grep -qF -- "$w" <<<"$compose" || { echo "not in docker-compose.yml: $w"; missing=1; }
done
[ $missing -eq 0 ] && pass "compose-local.sh passes the compose file's arguments" \
  || fail "compose-local.sh and docker-compose.yml disagree"
[ "$(grep -c -- '--site, "[0-3]"' docker/docker-compose.yml)" = 4 ] && pass "the compose file has sites 0..3" \
  || fail "the compose file does not run sites 0..3"

rc=0
OMP_NUM_THREADS=1 FEDMM_SECRET="compose-test-$RANDOM-0123456789" timeout 600 bash scripts/compose-local.sh -b "$FEDMM" -w "$WORK/c" \
  -t 300 --set fl.rounds=2 --set fl.local_steps=2 --set fl.eval_size=100 --set data.train_size=2000 \
  >"$WORK/out.log" 2>&1 || rc=$?
cat "$WORK/out.log"
[ $rc -eq 0 ] && pass "compose-local.sh: exit 0" || fail "compose-local.sh: exit $rc"
[ "$(grep -cE '(client[0-3]|server) exited 0$' "$WORK/out.log")" = 5 ] && pass "server and 4 clients exited 0" \
  || fail "not all five exited 0"
grep -q "port [0-9]*, mutual TLS)" "$WORK/c/server.log" && pass "the server served mutual TLS" \
  || fail "the server log does not say mutual TLS"
grep -q "net.mtls=true" <<<"$args" && pass "the server requires client certificates (net.mtls=true)" \
  || fail "compose-local.sh does not pass net.mtls=true"
for k in 0 1 2 3; do
  cmp -s "$WORK/c/certs/client$k.key" "$WORK/c/site-certs/$k/client.key" && [ "$(ls "$WORK/c/site-certs/$k")" = \
    "$(printf 'ca.pem\nclient.key\nclient.pem')" ] || fail "site $k's certificates: not ca.pem and its own pair"
done
[ -s "$WORK/c/runs/server/adapters.safetensors" ] && pass "global model written" || fail "no global model"
[ "$(grep -c '"round"' "$WORK/c/runs/server/metrics.jsonl" 2>/dev/null)" = 2 ] && pass "metrics of 2 rounds" \
  || fail "metrics: not 2 rounds"
finish
