#!/usr/bin/env bash
# Makes throwaway certificates for fedmm's TLS tests in DIR (short validity, never for production):
#   ca.pem ca.key                 the test CA
#   server.pem server.key         the server: SAN DNS:localhost, IP:127.0.0.1, signed by the CA
#   client0.pem client0.key       site certificates signed by the CA (client auth), one per site of
#   ... client3.pem client3.key   docker/docker-compose.yml (tests/cli/test_tls.sh uses client0 and client1)
#   other-ca.pem other-ca.key     a DIFFERENT CA
#   rogue.pem rogue.key           a client certificate from the other CA (an mTLS server must refuse it)
# Needs openssl (scripts/setup-deps.sh installs it). Usage: scripts/make-test-certs.sh DIR [DAYS]
set -euo pipefail
dir=${1:?usage: make-test-certs.sh DIR [DAYS]}
days=${2:-2}
command -v openssl >/dev/null || { echo "make-test-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
umask 077

# ca NAME CN: a self-signed CA
ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.pem" \
    -days "$days" -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf NAME CN CA EXTFILE-TEXT: a key and a certificate signed by CA
leaf() {
  local name=$1 cn=$2 ca=$3 ext=$4
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" -out "$name.csr" \
    -subj "/CN=$cn" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -out "$name.pem" \
    -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

ca ca "fedmm test CA"
ca other-ca "fedmm other test CA"
leaf server localhost ca "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
for k in 0 1 2 3; do leaf "client$k" "fedmm site $k" ca "$client_ext"; done
leaf rogue "fedmm rogue site" other-ca "$client_ext"
rm -f ./*.srl
chmod 644 ./*.pem
echo "test certificates in $dir (valid $days days)"
