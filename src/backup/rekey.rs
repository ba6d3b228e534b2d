//! `ctrip backup rekey`: wraps a backup's data key under a new key-encryption key.
//!
//! Only the key envelope changes: the chunks were sealed with the data key and the digest of
//! the header body, and neither changes. The new file is the new header followed by the old
//! records copied byte for byte, written under a temporary name, fsynced and renamed over the
//! old one, so a crash leaves either the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use super::format;
use super::key::{Kek, KEY_ID_LEN};
use super::verify;

/// The result of rekeying one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rekeyed {
    Done,
    /// The file was already wrapped with the new key.
    AlreadyCurrent,
}

/// Rewraps the data key of `path` from `old` to `new`.
pub fn rekey_file(path: &Path, old: &Kek, new: &Kek) -> anyhow::Result<Rekeyed> {
    let (header, _) = verify::read_header(path)?;
    if header.envelope[..KEY_ID_LEN] == new.id() {
        verify::unwrap_key(&header, new)?;
        return Ok(Rekeyed::AlreadyCurrent);
    }
    let data_key = verify::unwrap_key(&header, old)?;
    let envelope = new.wrap(&data_key, &header.digest);
    let new_header = format::with_envelope(&header, &envelope);

    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .context("the backup path has no file name")?;
    let temporary = dir.join(format!(".{name}.rekey.partial"));
    let result = write_rekeyed(path, &temporary, &new_header, header.len);
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result?;
    let check = verify::read_header(&temporary)
        .map_err(anyhow::Error::from)
        .and_then(|(written, _)| Ok(verify::unwrap_key(&written, new)?));
    if let Err(err) = check {
        let _ = fs::remove_file(&temporary);
        return Err(
            err.context("the rewritten header does not authenticate; the backup is unchanged")
        );
    }
    fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync {}", dir.display()))?;
    Ok(Rekeyed::Done)
}

fn write_rekeyed(
    path: &Path,
    temporary: &Path,
    new_header: &[u8],
    old_header_len: u64,
) -> anyhow::Result<()> {
    let mut input = BufReader::new(File::open(path)?);
    input.seek(SeekFrom::Start(old_header_len))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    let mut output = BufWriter::with_capacity(256 * 1024, file);
    output.write_all(new_header)?;
    std::io::copy(&mut input, &mut output)?;
    let file = output.into_inner().map_err(|err| err.into_error())?;
    file.sync_all()?;
    Ok(())
}
