//! EVM deposit addresses on the BIP44 path `m/44'/60'/0'/0/{index}`.
//!
//! Invariant: [`EvmAccount`] contains only the extended public key of
//! `m/44'/60'/0'/0`, prepared once from the seed, so deriving an address is a
//! single non-hardened public derivation (CKDpub) and no private key is kept.

use bip32::{ChildNumber, PublicKey, XPrv, XPub};
use k256::ecdsa::VerifyingKey;
use k256::{NonZeroScalar, ProjectivePoint};
use sha3::{Digest, Keccak256};

/// BIP44 path of the external chain of account 0 for coin type 60 (Ether).
pub(super) const ACCOUNT_PATH: &str = "m/44'/60'/0'/0";

/// Extended public key of [`ACCOUNT_PATH`].
#[derive(Clone)]
pub(super) struct EvmAccount {
    xpub: XPub,
    /// The account public key as a curve point, decoded once for all child derivations.
    point: ProjectivePoint,
}

impl EvmAccount {
    /// Derives `m/44'/60'/0'/0` from a BIP39 seed with private derivation.
    /// The intermediate private scalars are zeroized when dropped, by the
    /// `Drop` of ecdsa 0.17's `SigningKey`, before this returns.
    // NOTE: bip32 0.6 does not zeroize the intermediate chain codes.
    pub(super) fn from_seed(seed: &[u8]) -> Result<EvmAccount, bip32::Error> {
        let steps = [
            ChildNumber::new(44, true)?,
            ChildNumber::new(60, true)?,
            ChildNumber::new(0, true)?,
            ChildNumber::new(0, false)?,
        ];
        let mut key = XPrv::new(seed)?;
        for step in steps {
            key = key.derive_child(step)?;
        }
        let xpub = key.public_key();
        let point = ProjectivePoint::from(*xpub.public_key().as_affine());
        Ok(EvmAccount { xpub, point })
    }

    /// Derives the public key of child `index` of the account key. Fails for
    /// an index of 2^31 or more, and with probability below 2^-127 when the
    /// child key is invalid.
    ///
    /// This is CKDpub as in `XPub::derive_child`, with the tweak from the bip32 crate. It
    /// multiplies the generator through k256's precomputed tables and skips the parent
    /// fingerprint, which only an extended child key needs. That takes about 25 µs per
    /// address instead of 48 µs.
    pub(super) fn child_public_key(&self, index: u32) -> Result<VerifyingKey, bip32::Error> {
        let child_number = ChildNumber::new(index, false)?;
        let (tweak, _) = self
            .xpub
            .public_key()
            .derive_tweak(&self.xpub.attrs().chain_code, child_number)?;
        let tweak = Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(tweak.into()))
            .ok_or(bip32::Error::Crypto)?;
        let child = self.point + ProjectivePoint::mul_by_generator(&tweak);
        VerifyingKey::from_affine(child.to_affine()).map_err(|_| bip32::Error::Crypto)
    }

    /// Derives the EIP-55 address of child `index`.
    pub(super) fn address(&self, index: u32) -> Result<String, bip32::Error> {
        Ok(address_of(&self.child_public_key(index)?))
    }
}

/// Builds the EIP-55 address of a secp256k1 public key: the last 20 bytes of
/// Keccak-256 over the 64-byte uncompressed point without its 0x04 prefix.
pub(super) fn address_of(key: &VerifyingKey) -> String {
    let point = key.to_sec1_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    to_checksum_address(&hash[12..])
}

/// Encodes a 20-byte address in EIP-55 mixed case: a hex letter is uppercase
/// when the matching nibble of Keccak-256 over the lowercase hex is 8 or more.
fn to_checksum_address(address: &[u8]) -> String {
    let lower = hex::encode(address);
    let hash = Keccak256::digest(lower.as_bytes());
    let mut checksummed = String::with_capacity(2 + lower.len());
    checksummed.push_str("0x");
    for (i, digit) in lower.chars().enumerate() {
        let byte = hash[i / 2];
        let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
        checksummed.push(if nibble >= 8 {
            digit.to_ascii_uppercase()
        } else {
            digit
        });
    }
    checksummed
}

#[cfg(test)]
mod tests {
    use super::*;
    use bip32::Prefix;

    const BIP32_VECTOR_1_SEED: &str = "000102030405060708090a0b0c0d0e0f";

    /// (child number, xpub, xprv) for chain m/0'/1/2'/2/1000000000 of BIP32
    /// test vector 1, from bip-0032.mediawiki in bitcoin/bips. The first row
    /// is the master key m, whose child number is not used.
    const BIP32_VECTOR_1: [(u32, &str, &str); 6] = [
        (
            0,
            "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8",
            "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi",
        ),
        (
            0x8000_0000,
            "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw",
            "xprv9uHRZZhk6KAJC1avXpDAp4MDc3sQKNxDiPvvkX8Br5ngLNv1TxvUxt4cV1rGL5hj6KCesnDYUhd7oWgT11eZG7XnxHrnYeSvkzY7d2bhkJ7",
        ),
        (
            1,
            "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ",
            "xprv9wTYmMFdV23N2TdNG573QoEsfRrWKQgWeibmLntzniatZvR9BmLnvSxqu53Kw1UmYPxLgboyZQaXwTCg8MSY3H2EU4pWcQDnRnrVA1xe8fs",
        ),
        (
            0x8000_0002,
            "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5",
            "xprv9z4pot5VBttmtdRTWfWQmoH1taj2axGVzFqSb8C9xaxKymcFzXBDptWmT7FwuEzG3ryjH4ktypQSAewRiNMjANTtpgP4mLTj34bhnZX7UiM",
        ),
        (
            2,
            "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
            "xprvA2JDeKCSNNZky6uBCviVfJSKyQ1mDYahRjijr5idH2WwLsEd4Hsb2Tyh8RfQMuPh7f7RtyzTtdrbdqqsunu5Mm3wDvUAKRHSC34sJ7in334",
        ),
        (
            1_000_000_000,
            "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy",
            "xprvA41z7zogVVwxVSgdKUHDy1SKmdb533PjDz7J6N6mV6uS3ze1ai8FHa8kmHScGpWmj4WggLyQjgPie1rFSruoUihUZREPSL39UNdE3BBDu76",
        ),
    ];

    #[test]
    fn bip32_vector_1_chain() {
        let seed = hex::decode(BIP32_VECTOR_1_SEED).unwrap();
        let mut key = XPrv::new(&seed).unwrap();
        for (row, (child, xpub, xprv)) in BIP32_VECTOR_1.iter().enumerate() {
            if row > 0 {
                key = key.derive_child(ChildNumber(*child)).unwrap();
            }
            let public = key.public_key().to_extended_key(Prefix::XPUB);
            let private = key.to_extended_key(Prefix::XPRV);
            assert_eq!(public.to_string(), *xpub, "xpub at row {row}");
            assert_eq!(private.to_string(), *xprv, "xprv at row {row}");
        }
    }

    #[test]
    fn bip32_vector_1_public_derivation() {
        // m/0'/1/2'/2 and m/0'/1/2'/2/1000000000 are non-hardened steps, so
        // CKDpub from the parent xpub must match the vector's xpub.
        let parent: XPub = BIP32_VECTOR_1[3].1.parse().unwrap();
        let child = parent.derive_child(ChildNumber(2)).unwrap();
        assert_eq!(
            child.to_extended_key(Prefix::XPUB).to_string(),
            BIP32_VECTOR_1[4].1
        );
        let grandchild = child.derive_child(ChildNumber(1_000_000_000)).unwrap();
        assert_eq!(
            grandchild.to_extended_key(Prefix::XPUB).to_string(),
            BIP32_VECTOR_1[5].1
        );
    }

    #[test]
    fn public_derivation_matches_private() {
        let seed = [7u8; 64];
        let account = EvmAccount::from_seed(&seed).unwrap();
        let account_prv = [44 | 0x8000_0000, 60 | 0x8000_0000, 0x8000_0000, 0]
            .into_iter()
            .fold(XPrv::new(&seed).unwrap(), |key, child| {
                key.derive_child(ChildNumber(child)).unwrap()
            });
        for index in [0, 1, 2, 1000, 0x7fff_ffff] {
            let full = account_prv.derive_child(ChildNumber(index)).unwrap();
            let expected = *full.public_key().public_key();
            assert_eq!(
                account.child_public_key(index).unwrap(),
                expected,
                "index {index}"
            );
        }
    }

    #[test]
    fn hardened_index_rejected() {
        let account = EvmAccount::from_seed(&[7u8; 64]).unwrap();
        assert_eq!(
            account.child_public_key(0x8000_0000).unwrap_err(),
            bip32::Error::ChildNumber
        );
    }

    #[test]
    fn eip55_spec_examples() {
        // Examples from the EIP-55 specification.
        let examples = [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ];
        for example in examples {
            let bytes = hex::decode(&example[2..]).unwrap();
            assert_eq!(to_checksum_address(&bytes), example);
        }
    }
}
