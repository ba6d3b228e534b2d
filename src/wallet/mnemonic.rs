//! BIP39 mnemonic parsing and seed generation for the English word list.
//!
//! Invariant: a [`Mnemonic`] always contains a phrase with a valid word count,
//! known words and a matching checksum. Neither it, its errors nor a
//! [`Seed`] ever print a word or a seed byte, and both zeroize their secret
//! bytes on drop.

use std::fmt;

use bip39::{ErrorKind, Language, Seed as Bip39Seed};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Word counts that BIP39 defines (128 to 256 bits of entropy).
pub const VALID_WORD_COUNTS: [usize; 5] = [12, 15, 18, 21, 24];

/// Length in bytes of a BIP39 seed (PBKDF2-HMAC-SHA512 output).
pub const SEED_LEN: usize = 64;

/// Entropy (hex) of every English phrase in the Trezor BIP39 test vector
/// file, `vectors.json` in trezor/python-mnemonic. Comparing entropy is the
/// same as comparing phrases because a valid phrase encodes its entropy
/// one-to-one.
const TREZOR_VECTOR_ENTROPIES: [&str; 24] = [
    "00000000000000000000000000000000",
    "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
    "80808080808080808080808080808080",
    "ffffffffffffffffffffffffffffffff",
    "000000000000000000000000000000000000000000000000",
    "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
    "808080808080808080808080808080808080808080808080",
    "ffffffffffffffffffffffffffffffffffffffffffffffff",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
    "8080808080808080808080808080808080808080808080808080808080808080",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "9e885d952ad362caeb4efe34a8e91bd2",
    "6610b25967cdcca9d59875f5cb50b0ea75433311869e930b",
    "68a79eaca2324873eacc50cb9c6eca8cc68ea5d936f98787c60c7ebc74e6ce7c",
    "c0ba5a8e914111210f2bd131f3d5e08d",
    "6d9be1ee6ebd27a258115aad99b7317b9c8d28b6d76431c3",
    "9f6a2878b2520799a44ef18bc7df394e7061a224d2c33cd015b157d746869863",
    "23db8160a31d3e0dca3688ed941adbf3",
    "8197a4a47f0425faeaa69deebc05ca29c0a5b5cc76ceacc0",
    "066dca1a2bb7e8a1db2832148ce9933eea0f3ac9548d793112d9a95c9407efad",
    "f30f8c1da665478f49b001d94c5fc452",
    "c10ec20dc3cd9f652c7fac2f1230f7a3c828389a14392f05",
    "f585c11aec520db57dd353c69554b21a89b20fb0650966fa0a9d6f74fd989d8f",
];

/// Reason a phrase is not a valid BIP39 English mnemonic. No variant
/// contains or prints a word of the phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MnemonicError {
    /// The phrase has a word count that BIP39 does not define.
    #[error("mnemonic has {count} words, but a BIP39 mnemonic has 12, 15, 18, 21 or 24 words")]
    WordCount { count: usize },
    /// The word at this 1-based position is not in the English word list.
    #[error(
        "word {position} of the mnemonic is not in the BIP39 English word list; \
         check its spelling against that list"
    )]
    UnknownWord { position: usize },
    /// Every word is known, but the checksum bits do not match the entropy.
    #[error(
        "mnemonic checksum is invalid: the last word does not match the other words, \
         so the phrase was probably mistyped"
    )]
    Checksum,
}

/// A validated BIP39 English mnemonic. Its `Debug` and `Display` output is
/// `Mnemonic(redacted)`, and the phrase and entropy are zeroized on drop.
pub struct Mnemonic {
    inner: bip39::Mnemonic,
}

/// A 64-byte BIP39 seed, zeroized on drop. Its `Debug` output is
/// `Seed(redacted)`.
pub struct Seed([u8; SEED_LEN]);

impl Mnemonic {
    /// Parses a phrase after trimming it, collapsing runs of whitespace to one
    /// space and lowercasing it, then checks the word count, each word and the
    /// checksum in that order.
    pub fn parse(phrase: &str) -> Result<Mnemonic, MnemonicError> {
        let normalized = normalize_phrase(phrase);
        let count = normalized.split_whitespace().count();
        if !VALID_WORD_COUNTS.contains(&count) {
            return Err(MnemonicError::WordCount { count });
        }
        let inner = bip39::Mnemonic::from_phrase(&normalized, Language::English)
            .map_err(|error| map_bip39_error(error, count))?;
        Ok(Mnemonic { inner })
    }

    /// Returns true for phrases published as examples, which anyone can sweep:
    /// phrases whose words are all the same except the last (such as
    /// "test test ... junk" and "abandon abandon ... about") and the English
    /// phrases of the Trezor BIP39 test vectors.
    pub fn is_well_known_test_phrase(&self) -> bool {
        self.has_repeated_prefix() || self.is_trezor_vector()
    }

    /// Derives the BIP39 seed with PBKDF2-HMAC-SHA512 (2048 rounds).
    pub fn to_seed(&self, passphrase: &str) -> Seed {
        // tiny-bip39 2.0 normalizes the salt "mnemonic" + passphrase to NFKD
        // itself, so the passphrase is passed through unchanged here.
        let seed = Bip39Seed::new(&self.inner, passphrase);
        let mut bytes = [0u8; SEED_LEN];
        bytes.copy_from_slice(seed.as_bytes());
        Seed(bytes)
    }

    fn has_repeated_prefix(&self) -> bool {
        let words: Vec<&str> = self.inner.phrase().split(' ').collect();
        match words.split_last() {
            Some((_, rest)) if !rest.is_empty() => rest.iter().all(|word| *word == rest[0]),
            _ => false,
        }
    }

    fn is_trezor_vector(&self) -> bool {
        let entropy = self.inner.entropy();
        TREZOR_VECTOR_ENTROPIES
            .iter()
            .any(|known| hex::decode(known).is_ok_and(|known| known == entropy))
    }
}

impl fmt::Debug for Mnemonic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mnemonic(redacted)")
    }
}

impl fmt::Display for Mnemonic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mnemonic(redacted)")
    }
}

impl Seed {
    /// Returns the seed bytes. Callers must not log or copy them into memory
    /// that is not zeroized.
    pub fn as_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(redacted)")
    }
}

/// Trims, collapses whitespace and lowercases into a buffer that is zeroized
/// on drop. The buffer reserves the input length, which is enough for ASCII
/// input, so no reallocated copy is left behind unzeroized for such input.
fn normalize_phrase(phrase: &str) -> Zeroizing<String> {
    let mut normalized = Zeroizing::new(String::with_capacity(phrase.len()));
    for word in phrase.split_whitespace() {
        if !normalized.is_empty() {
            normalized.push(' ');
        }
        normalized.extend(word.chars().flat_map(char::to_lowercase));
    }
    normalized
}

/// Maps a tiny-bip39 error, whose word index is 0-based, to a
/// [`MnemonicError`]. The word count was checked before, so a length error
/// from tiny-bip39 is reported with the counted words.
fn map_bip39_error(error: ErrorKind, count: usize) -> MnemonicError {
    match error {
        ErrorKind::InvalidWord(index) => MnemonicError::UnknownWord {
            position: index + 1,
        },
        ErrorKind::InvalidChecksum => MnemonicError::Checksum,
        ErrorKind::InvalidKeysize(_)
        | ErrorKind::InvalidWordLength(_)
        | ErrorKind::InvalidEntropyLength(_, _) => MnemonicError::WordCount { count },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_JUNK: &str = "test test test test test test test test test test test junk";

    /// (phrase, seed hex with passphrase "TREZOR") from the English section of
    /// trezor/python-mnemonic `vectors.json`.
    const TREZOR_VECTORS: [(&str, &str); 9] = [
        (
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
            "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
        ),
        (
            "legal winner thank year wave sausage worth useful legal winner thank yellow",
            "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
        ),
        (
            "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic",
            "274ddc525802f7c828d8ef7ddbcdc5304e87ac3535913611fbbfa986d0c9e5476c91689f9c8a54fd55bd38606aa6a8595ad213d4c9c9f9aca3fb217069a41028",
        ),
        (
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon agent",
            "035895f2f481b1b0f01fcf8c289c794660b289981a78f8106447707fdd9666ca06da5a9a565181599b79f53b844d8a71dd9f439c52a3d7b3e8a79c906ac845fa",
        ),
        (
            "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter always",
            "107d7c02a5aa6f38c58083ff74f04c607c2d2c0ecc55501dadd72d025b751bc27fe913ffb796f841c49b1d33b610cf0e91d3aa239027f5e99fe4ce9e5088cd65",
        ),
        (
            "gravity machine north sort system female filter attitude volume fold club stay feature office ecology stable narrow fog",
            "628c3827a8823298ee685db84f55caa34b5cc195a778e52d45f59bcf75aba68e4d7590e101dc414bc1bbd5737666fbbef35d1f1903953b66624f910feef245ac",
        ),
        (
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art",
            "bda85446c68413707090a52022edd26a1c9462295029f2e60cd7c4f2bbd3097170af7a4d73245cafa9c3cca8d561a7c3de6f5d4a10be8ed2a5e608d68f92fcc8",
        ),
        (
            "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo vote",
            "dd48c104698c30cfe2b6142103248622fb7bb0ff692eebb00089b32d22484e1613912f0a5b694407be899ffd31ed3992c456cdf60f5d4564b8ba3f05a69890ad",
        ),
        (
            "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel tennis maple dilemma loan word shrug inflict delay length",
            "64c87cde7e12ecf6704ab95bb1408bef047c22db4cc7491c4271d170a1b213d20b385bc1588d9c7b38f1b39d415665b8a9030c9ec653d75e65f847d8fc1fc440",
        ),
    ];

    #[test]
    fn trezor_vectors_seed() {
        for (phrase, seed_hex) in TREZOR_VECTORS {
            let mnemonic = Mnemonic::parse(phrase).expect("vector phrase parses");
            let seed = mnemonic.to_seed("TREZOR");
            assert_eq!(hex::encode(seed.as_bytes()), seed_hex, "phrase {phrase}");
        }
    }

    #[test]
    fn trezor_vectors_are_test_phrases() {
        for (phrase, _) in TREZOR_VECTORS {
            let mnemonic = Mnemonic::parse(phrase).expect("vector phrase parses");
            assert!(mnemonic.is_well_known_test_phrase(), "phrase {phrase}");
        }
    }

    #[test]
    fn parse_normalizes_whitespace_and_case() {
        let messy = "  Test\ttest TEST  test\ntest test test test test test test   JUNK ";
        let clean = Mnemonic::parse(TEST_JUNK).unwrap().to_seed("");
        let parsed = Mnemonic::parse(messy).unwrap().to_seed("");
        assert_eq!(parsed.as_bytes(), clean.as_bytes());
    }

    #[test]
    fn parse_rejects_word_count() {
        let eleven = "test test test test test test test test test test junk";
        assert_eq!(
            Mnemonic::parse(eleven).unwrap_err(),
            MnemonicError::WordCount { count: 11 }
        );
        assert_eq!(
            Mnemonic::parse("   ").unwrap_err(),
            MnemonicError::WordCount { count: 0 }
        );
        let message = MnemonicError::WordCount { count: 11 }.to_string();
        assert!(message.contains("11 words"), "{message}");
        assert!(message.contains("12, 15, 18, 21 or 24"), "{message}");
    }

    #[test]
    fn parse_rejects_unknown_word() {
        let phrase = "test test test tset test test test test test test test junk";
        let error = Mnemonic::parse(phrase).unwrap_err();
        assert_eq!(error, MnemonicError::UnknownWord { position: 4 });
        let message = error.to_string();
        assert!(message.contains("word 4"), "{message}");
        assert!(message.contains("BIP39 English word list"), "{message}");

        let last = "test test test test test test test test test test test junkk";
        let error = Mnemonic::parse(last).unwrap_err();
        assert_eq!(error, MnemonicError::UnknownWord { position: 12 });
    }

    #[test]
    fn parse_rejects_bad_checksum() {
        let phrase = "test test test test test test test test test test test test";
        let error = Mnemonic::parse(phrase).unwrap_err();
        assert_eq!(error, MnemonicError::Checksum);
        let message = error.to_string();
        assert!(message.contains("last word"), "{message}");
        assert!(message.contains("mistyped"), "{message}");
    }

    #[test]
    fn output_never_contains_words() {
        let valid = "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic";
        let typo = "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnix";
        let checksum =
            "ozone drill grab fiber curtain grace pudding thank cruise elder eight ozone";
        let short = "ozone drill grab fiber curtain grace pudding";
        let mnemonic = Mnemonic::parse(valid).unwrap();
        let mut outputs = vec![
            format!("{mnemonic}"),
            format!("{mnemonic:?}"),
            format!("{:?}", mnemonic.to_seed("")),
        ];
        for phrase in [typo, checksum, short] {
            let error = Mnemonic::parse(phrase).unwrap_err();
            outputs.push(format!("{error}"));
            outputs.push(format!("{error:?}"));
        }
        assert_eq!(outputs[0], "Mnemonic(redacted)");
        assert_eq!(outputs[1], "Mnemonic(redacted)");
        assert_eq!(outputs[2], "Seed(redacted)");
        for output in &outputs {
            for word in valid.split(' ').chain(["picnix"]) {
                assert!(!output.contains(word), "{output:?} contains {word:?}");
            }
        }
    }

    #[test]
    fn repeated_prefix_is_test_phrase() {
        let phrases = [
            TEST_JUNK,
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
            "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo when",
        ];
        for phrase in phrases {
            let mnemonic = Mnemonic::parse(phrase).unwrap();
            assert!(mnemonic.is_well_known_test_phrase(), "phrase {phrase}");
        }
    }

    #[test]
    fn other_phrase_is_not_test_phrase() {
        // Generated for this test from fixed entropy; it is in no published list.
        let entropy = [0x5a_u8; 16];
        let generated = bip39::Mnemonic::from_entropy(&entropy, Language::English).unwrap();
        let mnemonic = Mnemonic::parse(generated.phrase()).unwrap();
        assert!(!mnemonic.is_well_known_test_phrase());

        let entropy: Vec<u8> = (0u8..32).map(|byte| byte.wrapping_mul(37)).collect();
        let generated = bip39::Mnemonic::from_entropy(&entropy, Language::English).unwrap();
        let mnemonic = Mnemonic::parse(generated.phrase()).unwrap();
        assert!(!mnemonic.is_well_known_test_phrase());
    }

    #[test]
    fn passphrase_nfkd_composed_equals_decomposed() {
        let mnemonic = Mnemonic::parse(TEST_JUNK).unwrap();
        let composed = mnemonic.to_seed("caf\u{e9} \u{212b}ngstr\u{f6}m");
        let decomposed = mnemonic.to_seed("cafe\u{301} A\u{30a}ngstro\u{308}m");
        assert_eq!(composed.as_bytes(), decomposed.as_bytes());
        let plain = mnemonic.to_seed("cafe Angstrom");
        assert_ne!(composed.as_bytes(), plain.as_bytes());
    }
}
