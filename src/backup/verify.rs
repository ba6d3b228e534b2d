//! Opening a backup (header checks and key unwrap) and authenticating all of it.
//!
//! Verification decrypts every chunk into one reused buffer and writes nothing, so a damaged
//! or forged file never produces plaintext anywhere.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use zeroize::Zeroizing;

use super::format::{self, Header};
use super::key::{Kek, KEY_ID_LEN};
use super::stream::{ChunkReader, StreamTotals};
use super::BackupError;

/// The magic bytes that open a pg_dump custom-format archive.
const PG_DUMP_MAGIC: &[u8] = b"PGDMP";

/// A backup whose header authenticated, positioned at its first record.
pub struct Opened {
    pub header: Header,
    pub data_key: Zeroizing<[u8; 32]>,
    pub file: BufReader<File>,
    /// Bytes after the header.
    pub payload_len: u64,
}

impl Opened {
    /// Returns a reader of the decrypted chunks.
    pub fn chunks(&mut self) -> ChunkReader<&mut BufReader<File>> {
        ChunkReader::new(
            &mut self.file,
            &self.data_key,
            self.header.digest,
            Some(self.payload_len),
        )
    }
}

/// Reads the header of `path` and only its header, without any key. The body is not
/// authenticated: use it for display only.
pub fn read_header(path: &Path) -> Result<(Header, u64), BackupError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let header = format::read_header(&mut BufReader::new(file))?;
    Ok((header, len))
}

/// Opens `path`, checks its header and unwraps its data key with `kek`.
pub fn open(path: &Path, kek: &Kek) -> Result<Opened, BackupError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut file = BufReader::with_capacity(128 * 1024, file);
    let header = format::read_header(&mut file)?;
    let data_key = unwrap_key(&header, kek)?;
    // The header reader may have buffered past the header; position at the first record.
    file.seek(SeekFrom::Start(header.len))?;
    let payload_len = len.saturating_sub(header.len);
    Ok(Opened {
        header,
        data_key,
        file,
        payload_len,
    })
}

/// Unwraps the data key of `header`, telling a wrong key from a modified header.
pub fn unwrap_key(header: &Header, kek: &Kek) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    if header.envelope[..KEY_ID_LEN] != kek.id() {
        return Err(BackupError::WrongKey {
            file_key_id: header.key_id_hex(),
            key_id: kek.id_hex(),
        });
    }
    kek.unwrap(&header.envelope, &header.digest)
        .ok_or_else(|| BackupError::HeaderAuthentication {
            key_id: kek.id_hex(),
        })
}

/// A fully authenticated backup.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Header,
    pub totals: StreamTotals,
    pub file_len: u64,
}

/// Authenticates every chunk and the end record of `path`, writing nothing.
pub fn verify_file(path: &Path, kek: &Kek) -> Result<Verified, BackupError> {
    let mut opened = open(path, kek)?;
    let file_len = opened.header.len + opened.payload_len;
    let mut reader = opened.chunks();
    let mut first = true;
    while let Some(chunk) = reader.next_chunk()? {
        if first && !chunk.starts_with(PG_DUMP_MAGIC) {
            return Err(BackupError::Payload(
                "the first chunk does not start with PGDMP".to_owned(),
            ));
        }
        first = false;
    }
    let totals = reader.totals();
    if totals.bytes == 0 {
        return Err(BackupError::Payload("the payload is empty".to_owned()));
    }
    Ok(Verified {
        header: opened.header,
        totals,
        file_len,
    })
}
