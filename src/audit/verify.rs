//! Recomputes the audit hash chain from the raw fields and reports where it breaks.
//!
//! A row is checked three ways: its id follows the previous one (a gap means deleted rows),
//! its `prev_hash` equals the previous row's hash (a mismatch means rows were swapped,
//! replaced or inserted), and its own hash matches SHA-256 over `prev_hash` and its fields
//! (a mismatch means the row was edited). Checkpoints then pin ids to hashes, which catches a
//! cut tail or a chain rebuilt from some row on.
//!
//! After an audit prune the oldest rows are gone. The chain then starts from the newest
//! range in `ctrip.audit_prunes`: the first kept row must follow its `last_id` and chain to
//! its `last_hash`, and with the audit key the range's signature is checked too, so a forged
//! range cannot hide deleted rows.

use ed25519_dalek::VerifyingKey;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, Transaction};
use sha2::{Digest, Sha256};

use super::checkpoint::{self, Checkpoint};

/// One thing wrong with the log, located by row id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub id: i64,
    pub message: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: u64,
    pub last_id: i64,
    pub last_hash: Vec<u8>,
    pub checkpoints_checked: usize,
    /// Last row id of the newest audit prune (0 when nothing was pruned).
    pub pruned_through: i64,
    /// Checkpoints of pruned rows, which can no longer be compared.
    pub checkpoints_pruned: usize,
    /// Prune ranges whose signature was checked with the audit key.
    pub prunes_signature_checked: usize,
    /// Rows committed after this check chained the log, so still pending and not checked.
    pub pending: i64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Problems reported at most; the first one is what matters.
const MAX_PROBLEMS: usize = 100;

const SELECT_ROWS: &str = "
    SELECT id, id::text AS id_text, ((extract(epoch FROM occurred_at) * 1000000)::bigint)::text,
           actor_type, actor_id, merchant_id::text, action, object_type, object_id, outcome,
           source_address, request_id, details::text, prev_hash, hash
    FROM ctrip.audit_events WHERE id > $1 ORDER BY 1";

/// Appends a field as the chain encodes it: a 4-byte big-endian length and the UTF-8 bytes,
/// or 0xFFFFFFFF alone for NULL.
pub fn encode_field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.extend_from_slice(&[0xff; 4]),
        Some(text) => {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// Chains the pending rows, then verifies every row in id order inside one REPEATABLE READ
/// snapshot, then each checkpoint.
pub fn verify(client: &mut Client, checkpoints: &[Checkpoint]) -> Result<Report, postgres::Error> {
    verify_with_key(client, checkpoints, None)
}

/// Like [`verify`], and also checks the signature of every prune range with `key`.
pub fn verify_with_key(
    client: &mut Client,
    checkpoints: &[Checkpoint],
    key: Option<&VerifyingKey>,
) -> Result<Report, postgres::Error> {
    super::chain_pending(client, true)?;
    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let mut report = Report {
        rows: 0,
        last_id: 0,
        last_hash: vec![0; 32],
        checkpoints_checked: 0,
        pruned_through: 0,
        checkpoints_pruned: 0,
        prunes_signature_checked: 0,
        pending: 0,
        problems: Vec::new(),
    };
    check_prunes(&mut transaction, &mut report, key)?;
    let pruned_through = report.pruned_through;
    let mut pinned: Vec<(i64, Option<Vec<u8>>)> =
        checkpoints.iter().map(|c| (c.id, None)).collect();
    // A checkpoint of the last pruned row compares with the hash the prune range kept.
    for (pinned_id, pinned_hash) in pinned.iter_mut() {
        if pruned_through > 0 && *pinned_id == pruned_through {
            *pinned_hash = Some(report.last_hash.clone());
        }
    }

    let mut rows = transaction.query_raw(SELECT_ROWS, [&pruned_through])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0);
        let prev_hash: Vec<u8> = row.get(13);
        let hash: Vec<u8> = row.get(14);
        check_row(&mut report, id, &prev_hash, &hash, &row);
        for (pinned_id, pinned_hash) in pinned.iter_mut() {
            if *pinned_id == id {
                *pinned_hash = Some(hash.clone());
            }
        }
        report.rows += 1;
        report.last_id = id;
        report.last_hash = hash;
    }
    drop(rows);

    report.pending = transaction
        .query_one("SELECT count(*) FROM ctrip.audit_events WHERE id < 0", &[])?
        .get(0);
    let head =
        transaction.query_one("SELECT last_id, last_hash FROM ctrip.audit_chain_head", &[])?;
    let head_id: i64 = head.get(0);
    let last_id = report.last_id;
    if head_id > last_id {
        let message = format!(
            "the log ends at row {last_id} but the chain head records row {head_id}: rows {} to \
             {head_id} were cut from the tail",
            last_id + 1
        );
        add(&mut report, last_id + 1, message);
    }
    transaction.commit()?;

    check_checkpoints(&mut report, checkpoints, &pinned);
    Ok(report)
}

/// Anchors the chain on the newest prune range, after checking that the ranges follow each
/// other from row 1 and, with `key`, that each is signed.
fn check_prunes(
    transaction: &mut Transaction<'_>,
    report: &mut Report,
    key: Option<&VerifyingKey>,
) -> Result<(), postgres::Error> {
    let exists: bool = transaction
        .query_one("SELECT to_regclass('ctrip.audit_prunes') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(());
    }
    let prunes = transaction.query(
        "SELECT first_id, last_id, last_hash, signed_at, signature
         FROM ctrip.audit_prunes ORDER BY last_id",
        &[],
    )?;
    for prune in prunes {
        let first_id: i64 = prune.get(0);
        let last_id: i64 = prune.get(1);
        let last_hash: Vec<u8> = prune.get(2);
        if first_id != report.pruned_through + 1 {
            let message = format!(
                "the prune of rows {first_id} to {last_id} does not follow the previous one, \
                 which ended at row {}",
                report.pruned_through
            );
            add(report, first_id, message);
        }
        if let Some(key) = key {
            let at: String = prune.get(3);
            let signature: Vec<u8> = prune.get(4);
            if checkpoint::signature_valid(key, last_id, &last_hash, &at, &signature) {
                report.prunes_signature_checked += 1;
            } else {
                let message = format!(
                    "the prune of rows {first_id} to {last_id} is not signed by the audit key \
                     (the prune record was forged or edited)"
                );
                add(report, last_id, message);
            }
        }
        report.pruned_through = last_id;
        report.last_id = last_id;
        report.last_hash = last_hash;
    }
    Ok(())
}

fn check_row(report: &mut Report, id: i64, prev_hash: &[u8], hash: &[u8], row: &postgres::Row) {
    let expected_id = report.last_id + 1;
    if id != expected_id {
        add(
            report,
            id,
            format!(
                "rows {expected_id} to {} are missing before row {id} (deleted)",
                id - 1
            ),
        );
    } else if prev_hash != report.last_hash.as_slice() {
        add(
            report,
            id,
            format!(
                "prev_hash does not match the hash of row {} (rows swapped, replaced or inserted)",
                id - 1
            ),
        );
    }
    let mut encoded = Vec::with_capacity(256);
    for column in 1..=12 {
        encode_field(&mut encoded, row.get::<_, Option<&str>>(column));
    }
    let recomputed = Sha256::new()
        .chain_update(prev_hash)
        .chain_update(&encoded)
        .finalize();
    if recomputed.as_slice() != hash {
        add(
            report,
            id,
            "the row's fields do not match its hash (edited)".to_owned(),
        );
    }
}

fn check_checkpoints(
    report: &mut Report,
    checkpoints: &[Checkpoint],
    pinned: &[(i64, Option<Vec<u8>>)],
) {
    for (checkpoint, (_, found)) in checkpoints.iter().zip(pinned) {
        if checkpoint.id < report.pruned_through {
            report.checkpoints_pruned += 1;
            continue;
        }
        report.checkpoints_checked += 1;
        match found {
            None if checkpoint.id > report.last_id => add(report, checkpoint.id, format!(
                "the checkpoint of {} covers row {} but the log ends at row {}: the tail was cut",
                checkpoint.at, checkpoint.id, report.last_id
            )),
            None => add(report, checkpoint.id, format!(
                "row {} of the checkpoint of {} is missing from the log",
                checkpoint.id, checkpoint.at
            )),
            Some(hash) if *hash != checkpoint.hash => add(report, checkpoint.id, format!(
                "row {} does not have the hash signed in the checkpoint of {} (the chain was rebuilt)",
                checkpoint.id, checkpoint.at
            )),
            Some(_) => {}
        }
    }
}

fn add(report: &mut Report, id: i64, message: String) {
    if report.problems.len() < MAX_PROBLEMS {
        report.problems.push(Problem { id, message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_encoding_is_length_prefixed() {
        let mut out = Vec::new();

        encode_field(&mut out, Some("ab"));
        encode_field(&mut out, None);
        encode_field(&mut out, Some(""));

        assert_eq!(
            out,
            [0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
        );
    }
}
