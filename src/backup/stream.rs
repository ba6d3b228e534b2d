//! Chunked authenticated encryption of the backup payload: the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway and Vizár, "Online Authenticated-Encryption and its
//! Nonce-Reuse Misuse-Resistance", 2015), as age uses it, over AES-256-GCM.
//!
//! The payload is cut into chunks of `CHUNK_SIZE` plaintext bytes. Chunk n is sealed with the
//! nonce `0^7 || n (u32, big-endian) || last flag (1 byte)` and the header digest as
//! associated data. The nonce prefix can be all zeros because every backup has its own random
//! data key. After the data chunks comes one end record, sealed with the last flag set, that
//! contains the number of data chunks and plaintext bytes. So a chunk moved to another position,
//! a file cut anywhere, and any changed byte each fail authentication.
//!
//! On disk each record is a u32 (big-endian) whose top bit is the last flag and whose low 31
//! bits are the plaintext length, then the ciphertext and its 16-byte tag. The length is not
//! authenticated on its own, but a wrong one misplaces the tag, so the chunk fails.

use std::io::{Read, Write};

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::{Aes256Gcm, Key, KeyInit};

use super::BackupError;

/// Plaintext bytes per data chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const LAST_FLAG: u32 = 1 << 31;
const END_MAGIC: &[u8; 8] = b"CTRIPEND";
const END_LEN: usize = 8 + 8 + 8;

type Stream = StreamBE32<Aes256Gcm>;

fn stream_for(data_key: &[u8; 32]) -> Stream {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*data_key));
    Stream::from_aead(cipher, &Default::default())
}

/// Totals of a finished stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTotals {
    pub chunks: u64,
    pub bytes: u64,
}

/// Encrypts everything written to it into records on `output`; call [`ChunkWriter::finish`]
/// to write the last data chunk and the end record.
pub struct ChunkWriter<W: Write> {
    output: W,
    stream: Stream,
    aad: [u8; 32],
    buffer: Vec<u8>,
    totals: StreamTotals,
}

impl<W: Write> ChunkWriter<W> {
    pub fn new(output: W, data_key: &[u8; 32], aad: [u8; 32]) -> ChunkWriter<W> {
        ChunkWriter {
            output,
            stream: stream_for(data_key),
            aad,
            buffer: Vec::with_capacity(CHUNK_SIZE + TAG_LEN),
            totals: StreamTotals {
                chunks: 0,
                bytes: 0,
            },
        }
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        let position = u32::try_from(self.totals.chunks).map_err(|_| {
            std::io::Error::other("the backup is larger than 2^32 chunks (256 TiB)")
        })?;
        let plain_len = self.buffer.len() as u32;
        self.stream
            .encrypt_in_place(position, last, &self.aad, &mut self.buffer)
            .map_err(|_| std::io::Error::other("AES-GCM encryption failed"))?;
        let prefix = if last {
            plain_len | LAST_FLAG
        } else {
            plain_len
        };
        self.output.write_all(&prefix.to_be_bytes())?;
        self.output.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    /// Seals the pending data and the end record; returns the output and the totals.
    pub fn finish(mut self) -> std::io::Result<(W, StreamTotals)> {
        if !self.buffer.is_empty() {
            self.totals.bytes += self.buffer.len() as u64;
            self.seal(false)?;
            self.totals.chunks += 1;
        }
        let totals = self.totals;
        self.buffer.extend_from_slice(END_MAGIC);
        self.buffer.extend_from_slice(&totals.chunks.to_be_bytes());
        self.buffer.extend_from_slice(&totals.bytes.to_be_bytes());
        self.seal(true)?;
        self.output.flush()?;
        Ok((self.output, totals))
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let take = data.len().min(CHUNK_SIZE - self.buffer.len());
        self.buffer.extend_from_slice(&data[..take]);
        if self.buffer.len() == CHUNK_SIZE {
            self.totals.bytes += CHUNK_SIZE as u64;
            self.seal(false)?;
            self.totals.chunks += 1;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.output.flush()
    }
}

/// Reads and authenticates records, one chunk at a time, holding at most one chunk.
pub struct ChunkReader<R: Read> {
    input: R,
    stream: Stream,
    aad: [u8; 32],
    buffer: Vec<u8>,
    position: u64,
    bytes: u64,
    /// Positions tried when a chunk fails, to tell a moved chunk from a damaged one.
    search_limit: u64,
    finished: bool,
}

impl<R: Read> ChunkReader<R> {
    /// Reads records from `input`, positioned just after the header. `payload_len` is the
    /// number of bytes after the header, when known, and bounds the search for a moved chunk.
    pub fn new(
        input: R,
        data_key: &[u8; 32],
        aad: [u8; 32],
        payload_len: Option<u64>,
    ) -> ChunkReader<R> {
        let record = (4 + CHUNK_SIZE + TAG_LEN) as u64;
        let search_limit = payload_len.map_or(1024, |len| len / record + 2);
        ChunkReader {
            input,
            stream: stream_for(data_key),
            aad,
            buffer: Vec::with_capacity(CHUNK_SIZE + TAG_LEN),
            position: 0,
            bytes: 0,
            search_limit,
            finished: false,
        }
    }

    /// Returns the next chunk's plaintext, or `None` after the end record authenticated and
    /// the file ended right after it.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>, BackupError> {
        if self.finished {
            return Ok(None);
        }
        let chunk = self.position + 1;
        let mut prefix = [0u8; 4];
        match read_full(&mut self.input, &mut prefix)? {
            0 => {
                return Err(BackupError::Truncated(format!(
                    "the file ends at a chunk boundary after chunk {} without the end record",
                    self.position
                )))
            }
            4 => {}
            got => {
                return Err(BackupError::Truncated(format!(
                    "the file ends inside the length of chunk {chunk} ({got} of 4 bytes)"
                )))
            }
        }
        let word = u32::from_be_bytes(prefix);
        let last = word & LAST_FLAG != 0;
        let plain_len = (word & !LAST_FLAG) as usize;
        if plain_len > CHUNK_SIZE {
            return Err(BackupError::ChunkAuthentication { chunk });
        }
        self.buffer.resize(plain_len + TAG_LEN, 0);
        let got = read_full(&mut self.input, &mut self.buffer)?;
        if got < self.buffer.len() {
            return Err(BackupError::Truncated(format!(
                "the file ends inside chunk {chunk}: {got} of {} bytes present",
                self.buffer.len()
            )));
        }
        let position =
            u32::try_from(self.position).map_err(|_| BackupError::ChunkAuthentication { chunk })?;
        let sealed = self.buffer.clone();
        if self
            .stream
            .decrypt_in_place(position, last, &self.aad, &mut self.buffer)
            .is_err()
        {
            return Err(self.diagnose(&sealed, last));
        }

        if last {
            self.finish_end_record(chunk)?;
            return Ok(None);
        }
        self.position += 1;
        self.bytes += plain_len as u64;
        Ok(Some(&self.buffer))
    }

    /// Tells a chunk sealed for another position (reordered) from a damaged one.
    fn diagnose(&self, sealed: &[u8], last: bool) -> BackupError {
        let chunk = self.position + 1;
        let mut trial = Vec::with_capacity(sealed.len());
        for other in 0..self.search_limit.min(u64::from(u32::MAX)) {
            if other == self.position {
                continue;
            }
            trial.clear();
            trial.extend_from_slice(sealed);
            if self
                .stream
                .decrypt_in_place(other as u32, last, &self.aad, &mut trial)
                .is_ok()
            {
                return BackupError::ChunkReordered {
                    chunk,
                    written_as: other + 1,
                };
            }
        }
        BackupError::ChunkAuthentication { chunk }
    }

    fn finish_end_record(&mut self, chunk: u64) -> Result<(), BackupError> {
        let end = &self.buffer;
        if end.len() != END_LEN || &end[..8] != END_MAGIC {
            return Err(BackupError::ChunkAuthentication { chunk });
        }
        let chunks = u64::from_be_bytes(end[8..16].try_into().expect("8 bytes"));
        let bytes = u64::from_be_bytes(end[16..24].try_into().expect("8 bytes"));
        if chunks != self.position || bytes != self.bytes {
            return Err(BackupError::Truncated(format!(
                "the end record counts {chunks} chunks and {bytes} bytes but the file has {} \
                 and {}",
                self.position, self.bytes
            )));
        }
        let mut extra = [0u8; 1];
        if read_full(&mut self.input, &mut extra)? != 0 {
            return Err(BackupError::TrailingData);
        }
        self.finished = true;
        Ok(())
    }

    /// Returns the totals; meaningful once `next_chunk` returned `None`.
    pub fn totals(&self) -> StreamTotals {
        StreamTotals {
            chunks: self.position,
            bytes: self.bytes,
        }
    }
}

/// Reads until `buffer` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> Result<usize, BackupError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(BackupError::Io(err)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [3; 32];
    const AAD: [u8; 32] = [4; 32];

    fn sealed(len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut writer = ChunkWriter::new(Vec::new(), &KEY, AAD);
        writer.write_all(&data).unwrap();
        writer.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut reader = ChunkReader::new(bytes, &KEY, AAD, Some(bytes.len() as u64));
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }

    fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            offsets.push(at);
            let word = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            at += 4 + (word & !LAST_FLAG) as usize + TAG_LEN;
        }
        offsets
    }

    #[test]
    fn round_trip_sizes() {
        for len in [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE - 7] {
            let bytes = sealed(len);

            let plain = read_all(&bytes).unwrap();

            assert_eq!(plain.len(), len);
            assert!(plain.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        }
    }

    #[test]
    fn flipped_bit_in_chunk() {
        let mut bytes = sealed(3 * CHUNK_SIZE);
        let offsets = record_offsets(&bytes);
        bytes[offsets[1] + 100] ^= 0x10;

        let err = read_all(&bytes).unwrap_err();

        assert!(
            matches!(err, BackupError::ChunkAuthentication { chunk: 2 }),
            "{err}"
        );
    }

    #[test]
    fn swapped_chunks() {
        let bytes = sealed(3 * CHUNK_SIZE);
        let offsets = record_offsets(&bytes);
        let (a, b, c) = (offsets[0], offsets[1], offsets[2]);
        let mut swapped = Vec::new();
        swapped.extend_from_slice(&bytes[b..c]);
        swapped.extend_from_slice(&bytes[a..b]);
        swapped.extend_from_slice(&bytes[c..]);

        let err = read_all(&swapped).unwrap_err();

        assert!(
            matches!(
                err,
                BackupError::ChunkReordered {
                    chunk: 1,
                    written_as: 2
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_at_boundary() {
        let bytes = sealed(3 * CHUNK_SIZE);
        let offsets = record_offsets(&bytes);

        let err = read_all(&bytes[..offsets[2]]).unwrap_err();

        assert!(
            err.to_string()
                .contains("at a chunk boundary after chunk 2 without the end record"),
            "{err}"
        );
    }

    #[test]
    fn truncated_mid_chunk() {
        let bytes = sealed(3 * CHUNK_SIZE);
        let offsets = record_offsets(&bytes);

        let err = read_all(&bytes[..offsets[1] + 1000]).unwrap_err();

        assert!(
            err.to_string().contains("inside chunk 2: 996 of 65552"),
            "{err}"
        );
    }

    #[test]
    fn dropped_end_record_and_trailing_bytes() {
        let bytes = sealed(10);
        let offsets = record_offsets(&bytes);
        let mut extended = bytes.clone();
        extended.push(0);

        let cut = read_all(&bytes[..offsets[1]]).unwrap_err();
        let trailing = read_all(&extended).unwrap_err();

        assert!(matches!(cut, BackupError::Truncated(_)), "{cut}");
        assert!(matches!(trailing, BackupError::TrailingData), "{trailing}");
    }

    #[test]
    fn other_associated_data_fails() {
        let bytes = sealed(10);
        let mut reader = ChunkReader::new(bytes.as_slice(), &KEY, [5; 32], None);

        let err = reader.next_chunk().unwrap_err();

        assert!(
            matches!(err, BackupError::ChunkAuthentication { chunk: 1 }),
            "{err}"
        );
    }
}
