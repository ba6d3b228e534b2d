//! `ctrip backup prune`: which backups to keep, decided from their authenticated headers.
//!
//! The policy keeps every backup created within `keep_within_days`, the newest backup of
//! each of the last `keep_weekly_weeks` weeks (7-day windows counted back from now), and
//! never fewer than the `keep_min` newest. Creation times come from headers whose data key
//! unwrapped under the configured key, which authenticates them; file names and
//! modification times are ignored. A file whose header does not authenticate is never
//! deleted, and it does not count towards `keep_min`.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::format::SUFFIX;
use super::key::Kek;
use super::verify;
use crate::config::BackupConfig;

/// The action prune takes on one file, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep(String),
    Delete,
    /// The header did not authenticate; the file is left alone.
    Unverified(String),
}

/// One file in the backup directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub backup_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub decision: Decision,
}

/// Decides for each `(created_at)` whether the policy keeps it; returns reasons in the
/// same order as the input, `None` for a backup to delete.
pub fn decide(
    created: &[DateTime<Utc>],
    now: DateTime<Utc>,
    policy: &BackupConfig,
) -> Vec<Option<String>> {
    let mut order: Vec<usize> = (0..created.len()).collect();
    order.sort_by(|a, b| created[*b].cmp(&created[*a]));
    let mut reasons: Vec<Option<String>> = vec![None; created.len()];
    let within = now - Duration::days(i64::from(policy.keep_within_days));
    let mut weeks_taken = vec![false; policy.keep_weekly_weeks as usize];

    for (rank, &index) in order.iter().enumerate() {
        let at = created[index];
        if (rank as u64) < u64::from(policy.keep_min) {
            reasons[index] = Some(format!("one of the {} newest", policy.keep_min));
        } else if at > within {
            reasons[index] = Some(format!("within {} days", policy.keep_within_days));
        }
        let age = now - at;
        if age >= Duration::zero() {
            let week = (age.num_seconds() / (7 * 24 * 3600)) as usize;
            if week < weeks_taken.len() && !weeks_taken[week] {
                weeks_taken[week] = true;
                if reasons[index].is_none() {
                    reasons[index] = Some(format!("newest of week {}", week + 1));
                }
            }
        }
    }
    reasons
}

/// Lists the backups in `dir` and decides for each, without deleting anything.
pub fn plan(
    dir: &Path,
    kek: &Kek,
    policy: &BackupConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let listing = fs::read_dir(dir).map_err(|err| {
        anyhow::anyhow!("cannot list the backup directory {}: {err}", dir.display())
    })?;
    for item in listing {
        let path = item?.path();
        let is_backup = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(SUFFIX) && !name.starts_with('.'));
        if !is_backup || !path.is_file() {
            continue;
        }
        let opened = verify::open(&path, kek);
        entries.push(match opened {
            Ok(opened) => Entry {
                path,
                backup_id: Some(opened.header.body.backup_id),
                created_at: Some(opened.header.body.created_at),
                decision: Decision::Delete,
            },
            Err(err) => Entry {
                path,
                backup_id: None,
                created_at: None,
                decision: Decision::Unverified(err.to_string()),
            },
        });
    }
    let authenticated: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].created_at.is_some())
        .collect();
    let times: Vec<DateTime<Utc>> = authenticated
        .iter()
        .map(|&i| entries[i].created_at.expect("filtered"))
        .collect();
    for (position, reason) in decide(&times, now, policy).into_iter().enumerate() {
        if let Some(reason) = reason {
            entries[authenticated[position]].decision = Decision::Keep(reason);
        }
    }
    entries.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.path.cmp(&b.path)));
    Ok(entries)
}

/// Deletes the files `plan` marked for deletion and fsyncs the directory.
pub fn delete(dir: &Path, entries: &[Entry]) -> anyhow::Result<usize> {
    let mut deleted = 0;
    for entry in entries.iter().filter(|e| e.decision == Decision::Delete) {
        fs::remove_file(&entry.path)
            .map_err(|err| anyhow::anyhow!("cannot delete {}: {err}", entry.path.display()))?;
        deleted += 1;
    }
    if deleted > 0 {
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| anyhow::anyhow!("cannot fsync {}: {err}", dir.display()))?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(within: u32, weeks: u32, min: u32) -> BackupConfig {
        BackupConfig {
            keep_within_days: within,
            keep_weekly_weeks: weeks,
            keep_min: min,
            ..BackupConfig::default()
        }
    }

    fn days_ago(now: DateTime<Utc>, days: &[f64]) -> Vec<DateTime<Utc>> {
        days.iter()
            .map(|d| now - Duration::seconds((d * 86400.0) as i64))
            .collect()
    }

    #[test]
    fn daily_backups_over_ten_weeks() {
        let now = DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let ages: Vec<f64> = (0..70).map(|d| d as f64 + 0.5).collect();
        let created = days_ago(now, &ages);

        let kept: Vec<usize> = decide(&created, now, &policy(7, 4, 3))
            .iter()
            .enumerate()
            .filter_map(|(i, reason)| reason.as_ref().map(|_| i))
            .collect();

        // Days 0-6 by age, then the newest of weeks 2, 3 and 4 (ages 7.5, 14.5, 21.5).
        assert_eq!(kept, vec![0, 1, 2, 3, 4, 5, 6, 7, 14, 21]);
    }

    #[test]
    fn keep_min_holds_old_backups() {
        let now = Utc::now();
        let created = days_ago(now, &[400.0, 500.0, 600.0, 700.0]);

        let reasons = decide(&created, now, &policy(7, 4, 2));

        assert_eq!(reasons[0].as_deref(), Some("one of the 2 newest"));
        assert_eq!(reasons[1].as_deref(), Some("one of the 2 newest"));
        assert_eq!(reasons[2], None);
        assert_eq!(reasons[3], None);
    }

    #[test]
    fn one_per_week_only() {
        let now = Utc::now();
        let created = days_ago(now, &[8.0, 9.0, 10.0]);

        let reasons = decide(&created, now, &policy(1, 2, 1));

        assert_eq!(reasons[0].as_deref(), Some("one of the 1 newest"));
        assert_eq!(reasons[1], None);
        assert_eq!(reasons[2], None);
    }
}
