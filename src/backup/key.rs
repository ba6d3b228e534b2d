//! The key-encryption key (KEK) and the per-backup data key it wraps.
//!
//! The KEK is 32 random bytes written as 64 hex digits in a file of mode 0600, kept outside
//! the database and outside the backup directory. Its id is the first 16 bytes of
//! SHA-256("ctrip-backup-key-id v1" || KEK), so a header names the key that wraps its data
//! key without revealing it. Each backup's data key is wrapped with AES-256-GCM under the
//! KEK, with the header digest and the key id as associated data, so an unwrap also
//! authenticates the header.

use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keyfile;

/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 16;
/// Length of the wrapped data key: 32 bytes of key and a 16-byte GCM tag.
pub const WRAPPED_LEN: usize = 32 + 16;
/// Length of the key envelope in the header: key id, wrap nonce, wrapped key.
pub const ENVELOPE_LEN: usize = KEY_ID_LEN + 12 + WRAPPED_LEN;

const WRAP_CONTEXT: &[u8] = b"ctrip-backup-key-wrap v1";

/// A problem with a key file.
pub type KeyError = crate::keyfile::KeyFileError;

/// A key-encryption key with its id. The key bytes are zeroed on drop.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(id={})", hex::encode(self.id))
    }
}

impl Kek {
    /// Builds a KEK from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Kek {
        let digest = Sha256::new()
            .chain_update(b"ctrip-backup-key-id v1")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Kek {
            key: Zeroizing::new(bytes),
            id,
        }
    }

    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    /// Returns the key id as 32 lowercase hex digits, as headers and messages show it.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Wraps `data_key` for a header whose digest is `header_digest`; returns the envelope.
    pub fn wrap(&self, data_key: &[u8; 32], header_digest: &[u8; 32]) -> [u8; ENVELOPE_LEN] {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let aad = self.wrap_aad(header_digest);
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.key));
        let wrapped = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: data_key,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        let mut envelope = [0u8; ENVELOPE_LEN];
        envelope[..KEY_ID_LEN].copy_from_slice(&self.id);
        envelope[KEY_ID_LEN..KEY_ID_LEN + 12].copy_from_slice(&nonce);
        envelope[KEY_ID_LEN + 12..].copy_from_slice(&wrapped);
        envelope
    }

    /// Unwraps the data key from `envelope`; `None` when the envelope or the header digest
    /// does not authenticate under this key. The caller checks the key id first.
    pub fn unwrap(
        &self,
        envelope: &[u8; ENVELOPE_LEN],
        header_digest: &[u8; 32],
    ) -> Option<Zeroizing<[u8; 32]>> {
        let aad = self.wrap_aad(header_digest);
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.key));
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&envelope[KEY_ID_LEN..KEY_ID_LEN + 12]);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &envelope[KEY_ID_LEN + 12..],
                        aad: &aad,
                    },
                )
                .ok()?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&plain);
        Some(key)
    }

    fn wrap_aad(&self, header_digest: &[u8; 32]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(WRAP_CONTEXT.len() + 32 + KEY_ID_LEN);
        aad.extend_from_slice(WRAP_CONTEXT);
        aad.extend_from_slice(header_digest);
        aad.extend_from_slice(&self.id);
        aad
    }
}

/// Returns a new random data key.
pub fn random_data_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(key.as_mut());
    key
}

const KEY_KIND: &str = "backup key";

/// Creates a new KEK file with mode 0600 and returns the key; never overwrites a file.
pub fn generate(path: &Path) -> Result<Kek, KeyError> {
    Ok(Kek::from_bytes(*keyfile::create(path, KEY_KIND)?))
}

/// Reads a KEK file, rejecting one that group or others can read.
pub fn load(path: &Path) -> Result<Kek, KeyError> {
    Ok(Kek::from_bytes(*keyfile::read(path, KEY_KIND)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip() {
        let kek = Kek::from_bytes([1; 32]);
        let data_key = [9u8; 32];
        let digest = [5u8; 32];

        let envelope = kek.wrap(&data_key, &digest);

        assert_eq!(*kek.unwrap(&envelope, &digest).unwrap(), data_key);
        assert_eq!(&envelope[..KEY_ID_LEN], &kek.id());
    }

    #[test]
    fn unwrap_fails_for_other_header_or_key() {
        let kek = Kek::from_bytes([1; 32]);
        let envelope = kek.wrap(&[9u8; 32], &[5u8; 32]);

        assert!(kek.unwrap(&envelope, &[6u8; 32]).is_none());
        assert!(Kek::from_bytes([2; 32])
            .unwrap(&envelope, &[5u8; 32])
            .is_none());
    }

    #[test]
    fn key_ids_differ_per_key() {
        assert_ne!(Kek::from_bytes([1; 32]).id(), Kek::from_bytes([2; 32]).id());
    }
}
