//! `ctrip doctor` against a database set up like `make run`, and against a weak one.

use std::collections::HashMap;
use std::process::Command;

use ctrip::doctor::{self, Check, Status};

use crate::harness::{base_config, cluster, parse_config, set, TestApp};

fn by_id(checks: &[Check]) -> HashMap<&'static str, &Check> {
    checks.iter().map(|check| (check.id, check)).collect()
}

/// Runs SQL as the cluster's superuser, the way an operator (or an attacker) would.
fn superuser_sql(dbname: &str, sql: &str) {
    let pgdata = std::env::var("CTRIP_TEST_PGDATA").expect("CTRIP_TEST_PGDATA is set by make test");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
    let output = Command::new(script)
        .args(["psql", &pgdata, "-d", dbname, "-c", sql])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn make_run_database_has_no_critical_failure() {
    let app = TestApp::start();

    let checks = doctor::run(&parse_config(&base_config(&app.db)).unwrap());

    let report = doctor::render_text(&checks);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.is_critical_failure())
        .map(|c| c.id)
        .collect();
    assert!(failed.is_empty(), "{report}");
    let checks = by_id(&checks);
    for id in [
        "tls.session",
        "tls.sslmode",
        "role.runtime_attributes",
        "role.runtime_owns_nothing",
        "schema.public_create",
        "rls.merchant_tables",
        "functions.security_definer_search_path",
        "migrations.current",
        "audit.chain",
        "auth.password_encryption",
        "role.runtime_timeouts",
        "logging.connections",
    ] {
        assert_eq!(checks[id].status, Status::Pass, "{id}: {report}");
    }
    assert_eq!(checks["hba.rules"].status, Status::Skipped, "{report}");
}

#[test]
fn weak_database_fails_each_check() {
    let app = TestApp::start();
    app.db.chain_audit();
    let db = &app.db.name;
    let weak = format!("weak_{}", &db[2..14]);
    let password = "weak-password-for-doctor-test";
    superuser_sql(
        "postgres",
        &format!(
            "CREATE ROLE {weak} LOGIN CREATEDB PASSWORD '{password}' IN ROLE ctrip_app;
             ALTER ROLE {weak} SET password_encryption = 'md5';
             GRANT CONNECT ON DATABASE {db} TO {weak}"
        ),
    );
    superuser_sql(
        db,
        &format!(
            "GRANT CREATE ON SCHEMA public TO PUBLIC;
             CREATE TABLE public.owned_by_weak (id int);
             ALTER TABLE public.owned_by_weak OWNER TO {weak};
             ALTER TABLE ctrip.payments NO FORCE ROW LEVEL SECURITY;
             CREATE FUNCTION public.leaky() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
             UPDATE ctrip.schema_migrations SET checksum = 'edited' WHERE version = 1;
             ALTER TABLE ctrip.audit_events DISABLE TRIGGER USER;
             UPDATE ctrip.audit_events SET outcome = 'failed' WHERE id = 1;
             ALTER TABLE ctrip.audit_events ENABLE TRIGGER USER"
        ),
    );
    let key_text = std::fs::read_to_string(cluster().cert("client.key")).unwrap();
    let loose_key = cluster().write_file("client.key", &key_text, 0o640);
    let mut table = base_config(&app.db);
    set(&mut table, "database", "sslmode", "verify-ca");
    set(
        &mut table,
        "database",
        "sslkey",
        loose_key.display().to_string(),
    );
    set(&mut table, "database.runtime", "user", weak.clone());
    set(&mut table, "database.runtime", "password", password);
    table["database"]["runtime"]
        .as_table_mut()
        .unwrap()
        .remove("password_file");

    let checks = doctor::run(&parse_config(&table).unwrap());

    let report = doctor::render_text(&checks);
    let checks = by_id(&checks);
    for id in [
        "tls.sslmode",
        "tls.client_key_permissions",
        "auth.password_encryption",
        "role.runtime_attributes",
        "role.runtime_owns_nothing",
        "role.runtime_connection_limit",
        "role.runtime_timeouts",
        "schema.public_create",
        "rls.merchant_tables",
        "functions.security_definer_search_path",
        "migrations.current",
        "audit.chain",
    ] {
        assert_eq!(checks[id].status, Status::Fail, "{id} must fail: {report}");
    }
    assert!(
        checks["role.runtime_attributes"]
            .evidence
            .contains("createdb"),
        "{report}"
    );
    assert!(
        checks["rls.merchant_tables"].evidence.contains("payments"),
        "{report}"
    );
    assert!(
        checks["functions.security_definer_search_path"]
            .evidence
            .contains("public.leaky"),
        "{report}"
    );
    assert!(
        checks["audit.chain"].evidence.starts_with("row 1:"),
        "{report}"
    );
    assert!(
        checks["tls.client_key_permissions"]
            .fix
            .starts_with("chmod 600"),
        "{report}"
    );

    drop(app);
    superuser_sql("postgres", &format!("DROP ROLE {weak}"));
}

#[test]
fn doctor_cli_exit_code_and_json() {
    let app = TestApp::start();
    let mut table = base_config(&app.db);
    let config = crate::cli::write_config(&table);
    set(&mut table, "database", "sslmode", "require");
    let weak_config = crate::cli::write_config(&table);

    let healthy = crate::cli::ctrip(&config, &["doctor", "--json"]);
    let weak = crate::cli::ctrip(&weak_config, &["doctor"]);

    assert!(healthy.status.success(), "{}", crate::cli::stdout(&healthy));
    let parsed: serde_json::Value = serde_json::from_slice(&healthy.stdout).unwrap();
    assert!(parsed
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "tls.session" && c["status"] == "pass"));
    assert_eq!(weak.status.code(), Some(1));
    assert!(
        crate::cli::stdout(&weak).contains("FAIL  critical  tls.sslmode"),
        "{}",
        crate::cli::stdout(&weak)
    );
    assert!(
        crate::cli::stderr(&weak).contains("critical checks failed: tls.sslmode"),
        "{}",
        crate::cli::stderr(&weak)
    );
}
