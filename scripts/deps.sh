#!/usr/bin/env bash
# Installs the Debian packages ctrip builds and tests with, when they are missing:
# the PostgreSQL server, OpenSSL headers and CLI, and pkg-config. Needs root (or sudo)
# only when something is missing; otherwise it changes nothing.
#
# Usage: scripts/deps.sh

set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q 'install ok installed' || missing+=(libssl-dev)
command -v cc >/dev/null || missing+=(gcc)

if ((${#missing[@]} == 0)); then
    exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
        echo "deps.sh: error: ${missing[*]} missing and not root: run 'apt-get install -y ${missing[*]}' as root" >&2
        exit 1
    }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

# Debian's postgresql package starts a system cluster on 5432; ctrip never uses it,
# and leaves it as the package set it up.
command -v cargo >/dev/null || {
    echo "deps.sh: error: cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
}
