//! Per-table row counts and digests of the `ctrip` schema, computed inside the caller's
//! transaction so they describe exactly one snapshot.
//!
//! A table's digest is SHA-256 over its rows in `COPY` text format, ordered by primary key
//! (text keys in the "C" collation, so the order does not depend on the database's locale),
//! with the output settings fixed to UTC, ISO dates and full float precision. The same
//! rows therefore give the same digest in the source and in a restored database. Rows are
//! streamed, so memory stays constant whatever the table size.

use std::io::Read;

use postgres::Transaction;
use sha2::{Digest, Sha256};

use super::format::ManifestEntry;
use crate::db::quote_identifier;

/// Output settings that make `COPY` text identical across sessions.
const FIXED_OUTPUT: &str = "
    SET LOCAL TimeZone = 'UTC';
    SET LOCAL DateStyle = 'ISO, YMD';
    SET LOCAL IntervalStyle = 'postgres';
    SET LOCAL extra_float_digits = 3;
    SET LOCAL bytea_output = 'hex';
    SET LOCAL statement_timeout = 0;";

/// Computes the manifest of every table and sequence in schema `ctrip`, sorted by name.
pub fn compute(transaction: &mut Transaction<'_>) -> anyhow::Result<Vec<ManifestEntry>> {
    transaction.batch_execute(FIXED_OUTPUT)?;
    let relations = transaction.query(
        "SELECT c.oid, c.relname::text, c.relkind::text
         FROM pg_catalog.pg_class c
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'ctrip' AND c.relkind IN ('r', 'S')
         ORDER BY c.relname",
        &[],
    )?;
    let mut entries = Vec::with_capacity(relations.len());
    for relation in relations {
        let oid: postgres::types::Oid = relation.get(0);
        let name: String = relation.get(1);
        let kind: String = relation.get(2);
        let qualified = format!("ctrip.{}", quote_identifier(&name));
        let entry = if kind == "S" {
            sequence_entry(transaction, &name, &qualified)?
        } else {
            table_entry(transaction, oid, &name, &qualified)?
        };
        entries.push(entry);
    }
    Ok(entries)
}

fn sequence_entry(
    transaction: &mut Transaction<'_>,
    name: &str,
    qualified: &str,
) -> Result<ManifestEntry, postgres::Error> {
    let row = transaction.query_one(
        &format!("SELECT last_value::text, is_called FROM {qualified}"),
        &[],
    )?;
    let value: String = row.get(0);
    let called: bool = row.get(1);
    Ok(ManifestEntry {
        name: format!("ctrip.{name}"),
        kind: "sequence".to_owned(),
        rows: 1,
        sha256: hex::encode(Sha256::digest(format!("{value} {called}"))),
    })
}

fn table_entry(
    transaction: &mut Transaction<'_>,
    oid: postgres::types::Oid,
    name: &str,
    qualified: &str,
) -> anyhow::Result<ManifestEntry> {
    let order = order_by(transaction, oid)?;
    let sql = format!("COPY (SELECT * FROM {qualified} t ORDER BY {order}) TO STDOUT");
    let mut reader = transaction.copy_out(sql.as_str())?;
    let mut hasher = Sha256::new();
    let mut rows = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!("cannot read {qualified}")))
            }
        };
        hasher.update(&buffer[..read]);
        // COPY text escapes newlines inside values, so each row is one line.
        rows += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok(ManifestEntry {
        name: format!("ctrip.{name}"),
        kind: "table".to_owned(),
        rows,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Returns the ORDER BY list: the primary key columns, or the whole row as text.
fn order_by(
    transaction: &mut Transaction<'_>,
    oid: postgres::types::Oid,
) -> Result<String, postgres::Error> {
    let columns = transaction.query(
        "SELECT a.attname::text, a.attcollation <> 0
         FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = $1 AND i.indisprimary
         ORDER BY k.position",
        &[&oid],
    )?;
    if columns.is_empty() {
        return Ok("t::text COLLATE \"C\"".to_owned());
    }
    let parts: Vec<String> = columns
        .iter()
        .map(|column| {
            let name = quote_identifier(column.get::<_, &str>(0));
            if column.get::<_, bool>(1) {
                format!("t.{name} COLLATE \"C\"")
            } else {
                format!("t.{name}")
            }
        })
        .collect();
    Ok(parts.join(", "))
}

/// Lists the differences between the manifest of a backup and of a restored database; empty
/// when they are equal.
pub fn differences(expected: &[ManifestEntry], actual: &[ManifestEntry]) -> Vec<String> {
    let mut problems = Vec::new();
    for want in expected {
        match actual.iter().find(|have| have.name == want.name) {
            None => problems.push(format!("{}: missing from the restored database", want.name)),
            Some(have) if have.rows != want.rows => problems.push(format!(
                "{}: {} rows in the backup but {} restored",
                want.name, want.rows, have.rows
            )),
            Some(have) if have.sha256 != want.sha256 => problems.push(format!(
                "{}: the digest differs ({} rows in both): restored contents do not match",
                want.name, want.rows
            )),
            Some(_) => {}
        }
    }
    for have in actual {
        if !expected.iter().any(|want| want.name == have.name) {
            problems.push(format!(
                "{}: in the restored database but not in the backup",
                have.name
            ));
        }
    }
    problems
}
