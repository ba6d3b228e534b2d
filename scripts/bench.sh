#!/usr/bin/env bash
# Runs the ctrip benchmark and rewrites BENCHMARKS.md (see `make bench`).
#
# Builds the release binary and the load tool (examples/ctrip-bench), starts a throw-away
# TLS cluster on a free port under a temporary directory, and runs `ctrip serve` with
# config.toml as shipped (environment "testing"). Then, at each client count: pgbench with
# bench/create_payment.sql as the runtime login, and the HTTP scenarios create-evm,
# create-solana, get and list. After those, create-evm with and without audit rows. Also
# times address derivation and start-up, reads the server's peak memory, prints the results
# with PASS/FAIL per target, and writes BENCHMARKS.md. The server and the cluster are stopped and the directory removed even when
# a step fails; the logs are copied to target/bench-logs first.
#
# Exits 1 when the run is broken (an HTTP error, a failed pgbench transaction, a missing
# result), and 0 otherwise, even when a target fails.
#
# Usage: scripts/bench.sh
# Environment: BENCH_DURATION_S (default 15) and BENCH_WARMUP_S (default 2) per scenario.

set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT=$PWD
readonly CLIENT_COUNTS=(8 32 64)
# The pgbench script that also writes the audit row runs at this client count only.
readonly AUDITED_CLIENTS=32
readonly DURATION_S=${BENCH_DURATION_S:-15}
readonly WARMUP_S=${BENCH_WARMUP_S:-2}
readonly DERIVE_COUNT=20000
readonly STARTUP_RUNS=5
readonly DBNAME=ctrip
# Hardhat's and Foundry's public test phrase, which is fine because the cluster is thrown away.
readonly BENCH_MNEMONIC="test test test test test test test test test test test junk"

say() {
    echo "bench.sh: $*" >&2
}

die() {
    echo "bench.sh: error: $*" >&2
    exit 1
}

BENCH_DIR=$(mktemp -d /tmp/ctrip-bench.XXXXXX)
readonly BENCH_DIR
chmod 755 "$BENCH_DIR"
mkdir -p "$BENCH_DIR/logs"
SERVE_PID=""

cleanup() {
    local status=$?
    if [[ -n $SERVE_PID ]] && kill -0 "$SERVE_PID" 2>/dev/null; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    scripts/pg-cluster.sh stop "$BENCH_DIR/pgdata" >/dev/null 2>&1 || true
    rm -rf "$ROOT/target/bench-logs"
    mkdir -p "$ROOT/target/bench-logs"
    cp "$BENCH_DIR"/logs/* "$BENCH_DIR"/*.log "$BENCH_DIR"/results.tsv "$ROOT/target/bench-logs/" \
        2>/dev/null || true
    rm -rf "$BENCH_DIR"
    exit "$status"
}
trap cleanup EXIT

[[ $DURATION_S =~ ^[0-9]+$ && $DURATION_S -ge 1 ]] \
    || die "BENCH_DURATION_S=$DURATION_S is invalid: use a whole number of seconds, 1 or more"
[[ $WARMUP_S =~ ^[0-9]+$ ]] \
    || die "BENCH_WARMUP_S=$WARMUP_S is invalid: use a whole number of seconds"
command -v pgbench >/dev/null || die "pgbench not found; install it with: apt-get install -y postgresql"

say "building the release binary and the load tool"
cargo build --release --quiet --bin ctrip --example ctrip-bench
readonly CTRIP=$ROOT/target/release/ctrip
readonly BENCH=$ROOT/target/release/examples/ctrip-bench
readonly RESULTS=$BENCH_DIR/results.tsv
readonly PGDATA=$BENCH_DIR/pgdata
readonly CONFIG=$BENCH_DIR/config.toml
readonly SECRETS=$BENCH_DIR/.dev/secrets

# The cluster, its roles and database, as scripts/test.sh sets them up.
scripts/certs.sh "$BENCH_DIR/certs" >/dev/null
pg_port=$(scripts/pg-cluster.sh free-port)
scripts/pg-cluster.sh init "$PGDATA" "$pg_port" "$BENCH_DIR/certs" --fast >/dev/null
scripts/pg-cluster.sh start "$PGDATA" >/dev/null
scripts/pg-cluster.sh roles "$PGDATA" "$SECRETS" >/dev/null
scripts/pg-cluster.sh createdb "$PGDATA" "$DBNAME" >/dev/null
say "PostgreSQL with TLS on 127.0.0.1:$pg_port, files in $BENCH_DIR"

# config.toml as shipped. Its relative paths (certs/, .dev/secrets/) resolve against the
# copy's directory, where the files above are.
sed 's/^environment = "development"$/environment = "testing"/' config.toml >"$CONFIG"
grep -qx 'environment = "testing"' "$CONFIG" \
    || die "config.toml has no line environment = \"development\" to change to testing"
(umask 077 && printf '%s\n' "$BENCH_MNEMONIC" >"$SECRETS/mnemonic")
# config.toml signs audit checkpoints with .dev/secrets/audit.key.
"$CTRIP" audit keygen --out "$SECRETS/audit.key" >/dev/null
export CTRIP_DATABASE_PORT=$pg_port
http_port=$(scripts/pg-cluster.sh free-port)
startup_port=$(scripts/pg-cluster.sh free-port)
[[ $http_port != "$startup_port" ]] || startup_port=$(scripts/pg-cluster.sh free-port)
export CTRIP_LISTEN=127.0.0.1:$http_port

"$CTRIP" --config "$CONFIG" migrate >/dev/null
# `api-key create` prints the key once on stdout. It stays in this script's environment and
# reaches no file. Its stderr has only the notices around the key.
CTRIP_BENCH_KEY=$("$CTRIP" --config "$CONFIG" api-key create --name bench \
    2>>"$BENCH_DIR/logs/api-key.log" | awk '$1 == "key:" { print $2 }') \
    || die "ctrip api-key create failed; see target/bench-logs/api-key.log"
[[ -n $CTRIP_BENCH_KEY ]] || die "ctrip api-key create printed no key"
export CTRIP_BENCH_KEY
# pgbench opens the same merchant context as ctrip through ctrip.begin_request, which takes
# the key's prefix and its SHA-256. NOTE: pgbench only takes variables as arguments (-D),
# so the hash of this throw-away key is visible in the process list while pgbench runs.
key_prefix=${CTRIP_BENCH_KEY:0:14}
key_hash=$(printf '%s' "$CTRIP_BENCH_KEY" | sha256sum | cut -d' ' -f1)

postgres_version=$(scripts/pg-cluster.sh psql "$PGDATA" -tA -c 'SHOW server_version')
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
# BENCHMARKS.md is left out of the dirty check, because the previous run rewrote it.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- . ':(exclude)BENCHMARKS.md' 2>/dev/null; then
    commit+=-dirty
fi
printf 'kind=facts\tdate=%s\tcommit=%s\tcores=%s\tcpu=%s\tpostgres=%s\twarmup_s=%s\tduration_s=%s\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$commit" "$(nproc)" "$cpu_model" \
    "$postgres_version" "$WARMUP_S" "$DURATION_S" >>"$RESULTS"

say "micro-benchmarks: derivation of $DERIVE_COUNT addresses per family, $STARTUP_RUNS start-ups"
"$BENCH" derive --count "$DERIVE_COUNT" --results "$RESULTS"
"$BENCH" startup --ctrip "$CTRIP" --config "$CONFIG" --listen "127.0.0.1:$startup_port" \
    --runs "$STARTUP_RUNS" --log "$BENCH_DIR/logs/startup.log" --results "$RESULTS"

"$CTRIP" --config "$CONFIG" serve >"$BENCH_DIR/logs/serve.log" 2>&1 &
SERVE_PID=$!
"$BENCH" wait-ready --target "$CTRIP_LISTEN" --timeout 30 \
    || die "ctrip serve did not become ready; see target/bench-logs/serve.log"
say "ctrip serve (pid $SERVE_PID) ready on $CTRIP_LISTEN"

# Runs pgbench script bench/$2.sql with $3 clients and appends its record, named $1.
run_pgbench() {
    local label=$1 script=$2 clients=$3 output status=0 tps latency failed
    local log=$BENCH_DIR/logs/pgbench-$label-$clients.log
    # The password reaches pgbench through its environment, never its arguments.
    output=$(PGHOST=localhost PGPORT=$pg_port PGDATABASE=$DBNAME PGUSER=ctrip_runtime \
        PGSSLMODE=verify-full PGSSLROOTCERT=$BENCH_DIR/certs/ca.crt \
        PGSSLCERT=$BENCH_DIR/certs/client.crt PGSSLKEY=$BENCH_DIR/certs/client.key \
        PGAPPNAME=pgbench PGPASSWORD=$(<"$SECRETS/ctrip_runtime.password") \
        pgbench -n -M prepared -c "$clients" -j 2 -T "$DURATION_S" \
        -f "$ROOT/bench/$script.sql" -D "prefix=$key_prefix" -D "key_hash=$key_hash" 2>&1) \
        || status=$?
    printf '%s\n' "$output" >"$log"
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$output")
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' <<<"$output")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$output")
    printf 'kind=pgbench\tscript=%s\tclients=%s\ttps=%s\tlatency_avg_ms=%s\tfailed=%s\texit=%s\n' \
        "$label" "$clients" "${tps:-?}" "${latency:-?}" "${failed:-?}" "$status" >>"$RESULTS"
    say "pgbench $label clients=$clients tps=${tps:-?} latency_avg=${latency:-?}ms failed=${failed:-?} exit=$status"
    if ((status != 0)); then
        say "pgbench failed; its output is in target/bench-logs/$(basename "$log")"
    fi
}

# Runs HTTP scenario $1 with $2 clients, recorded under label $3 when given. Its record
# carries any errors to the report.
run_load() {
    local scenario=$1 clients=$2 label=${3:-$1}
    "$BENCH" load --target "$CTRIP_LISTEN" --scenario "$scenario" --clients "$clients" \
        --label "$label" --warmup "$WARMUP_S" --duration "$DURATION_S" \
        --ids-file "$BENCH_DIR/ids-$clients" --results "$RESULTS" \
        || say "$scenario at $clients clients had errors; see target/bench-logs/serve.log"
}

for clients in "${CLIENT_COUNTS[@]}"; do
    run_pgbench create create_payment "$clients"
    if ((clients == AUDITED_CLIENTS)); then
        run_pgbench audited create_payment_audited "$clients"
    fi
    run_load create-evm "$clients"
    run_load create-solana "$clients"
    # Autovacuum visits a database once a minute by default (autovacuum_naptime), so the
    # statistics lag behind the rows just inserted, and a list plan made from them can sort
    # every payment of the merchant. get and list measure a server whose statistics are
    # current, as they are once it has run for a while.
    scripts/pg-cluster.sh psql "$PGDATA" -d "$DBNAME" -c 'VACUUM ANALYZE' >/dev/null
    run_load get "$clients"
    run_load list "$clients"
done

# Audit cost: create-evm with the audit row (A) and with audit rows discarded (B), in the
# order ABBA BAAB, so that drift in the machine's load falls on both equally. The discarding
# trigger sorts before ctrip's own BEFORE INSERT trigger (audit_chain), so it returns NULL
# before any audit work is done.
bench_sql() {
    scripts/pg-cluster.sh psql "$PGDATA" -d "$DBNAME" -v ON_ERROR_STOP=1 -c "$1" >/dev/null
}
audit_cost_run() {
    if [[ $1 == A ]]; then
        run_load create-evm "$AUDITED_CLIENTS" create-evm-with-audit
        return
    fi
    bench_sql "CREATE FUNCTION ctrip.bench_discard_audit() RETURNS trigger LANGUAGE plpgsql
                   AS 'BEGIN RETURN NULL; END';
               CREATE TRIGGER a_bench_discard_audit BEFORE INSERT ON ctrip.audit_events
                   FOR EACH ROW EXECUTE FUNCTION ctrip.bench_discard_audit()"
    run_load create-evm "$AUDITED_CLIENTS" create-evm-without-audit
    bench_sql "DROP TRIGGER a_bench_discard_audit ON ctrip.audit_events;
               DROP FUNCTION ctrip.bench_discard_audit()"
}
for setting in A B B A B A A B; do
    audit_cost_run "$setting"
done

peak_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVE_PID/status")
rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVE_PID/status")
printf 'kind=rss\tvmhwm_kib=%s\tvmrss_kib=%s\n' "$peak_kib" "$rss_kib" >>"$RESULTS"

"$BENCH" report --results "$RESULTS" --markdown "$ROOT/BENCHMARKS.md"
