//! TLS to PostgreSQL: what each sslmode accepts and refuses, against the real cluster.

use ctrip::db::tls::{SslMode, TlsConnector, TlsFiles, TlsMaterial};
use ctrip::db::{connect, ConnectError};

use crate::harness::{base_config, cluster, parse_config, set, TestDb};

fn connector(mode: SslMode, ca: &str, client: Option<(&str, &str)>) -> TlsConnector {
    let cluster = cluster();
    let files = TlsFiles {
        rootcert: cluster.cert(ca),
        cert: client.map(|(cert, _)| cluster.cert(cert)),
        key: client.map(|(_, key)| cluster.cert(key)),
    };
    TlsConnector::build(mode, &TlsMaterial::load(&files).unwrap()).unwrap()
}

fn try_connect(
    host: &str,
    port: u16,
    tls: &TlsConnector,
) -> Result<postgres::Client, ConnectError> {
    let mut params = cluster().params("ctrip_runtime", "postgres");
    params.host = host.to_owned();
    params.port = port;
    connect(&params, Some(tls))
}

#[test]
fn verify_full_accepts_right_ca_and_host() {
    let tls = connector(
        SslMode::VerifyFull,
        "ca.crt",
        Some(("client.crt", "client.key")),
    );

    let mut client = try_connect("localhost", cluster().port, &tls).unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);

    assert!(ssl);
}

#[test]
fn wrong_ca_refused_with_reason() {
    let tls = connector(SslMode::VerifyFull, "other-ca.crt", None);

    let err = try_connect("localhost", cluster().port, &tls)
        .err()
        .expect("the connection must be refused")
        .to_string();

    assert!(err.contains("localhost"), "{err}");
    assert!(err.contains("sslmode=verify-full"), "{err}");
    assert!(err.contains("certificate verify failed"), "{err}");
}

#[test]
fn other_host_name_refused_under_verify_full() {
    let tls = connector(SslMode::VerifyFull, "ca.crt", None);

    let err = try_connect("127.0.0.2", cluster().port, &tls)
        .err()
        .expect("the connection must be refused")
        .to_string();

    assert!(err.contains("127.0.0.2"), "{err}");
    assert!(err.contains("certificate verify failed"), "{err}");
    assert!(err.to_lowercase().contains("mismatch"), "{err}");
}

#[test]
fn other_host_name_accepted_under_verify_ca() {
    let tls = connector(SslMode::VerifyCa, "ca.crt", None);

    let client = try_connect("127.0.0.2", cluster().port, &tls);

    assert!(client.is_ok(), "{:?}", client.err().map(|e| e.to_string()));
}

#[test]
fn server_without_tls_refused() {
    for mode in [SslMode::Require, SslMode::VerifyFull] {
        let tls = connector(mode, "ca.crt", None);

        let err = try_connect("localhost", cluster().plain_port, &tls)
            .err()
            .expect("the connection must be refused")
            .to_string();

        assert!(err.contains("does not support TLS"), "{mode}: {err}");
        assert!(err.contains(&format!("sslmode={mode}")), "{mode}: {err}");
    }
}

#[test]
fn client_certificate_from_other_ca_refused() {
    let tls = connector(
        SslMode::VerifyFull,
        "ca.crt",
        Some(("client-other-ca.crt", "client-other-ca.key")),
    );
    let server_log = cluster().dir.join("pgdata.log");
    let log_before = std::fs::read_to_string(&server_log)
        .unwrap_or_default()
        .len();

    let err = try_connect("localhost", cluster().port, &tls)
        .err()
        .expect("the server must refuse the certificate")
        .to_string();

    // Under TLS 1.3 the server checks the client certificate after the client has finished
    // its side of the handshake, so the client sees either the alert or a closed socket.
    let refused = ["unknown ca", "Connection reset", "unexpected eof", "EOF"];
    assert!(refused.iter().any(|part| err.contains(part)), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let server_text = std::fs::read_to_string(&server_log).unwrap();
    assert!(
        server_text[log_before..]
            .contains("could not accept SSL connection: certificate verify failed"),
        "the server log does not show the rejected certificate"
    );
}

#[test]
fn world_readable_client_key_rejected() {
    let cluster = cluster();
    let key_text = std::fs::read_to_string(cluster.cert("client.key")).unwrap();
    let loose_key = cluster.write_file("client.key", &key_text, 0o644);
    let files = TlsFiles {
        rootcert: cluster.cert("ca.crt"),
        cert: Some(cluster.cert("client.crt")),
        key: Some(loose_key.clone()),
    };

    let err = TlsMaterial::load(&files)
        .err()
        .expect("a 0644 key must be rejected")
        .to_string();

    assert!(err.contains(&loose_key.display().to_string()), "{err}");
    assert!(err.contains("0644"), "{err}");
    assert!(err.contains("chmod 0600"), "{err}");
}

#[test]
fn key_of_other_certificate_rejected() {
    let cluster = cluster();
    let files = TlsFiles {
        rootcert: cluster.cert("ca.crt"),
        cert: Some(cluster.cert("client.crt")),
        key: Some(cluster.cert("client-other-ca.key")),
    };

    let err = TlsMaterial::load(&files)
        .err()
        .expect("a mismatched key must be rejected")
        .to_string();

    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn prefer_and_allow_are_config_errors() {
    let db = TestDb::create();
    for mode in ["prefer", "allow"] {
        let mut config = base_config(&db);
        set(&mut config, "database", "sslmode", mode);

        let err = parse_config(&config)
            .expect_err("the config must be rejected")
            .to_string();

        assert!(err.contains(&format!("\"{mode}\"")), "{err}");
        assert!(err.contains("plaintext"), "{err}");
        assert!(err.contains("verify-full"), "{err}");
    }
}

#[test]
fn serve_fails_fast_on_wrong_ca() {
    let db = TestDb::create();
    let mut config = base_config(&db);
    set(
        &mut config,
        "database",
        "sslrootcert",
        cluster().cert("other-ca.crt").display().to_string(),
    );
    // Without a client certificate, which would already fail to chain to the other CA.
    config["database"].as_table_mut().unwrap().remove("sslcert");
    config["database"].as_table_mut().unwrap().remove("sslkey");
    let config = parse_config(&config).unwrap();

    let err = match ctrip::serve::start(&config) {
        Ok(_) => panic!("start-up must fail with the wrong CA"),
        Err(err) => format!("{err:#}"),
    };

    assert!(err.contains("certificate verify failed"), "{err}");
    assert!(err.contains("sslmode=verify-full"), "{err}");
}
