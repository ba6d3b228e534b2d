#!/usr/bin/env bash
# Benchmarks `ctrip backup create` against plain `pg_dump -Fc > /dev/null` on a generated
# database of about BENCH_SIZE_MB (default 1024) MiB. It also reads the peak resident memory
# of ctrip: VmHWM, sampled from /proc, and ru_maxrss from GNU time. Prints a Markdown table
# for BENCHMARKS.md. Not part of `make test`.
#
# Builds a throw-away TLS cluster under /tmp like scripts/test.sh and fills it with payments
# and deposit addresses over 10 merchants, generated in SQL with generate_series as pgbench
# does. It then runs BENCH_ROUNDS (default 3) rounds of pg_dump and ctrip alternately, so
# both see the same warm cache. Both connect over TLS as the migration login with the flags
# that ctrip passes to pg_dump (--enable-row-security, --role=ctrip_owner).
#
# Usage: scripts/bench-backup.sh   (as root; make bench-backup)

set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT=$PWD
readonly SIZE_MB=${BENCH_SIZE_MB:-1024}
readonly ROUNDS=${BENCH_ROUNDS:-3}
readonly DBNAME=ctrip_bench

BENCH_DIR=$(mktemp -d /tmp/ctrip-bench-backup.XXXXXX)
readonly BENCH_DIR
chmod 755 "$BENCH_DIR"

cleanup() {
    local status=$?
    scripts/pg-cluster.sh stop "$BENCH_DIR/pgdata" >/dev/null 2>&1 || true
    rm -rf "$BENCH_DIR"
    exit "$status"
}
trap cleanup EXIT

say() {
    echo "bench-backup.sh: $*" >&2
}

cargo build --release --quiet
readonly CTRIP=$ROOT/target/release/ctrip

scripts/certs.sh "$BENCH_DIR/certs" >/dev/null
port=$(scripts/pg-cluster.sh free-port)
scripts/pg-cluster.sh init "$BENCH_DIR/pgdata" "$port" "$BENCH_DIR/certs" --fast >/dev/null
scripts/pg-cluster.sh start "$BENCH_DIR/pgdata" >/dev/null
scripts/pg-cluster.sh roles "$BENCH_DIR/pgdata" "$BENCH_DIR/secrets" >/dev/null
scripts/pg-cluster.sh createdb "$BENCH_DIR/pgdata" "$DBNAME" >/dev/null
psql_bench() {
    scripts/pg-cluster.sh psql "$BENCH_DIR/pgdata" -d "$DBNAME" "$@"
}

"$CTRIP" backup keygen --out "$BENCH_DIR/backup.key" >/dev/null
cat >"$BENCH_DIR/config.toml" <<EOF
environment = "testing"
[database]
host = "localhost"
port = $port
dbname = "$DBNAME"
sslmode = "verify-full"
sslrootcert = "certs/ca.crt"
sslcert = "certs/client.crt"
sslkey = "certs/client.key"
[database.runtime]
user = "ctrip_runtime"
password_file = "secrets/ctrip_runtime.password"
[database.migration]
user = "ctrip_migrator"
password_file = "secrets/ctrip_migrator.password"
role = "ctrip_owner"
[wallet]
mnemonic_file = "mnemonic"
[backup]
key_file = "backup.key"
dir = "backups"
[[chains]]
name = "ethereum"
family = "evm"
symbol = "ETH"
decimals = 18
EOF
readonly CONFIG=$BENCH_DIR/config.toml
"$CTRIP" --config "$CONFIG" migrate >/dev/null

# About 700 bytes per payment with its address and indexes, measured on PostgreSQL 15.
payments=$((SIZE_MB * 1024 * 1024 / 700))
say "generating $payments payments (about $SIZE_MB MiB)"
psql_bench -c "
    SET ROLE ctrip_owner;
    INSERT INTO ctrip.chains (name, family, symbol, decimals) VALUES ('ethereum', 'evm', 'ETH', 18);
    INSERT INTO ctrip.tokens (chain, symbol, address, decimals)
    VALUES ('ethereum', 'USDC', '0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48', 6);
    INSERT INTO ctrip.merchants (id, name)
    SELECT gen_random_uuid(), 'merchant-' || g FROM generate_series(1, 10) g;" >/dev/null
batch=250000
for ((start = 0; start < payments; start += batch)); do
    end=$((start + batch < payments ? start + batch : payments))
    psql_bench -c "
        SET ROLE ctrip_owner;
        WITH merchants AS (SELECT array_agg(id ORDER BY id) AS ids FROM ctrip.merchants),
        address AS (
            INSERT INTO ctrip.deposit_addresses
                (merchant_id, family, derivation_index, derivation_path, address)
            SELECT merchants.ids[1 + g % 10], 'evm', g, 'm/44''/60''/0''/0/' || g,
                   '0x' || lpad(to_hex(g), 40, '0')
            FROM merchants, generate_series($start, $((end - 1))) g
            RETURNING id, merchant_id, derivation_index
        )
        INSERT INTO ctrip.payments
            (id, merchant_id, chain, token, deposit_address_id, amount, status, expires_at,
             created_at, reference, metadata)
        -- Time-ordered UUIDv7 ids, as ctrip creates them (Uuid::now_v7).
        SELECT (lpad(to_hex(floor(extract(epoch FROM now()) * 1000)::bigint
                            - ($payments - derivation_index) * 10), 12, '0')
                || '7' || substr(md5(derivation_index::text), 1, 3)
                || '8' || substr(md5(derivation_index::text), 4, 15))::uuid,
               merchant_id, 'ethereum',
               CASE WHEN derivation_index % 3 = 0 THEN NULL ELSE 'USDC' END, id,
               1000000 + derivation_index * 7,
               (ARRAY['pending', 'paid', 'settled', 'expired'])[1 + derivation_index % 4],
               now() + interval '30 minutes',
               now() - make_interval(secs => ($payments - derivation_index) / 100.0),
               'order-' || derivation_index,
               jsonb_build_object('customer', md5(derivation_index::text),
                                  'cart', derivation_index % 97,
                                  'note', 'generated by bench-backup.sh')
        FROM address;" >/dev/null
done
psql_bench -c "VACUUM ANALYZE" >/dev/null
db_bytes=$(psql_bench -tA -c "SELECT pg_database_size(current_database())")
say "database size: $((db_bytes / 1024 / 1024)) MiB"

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_dump_plain() {
    (
        cd "$BENCH_DIR"
        env -i PGHOST=localhost PGPORT="$port" PGDATABASE="$DBNAME" PGUSER=ctrip_migrator \
            PGPASSWORD="$(cat secrets/ctrip_migrator.password)" PGSSLMODE=verify-full \
            PGSSLROOTCERT=certs/ca.crt PGSSLCERT=certs/client.crt PGSSLKEY=certs/client.key \
            "$pg_bin/pg_dump" -Fc --enable-row-security --role=ctrip_owner >/dev/null
    )
}

# Runs ctrip backup create under GNU time, sampling VmHWM from /proc while it runs.
# Prints: elapsed seconds, ru_maxrss KiB, last VmHWM KiB.
ctrip_create() {
    local timing=$BENCH_DIR/time.out hwm=0 pid sample
    rm -rf "$BENCH_DIR/backups"
    /usr/bin/time -f '%e %M' -o "$timing" "$CTRIP" --config "$CONFIG" backup create >/dev/null &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        # The ctrip process is the child of GNU time.
        for child in $(pgrep -P "$pid" -x ctrip || true); do
            sample=$(awk '/VmHWM/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)
            if [[ -n $sample ]] && ((sample > hwm)); then
                hwm=$sample
            fi
        done
        sleep 0.1
    done
    wait "$pid"
    echo "$(cat "$timing") $hwm"
}

seconds_of() {
    local started=$EPOCHREALTIME
    "$@"
    echo "$EPOCHREALTIME - $started" | bc
}

load_before=$(cut -d ' ' -f 1 /proc/loadavg)
declare -a dump_times=() ctrip_times=() ctrip_rss=() ctrip_hwm=()
for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round of $ROUNDS: pg_dump -Fc > /dev/null"
    dump_times+=("$(seconds_of pg_dump_plain)")
    say "round $round of $ROUNDS: ctrip backup create"
    read -r elapsed rss hwm < <(ctrip_create)
    ctrip_times+=("$elapsed")
    ctrip_rss+=("$rss")
    ctrip_hwm+=("$hwm")
done
backup_file=$(ls "$BENCH_DIR"/backups/*.ctrip-backup)
backup_bytes=$(stat -c %s "$backup_file")
ctrip_verify() {
    "$CTRIP" --config "$CONFIG" backup verify "$backup_file" >/dev/null
}
verify_seconds=$(seconds_of ctrip_verify)

best() {
    printf '%s\n' "$@" | sort -g | head -n 1
}
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
best_dump=$(best "${dump_times[@]}")
best_ctrip=$(best "${ctrip_times[@]}")
median_dump=$(median "${dump_times[@]}")
median_ctrip=$(median "${ctrip_times[@]}")
echo
echo "| Measure | Value |"
echo "| --- | --- |"
echo "| Database size (pg_database_size) | $((db_bytes / 1024 / 1024)) MiB, $payments payments |"
echo "| pg_dump -Fc > /dev/null, each round | ${dump_times[*]} s |"
echo "| ctrip backup create, each round | ${ctrip_times[*]} s |"
echo "| Throughput ratio, best pg_dump / best ctrip | $(echo "scale=2; $best_dump / $best_ctrip" | bc) |"
echo "| Throughput ratio, median pg_dump / median ctrip | $(echo "scale=2; $median_dump / $median_ctrip" | bc) |"
echo "| Load average before the rounds (1 min) | $load_before |"
echo "| ctrip peak RSS, ru_maxrss (GNU time), each round | ${ctrip_rss[*]} KiB |"
echo "| ctrip peak RSS, VmHWM sampled every 0.1 s, each round | ${ctrip_hwm[*]} KiB |"
echo "| Backup file size | $((backup_bytes / 1024 / 1024)) MiB |"
echo "| ctrip backup verify | $verify_seconds s |"
echo "| Machine | $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, PostgreSQL $(<"$BENCH_DIR/pgdata/PG_VERSION"), $("$pg_bin/pg_dump" --version) |"
