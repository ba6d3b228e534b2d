#!/usr/bin/env bash
# Sets up everything `make run` needs from a clean clone, then runs `ctrip serve`. It makes
# development certificates in certs/, a private TLS-only PostgreSQL cluster in .dev/pgdata
# on port 54329, the ctrip roles and database, and the development mnemonic. On the first
# run only it also prints an API key once, and writes an audit key that signs checkpoints
# and a backup key. Every step keeps what an earlier run made.
#
# Usage: scripts/dev-run.sh   (from the repository root, as root; see make run)

set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT=$PWD
readonly DEV=$ROOT/.dev
readonly PGDATA=$DEV/pgdata
readonly SECRETS=$DEV/secrets
readonly PORT=54329
readonly DBNAME=ctrip
# Hardhat's and Foundry's public test phrase: its first EVM address is
# 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266. Production refuses it.
readonly DEV_MNEMONIC="test test test test test test test test test test test junk"

mkdir -p "$DEV"
chmod 755 "$DEV"
scripts/certs.sh "$ROOT/certs"
scripts/pg-cluster.sh init "$PGDATA" "$PORT" "$ROOT/certs"
scripts/pg-cluster.sh start "$PGDATA"
scripts/pg-cluster.sh roles "$PGDATA" "$SECRETS"
scripts/pg-cluster.sh createdb "$PGDATA" "$DBNAME"

if [[ ! -e $SECRETS/mnemonic ]]; then
    (umask 077 && printf '%s\n' "$DEV_MNEMONIC" >"$SECRETS/mnemonic")
    echo "dev-run.sh: wrote the development mnemonic to .dev/secrets/mnemonic" >&2
fi

cargo build --quiet
readonly CTRIP=$ROOT/target/debug/ctrip
if [[ ! -e $SECRETS/audit.key ]]; then
    "$CTRIP" audit keygen --out "$SECRETS/audit.key" >/dev/null
    echo "dev-run.sh: wrote a development audit key to .dev/secrets/audit.key" >&2
fi
if [[ ! -e $SECRETS/backup.key ]]; then
    "$CTRIP" backup keygen --out "$SECRETS/backup.key" >/dev/null
    echo "dev-run.sh: wrote a development backup key to .dev/secrets/backup.key" >&2
fi
"$CTRIP" --config config.toml migrate

if [[ ! -e $DEV/api-key-created ]]; then
    echo
    echo "A development API key (shown only now; export it for the README's curl commands):"
    "$CTRIP" --config config.toml api-key create --name development
    touch "$DEV/api-key-created"
    echo
else
    echo "dev-run.sh: API keys exist; make another with: target/debug/ctrip api-key create --name NAME" >&2
fi

exec "$CTRIP" --config config.toml serve
