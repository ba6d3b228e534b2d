//! Encrypted backups: round trip through pg_dump and pg_restore, tampering, rekey, prune.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use ctrip::backup::format::{self, HeaderBody, ManifestEntry};
use ctrip::backup::key::{self, Kek};
use ctrip::backup::stream::ChunkWriter;
use ctrip::backup::{manifest, verify, BackupError};
use std::io::Write;

use crate::cli::{ctrip, stderr, stdout, write_config};
use crate::harness::{base_config, cluster, create_merchant, parse_config, set, TestApp, TestDb};

/// Files of one test's backup set-up.
struct Setup {
    config: PathBuf,
    table: toml::Table,
    key: PathBuf,
    dir: PathBuf,
}

fn unique(name: &str) -> PathBuf {
    cluster()
        .dir
        .join("files")
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
}

fn setup(db: &TestDb) -> Setup {
    let key = unique("backup.key");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    key::generate(&key).unwrap();
    let dir = unique("backups");
    let mut table = base_config(db);
    set(&mut table, "backup", "key_file", key.display().to_string());
    set(&mut table, "backup", "dir", dir.display().to_string());
    Setup {
        config: write_config(&table),
        table,
        key,
        dir,
    }
}

/// Adds `per_merchant` payments, with references and random metadata, to each of three new
/// merchants and to the merchant "test", straight in SQL.
fn seed_payments(app: &TestApp, per_merchant: i32) {
    for name in ["alpha", "beta", "gamma"] {
        create_merchant(&app.db, name);
    }
    app.db
        .owner()
        .execute(
            "WITH source AS (
                 SELECT m.id AS merchant_id, 1000000 + (m.n - 1) * $1 + g AS idx
                 FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM ctrip.merchants) m,
                      generate_series(1, $1) g
             ), address AS (
                 INSERT INTO ctrip.deposit_addresses
                     (merchant_id, family, derivation_index, derivation_path, address)
                 SELECT merchant_id, 'evm', idx, 'm/44''/60''/0''/0/' || idx,
                        '0x' || lpad(to_hex(idx), 40, '0')
                 FROM source
                 RETURNING id, merchant_id, derivation_index
             )
             INSERT INTO ctrip.payments
                 (id, merchant_id, chain, token, deposit_address_id, amount, expires_at,
                  reference, metadata, status)
             SELECT gen_random_uuid(), merchant_id, 'ethereum',
                    CASE WHEN derivation_index % 2 = 0 THEN 'USDC' END, id,
                    derivation_index * 1000, now() + interval '1 hour',
                    'order-' || derivation_index,
                    jsonb_build_object('note', md5(random()::text) || md5(random()::text),
                                       'line', E'two\\nlines\\ttab', 'n', derivation_index),
                    (ARRAY['pending', 'paid', 'settled', 'failed'])[1 + derivation_index % 4]
             FROM address",
            &[&per_merchant],
        )
        .unwrap();
    for amount in 1..=5 {
        let reply = app.post(
            "/api/v1/payments",
            &format!(r#"{{"chain": "solana", "amount": {amount}, "reference": "api-{amount}"}}"#),
        );
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
}

fn backup_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn only_backup(dir: &Path) -> PathBuf {
    let files = backup_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].to_str().unwrap().ends_with(".ctrip-backup"),
        "{files:?}"
    );
    files[0].clone()
}

fn compute_manifest(db: &TestDb) -> Vec<ManifestEntry> {
    let mut owner = db.owner();
    let mut transaction = owner.transaction().unwrap();
    let entries = manifest::compute(&mut transaction).unwrap();
    transaction.commit().unwrap();
    entries
}

fn audit_actions(db: &TestDb, action: &str) -> Vec<(String, String)> {
    db.owner()
        .query(
            "SELECT outcome, details::text FROM ctrip.audit_events WHERE action = $1 ORDER BY id",
            &[&action],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn round_trip_restores_identical_data() {
    let app = TestApp::start();
    seed_payments(&app, 1000);
    let setup = setup(&app.db);
    let target = TestDb::create();

    let created = ctrip(&setup.config, &["backup", "create"]);
    let file = only_backup(&setup.dir);
    let verified = ctrip(&setup.config, &["backup", "verify", file.to_str().unwrap()]);
    let restored = ctrip(
        &setup.config,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--into",
            &target.name,
        ],
    );

    assert!(created.status.success(), "{}", stderr(&created));
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).contains("verified"),
        "{}",
        stdout(&verified)
    );
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert!(
        stdout(&restored).contains("manifest matches"),
        "{}",
        stdout(&restored)
    );
    let kek = key::load(&setup.key).unwrap();
    let header = verify::verify_file(&file, &kek).unwrap().header;
    let source = compute_manifest(&app.db);
    let restored_manifest = compute_manifest(&target);
    let payments = header
        .body
        .manifest
        .iter()
        .find(|entry| entry.name == "ctrip.payments")
        .unwrap();
    assert_eq!(payments.rows, 4 * 1000 + 5);
    assert_eq!(
        app.db.count("merchants"),
        target.count("merchants"),
        "merchants"
    );
    // The restore appended its own audit row to the restored log; every other table and
    // every sequence matches the backup exactly.
    let without_audit = |entries: &[ManifestEntry]| -> Vec<ManifestEntry> {
        entries
            .iter()
            .filter(|e| !e.name.starts_with("ctrip.audit_"))
            .cloned()
            .collect()
    };
    assert_eq!(
        without_audit(&header.body.manifest),
        without_audit(&restored_manifest)
    );
    // The source gained the backup.created and backup.verified rows after the snapshot.
    assert_eq!(without_audit(&header.body.manifest), without_audit(&source));
    let audit_rows = |entries: &[ManifestEntry]| {
        entries
            .iter()
            .find(|e| e.name == "ctrip.audit_events")
            .unwrap()
            .rows
    };
    assert_eq!(
        audit_rows(&restored_manifest),
        audit_rows(&header.body.manifest) + 1
    );
    let report = ctrip::audit::verify::verify(&mut target.owner(), &[]).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(audit_actions(&target, "backup.restored").len(), 1);
    assert_eq!(audit_actions(&app.db, "backup.created")[0].0, "success");
    assert_eq!(audit_actions(&app.db, "backup.verified")[0].0, "success");
}

#[test]
fn restored_database_keeps_roles_and_policies() {
    let app = TestApp::start();
    let setup = setup(&app.db);
    let target = TestDb::create();
    assert!(ctrip(&setup.config, &["backup", "create"]).status.success());
    let file = only_backup(&setup.dir);

    let restored = ctrip(
        &setup.config,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--into",
            &target.name,
        ],
    );

    assert!(restored.status.success(), "{}", stderr(&restored));
    let row = target
        .owner()
        .query_one(
            "SELECT has_table_privilege('ctrip_app', 'ctrip.payments', 'INSERT'),
                    has_table_privilege('ctrip_app', 'ctrip.payments', 'DELETE'),
                    (SELECT relforcerowsecurity FROM pg_class WHERE oid = 'ctrip.payments'::regclass),
                    (SELECT pg_get_userbyid(relowner)::text FROM pg_class
                     WHERE oid = 'ctrip.payments'::regclass),
                    (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ctrip.audit_events'::regclass
                     AND NOT tgisinternal),
                    has_column_privilege('ctrip_app', 'ctrip.audit_events', 'id', 'INSERT'),
                    has_column_privilege('ctrip_app', 'ctrip.audit_events', 'action', 'INSERT')",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0), "ctrip_app lost INSERT on payments");
    assert!(
        !row.get::<_, bool>(1),
        "ctrip_app gained DELETE on payments"
    );
    assert!(row.get::<_, bool>(2), "row-level security is not forced");
    assert_eq!(row.get::<_, String>(3), "ctrip_owner");
    let source_triggers: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ctrip.audit_events'::regclass
             AND NOT tgisinternal",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(source_triggers >= 2, "{source_triggers}");
    assert_eq!(row.get::<_, i64>(4), source_triggers, "audit triggers");
    assert!(!row.get::<_, bool>(5), "ctrip_app may choose audit ids");
    assert!(
        row.get::<_, bool>(6),
        "ctrip_app lost INSERT on audit events"
    );
    let mut restored_config = base_config(&target);
    set(&mut restored_config, "server", "listen", "127.0.0.1:0");
    let config = parse_config(&restored_config).unwrap();
    let running = ctrip::serve::start(&config).unwrap_or_else(|err| panic!("{err:#}"));
    let base = format!("http://{}", running.server.addr);
    let reply = crate::harness::send(
        &base,
        "GET",
        "/api/v1/payments",
        None,
        &[("Authorization", &format!("Bearer {}", app.key))],
    );
    running.server.stop(std::time::Duration::from_secs(10));
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[test]
fn restore_refuses_non_empty_target() {
    let app = TestApp::start();
    let setup = setup(&app.db);
    let target = TestDb::create();
    assert!(ctrip(&setup.config, &["backup", "create"]).status.success());
    let file = only_backup(&setup.dir);
    let file = file.to_str().unwrap();
    let restore = |extra: &[&str]| {
        let mut args = vec!["backup", "restore", file, "--into", &target.name];
        args.extend_from_slice(extra);
        ctrip(&setup.config, &args)
    };

    let first = restore(&[]);
    let second = restore(&[]);
    let forced = restore(&["--force"]);

    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains(&format!("database {} is not empty", target.name)),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("pass --force"),
        "{}",
        stderr(&second)
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(
        stdout(&forced).contains("manifest matches"),
        "{}",
        stdout(&forced)
    );
}

/// A backup of several chunks, made once and copied by each tamper test.
struct Fixture {
    file: PathBuf,
    key: PathBuf,
    header_len: u64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let app = TestApp::start();
        seed_payments(&app, 1500);
        let setup = setup(&app.db);
        let config = parse_config(&setup.table).unwrap();
        let kek = key::load(&setup.key).unwrap();
        let mut client = app.db.owner();
        let created =
            ctrip::backup::create::create(&config, &mut client, &kek, &setup.dir).unwrap();
        let (header, _) = verify::read_header(&created.path).unwrap();
        assert!(
            created.totals.chunks >= 4,
            "the fixture needs 4 chunks, has {}",
            created.totals.chunks
        );
        Fixture {
            file: created.path,
            key: setup.key,
            header_len: header.len,
        }
    })
}

/// Returns a copy of the fixture's bytes and the offset of each record after the header.
fn fixture_bytes() -> (Vec<u8>, Vec<usize>) {
    let fixture = fixture();
    let bytes = fs::read(&fixture.file).unwrap();
    let mut offsets = Vec::new();
    let mut at = fixture.header_len as usize;
    while at < bytes.len() {
        offsets.push(at);
        let word = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        at += 4 + (word & 0x7fff_ffff) as usize + 16;
    }
    (bytes, offsets)
}

fn verify_bytes(bytes: &[u8]) -> Result<verify::Verified, BackupError> {
    let path = unique("tampered.ctrip-backup");
    fs::write(&path, bytes).unwrap();
    let kek = key::load(&fixture().key).unwrap();
    verify::verify_file(&path, &kek)
}

#[test]
fn untouched_copy_verifies() {
    let (bytes, offsets) = fixture_bytes();

    let verified = verify_bytes(&bytes).unwrap();

    assert_eq!(verified.totals.chunks as usize, offsets.len() - 1);
}

#[test]
fn flipped_bit_in_chunk_detected() {
    let (mut bytes, offsets) = fixture_bytes();
    bytes[offsets[1] + 4 + 1000] ^= 0x04;

    let err = verify_bytes(&bytes).unwrap_err();

    assert!(
        matches!(err, BackupError::ChunkAuthentication { chunk: 2 }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("chunk 2 failed authentication"),
        "{err}"
    );
}

#[test]
fn flipped_bit_in_header_detected() {
    let (mut bytes, _) = fixture_bytes();
    bytes[40] ^= 0x01;

    let err = verify_bytes(&bytes).unwrap_err();

    assert!(matches!(err, BackupError::HeaderCorrupted(_)), "{err}");
    assert!(
        err.to_string().contains("header checksum does not match"),
        "{err}"
    );
}

#[test]
fn edited_header_with_new_checksum_detected() {
    let (mut bytes, offsets) = fixture_bytes();
    let header_len = offsets[0];
    let at = bytes[..header_len]
        .windows(8)
        .position(|w| w == b"ctrip.pa")
        .unwrap();
    bytes[at + 6] = b'P';
    let checksum = <sha2::Sha256 as sha2::Digest>::digest(&bytes[..header_len - 32]);
    bytes[header_len - 32..header_len].copy_from_slice(&checksum);

    let err = verify_bytes(&bytes).unwrap_err();

    assert!(
        matches!(err, BackupError::HeaderAuthentication { .. }),
        "{err}"
    );
}

#[test]
fn truncated_mid_chunk_detected() {
    let (bytes, offsets) = fixture_bytes();

    let err = verify_bytes(&bytes[..offsets[2] + 500]).unwrap_err();

    assert!(matches!(err, BackupError::Truncated(_)), "{err}");
    assert!(
        err.to_string()
            .contains("the file ends inside chunk 3: 496 of 65552 bytes present"),
        "{err}"
    );
}

#[test]
fn truncated_at_chunk_boundary_detected() {
    let (bytes, offsets) = fixture_bytes();

    let err = verify_bytes(&bytes[..offsets[2]]).unwrap_err();

    assert!(matches!(err, BackupError::Truncated(_)), "{err}");
    assert!(
        err.to_string()
            .contains("ends at a chunk boundary after chunk 2 without the end record"),
        "{err}"
    );
}

#[test]
fn swapped_chunks_detected() {
    let (bytes, offsets) = fixture_bytes();
    let mut swapped = bytes[..offsets[1]].to_vec();
    swapped.extend_from_slice(&bytes[offsets[2]..offsets[3]]);
    swapped.extend_from_slice(&bytes[offsets[1]..offsets[2]]);
    swapped.extend_from_slice(&bytes[offsets[3]..]);

    let err = verify_bytes(&swapped).unwrap_err();

    assert!(
        matches!(
            err,
            BackupError::ChunkReordered {
                chunk: 2,
                written_as: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_key_detected() {
    let fixture = fixture();
    let other = Kek::from_bytes([42; 32]);

    let err = verify::verify_file(&fixture.file, &other).unwrap_err();

    assert!(matches!(err, BackupError::WrongKey { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("key file has id {}", other.id_hex())),
        "{err}"
    );
}

#[test]
fn tampered_backup_restores_nothing() {
    let app = TestApp::start();
    let setup = setup(&app.db);
    let target = TestDb::create();
    assert!(ctrip(&setup.config, &["backup", "create"]).status.success());
    let file = only_backup(&setup.dir);
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 30;
    bytes[last] ^= 0x80;
    fs::write(&file, &bytes).unwrap();

    let verified = ctrip(&setup.config, &["backup", "verify", file.to_str().unwrap()]);
    let restored = ctrip(
        &setup.config,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--into",
            &target.name,
        ],
    );

    assert_eq!(verified.status.code(), Some(1));
    assert!(
        stderr(&verified).contains("failed authentication"),
        "{}",
        stderr(&verified)
    );
    assert_eq!(restored.status.code(), Some(1));
    assert!(
        stderr(&restored).contains("failed authentication"),
        "{}",
        stderr(&restored)
    );
    let tables: i64 = target
        .owner()
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'ctrip'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
    let audited = audit_actions(&app.db, "backup.verified");
    assert_eq!(audited[0].0, "failed");
    assert!(
        audited[0].1.contains("chunk_authentication"),
        "{}",
        audited[0].1
    );
}

#[test]
fn failed_pg_dump_leaves_no_file() {
    let app = TestApp::start();
    let mut setup = setup(&app.db);
    let bin = unique("fake-bin");
    fs::create_dir_all(&bin).unwrap();
    let script = "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 15.0'; exit 0; fi\n\
                  printf PGDMP; head -c 200000 /dev/zero; echo 'pg_dump: error: simulated failure' >&2; exit 1\n";
    let fake = bin.join("pg_dump");
    fs::write(&fake, script).unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    set(
        &mut setup.table,
        "backup",
        "pg_bin_dir",
        bin.display().to_string(),
    );
    let config = write_config(&setup.table);

    let created = ctrip(&config, &["backup", "create"]);

    assert_eq!(created.status.code(), Some(1));
    assert!(
        stderr(&created)
            .contains("pg_dump failed (exit status: 1): pg_dump: error: simulated failure"),
        "{}",
        stderr(&created)
    );
    assert_eq!(backup_files(&setup.dir), Vec::<PathBuf>::new());
    assert_eq!(audit_actions(&app.db, "backup.created")[0].0, "failed");
}

#[test]
fn interrupted_backup_looks_incomplete() {
    let app = TestApp::start();
    let mut setup = setup(&app.db);
    let bin = unique("slow-bin");
    fs::create_dir_all(&bin).unwrap();
    let script =
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 15.0'; exit 0; fi\n\
                  printf PGDMP; head -c 1000000 /dev/urandom; exec sleep 5\n";
    let fake = bin.join("pg_dump");
    fs::write(&fake, script).unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    set(
        &mut setup.table,
        "backup",
        "pg_bin_dir",
        bin.display().to_string(),
    );
    let config = write_config(&setup.table);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ctrip"))
        .arg("--config")
        .arg(&config)
        .args(["backup", "create"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let partial = loop {
        let files = backup_files(&setup.dir);
        if let Some(file) = files.iter().find(|f| {
            fs::metadata(f)
                .map(|m| m.len() > 4 * 65536)
                .unwrap_or(false)
        }) {
            break file.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spool file appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };

    child.kill().unwrap();
    child.wait().unwrap();

    let files = backup_files(&setup.dir);
    assert_eq!(files, vec![partial.clone()]);
    let name = partial.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with('.'), "{name}");
    assert!(name.ends_with(".spool"), "{name}");
    let kek = key::load(&setup.key).unwrap();
    let err = verify::verify_file(&partial, &kek).unwrap_err();
    assert!(matches!(err, BackupError::NotABackup), "{err}");
}

#[test]
fn rekey_rewraps_without_reencrypting() {
    let app = TestApp::start();
    let setup = setup(&app.db);
    assert!(ctrip(&setup.config, &["backup", "create"]).status.success());
    let file = only_backup(&setup.dir);
    let before = fs::read(&file).unwrap();
    let (old_header, _) = verify::read_header(&file).unwrap();
    let new_key = unique("new-backup.key");
    let keygen = ctrip(
        &setup.config,
        &["backup", "keygen", "--out", new_key.to_str().unwrap()],
    );

    let rekeyed = ctrip(
        &setup.config,
        &["backup", "rekey", "--new-key", new_key.to_str().unwrap()],
    );
    let again = ctrip(
        &setup.config,
        &["backup", "rekey", "--new-key", new_key.to_str().unwrap()],
    );

    assert!(keygen.status.success(), "{}", stderr(&keygen));
    assert!(rekeyed.status.success(), "{}", stderr(&rekeyed));
    assert!(
        stdout(&rekeyed).contains("rekeyed 1 of 1 backups"),
        "{}",
        stdout(&rekeyed)
    );
    assert!(stdout(&again).contains("already new"), "{}", stdout(&again));
    let after = fs::read(&file).unwrap();
    let (new_header, _) = verify::read_header(&file).unwrap();
    assert_eq!(new_header.len, old_header.len);
    assert_eq!(
        &after[new_header.len as usize..],
        &before[old_header.len as usize..],
        "the chunks must not change"
    );
    assert_eq!(new_header.body, old_header.body);
    let new_kek = key::load(&new_key).unwrap();
    let old_kek = key::load(&setup.key).unwrap();
    assert!(verify::verify_file(&file, &new_kek).is_ok());
    assert!(matches!(
        verify::verify_file(&file, &old_kek),
        Err(BackupError::WrongKey { .. })
    ));
    let audited = audit_actions(&app.db, "backup.rekeyed");
    assert!(audited[0].1.contains(&new_kek.id_hex()), "{}", audited[0].1);
}

/// Writes a backup file with `created_at` in its authenticated header and a tiny payload;
/// the file name deliberately says nothing true about its age.
fn fake_backup(dir: &Path, kek: &Kek, created_at: DateTime<Utc>, name: &str) -> uuid::Uuid {
    let body = HeaderBody {
        format_version: format::FORMAT_VERSION,
        backup_id: uuid::Uuid::now_v7(),
        created_at,
        database: "ctrip".to_owned(),
        system_identifier: "1".to_owned(),
        server_version: "15".to_owned(),
        schema_version: 3,
        payload: "test".to_owned(),
        chunk_size: 65536,
        manifest: vec![],
    };
    let prefix = format::encode_prefix(&body);
    let digest = format::digest_of(&prefix);
    let data_key = [7u8; 32];
    let mut bytes = format::finish_header(&prefix, &kek.wrap(&data_key, &digest));
    let mut writer = ChunkWriter::new(Vec::new(), &data_key, digest);
    writer.write_all(b"PGDMP fake").unwrap();
    bytes.extend_from_slice(&writer.finish().unwrap().0);
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
    body.backup_id
}

#[test]
fn prune_follows_policy_from_headers() {
    let app = TestApp::start();
    let mut setup = setup(&app.db);
    set(&mut setup.table, "backup", "keep_within_days", 7);
    set(&mut setup.table, "backup", "keep_weekly_weeks", 2);
    set(&mut setup.table, "backup", "keep_min", 2);
    let config = write_config(&setup.table);
    let kek = key::load(&setup.key).unwrap();
    let now = Utc::now();
    // Names sort in the opposite order of age, so a decision by name would be wrong.
    let ages = [
        (1, "ctrip-f.ctrip-backup"),
        (3, "ctrip-e.ctrip-backup"),
        (10, "ctrip-d.ctrip-backup"),
        (12, "ctrip-c.ctrip-backup"),
        (20, "ctrip-b.ctrip-backup"),
        (40, "ctrip-a.ctrip-backup"),
    ];
    for (days, name) in ages {
        fake_backup(&setup.dir, &kek, now - Duration::days(days), name);
    }
    fake_backup(
        &setup.dir,
        &Kek::from_bytes([9; 32]),
        now - Duration::days(100),
        "ctrip-other-key.ctrip-backup",
    );
    fs::write(setup.dir.join(".ctrip-x.ctrip-backup.partial"), b"partial").unwrap();
    let names = || -> Vec<String> {
        backup_files(&setup.dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect()
    };
    let everything = names();

    let dry = ctrip(&config, &["backup", "prune", "--dry-run"]);
    let after_dry = names();
    let pruned = ctrip(&config, &["backup", "prune"]);

    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(after_dry, everything);
    assert!(
        stdout(&dry).contains("would delete 3 of 7 backups"),
        "{}",
        stdout(&dry)
    );
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    assert_eq!(
        names(),
        vec![
            ".ctrip-x.ctrip-backup.partial",
            "ctrip-d.ctrip-backup",
            "ctrip-e.ctrip-backup",
            "ctrip-f.ctrip-backup",
            "ctrip-other-key.ctrip-backup",
        ]
    );
    let text = stdout(&pruned);
    let line = |name: &str| text.lines().find(|l| l.contains(name)).unwrap().to_owned();
    assert!(line("ctrip-f.").contains("one of the 2 newest"), "{text}");
    assert!(line("ctrip-d.").contains("newest of week 2"), "{text}");
    assert!(line("ctrip-other-key").contains("wrong key"), "{text}");
    let audited = audit_actions(&app.db, "backup.pruned");
    assert_eq!(audited.len(), 2);
    assert!(
        audited[1].1.contains("\"dry_run\": false"),
        "{}",
        audited[1].1
    );
}
