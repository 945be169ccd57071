#!/usr/bin/env bash
# Installs everything the test suite drives: NBD clients and peers, fio,
# Docker, busybox for the test image, restic, promtool (Debian's prometheus,
# to check /metrics), and a moto S3 server in a venv;
# and what the build links against (OpenSSL, for NBD over TLS).
# Idempotent; safe to re-run.
set -euo pipefail

APT_PACKAGES=(qemu-utils libnbd-bin nbdkit fio busybox-static docker.io restic e2fsprogs xfsprogs python3-venv libssl-dev pkg-config prometheus)
VENV=${BALLAST_TEST_VENV:-/opt/ballast-test/venv}

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto[server] into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'moto[server]'
fi
echo "test dependencies ready (moto_server: $VENV/bin/moto_server)"
