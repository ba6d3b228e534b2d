#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL over verified TLS.
#
# Builds a throw-away TLS cluster (and a second one without TLS, which tests use to show
# that clients refuse it) on free ports under a temporary directory, runs `cargo test`,
# then scans every log of the run for secrets. The clusters are stopped and the directory
# removed even when tests fail; the logs are copied to target/test-logs first.
#
# Usage: scripts/test.sh [extra cargo test arguments]

set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT=$PWD

TEST_DIR=$(mktemp -d /tmp/ctrip-test.XXXXXX)
readonly TEST_DIR
chmod 755 "$TEST_DIR"
mkdir -p "$TEST_DIR/logs"

cleanup() {
    local status=$?
    scripts/pg-cluster.sh stop "$TEST_DIR/pgdata" >/dev/null 2>&1 || true
    scripts/pg-cluster.sh stop "$TEST_DIR/plain" >/dev/null 2>&1 || true
    rm -rf "$ROOT/target/test-logs"
    mkdir -p "$ROOT/target/test-logs"
    cp "$TEST_DIR"/logs/* "$TEST_DIR"/*.log "$ROOT/target/test-logs/" 2>/dev/null || true
    rm -rf "$TEST_DIR"
    exit "$status"
}
trap cleanup EXIT

scripts/certs.sh "$TEST_DIR/certs" --with-test-fixtures >/dev/null
port=$(scripts/pg-cluster.sh free-port)
scripts/pg-cluster.sh init "$TEST_DIR/pgdata" "$port" "$TEST_DIR/certs" --fast >/dev/null
scripts/pg-cluster.sh start "$TEST_DIR/pgdata" >/dev/null
plain_port=$(scripts/pg-cluster.sh free-port)
scripts/pg-cluster.sh init "$TEST_DIR/plain" "$plain_port" "$TEST_DIR/certs" --no-ssl --fast >/dev/null
scripts/pg-cluster.sh start "$TEST_DIR/plain" >/dev/null
scripts/pg-cluster.sh roles "$TEST_DIR/pgdata" "$TEST_DIR/secrets" >/dev/null
# The harness drops each test's database WITH (FORCE), which must end the runtime
# login's sessions; pg_signal_backend allows that without superuser.
scripts/pg-cluster.sh psql "$TEST_DIR/pgdata" -c 'GRANT pg_signal_backend TO ctrip_admin' >/dev/null

export CTRIP_TEST_DIR=$TEST_DIR
export CTRIP_TEST_PGPORT=$port
export CTRIP_TEST_PLAIN_PORT=$plain_port
export CTRIP_TEST_PGDATA=$TEST_DIR/pgdata

echo "test.sh: PostgreSQL with TLS on 127.0.0.1:$port, without TLS on :$plain_port, files in $TEST_DIR"
cargo test --all-targets "$@" 2>&1 | tee "$TEST_DIR/logs/cargo-test.log"
status=${PIPESTATUS[0]}
if ((status != 0)); then
    exit "$status"
fi

# Secrets of this run: the database passwords, the test mnemonic, and every API key the
# harness created. None may appear in any log, the server's included.
secrets_file=$TEST_DIR/secret-values
{
    for password in "$TEST_DIR"/secrets/*.password; do
        cat "$password"
        echo
    done
    echo "test test test test test test test test test test test junk"
    cat "$TEST_DIR"/api-keys 2>/dev/null || true
} | grep -v '^[[:space:]]*$' >"$secrets_file"
# An empty pattern would match every line, so the list above drops blank lines.
leaks=$(grep -rlF -f "$secrets_file" "$TEST_DIR"/logs "$TEST_DIR"/*.log 2>/dev/null || true)
if [[ -n $leaks ]]; then
    echo "test.sh: error: a secret appears in these logs: $leaks" >&2
    exit 1
fi
echo "test.sh: no secret found in $(cat "$TEST_DIR"/logs/* "$TEST_DIR"/*.log | wc -l) log lines"
