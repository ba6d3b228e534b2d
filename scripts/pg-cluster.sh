#!/usr/bin/env bash
# Creates, starts and stops the local PostgreSQL clusters of ctrip, and sets up
# their roles and databases. Every cluster is private to ctrip: it listens on
# 127.0.0.1 and 127.0.0.2 at its own port and keeps its unix socket in
# /tmp/ctrip-pg-PORT, so it shares no data or socket directory with a system
# PostgreSQL. start rejects a port that another process already listens on.
#
# Usage: scripts/pg-cluster.sh COMMAND ARGS...   (run `pg-cluster.sh help`)
#
# Runs as root and starts every PostgreSQL program as the postgres system user
# through runuser. init uses the newest /usr/lib/postgresql/VERSION/bin, and the
# other commands use the version recorded in the cluster's PG_VERSION file.

set -euo pipefail

readonly PG_ROOT=/usr/lib/postgresql
readonly SCRIPT=pg-cluster.sh
# Marks the end of the settings that init appends to postgresql.conf, so a
# cluster whose init was interrupted is distinguished from a finished one.
readonly SETTINGS_END_MARKER="# end of ctrip settings"
readonly GROUP_ROLES=(ctrip_owner ctrip_app ctrip_readonly)
readonly LOGIN_ROLES=(ctrip_migrator ctrip_runtime ctrip_admin)
readonly PASSWORD_LENGTH=32

usage() {
    cat >&2 <<'EOF'
Usage: scripts/pg-cluster.sh COMMAND ARGS...

Commands (run as root; PostgreSQL itself runs as the postgres user):
  init DATA_DIR PORT CERT_DIR [--no-ssl] [--fast]
      Create a cluster in DATA_DIR that listens on 127.0.0.1 and 127.0.0.2 at
      TCP port PORT, with its unix socket in /tmp/ctrip-pg-PORT. TLS uses copies
      of CERT_DIR/server.crt, server.key and ca.crt (see scripts/certs.sh).
      --no-ssl  turn TLS off and accept plain TCP (only for tests of clients
                that must reject such a server); CERT_DIR is then not read
      --fast    turn off fsync, synchronous_commit and full_page_writes (test
                clusters only: a crash can lose or corrupt data)
      An existing cluster in DATA_DIR is kept.
  start DATA_DIR      Start the cluster, logging to DATA_DIR/../NAME.log.
  stop DATA_DIR       Stop the cluster (fast shutdown) if it runs.
  status DATA_DIR     Exit 0 if the cluster runs, 3 if not.
  psql DATA_DIR [PSQL_ARGS...]
                      Run psql as the postgres superuser over the unix socket.
  roles DATA_DIR SECRETS_DIR
                      Create or update the ctrip roles, with each login's
                      password in SECRETS_DIR/LOGIN.password.
  createdb DATA_DIR NAME
                      Create database NAME owned by ctrip_owner if missing, and
                      grant CONNECT only to the ctrip group roles.
  free-port           Print a free TCP port in 20000-40000.
EOF
    exit 2
}

die() {
    echo "$SCRIPT: error: $*" >&2
    exit 1
}

say() {
    echo "$SCRIPT: $*"
}

require_root() {
    if [[ $(id -u) != 0 ]]; then
        die "must run as root, because it runs PostgreSQL as the postgres user through runuser"
    fi
    if ! id postgres >/dev/null 2>&1; then
        die "system user postgres not found; install PostgreSQL with: apt-get install -y postgresql"
    fi
}

# Runs a PostgreSQL program as postgres from /, because the programs print
# "could not change directory" in a directory that postgres cannot enter.
as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

absolute_path() {
    realpath -m -- "$1"
}

# Prints the newest /usr/lib/postgresql/VERSION/bin that contains initdb.
newest_pg_bin() {
    local version newest=""
    local -a versions=()
    if [[ -d $PG_ROOT ]]; then
        mapfile -t versions < <(ls -1 "$PG_ROOT" | sort -V)
    fi
    for version in "${versions[@]}"; do
        if [[ -x $PG_ROOT/$version/bin/initdb && -x $PG_ROOT/$version/bin/pg_ctl ]]; then
            newest=$PG_ROOT/$version/bin
        fi
    done
    if [[ -z $newest ]]; then
        die "no PostgreSQL server binaries found in $PG_ROOT/*/bin; install them with: apt-get install -y postgresql"
    fi
    echo "$newest"
}

is_cluster() {
    [[ -f $1/PG_VERSION ]]
}

require_cluster() {
    if ! is_cluster "$1"; then
        die "no PostgreSQL cluster in $1 (PG_VERSION not found); create it with: $SCRIPT init $1 PORT CERT_DIR"
    fi
}

# Prints the bin directory of the PostgreSQL version that created cluster $1.
cluster_bin() {
    local version
    version=$(<"$1/PG_VERSION")
    if [[ ! -x $PG_ROOT/$version/bin/pg_ctl ]]; then
        die "cluster $1 needs PostgreSQL $version, but $PG_ROOT/$version/bin/pg_ctl is missing; install it with: apt-get install -y postgresql-$version"
    fi
    echo "$PG_ROOT/$version/bin"
}

is_running() {
    local data_dir=$1 bin=$2
    as_postgres "$bin/pg_ctl" -D "$data_dir" status >/dev/null 2>&1
}

require_running() {
    local data_dir=$1 bin=$2
    if ! is_running "$data_dir" "$bin"; then
        die "cluster $data_dir is not running; start it with: $SCRIPT start $data_dir"
    fi
}

# Prints the value of configuration parameter $3 of cluster $1, as the server
# reads it from postgresql.conf and postgresql.auto.conf.
read_setting() {
    local data_dir=$1 bin=$2 name=$3
    as_postgres "$bin/postgres" -D "$data_dir" -C "$name" \
        || die "failed to read the setting $name of cluster $data_dir"
}

# Prints the first directory of the cluster's unix_socket_directories.
read_socket_dir() {
    local directories
    directories=$(read_setting "$1" "$2" unix_socket_directories)
    directories=${directories%%,*}
    directories=${directories#"${directories%%[![:space:]]*}"}
    if [[ -z $directories ]]; then
        die "cluster $1 has no unix_socket_directories; set it in $1/postgresql.conf"
    fi
    echo "$directories"
}

log_file_of() {
    echo "$(dirname "$1")/$(basename "$1").log"
}

# Prints the first directory on the absolute path $1, from / down, that user
# postgres cannot enter.
first_untraversable_dir() {
    local path=$1 prefix="" component
    local -a components=()
    IFS=/ read -ra components <<<"${path#/}"
    for component in "${components[@]}"; do
        prefix+=/$component
        if ! as_postgres test -x "$prefix"; then
            echo "$prefix"
            return 0
        fi
    done
    echo "$path"
}

is_valid_port() {
    [[ $1 =~ ^[0-9]{1,5}$ ]] && (($1 >= 1024 && $1 <= 65535))
}

# Returns 0 when something listens on TCP port $1 on any local address.
port_in_use() {
    local port=$1
    if command -v ss >/dev/null; then
        [[ -n $(ss -Hltn "sport = :$port") ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

socket_dir_for_port() {
    echo "/tmp/ctrip-pg-$1"
}

# Creates the socket directory $1 owned by postgres with mode 0700, or checks
# an existing one. Only directories named /tmp/ctrip-pg-* are created or
# changed, so a socket directory of another server is never modified.
ensure_socket_dir() {
    local dir=$1 owner
    if [[ $dir != /tmp/ctrip-pg-* ]]; then
        if ! as_postgres test -d "$dir" -a -w "$dir"; then
            die "socket directory $dir is missing or not writable by postgres; create it or change unix_socket_directories"
        fi
        return 0
    fi
    if [[ -L $dir ]]; then
        die "socket directory $dir is a symbolic link; remove it with: rm $dir"
    fi
    if [[ ! -e $dir ]]; then
        # mkdir fails if another process creates the path first, so the
        # directory that gets chowned is always the one created here.
        mkdir -m 0700 "$dir" || die "failed to create the socket directory $dir"
        chown postgres:postgres "$dir"
        return 0
    fi
    if [[ ! -d $dir ]]; then
        die "socket directory $dir exists but is not a directory; remove it with: rm $dir"
    fi
    owner=$(stat -c %U "$dir")
    if [[ $owner != postgres ]]; then
        die "socket directory $dir is owned by $owner, not postgres; remove it with: rm -r $dir"
    fi
    chmod 0700 "$dir"
}

# Creates the server log file $1 owned by postgres if missing, or checks that
# postgres can write an existing one.
ensure_log_file() {
    local log=$1
    if [[ ! -e $log ]]; then
        install -m 0640 -o postgres -g postgres /dev/null "$log" \
            || die "failed to create the log file $log"
    fi
    if ! as_postgres test -w "$log"; then
        die "user postgres cannot write the log file $log; run: chown postgres $log"
    fi
}

# Prints C.UTF-8 if the system has that locale, else C.
choose_locale() {
    if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then
        echo C.UTF-8
    else
        echo C
    fi
}

# Copies the server certificate, its key and the CA certificate into the data
# directory, owned by postgres with mode 0600, because the server rejects a
# key file that it does not own or that others can read.
copy_certificates() {
    local data_dir=$1 cert_dir=$2 name
    for name in server.crt server.key ca.crt; do
        install -m 0600 -o postgres -g postgres "$cert_dir/$name" "$data_dir/$name" \
            || die "failed to copy $cert_dir/$name into $data_dir"
    done
}

write_pg_hba() {
    local data_dir=$1 ssl=$2 host_type=hostssl
    if [[ $ssl == false ]]; then
        host_type=host
    fi
    {
        echo "# Written by scripts/pg-cluster.sh init. Only postgres may use the unix"
        echo "# socket (peer authentication), and every TCP login uses SCRAM-SHA-256."
        printf '%-8s %-4s %-9s %-13s %s\n' \
            local all postgres "" peer \
            "$host_type" all all 127.0.0.1/32 scram-sha-256 \
            "$host_type" all all 127.0.0.2/32 scram-sha-256
    } >"$data_dir/pg_hba.conf"
    chown postgres:postgres "$data_dir/pg_hba.conf"
    chmod 0600 "$data_dir/pg_hba.conf"
}

# Appends the ctrip settings to postgresql.conf, where they override the
# defaults that initdb wrote above them.
write_settings() {
    local data_dir=$1 port=$2 ssl=$3 fast=$4
    local conf=$data_dir/postgresql.conf
    {
        echo ""
        echo "# ctrip settings, written by scripts/pg-cluster.sh init"
        echo "port = $port"
        # Linux routes all of 127.0.0.0/8 to the loopback interface. Tests use
        # 127.0.0.2 to reach the server under a name its certificate lacks.
        echo "listen_addresses = '127.0.0.1,127.0.0.2'"
        # Unix socket paths are limited to about 107 bytes, so the socket
        # lives in a short directory instead of the data directory.
        echo "unix_socket_directories = '$(socket_dir_for_port "$port")'"
        echo "password_encryption = 'scram-sha-256'"
        if [[ $ssl == true ]]; then
            echo "ssl = on"
            echo "ssl_cert_file = 'server.crt'"
            echo "ssl_key_file = 'server.key'"
            # With a CA file the server requests a client certificate and
            # verifies any that a client presents.
            echo "ssl_ca_file = 'ca.crt'"
            echo "ssl_min_protocol_version = 'TLSv1.2'"
        else
            echo "ssl = off"
        fi
        echo "log_connections = on"
        echo "log_disconnections = on"
        echo "max_connections = 300"
        echo "logging_collector = off"
        if [[ $fast == true ]]; then
            echo "# Test cluster only: a crash can lose or corrupt data."
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
        echo "$SETTINGS_END_MARKER"
    } >>"$conf"
}

# Checks the existing cluster that init keeps, and warns when its port differs
# from the requested one.
# NOTE: the certificate copies in the data directory are not refreshed, so
# after regenerating CERT_DIR remove the cluster and run init again.
keep_existing_cluster() {
    local data_dir=$1 port=$2 bin configured_port
    if ! grep -qxF "$SETTINGS_END_MARKER" "$data_dir/postgresql.conf" 2>/dev/null; then
        die "cluster $data_dir lacks the ctrip settings, so an earlier init was interrupted or another tool created it; remove $data_dir and run init again"
    fi
    bin=$(cluster_bin "$data_dir")
    configured_port=$(read_setting "$data_dir" "$bin" port)
    say "cluster $data_dir already exists and is kept (port $configured_port)"
    if [[ $configured_port != "$port" ]]; then
        echo "$SCRIPT: warning: cluster $data_dir keeps port $configured_port, not the requested port $port" >&2
    fi
}

cmd_init() {
    local ssl=true fast=false arg
    local -a positional=()
    for arg in "$@"; do
        case $arg in
            --no-ssl) ssl=false ;;
            --fast) fast=true ;;
            -*) echo "$SCRIPT: error: unknown option $arg for init" >&2; usage ;;
            *) positional+=("$arg") ;;
        esac
    done
    if ((${#positional[@]} != 3)); then
        usage
    fi
    local data_dir port=${positional[1]} cert_dir
    data_dir=$(absolute_path "${positional[0]}")
    cert_dir=$(absolute_path "${positional[2]}")
    is_valid_port "$port" || die "invalid port $port; use a number from 1024 to 65535"
    require_root

    if is_cluster "$data_dir"; then
        keep_existing_cluster "$data_dir" "$port"
        return 0
    fi
    if [[ -e $data_dir && ! -d $data_dir ]]; then
        die "$data_dir exists but is not a directory; choose another DATA_DIR"
    fi
    if [[ -d $data_dir && -n $(ls -A "$data_dir") ]]; then
        die "$data_dir is not empty and is not a PostgreSQL cluster; choose another DATA_DIR or empty it"
    fi
    local bin name
    bin=$(newest_pg_bin)
    if [[ $ssl == true ]]; then
        for name in server.crt server.key ca.crt; do
            if [[ ! -r $cert_dir/$name ]]; then
                die "certificate file $cert_dir/$name not found; create it with: scripts/certs.sh $cert_dir"
            fi
        done
    fi
    if port_in_use "$port"; then
        die "port $port is already in use; choose another, for example with: $SCRIPT free-port"
    fi

    local parent
    parent=$(dirname "$data_dir")
    (umask 022 && mkdir -p "$parent") || die "failed to create the directory $parent"
    if ! as_postgres test -x "$parent"; then
        die "user postgres cannot enter $(first_untraversable_dir "$parent"), a parent of $data_dir; grant it with chmod o+x, or use a DATA_DIR under /var/lib or /tmp"
    fi
    install -d -m 0700 -o postgres -g postgres "$data_dir" \
        || die "failed to create the data directory $data_dir"

    local locale output
    local -a initdb_options=(
        -D "$data_dir" --username=postgres --auth-local=peer --auth-host=scram-sha-256
        --encoding=UTF8
    )
    locale=$(choose_locale)
    initdb_options+=("--locale=$locale")
    if [[ $fast == true ]]; then
        # Skipping the final fsync of initdb is safe for a throw-away cluster.
        initdb_options+=(--no-sync)
    fi
    if ! output=$(as_postgres "$bin/initdb" "${initdb_options[@]}" 2>&1); then
        echo "$output" >&2
        die "initdb failed for $data_dir (output above)"
    fi

    if [[ $ssl == true ]]; then
        copy_certificates "$data_dir" "$cert_dir"
    fi
    write_pg_hba "$data_dir" "$ssl"
    write_settings "$data_dir" "$port" "$ssl" "$fast"
    ensure_log_file "$(log_file_of "$data_dir")"
    say "created cluster $data_dir (PostgreSQL $(<"$data_dir/PG_VERSION"), port $port, ssl $([[ $ssl == true ]] && echo on || echo off), locale $locale)"
}

cmd_start() {
    (($# == 1)) || usage
    local data_dir bin port socket_dir log
    data_dir=$(absolute_path "$1")
    require_root
    require_cluster "$data_dir"
    bin=$(cluster_bin "$data_dir")
    if is_running "$data_dir" "$bin"; then
        say "cluster $data_dir is already running"
        return 0
    fi
    port=$(read_setting "$data_dir" "$bin" port)
    if port_in_use "$port"; then
        die "port $port of cluster $data_dir is already in use by another process; stop that process or change port in $data_dir/postgresql.conf"
    fi
    socket_dir=$(read_socket_dir "$data_dir" "$bin")
    ensure_socket_dir "$socket_dir"
    log=$(log_file_of "$data_dir")
    ensure_log_file "$log"
    if ! as_postgres "$bin/pg_ctl" -D "$data_dir" -l "$log" -w -t 60 start >/dev/null; then
        echo "$SCRIPT: error: pg_ctl failed to start cluster $data_dir; last 20 lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    say "started cluster $data_dir on port $port (log: $log)"
}

cmd_stop() {
    (($# == 1)) || usage
    local data_dir bin
    data_dir=$(absolute_path "$1")
    require_root
    if [[ ! -e $data_dir ]]; then
        say "no cluster in $data_dir, nothing to stop"
        return 0
    fi
    if ! is_cluster "$data_dir"; then
        say "$data_dir is not a PostgreSQL cluster, nothing to stop"
        return 0
    fi
    bin=$(cluster_bin "$data_dir")
    if ! is_running "$data_dir" "$bin"; then
        say "cluster $data_dir is not running"
        return 0
    fi
    local socket_dir
    socket_dir=$(read_socket_dir "$data_dir" "$bin")
    if ! as_postgres "$bin/pg_ctl" -D "$data_dir" -m fast -w -t 60 stop >/dev/null; then
        die "pg_ctl failed to stop cluster $data_dir; see $(log_file_of "$data_dir")"
    fi
    # start creates the socket directory again, so an empty one is not left behind in /tmp.
    rmdir "$socket_dir" 2>/dev/null || true
    say "stopped cluster $data_dir"
}

cmd_status() {
    (($# == 1)) || usage
    local data_dir bin
    data_dir=$(absolute_path "$1")
    require_root
    if ! is_cluster "$data_dir"; then
        say "no cluster in $data_dir"
        exit 3
    fi
    bin=$(cluster_bin "$data_dir")
    if is_running "$data_dir" "$bin"; then
        say "cluster $data_dir is running"
        exit 0
    fi
    say "cluster $data_dir is not running"
    exit 3
}

# Runs psql as postgres on running cluster $1 with the arguments that follow.
# psql runs in the caller's working directory, so relative paths in the
# arguments work, unless postgres cannot enter it: psql then runs from /.
run_psql() {
    local data_dir=$1 bin port socket_dir
    shift
    require_cluster "$data_dir"
    bin=$(cluster_bin "$data_dir")
    require_running "$data_dir" "$bin"
    port=$(read_setting "$data_dir" "$bin" port)
    socket_dir=$(read_socket_dir "$data_dir" "$bin")
    (
        if ! as_postgres test -x "$PWD"; then
            cd /
        fi
        runuser -u postgres -- "$bin/psql" -h "$socket_dir" -p "$port" -U postgres \
            -v ON_ERROR_STOP=1 -X -q "$@"
    )
}

cmd_psql() {
    (($# >= 1)) || usage
    local data_dir
    data_dir=$(absolute_path "$1")
    shift
    require_root
    run_psql "$data_dir" "$@"
}

# Prints a new random alphanumeric password.
generate_password() {
    local password=""
    while ((${#password} < PASSWORD_LENGTH)); do
        # head reads a fixed amount, so tr never gets SIGPIPE from a reader
        # that stops early.
        password+=$(head -c 1024 /dev/urandom | tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${password:0:PASSWORD_LENGTH}"
}

# Checks that the existing password file $1 contains one non-empty line,
# which is the password. psql and $(cat) both drop a single trailing newline.
check_password_file() {
    local file=$1
    local -a lines=()
    if [[ ! -f $file || -L $file ]]; then
        die "password file $file is not a regular file; remove it to have a new password generated"
    fi
    mapfile -t lines <"$file"
    if ((${#lines[@]} != 1)) || [[ -z ${lines[0]} || ${lines[0]} == *$'\r'* ]]; then
        die "password file $file must contain exactly one non-empty line; fix it or remove it to have a new password generated"
    fi
}

# Creates SECRETS_DIR/LOGIN.password for every login role that has none.
ensure_password_files() {
    local secrets_dir=$1 login file
    (umask 077 && mkdir -p "$secrets_dir") || die "failed to create the secrets directory $secrets_dir"
    chmod 0700 "$secrets_dir"
    for login in "${LOGIN_ROLES[@]}"; do
        file=$secrets_dir/$login.password
        if [[ -e $file || -L $file ]]; then
            check_password_file "$file"
            chmod 0600 "$file"
            say "kept the password of $login from $file"
        else
            # noclobber makes the write fail rather than replace a file that
            # appeared in the meantime. printf is a builtin, so the password
            # never appears in a process argument list.
            (umask 077 && set -o noclobber && printf '%s' "$(generate_password)" >"$file") \
                || die "failed to write the password file $file"
            say "generated a password for $login in $file"
        fi
    done
}

cmd_roles() {
    (($# == 2)) || usage
    local data_dir secrets_dir bin
    data_dir=$(absolute_path "$1")
    secrets_dir=$(absolute_path "$2")
    require_root
    require_cluster "$data_dir"
    bin=$(cluster_bin "$data_dir")
    require_running "$data_dir" "$bin"
    ensure_password_files "$secrets_dir"

    # root opens the password files, and psql (running as postgres) reads them
    # through inherited descriptors 3-5, so postgres needs no access to
    # SECRETS_DIR. The SQL comes from stdin and the passwords are psql
    # variables, so no password appears in a process argument list.
    # log_min_error_statement = panic keeps a failing ALTER ROLE, and the
    # password in it, out of the server log.
    run_psql "$data_dir" \
        3<"$secrets_dir/ctrip_migrator.password" \
        4<"$secrets_dir/ctrip_runtime.password" \
        5<"$secrets_dir/ctrip_admin.password" <<'SQL'
\set migrator_password `cat <&3`
\set runtime_password `cat <&4`
\set admin_password `cat <&5`
SET client_min_messages = warning;
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
SET password_encryption = 'scram-sha-256';
BEGIN;
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY[
        'ctrip_owner', 'ctrip_app', 'ctrip_readonly',
        'ctrip_migrator', 'ctrip_runtime', 'ctrip_admin'
    ] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        END IF;
    END LOOP;
END
$$;
-- Every run sets all attributes, so a role changed by hand is reset.
ALTER ROLE ctrip_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE ctrip_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE ctrip_readonly NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE ctrip_migrator LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD :'migrator_password';
ALTER ROLE ctrip_runtime LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS CONNECTION LIMIT 100 PASSWORD :'runtime_password';
ALTER ROLE ctrip_admin LOGIN INHERIT NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD :'admin_password';
-- A plain GRANT inherits according to the member's INHERIT attribute in
-- PostgreSQL 15, and takes its default inherit option from it from 16 on
-- (PostgreSQL 16 release notes).
GRANT ctrip_owner TO ctrip_migrator;
GRANT ctrip_app TO ctrip_runtime;
GRANT ctrip_owner TO ctrip_admin;
-- Role-level limits and a fixed search_path. PostgreSQL applies ALTER ROLE ... SET only to
-- sessions that log in as that role, so the runtime login gets them as well as its group.
ALTER ROLE ctrip_app SET search_path = ctrip;
ALTER ROLE ctrip_app SET statement_timeout = '5s';
ALTER ROLE ctrip_app SET idle_in_transaction_session_timeout = '10s';
ALTER ROLE ctrip_runtime SET search_path = ctrip;
ALTER ROLE ctrip_runtime SET statement_timeout = '5s';
ALTER ROLE ctrip_runtime SET idle_in_transaction_session_timeout = '10s';
ALTER ROLE ctrip_readonly SET default_transaction_read_only = on;
COMMIT;
SQL
    say "roles ${GROUP_ROLES[*]} ${LOGIN_ROLES[*]} are set up in cluster $data_dir"
}

cmd_createdb() {
    (($# == 2)) || usage
    local data_dir name owner_count
    data_dir=$(absolute_path "$1")
    name=$2
    if [[ ! $name =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
        die "invalid database name $name; use 1 to 63 lowercase letters, digits or underscores, not starting with a digit"
    fi
    require_root
    owner_count=$(run_psql "$data_dir" -tA -c "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = 'ctrip_owner'")
    if [[ $owner_count != 1 ]]; then
        die "role ctrip_owner not found in cluster $data_dir; create the roles first with: $SCRIPT roles $data_dir SECRETS_DIR"
    fi
    run_psql "$data_dir" -v "database=$name" <<'SQL'
SET client_min_messages = warning;
SELECT NOT EXISTS (
    SELECT FROM pg_catalog.pg_database WHERE datname = :'database'
) AS database_missing \gset
\if :database_missing
CREATE DATABASE :"database" OWNER ctrip_owner;
\echo 'pg-cluster.sh: created database' :database
\else
\echo 'pg-cluster.sh: database' :database 'already exists and is kept'
\endif
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO ctrip_owner, ctrip_app, ctrip_readonly;
SQL
}

# Prints a random TCP port in 20000-40000 that nothing listens on and that no
# ctrip cluster's socket directory (/tmp/ctrip-pg-PORT) claims. Another
# process can still take the port before the caller binds it.
cmd_free_port() {
    (($# == 0)) || usage
    local attempt port
    for ((attempt = 0; attempt < 200; attempt++)); do
        port=$(((RANDOM << 15 | RANDOM) % 20001 + 20000))
        if [[ -e $(socket_dir_for_port "$port") ]] || port_in_use "$port"; then
            continue
        fi
        echo "$port"
        return 0
    done
    die "no free TCP port found in 20000-40000 after 200 attempts"
}

main() {
    (($# >= 1)) || usage
    local command=$1
    shift
    case $command in
        init) cmd_init "$@" ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        psql) cmd_psql "$@" ;;
        roles) cmd_roles "$@" ;;
        createdb) cmd_createdb "$@" ;;
        free-port) cmd_free_port "$@" ;;
        help | -h | --help) usage ;;
        *) echo "$SCRIPT: error: unknown command $command" >&2; usage ;;
    esac
}

main "$@"
