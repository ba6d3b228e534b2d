//! `ctrip doctor`: posture checks of a deployment, from client connections, no superuser.
//!
//! Each check has a stable id, a severity, a status, the evidence it saw and the fix. The
//! runtime login's own session shows what the server really gets: TLS, role attributes and
//! settings. The migration login owns the schema, so it verifies migrations and the audit
//! chain. A check whose facts the login may not read is reported as skipped.

use std::os::unix::fs::MetadataExt;

use postgres::error::SqlState;
use postgres::Client;
use serde::Serialize;

use crate::audit::{checkpoint, verify};
use crate::config::Config;
use crate::db::migrate::{self, MigrationState};
use crate::db::rotation::unix_now;
use crate::db::tls::SslMode;
use crate::db::{ConnectParams, SharedTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub severity: Severity,
    pub status: Status,
    pub evidence: String,
    pub fix: String,
}

impl Check {
    fn new(
        id: &'static str,
        severity: Severity,
        passed: bool,
        evidence: String,
        fix: &str,
    ) -> Check {
        let status = if passed { Status::Pass } else { Status::Fail };
        Check {
            id,
            severity,
            status,
            evidence,
            fix: fix.to_owned(),
        }
    }

    fn skipped(id: &'static str, severity: Severity, evidence: String, fix: &str) -> Check {
        Check {
            id,
            severity,
            status: Status::Skipped,
            evidence,
            fix: fix.to_owned(),
        }
    }

    pub fn is_critical_failure(&self) -> bool {
        self.severity == Severity::Critical && self.status == Status::Fail
    }
}

/// Tables whose rows belong to a merchant and must force row-level security.
const MERCHANT_TABLES: &[&str] = &[
    "merchants",
    "api_keys",
    "deposit_addresses",
    "payments",
    "audit_events",
];

/// Runs every check. Connection failures become failed checks, never errors.
pub fn run(config: &Config) -> Vec<Check> {
    let mut checks = local_checks(config);
    let tls = match SharedTls::from_config(config) {
        Ok(tls) => tls,
        Err(err) => {
            checks.push(Check::new(
                "tls.files",
                Severity::Critical,
                false,
                err.to_string(),
                "fix the files named in [database]",
            ));
            return checks;
        }
    };
    checks.push(certificate_check(&tls));

    let runtime = ConnectParams::runtime(config)
        .map_err(|err| err.to_string())
        .and_then(|params| tls.connect(&params).map_err(|err| err.to_string()));
    match runtime {
        Ok(mut client) => checks.extend(runtime_checks(&mut client)),
        Err(err) => checks.push(Check::new(
            "connection.runtime",
            Severity::Critical,
            false,
            err,
            "make the runtime login reachable with the configured TLS settings and password",
        )),
    }

    let owner = ConnectParams::migration(config)
        .map_err(|err| err.to_string())
        .and_then(|params| tls.connect(&params).map_err(|err| err.to_string()));
    match owner {
        Ok(mut client) => checks.extend(owner_checks(config, &mut client)),
        Err(err) => checks.push(Check::new(
            "connection.migration",
            Severity::Critical,
            false,
            err,
            "make the migration login reachable to verify migrations and the audit log",
        )),
    }
    checks
}

fn local_checks(config: &Config) -> Vec<Check> {
    let mode = config.database.sslmode;
    let mut checks = vec![Check::new(
        "tls.sslmode",
        Severity::Critical,
        mode == SslMode::VerifyFull,
        format!("sslmode = \"{mode}\""),
        "set database.sslmode = \"verify-full\"",
    )];
    checks.push(match &config.database.sslkey {
        None => Check::skipped(
            "tls.client_key_permissions",
            Severity::Critical,
            "no client key configured".to_owned(),
            "consider client certificates (database.sslcert and sslkey)",
        ),
        Some(path) => match std::fs::metadata(path) {
            Ok(metadata) => {
                let mode = metadata.mode() & 0o777;
                Check::new(
                    "tls.client_key_permissions",
                    Severity::Critical,
                    mode & 0o077 == 0,
                    format!("{} has mode {mode:04o}", path.display()),
                    &format!("chmod 600 {}", path.display()),
                )
            }
            Err(err) => Check::new(
                "tls.client_key_permissions",
                Severity::Critical,
                false,
                format!("cannot read {}: {err}", path.display()),
                "restore the client key file",
            ),
        },
    });
    checks
}

fn certificate_check(tls: &SharedTls) -> Check {
    let state = tls.current();
    let Some(summary) = &state.summary else {
        return Check::skipped(
            "tls.certificates",
            Severity::Critical,
            "TLS is disabled".to_owned(),
            "enable TLS",
        );
    };
    let now = unix_now();
    let certs = summary
        .client
        .iter()
        .map(|c| ("client", c))
        .chain(summary.ca.iter().map(|c| ("ca", c)));
    let described: Vec<String> = certs
        .clone()
        .map(|(kind, cert)| {
            format!(
                "{kind} {} sha256 {} expires in {} days",
                cert.subject,
                cert.sha256,
                cert.days_left(now)
            )
        })
        .collect();
    let soonest = certs
        .map(|(_, cert)| cert.days_left(now))
        .min()
        .unwrap_or(i64::MAX);
    let severity = if soonest < 7 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Check::new(
        "tls.certificates",
        severity,
        soonest >= 30,
        described.join("; "),
        "rotate certificates that expire within 30 days (replace the files in certs/)",
    )
}

fn query_text(client: &mut Client, sql: &str) -> Result<String, postgres::Error> {
    let row = client.query_one(sql, &[])?;
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

fn runtime_checks(client: &mut Client) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut add = |result: Result<Check, postgres::Error>, id: &'static str| {
        checks.push(result.unwrap_or_else(|err| {
            let evidence = format!("query failed: {}", crate::db::error_chain(&err));
            Check::new(
                id,
                Severity::Critical,
                false,
                evidence,
                "check the runtime login's privileges",
            )
        }));
    };
    add(session_tls(client), "tls.session");
    add(
        setting_check(
            client,
            "tls.server_ssl",
            Severity::Critical,
            "ssl",
            &["on"],
            "set ssl = on in postgresql.conf",
        ),
        "tls.server_ssl",
    );
    add(
        setting_check(
            client,
            "tls.server_min_protocol",
            Severity::Warning,
            "ssl_min_protocol_version",
            &["TLSv1.2", "TLSv1.3"],
            "set ssl_min_protocol_version = 'TLSv1.2' in postgresql.conf",
        ),
        "tls.server_min_protocol",
    );
    add(
        setting_check(
            client,
            "auth.password_encryption",
            Severity::Warning,
            "password_encryption",
            &["scram-sha-256"],
            "set password_encryption = 'scram-sha-256' and reset the passwords",
        ),
        "auth.password_encryption",
    );
    add(role_attributes(client), "role.runtime_attributes");
    add(role_owns_nothing(client), "role.runtime_owns_nothing");
    add(
        role_connection_limit(client),
        "role.runtime_connection_limit",
    );
    add(role_timeouts(client), "role.runtime_timeouts");
    add(public_create(client), "schema.public_create");
    add(rls_tables(client), "rls.merchant_tables");
    add(
        security_definer(client),
        "functions.security_definer_search_path",
    );
    add(log_connections(client), "logging.connections");
    add(hba_rules(client), "hba.rules");
    checks
}

fn session_tls(client: &mut Client) -> Result<Check, postgres::Error> {
    let row = client.query_one(
        "SELECT ssl, coalesce(version, ''), coalesce(cipher, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )?;
    let (ssl, version, cipher): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
    Ok(Check::new(
        "tls.session",
        Severity::Critical,
        ssl && (version == "TLSv1.2" || version == "TLSv1.3"),
        format!("ssl={ssl} version={version} cipher={cipher}"),
        "connect over TLS 1.2 or later (sslmode verify-full, ssl_min_protocol_version)",
    ))
}

fn setting_check(
    client: &mut Client,
    id: &'static str,
    severity: Severity,
    name: &str,
    good: &[&str],
    fix: &str,
) -> Result<Check, postgres::Error> {
    let value = match query_text(client, &format!("SELECT current_setting('{name}')")) {
        Ok(value) => value,
        Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            let evidence = format!("{name} is readable only with pg_read_all_settings");
            return Ok(Check::skipped(id, severity, evidence, fix));
        }
        Err(err) => return Err(err),
    };
    Ok(Check::new(
        id,
        severity,
        good.contains(&value.as_str()),
        format!("{name} = {value}"),
        fix,
    ))
}

fn role_attributes(client: &mut Client) -> Result<Check, postgres::Error> {
    let row = client.query_one(
        "SELECT rolname::text, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
         FROM pg_roles WHERE rolname = current_user",
        &[],
    )?;
    let names = [
        "superuser",
        "createrole",
        "createdb",
        "replication",
        "bypassrls",
    ];
    let held: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| row.get::<_, bool>(i + 1))
        .map(|(_, n)| *n)
        .collect();
    let role: String = row.get(0);
    Ok(Check::new(
        "role.runtime_attributes",
        Severity::Critical,
        held.is_empty(),
        if held.is_empty() {
            format!("{role} has none of {}", names.join(", "))
        } else {
            format!("{role} has {}", held.join(", "))
        },
        &format!("ALTER ROLE {role} NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS"),
    ))
}

fn role_owns_nothing(client: &mut Client) -> Result<Check, postgres::Error> {
    let row = client.query_one(
        "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
              + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
              + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
              + (SELECT count(*) FROM pg_type WHERE typowner = r.oid),
                r.rolname::text
         FROM pg_roles r WHERE r.rolname = current_user",
        &[],
    )?;
    let (owned, role): (i64, String) = (row.get(0), row.get(1));
    Ok(Check::new(
        "role.runtime_owns_nothing",
        Severity::Critical,
        owned == 0,
        format!("{role} owns {owned} objects in this database"),
        &format!("REASSIGN OWNED BY {role} TO ctrip_owner (as a superuser)"),
    ))
}

fn role_connection_limit(client: &mut Client) -> Result<Check, postgres::Error> {
    let row = client.query_one(
        "SELECT rolconnlimit, rolname::text FROM pg_roles WHERE rolname = current_user",
        &[],
    )?;
    let (limit, role): (i32, String) = (row.get(0), row.get(1));
    Ok(Check::new(
        "role.runtime_connection_limit",
        Severity::Warning,
        limit > 0,
        format!("{role} connection limit {limit}"),
        &format!("ALTER ROLE {role} CONNECTION LIMIT 100"),
    ))
}

fn role_timeouts(client: &mut Client) -> Result<Check, postgres::Error> {
    let row = client.query_one(
        "SELECT coalesce(string_agg(setting, ', '), ''), (SELECT rolname::text FROM pg_roles WHERE rolname = current_user)
         FROM pg_db_role_setting s, unnest(s.setconfig) AS setting
         WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        &[],
    )?;
    let (settings, role): (String, String) = (row.get(0), row.get(1));
    let has = |name: &str| {
        settings
            .split(", ")
            .any(|s| s.starts_with(&format!("{name}=")))
    };
    Ok(Check::new(
        "role.runtime_timeouts",
        Severity::Warning,
        has("statement_timeout") && has("idle_in_transaction_session_timeout"),
        if settings.is_empty() { format!("{role} has no role-level settings") } else { format!("{role}: {settings}") },
        &format!(
            "ALTER ROLE {role} SET statement_timeout = '5s'; ALTER ROLE {role} SET idle_in_transaction_session_timeout = '10s'"
        ),
    ))
}

fn public_create(client: &mut Client) -> Result<Check, postgres::Error> {
    let row = client.query_one(
        "SELECT has_schema_privilege('public', 'public', 'CREATE'),
                has_database_privilege('public', current_database(), 'CONNECT')",
        &[],
    )?;
    let (create, connect): (bool, bool) = (row.get(0), row.get(1));
    Ok(Check::new(
        "schema.public_create",
        Severity::Critical,
        !create && !connect,
        format!("PUBLIC: CREATE on schema public = {create}, CONNECT on database = {connect}"),
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE ALL ON DATABASE <name> FROM PUBLIC",
    ))
}

fn rls_tables(client: &mut Client) -> Result<Check, postgres::Error> {
    let tables: Vec<String> = MERCHANT_TABLES.iter().map(|t| (*t).to_owned()).collect();
    let rows = client.query(
        "SELECT relname::text FROM pg_class
         WHERE relnamespace = 'ctrip'::regnamespace AND relname = ANY($1)
           AND relrowsecurity AND relforcerowsecurity",
        &[&tables],
    )?;
    let good: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let missing: Vec<&str> = MERCHANT_TABLES
        .iter()
        .filter(|t| !good.iter().any(|g| g == *t))
        .copied()
        .collect();
    Ok(Check::new(
        "rls.merchant_tables",
        Severity::Critical,
        missing.is_empty(),
        if missing.is_empty() { format!("enabled and forced on {}", MERCHANT_TABLES.join(", ")) } else { format!("not enabled and forced on {}", missing.join(", ")) },
        "ALTER TABLE ctrip.<table> ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY (or run ctrip migrate)",
    ))
}

fn security_definer(client: &mut Client) -> Result<Check, postgres::Error> {
    let rows = client.query(
        "SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
         ORDER BY 1",
        &[],
    )?;
    let unpinned: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    Ok(Check::new(
        "functions.security_definer_search_path",
        Severity::Critical,
        unpinned.is_empty(),
        if unpinned.is_empty() {
            "every SECURITY DEFINER function pins search_path".to_owned()
        } else {
            format!("no pinned search_path: {}", unpinned.join(", "))
        },
        "ALTER FUNCTION <name> SET search_path = pg_catalog, pg_temp",
    ))
}

fn log_connections(client: &mut Client) -> Result<Check, postgres::Error> {
    let connections = query_text(client, "SELECT current_setting('log_connections')")?;
    let disconnections = query_text(client, "SELECT current_setting('log_disconnections')")?;
    Ok(Check::new(
        "logging.connections",
        Severity::Warning,
        connections == "on" && disconnections == "on",
        format!("log_connections = {connections}, log_disconnections = {disconnections}"),
        "set log_connections = on and log_disconnections = on in postgresql.conf",
    ))
}

fn hba_rules(client: &mut Client) -> Result<Check, postgres::Error> {
    let rows = match client.query(
        "SELECT line_number, type, coalesce(auth_method, ''), coalesce(error, '') FROM pg_hba_file_rules",
        &[],
    ) {
        Ok(rows) => rows,
        Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Ok(Check::skipped(
                "hba.rules",
                Severity::Critical,
                "pg_hba_file_rules is readable only by superusers and roles granted it".to_owned(),
                "review pg_hba.conf: only hostssl lines with scram-sha-256, no trust or md5",
            ))
        }
        Err(err) => return Err(err),
    };
    let bad: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let (line, kind, method): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
            let weak = matches!(method.as_str(), "trust" | "md5" | "password")
                || kind == "host"
                || kind == "hostnossl";
            weak.then(|| format!("line {line}: {kind} {method}"))
        })
        .collect();
    Ok(Check::new(
        "hba.rules",
        Severity::Critical,
        bad.is_empty(),
        if bad.is_empty() {
            format!(
                "{} rules, all TLS-only with strong authentication",
                rows.len()
            )
        } else {
            bad.join("; ")
        },
        "allow only hostssl lines with scram-sha-256 (or cert) in pg_hba.conf",
    ))
}

fn owner_checks(config: &Config, client: &mut Client) -> Vec<Check> {
    let migrations = match migrate::status(client, &migrate::embedded()) {
        Ok(lines) => {
            let off: Vec<String> = lines
                .iter()
                .filter(|line| line.state != MigrationState::Applied)
                .map(|line| format!("{:04} {:?}", line.version, line.state))
                .collect();
            Check::new(
                "migrations.current",
                Severity::Critical,
                off.is_empty(),
                if off.is_empty() {
                    format!("{} migrations applied, none drifted", lines.len())
                } else {
                    off.join(", ")
                },
                "run ctrip migrate; restore any edited or missing sql/ file",
            )
        }
        Err(err) => Check::new(
            "migrations.current",
            Severity::Critical,
            false,
            err.to_string(),
            "run ctrip migrate",
        ),
    };
    vec![migrations, audit_check(config, client)]
}

fn audit_check(config: &Config, client: &mut Client) -> Check {
    let points = match (&config.audit.key_file, &config.audit.checkpoint_file) {
        (Some(key), Some(file)) if file.exists() => {
            match checkpoint::load_key(key)
                .and_then(|key| checkpoint::read(file, &key.verifying_key()))
            {
                Ok(points) => points,
                Err(err) => {
                    return Check::new(
                        "audit.chain",
                        Severity::Critical,
                        false,
                        err.to_string(),
                        "restore the audit key and checkpoint file",
                    )
                }
            }
        }
        _ => Vec::new(),
    };
    match verify::verify(client, &points) {
        Ok(report) if report.is_ok() => Check::new(
            "audit.chain",
            Severity::Critical,
            true,
            format!(
                "{} rows verified, {} checkpoints",
                report.rows, report.checkpoints_checked
            ),
            "",
        ),
        Ok(report) => {
            let first = report
                .problems
                .iter()
                .min_by_key(|p| p.id)
                .expect("not ok means a problem");
            Check::new(
                "audit.chain",
                Severity::Critical,
                false,
                format!("row {}: {}", first.id, first.message),
                "investigate with ctrip audit verify; restore from a backup taken before the row",
            )
        }
        Err(err) => Check::new(
            "audit.chain",
            Severity::Critical,
            false,
            err.to_string(),
            "check the migration login",
        ),
    }
}

/// Formats the checks as a table for a terminal, failures with their fix.
pub fn render_text(checks: &[Check]) -> String {
    let mut text = String::new();
    for check in checks {
        let status = match check.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIP",
        };
        let severity = match check.severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        };
        text.push_str(&format!(
            "{status:<5} {severity:<9} {:<40} {}\n",
            check.id, check.evidence
        ));
        if check.status == Status::Fail {
            text.push_str(&format!("      fix: {}\n", check.fix));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let critical = checks.iter().filter(|c| c.is_critical_failure()).count();
    text.push_str(&format!(
        "{} checks, {failed} failed, {critical} critical\n",
        checks.len()
    ));
    text
}
