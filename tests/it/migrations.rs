//! Migrations: the lock, the history row, and refusal of edited, missing or newer history.

use std::borrow::Cow;
use std::sync::{Arc, Barrier};

use ctrip::db::migrate::{self, MigrateError, Migration, MigrationState};

use crate::harness::TestDb;

#[test]
fn apply_records_history_rows() {
    let db = TestDb::create();
    let migrations = migrate::embedded();

    let applied = migrate::apply(&mut db.owner(), &migrations).unwrap();
    let again = migrate::apply(&mut db.owner(), &migrations).unwrap();

    assert_eq!(applied.len(), migrations.len());
    assert!(again.is_empty());
    let rows = migrate::read_applied(&mut db.owner()).unwrap();
    assert_eq!(rows.len(), migrations.len());
    assert_eq!(rows[0].checksum, migrations[0].checksum());
    assert!(
        rows[0].applied_by.starts_with("ctrip_migrator via ctrip"),
        "{}",
        rows[0].applied_by
    );
}

#[test]
fn edited_applied_file_stops_run() {
    let db = TestDb::create();
    let mut migrations = migrate::embedded();
    migrate::apply(&mut db.owner(), &migrations).unwrap();
    migrations[0].sql = Cow::Owned(format!("{}\n-- edited", migrations[0].sql));

    let err = migrate::apply(&mut db.owner(), &migrations).unwrap_err();

    assert!(
        matches!(err, MigrateError::Edited { version: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("migration 0001"), "{err}");
    assert!(
        err.to_string().contains("restore the original file"),
        "{err}"
    );
}

#[test]
fn applied_version_without_file_stops_run() {
    let db = TestDb::create();
    let mut migrations = migrate::embedded();
    migrations.push(Migration {
        version: 900,
        name: Cow::Borrowed("extra"),
        sql: Cow::Borrowed("SELECT 1;"),
    });
    migrations.push(Migration {
        version: 901,
        name: Cow::Borrowed("last"),
        sql: Cow::Borrowed("SELECT 2;"),
    });
    migrate::apply(&mut db.owner(), &migrations).unwrap();
    migrations.remove(migrations.len() - 2);

    let err = migrate::apply(&mut db.owner(), &migrations).unwrap_err();

    assert!(
        matches!(err, MigrateError::Missing { version: 900, .. }),
        "{err}"
    );
}

#[test]
fn newer_database_stops_run() {
    let db = TestDb::create();
    let mut migrations = migrate::embedded();
    migrations.push(Migration {
        version: 999,
        name: Cow::Borrowed("future"),
        sql: Cow::Borrowed("SELECT 1;"),
    });
    migrate::apply(&mut db.owner(), &migrations).unwrap();

    let err = migrate::apply(&mut db.owner(), &migrate::embedded()).unwrap_err();

    assert!(
        matches!(err, MigrateError::DatabaseNewer { database: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0999"), "{err}");
}

#[test]
fn failing_file_rolls_back_with_its_row() {
    let db = TestDb::create();
    let mut migrations = migrate::embedded();
    migrations.push(Migration {
        version: 500,
        name: Cow::Borrowed("broken"),
        sql: Cow::Borrowed("CREATE TABLE ctrip.half_done (id int); SELECT no_such_function();"),
    });

    let err = migrate::apply(&mut db.owner(), &migrations).unwrap_err();

    assert!(
        matches!(err, MigrateError::Failed { version: 500, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_function"), "{err}");
    let half_done: bool = db
        .owner()
        .query_one("SELECT to_regclass('ctrip.half_done') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(!half_done);
    let rows = migrate::read_applied(&mut db.owner()).unwrap();
    assert_eq!(rows.len(), migrate::embedded().len());
}

#[test]
fn concurrent_migrators_apply_once() {
    let db = Arc::new(TestDb::create());
    let migrations = migrate::embedded();
    let barrier = Arc::new(Barrier::new(4));

    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (db, barrier, migrations) = (db.clone(), barrier.clone(), migrations.clone());
            std::thread::spawn(move || {
                let mut client = db.owner();
                barrier.wait();
                migrate::apply(&mut client, &migrations).unwrap().len()
            })
        })
        .collect();
    let applied: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    assert_eq!(
        applied.iter().sum::<usize>(),
        migrations.len(),
        "{applied:?}"
    );
    assert_eq!(
        migrate::read_applied(&mut db.owner()).unwrap().len(),
        migrations.len()
    );
}

#[test]
fn status_reports_drift_and_pending() {
    let db = TestDb::create();
    let mut migrations = migrate::embedded();
    migrate::apply(&mut db.owner(), &migrations).unwrap();
    migrations[0].sql = Cow::Owned("-- changed".to_owned());
    migrations.push(Migration {
        version: 950,
        name: Cow::Borrowed("next"),
        sql: Cow::Borrowed("SELECT 1;"),
    });

    let lines = migrate::status(&mut db.owner(), &migrations).unwrap();

    assert_eq!(lines[0].state, MigrationState::Drifted);
    assert_eq!(lines.last().unwrap().state, MigrationState::Pending);
}
