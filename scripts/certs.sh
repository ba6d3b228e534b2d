#!/usr/bin/env bash
# Generates the development TLS certificates of ctrip with the openssl CLI.
#
# Usage: scripts/certs.sh OUT_DIR [--with-test-fixtures]
#
# Writes into OUT_DIR (created if missing):
#   ca.crt, ca.key          development CA, CN "ctrip development CA"
#   server.crt, server.key  server certificate for DNS:localhost and IP:127.0.0.1
#   client.crt, client.key  client certificate, CN "ctrip"
# With --with-test-fixtures it also writes:
#   other-ca.crt, other-ca.key                CA unrelated to the development CA
#   client-other-ca.crt, client-other-ca.key  client certificate signed by other-ca
#
# All keys are EC P-256, keys get mode 0600 and certificates 0644, and every
# certificate is valid for 10 years. Existing files are never overwritten: a
# complete set is kept as it is, and a partial set is an error.

set -euo pipefail

readonly VALIDITY_DAYS=3650
readonly MAIN_FILES=(ca.crt ca.key server.crt server.key client.crt client.key)
readonly FIXTURE_FILES=(other-ca.crt other-ca.key client-other-ca.crt client-other-ca.key)

usage() {
    cat >&2 <<'EOF'
Usage: scripts/certs.sh OUT_DIR [--with-test-fixtures]

Generates a development CA, a server certificate (localhost, 127.0.0.1) and a
client certificate (CN "ctrip") in OUT_DIR. --with-test-fixtures also generates
an unrelated CA (other-ca.*) and a client certificate signed by it
(client-other-ca.*). Existing certificates are kept, never overwritten.
EOF
    exit 2
}

die() {
    echo "certs.sh: error: $*" >&2
    exit 1
}

# Writes the x509v3 extension sections used by make_ca and make_signed_cert
# to $1.
write_extensions_config() {
    cat >"$1" <<'EOF'
[req]
distinguished_name = req_dn
prompt = no

[req_dn]

[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}

generate_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null \
        || die "openssl genpkey failed to create the EC P-256 key $1"
}

# Creates the self-signed CA certificate $1 with key $2 and common name $3.
make_ca() {
    local cert=$1 key=$2 common_name=$3
    generate_key "$key"
    openssl req -new -x509 -key "$key" -out "$cert" -days "$VALIDITY_DAYS" -sha256 \
        -subj "/CN=$common_name" -config "$EXTENSIONS_CONFIG" -extensions ca_ext \
        || die "openssl req failed to create the CA certificate $cert"
}

# Creates certificate $1 with a new key $2, common name $3 and extension
# section $4, signed by CA certificate $5 with CA key $6.
make_signed_cert() {
    local cert=$1 key=$2 common_name=$3 section=$4 ca_cert=$5 ca_key=$6
    local csr=$cert.csr
    generate_key "$key"
    openssl req -new -key "$key" -out "$csr" -subj "/CN=$common_name" \
        -config "$EXTENSIONS_CONFIG" \
        || die "openssl req failed to create the signing request for $cert"
    # A random 120-bit serial avoids a .srl file, and two regenerated sets
    # are practically certain to get different serials.
    openssl x509 -req -in "$csr" -out "$cert" -days "$VALIDITY_DAYS" -sha256 \
        -CA "$ca_cert" -CAkey "$ca_key" -set_serial "0x$(openssl rand -hex 15)" \
        -extfile "$EXTENSIONS_CONFIG" -extensions "$section" 2>/dev/null \
        || die "openssl x509 failed to sign $cert with $ca_cert"
    rm -f "$csr"
}

# Counts a dangling symbolic link as present, so it is never replaced either.
file_present() {
    [[ -e $OUT_DIR/$1 || -L $OUT_DIR/$1 ]]
}

# Returns 0 when the whole file set "$@" must be generated, 1 when it is
# already complete. Exits with an error when only part of the set exists.
file_set_missing() {
    local -a missing=()
    local name
    for name in "$@"; do
        if ! file_present "$name"; then
            missing+=("$name")
        fi
    done
    if ((${#missing[@]} == $#)); then
        return 0
    fi
    if ((${#missing[@]} == 0)); then
        return 1
    fi
    die "incomplete certificate set in $OUT_DIR, missing: ${missing[*]}; remove $OUT_DIR to regenerate, or restore the missing files"
}

# Moves the generated files "$@" from the work directory into OUT_DIR and sets
# their modes. mv -n never replaces a file that appeared in the meantime.
install_files() {
    local name
    for name in "$@"; do
        if [[ $name == *.key ]]; then
            chmod 0600 "$WORK_DIR/$name"
        else
            chmod 0644 "$WORK_DIR/$name"
        fi
        mv -n "$WORK_DIR/$name" "$OUT_DIR/$name"
        if [[ -e $WORK_DIR/$name ]]; then
            die "$OUT_DIR/$name appeared while certificates were generated; it was not overwritten, so remove $OUT_DIR and run again"
        fi
    done
}

main() {
    local with_fixtures=false
    local -a positional=()
    local arg
    for arg in "$@"; do
        case $arg in
            --with-test-fixtures) with_fixtures=true ;;
            -h | --help) usage ;;
            -*) echo "certs.sh: error: unknown option $arg" >&2; usage ;;
            *) positional+=("$arg") ;;
        esac
    done
    if ((${#positional[@]} != 1)); then
        usage
    fi
    OUT_DIR=${positional[0]}

    command -v openssl >/dev/null \
        || die "openssl not found; install it with: apt-get install -y openssl"
    local mkdir_error
    mkdir_error=$(mkdir -p "$OUT_DIR" 2>&1) \
        || die "failed to create the directory $OUT_DIR: ${mkdir_error#mkdir: }"

    local need_main=false need_fixtures=false
    if file_set_missing "${MAIN_FILES[@]}"; then
        need_main=true
    else
        echo "certs.sh: certificates in $OUT_DIR are kept"
    fi
    if [[ $with_fixtures == true ]]; then
        if file_set_missing "${FIXTURE_FILES[@]}"; then
            need_fixtures=true
        else
            echo "certs.sh: test fixture certificates in $OUT_DIR are kept"
        fi
    fi
    if [[ $need_main == false && $need_fixtures == false ]]; then
        return 0
    fi

    # Files are generated in a private directory inside OUT_DIR and moved in
    # only when complete, so an interrupted run leaves no partial set.
    umask 077
    WORK_DIR=$(mktemp -d "$OUT_DIR/.certs-work.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT
    EXTENSIONS_CONFIG=$WORK_DIR/extensions.cnf
    write_extensions_config "$EXTENSIONS_CONFIG"

    if [[ $need_main == true ]]; then
        make_ca "$WORK_DIR/ca.crt" "$WORK_DIR/ca.key" "ctrip development CA"
        make_signed_cert "$WORK_DIR/server.crt" "$WORK_DIR/server.key" localhost server_ext \
            "$WORK_DIR/ca.crt" "$WORK_DIR/ca.key"
        make_signed_cert "$WORK_DIR/client.crt" "$WORK_DIR/client.key" ctrip client_ext \
            "$WORK_DIR/ca.crt" "$WORK_DIR/ca.key"
        install_files "${MAIN_FILES[@]}"
        echo "certs.sh: created CA, server and client certificates in $OUT_DIR"
    fi
    if [[ $need_fixtures == true ]]; then
        make_ca "$WORK_DIR/other-ca.crt" "$WORK_DIR/other-ca.key" "ctrip unrelated test CA"
        make_signed_cert "$WORK_DIR/client-other-ca.crt" "$WORK_DIR/client-other-ca.key" ctrip \
            client_ext "$WORK_DIR/other-ca.crt" "$WORK_DIR/other-ca.key"
        install_files "${FIXTURE_FILES[@]}"
        echo "certs.sh: created test fixture certificates in $OUT_DIR"
    fi
}

main "$@"
