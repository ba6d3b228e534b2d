//! Per-table row counts and digests of the `ctrip` schema, computed inside the caller's
//! transaction so they describe exactly one snapshot.
//!
//! A table's digest is SHA-256 over its rows in `COPY` binary format, ordered by primary
//! key (text keys in the "C" collation, so the order does not depend on the database's
//! locale). The binary format does not depend on session settings such as TimeZone or
//! DateStyle, and it costs the server less than text. The same rows therefore give the same
//! digest in the source and in a restored database. Rows are streamed, so memory stays
//! constant whatever the table size.

use std::io::{BufRead, BufReader, Read};

use anyhow::{bail, Context};
use postgres::Transaction;
use sha2::{Digest, Sha256};

use super::format::ManifestEntry;
use crate::db::quote_identifier;

/// The signature that starts `COPY` binary output, from the PostgreSQL documentation of
/// COPY ("Binary Format").
const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Computes the manifest of every table and sequence in schema `ctrip`, sorted by name.
pub fn compute(transaction: &mut Transaction<'_>) -> anyhow::Result<Vec<ManifestEntry>> {
    transaction.batch_execute("SET LOCAL statement_timeout = 0")?;
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
    let sql =
        format!("COPY (SELECT * FROM {qualified} t ORDER BY {order}) TO STDOUT (FORMAT binary)");
    let copy = transaction.copy_out(sql.as_str())?;
    let mut input = BufReader::with_capacity(
        64 * 1024,
        HashingReader {
            inner: copy,
            hasher: Sha256::new(),
        },
    );
    let rows = count_binary_rows(&mut input).with_context(|| format!("cannot read {qualified}"))?;
    let hasher = input.into_inner().hasher;
    Ok(ManifestEntry {
        name: format!("ctrip.{name}"),
        kind: "table".to_owned(),
        rows,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Feeds every byte read through it into a SHA-256.
struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

/// Counts the tuples of a `COPY` binary stream and reads it to the end. After the header,
/// each tuple is an i16 field count followed by, per field, an i32 length (-1 for NULL) and
/// that many bytes. A field count of -1 is the trailer.
fn count_binary_rows(input: &mut impl BufRead) -> anyhow::Result<u64> {
    let mut header = [0u8; 19];
    input.read_exact(&mut header)?;
    if &header[..11] != BINARY_SIGNATURE {
        bail!("COPY binary output does not start with its signature");
    }
    let extension = u32::from_be_bytes(header[15..19].try_into().expect("4 bytes"));
    skip(input, u64::from(extension))?;
    let mut rows = 0u64;
    loop {
        let mut count = [0u8; 2];
        input.read_exact(&mut count)?;
        let fields = i16::from_be_bytes(count);
        if fields == -1 {
            break;
        }
        for _ in 0..fields {
            let mut length = [0u8; 4];
            input.read_exact(&mut length)?;
            let length = i32::from_be_bytes(length);
            if length > 0 {
                skip(input, length as u64)?;
            }
        }
        rows += 1;
    }
    if skip_to_end(input)? != 0 {
        bail!("COPY binary output continues after its trailer");
    }
    Ok(rows)
}

fn skip(input: &mut impl BufRead, mut count: u64) -> anyhow::Result<()> {
    while count > 0 {
        let available = input.fill_buf()?.len() as u64;
        if available == 0 {
            bail!("COPY binary output ends inside a field");
        }
        let take = available.min(count);
        input.consume(take as usize);
        count -= take;
    }
    Ok(())
}

fn skip_to_end(input: &mut impl BufRead) -> anyhow::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let available = input.fill_buf()?.len();
        if available == 0 {
            return Ok(skipped);
        }
        input.consume(available);
        skipped += available as u64;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(tuples: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = BINARY_SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&2u32.to_be_bytes());
        out.extend_from_slice(b"xx");
        for tuple in tuples {
            out.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
            for field in *tuple {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn binary_rows_counted() {
        let data = stream(&[&[Some(b"abc"), None], &[Some(b""), Some(&[0xff; 70_000])]]);

        let rows = count_binary_rows(&mut BufReader::with_capacity(16, data.as_slice())).unwrap();

        assert_eq!(rows, 2);
    }

    #[test]
    fn binary_stream_cut_inside_field() {
        let data = stream(&[&[Some(b"abcdef")]]);

        let err = count_binary_rows(&mut &data[..data.len() - 5]).unwrap_err();

        assert!(err.to_string().contains("ends inside a field"), "{err}");
    }
}
