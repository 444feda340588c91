#!/usr/bin/env bash
# Installs the Debian packages fedmm builds against, when any is missing. Idempotent; needs root
# (or sudo) only when something is actually missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libopenblas-dev libfyaml-dev libcjson-dev libsodium-dev libzstd-dev libcmocka-dev
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libpng-dev libjpeg-dev
      clang-format clang-tidy openssl python3 python3-matplotlib
      docker-compose python3-yaml)   # the last two: tests/cli/test_compose_config.sh validates docker/ without an engine
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup-deps: installing ${missing[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
