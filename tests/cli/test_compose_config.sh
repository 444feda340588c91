#!/usr/bin/env bash
# docker/docker-compose.yml validates with `docker compose config` (or docker-compose v1): one server and four
# clients (sites 0..3) of one image, the arguments those of scripts/compose-local.sh (mutual TLS: the server
# requires client certificates), each site given only its own certificate and key, and FEDMM_SECRET required.
# Skips (77) where neither tool is installed; no Docker engine is needed.
source "$(dirname "$0")/lib.sh"
if docker compose version >/dev/null 2>&1; then
  dc=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  dc=(docker-compose)
else
  echo "SKIP: neither 'docker compose' nor docker-compose is installed (apt-get install docker-compose)"; exit 77
fi
command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null \
  || { echo "SKIP: python3 with yaml is needed to read the resolved config"; exit 77; }
f=docker/docker-compose.yml
rc=0
env -u FEDMM_SECRET "${dc[@]}" -f $f config >/dev/null 2>"$WORK/nosecret.err" || rc=$?
[ $rc -ne 0 ] && grep -q FEDMM_SECRET "$WORK/nosecret.err" && pass "refused without FEDMM_SECRET" \
  || fail "validates without FEDMM_SECRET (exit $rc)"
rc=0
FEDMM_SECRET=0123456789abcdef0123 "${dc[@]}" -f $f config >"$WORK/config.yml" 2>"$WORK/config.err" || rc=$?
[ $rc -eq 0 ] && pass "${dc[*]} config: valid" || { cat "$WORK/config.err"; fail "${dc[*]} config: exit $rc"; }
bash scripts/compose-local.sh --print-args >"$WORK/args.txt"
python3 - "$WORK/config.yml" "$WORK/args.txt" <<'PY' && pass "one server, clients 0..3, one image, compose-local.sh's arguments" || fail "resolved config"
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
args = dict(line.split(": ", 1) for line in open(sys.argv[2]).read().splitlines())
svc = cfg["services"]
assert sorted(svc) == ["client0", "client1", "client2", "client3", "server"], sorted(svc)
assert len({s["image"] for s in svc.values()}) == 1
assert all(s["environment"]["FEDMM_SECRET"] for s in svc.values())
srv = svc["server"]["command"]
assert srv[0] == "server" and " ".join(srv[1:]).startswith(args["server"]), srv
assert "net.mtls=true" in srv, srv

def mounts(name):  # container path -> host file name, for the read-only bind mounts (v1 and v2 spell them apart)
    out = {}
    for v in svc[name]["volumes"]:
        if isinstance(v, dict):
            if v.get("read_only"):
                out[v["target"]] = v["source"].rsplit("/", 1)[-1]
        elif v.endswith(":ro"):
            host, target = v.split(":")[:2]
            out[target] = host.rsplit("/", 1)[-1]
    return out

assert mounts("server") == {"/certs/ca.pem": "ca.pem", "/certs/server.pem": "server.pem",
                            "/certs/server.key": "server.key"}, mounts("server")
for k in range(4):
    c = svc[f"client{k}"]["command"]
    assert c[0] == "client" and " ".join(c[1:]).startswith(args["client"]), c
    assert c[c.index("--site") + 1] == str(k) and c[c.index("--server") + 1] == "server:7070", c
    want = {"/certs/ca.pem": "ca.pem", "/certs/client.pem": f"client{k}.pem", "/certs/client.key": f"client{k}.key"}
    assert mounts(f"client{k}") == want, (k, mounts(f"client{k}"))
PY
finish
