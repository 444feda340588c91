#!/usr/bin/env bash
# fedmm server / client over TLS and mutual TLS on 127.0.0.1 with throwaway certificates
# (scripts/make-test-certs.sh): a TLS server and 2 clients finish 2 rounds bit-identical to `fedmm sim`; under
# mTLS a client without a certificate, one whose certificate comes from another CA, and a plaintext client are
# refused quickly and clearly while the good clients finish; a missing PEM file fails with exit 2 naming it.
# Every process runs under `timeout`.
source "$(dirname "$0")/lib.sh"
needs_control_plane
command -v openssl >/dev/null || { echo "SKIP: openssl not installed"; exit 77; }
export FEDMM_SECRET="test-secret-$RANDOM-0123456789abcdef"
C=$WORK/certs
bash "$(dirname "$0")/../../scripts/make-test-certs.sh" "$C" 1 >/dev/null || { fail "make-test-certs.sh failed"; finish; }
base=(--config experiments/quickstart.yaml --set fl.rounds=2 --set fl.local_steps=2 --set fl.sites=2
      --set fl.cross_k=2 --set fl.sites_per_round=2 --set fl.eval_size=100 --set data.train_size=600
      --set log_level=warn --threads 1)
srv_tls=(--set net.tls_cert=$C/server.pem --set net.tls_key=$C/server.key)
T=120

"$FEDMM" sim "${base[@]}" --out "$WORK/sim" >"$WORK/sim.log" 2>&1 || { cat "$WORK/sim.log"; fail "sim failed"; finish; }

# start_server NAME ARGS...: the server in the background; sets spid and port.
start_server() {
  local name=$1; shift
  timeout $T "$FEDMM" server "${base[@]}" "$@" --listen 127.0.0.1:0 --out "$WORK/$name-srv" \
    >"$WORK/$name-srv.out" 2>"$WORK/$name-srv.err" &
  spid=$! port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$WORK/$name-srv.out" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] && pass "$name: server listening on 127.0.0.1:$port" \
    || { cat "$WORK/$name-srv.err"; fail "$name: server did not start"; }
}

# refused NAME WHAT ARGS...: a client that must fail fast (well inside its join patience) with a clear message.
refused() {
  local name=$1 what=$2; shift 2
  local rc=0 t0=$SECONDS
  timeout 60 "$FEDMM" client "${base[@]}" "$@" --site 0 --server 127.0.0.1:$port \
    >"$WORK/$name-bad.out" 2>"$WORK/$name-bad.err" || rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $((SECONDS - t0)) -lt 30 ] \
     && grep -q "closed the connection while it was set up" "$WORK/$name-bad.err"; then
    pass "$name: $what refused (exit $rc, $((SECONDS - t0)) s)"
  else
    cat "$WORK/$name-bad.err"; fail "$name: $what: exit $rc after $((SECONDS - t0)) s"
  fi
}

# finish_run NAME: waits for the clients in cpids, then the server; compares the global model with sim's.
finish_run() {
  local name=$1; shift
  local rc k
  for k in 0 1; do
    rc=0; wait ${cpids[$k]} || rc=$?
    [ $rc -eq 0 ] && pass "$name: client $k exited 0" || { tail -5 "$WORK/$name-c$k.err"; fail "$name: client $k exited $rc"; }
  done
  rc=0; wait $spid || rc=$?
  [ $rc -eq 0 ] && pass "$name: server exited 0" || { tail -5 "$WORK/$name-srv.err"; fail "$name: server exited $rc"; }
  cmp -s "$WORK/sim/adapters.safetensors" "$WORK/$name-srv/adapters.safetensors" \
    && pass "$name: 2 sites, 2 rounds: global model bit-identical to fedmm sim" \
    || fail "$name: global model differs from fedmm sim's"
}

# 1. TLS: the clients verify the server against the test CA (the certificate's IP SAN is 127.0.0.1)
start_server tls "${srv_tls[@]}"
cpids=()
for k in 0 1; do
  timeout $T "$FEDMM" client "${base[@]}" --set net.tls_ca=$C/ca.pem --site $k --server 127.0.0.1:$port \
    >"$WORK/tls-c$k.out" 2>"$WORK/tls-c$k.err" &
  cpids+=($!)
done
finish_run tls

# 2. mutual TLS: bad clients first (the server keeps serving), then the two good ones
start_server mtls "${srv_tls[@]}" --set net.tls_ca=$C/ca.pem --set net.mtls=true
refused mtls-nocert "a client without a certificate" --set net.tls_ca=$C/ca.pem
refused mtls-rogue "a client certificate from another CA" --set net.tls_ca=$C/ca.pem \
  --set net.tls_cert=$C/rogue.pem --set net.tls_key=$C/rogue.key
refused mtls-plain "a plaintext client"
kill -0 $spid 2>/dev/null && pass "mtls: server still serving after the refused clients" \
  || fail "mtls: the server stopped after the refused clients"
cpids=()
for k in 0 1; do
  timeout $T "$FEDMM" client "${base[@]}" --set net.tls_ca=$C/ca.pem --set net.tls_cert=$C/client$k.pem \
    --set net.tls_key=$C/client$k.key --site $k --server 127.0.0.1:$port \
    >"$WORK/mtls-c$k.out" 2>"$WORK/mtls-c$k.err" &
  cpids+=($!)
done
finish_run mtls
grep -q "did not return a certificate\|certificate verify failed" "$WORK/mtls-srv.err" \
  && pass "mtls: the server logged the refused handshakes" || fail "mtls: no handshake failure in the server log"

# 3. a plaintext client against a TLS (not mTLS) server
start_server tls-plain "${srv_tls[@]}"
refused tls-plain "a plaintext client against a TLS server"
# a client that trusts another CA refuses the server's certificate itself
rc=0
timeout 60 "$FEDMM" client "${base[@]}" --set net.tls_ca=$C/other-ca.pem --site 0 --server 127.0.0.1:$port \
  >/dev/null 2>"$WORK/wrongca.err" || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "TLS\|andshake\|SSL" "$WORK/wrongca.err" \
  && pass "a client trusting another CA refuses the server (exit $rc)" || { cat "$WORK/wrongca.err"; fail "wrong CA: exit $rc"; }
kill $spid 2>/dev/null || true
wait $spid 2>/dev/null || true

# 4. missing or unreadable PEM files: exit 2, one line naming the file, before anything is dialled or bound
rc=0
timeout 60 "$FEDMM" client "${base[@]}" --set net.tls_ca=$C/missing-ca.pem --site 0 --server 127.0.0.1:1 \
  >/dev/null 2>"$WORK/miss1.err" || rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <"$WORK/miss1.err")" -eq 1 ] && grep -q "net.tls_ca: cannot read '.*missing-ca.pem'" "$WORK/miss1.err" \
  && pass "client: missing CA file: exit 2, '$(cat "$WORK/miss1.err")'" || { cat "$WORK/miss1.err"; fail "client: missing CA: exit $rc"; }
rc=0
timeout 60 "$FEDMM" server "${base[@]}" --set net.tls_cert=$C/server.pem --set net.tls_key=$C/nokey.key \
  --listen 127.0.0.1:0 --out "$WORK/miss-srv" >/dev/null 2>"$WORK/miss2.err" || rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <"$WORK/miss2.err")" -eq 1 ] && grep -q "net.tls_key: cannot read '.*nokey.key'" "$WORK/miss2.err" \
  && pass "server: missing key file: exit 2" || { cat "$WORK/miss2.err"; fail "server: missing key: exit $rc"; }
rc=0
timeout 60 "$FEDMM" server "${base[@]}" --set net.tls_cert=$C/server.pem --set net.tls_key=$C/server.key \
  --set net.tls_ca=$WORK/sim.log --set net.mtls=true --listen 127.0.0.1:0 --out "$WORK/miss-srv" \
  >/dev/null 2>"$WORK/miss3.err" || rc=$?
[ $rc -eq 2 ] && grep -q "not a PEM file" "$WORK/miss3.err" \
  && pass "server: a CA file that is not PEM: exit 2" || { cat "$WORK/miss3.err"; fail "server: non-PEM CA: exit $rc"; }
rc=0
timeout 60 "$FEDMM" server "${base[@]}" --set net.tls_cert=$C/server.pem --listen 127.0.0.1:0 --out "$WORK/miss-srv" \
  >/dev/null 2>"$WORK/miss4.err" || rc=$?
[ $rc -eq 2 ] && grep -q "net.tls_key is missing" "$WORK/miss4.err" \
  && pass "server: net.tls_cert without net.tls_key: exit 2" || { cat "$WORK/miss4.err"; fail "server: cert without key: exit $rc"; }
finish
