//! HD deposit addresses for every supported chain family, derived from one
//! BIP39 seed.
//!
//! [`Wallet::from_seed`] prepares one account-level node per family at
//! start-up, and [`Wallet::derive`] turns an index into an address:
//! EVM uses BIP44 `m/44'/60'/0'/0/{index}` (secp256k1, EIP-55 address) and
//! Solana uses SLIP-0010 ed25519 `m/44'/501'/{index}'/0'` (base58 address).
//! Invariant: the same seed, family and index always give the same address,
//! and indexes above [`MAX_INDEX`] are rejected rather than wrapped.

mod evm;
pub mod mnemonic;
mod solana;

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use evm::EvmAccount;
pub use mnemonic::{Mnemonic, MnemonicError, Seed};
use solana::SolanaAccount;

/// Highest derivation index, the largest non-hardened BIP32 child number.
pub const MAX_INDEX: u32 = 0x7fff_ffff;

/// Chain family, which fixes the derivation path and the address format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Ethereum and other EVM chains.
    Evm,
    /// Solana.
    Solana,
}

impl Family {
    /// Every family, in a fixed order.
    pub const ALL: [Family; 2] = [Family::Evm, Family::Solana];

    /// Returns the lowercase name that [`FromStr`] accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Evm => "evm",
            Family::Solana => "solana",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no [`Family`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown chain family {value:?}; valid families are: evm, solana")]
pub struct ParseFamilyError {
    /// The rejected input.
    pub value: String,
}

impl FromStr for Family {
    type Err = ParseFamilyError;

    /// Parses "evm" or "solana", ignoring ASCII case.
    fn from_str(value: &str) -> Result<Family, ParseFamilyError> {
        Family::ALL
            .into_iter()
            .find(|family| family.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| ParseFamilyError {
                value: value.to_owned(),
            })
    }
}

/// A derived deposit address and the full derivation path that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DerivedAddress {
    /// Derivation path, such as `m/44'/60'/0'/0/5`.
    pub path: String,
    /// Address in the family's usual text form.
    pub address: String,
}

/// Reason a wallet could not be prepared or an address could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeriveError {
    /// The index is above [`MAX_INDEX`].
    #[error("derivation index {index} is out of range; the maximum is {MAX_INDEX}")]
    IndexOutOfRange { index: u32 },
    /// BIP32 derivation failed. For a valid index this means the derived key
    /// was invalid, which BIP32 puts below a 2^-127 chance, and the caller
    /// should skip to the next index.
    #[error("BIP32 derivation of {path} failed: {source}")]
    Bip32 {
        path: String,
        #[source]
        source: bip32::Error,
    },
}

/// Account-level keys for every family, prepared once from the seed. It
/// contains the EVM account extended public key and the Solana `m/44'/501'`
/// private node, so its `Debug` output is `Wallet(redacted)`.
#[derive(Clone)]
pub struct Wallet {
    evm: EvmAccount,
    solana: SolanaAccount,
}

impl Wallet {
    /// Prepares the EVM `m/44'/60'/0'/0` extended public key and the Solana
    /// `m/44'/501'` node from a BIP39 seed.
    pub fn from_seed(seed: &Seed) -> Result<Wallet, DeriveError> {
        let bytes = seed.as_bytes();
        let evm = EvmAccount::from_seed(bytes).map_err(|source| DeriveError::Bip32 {
            path: evm::ACCOUNT_PATH.to_owned(),
            source,
        })?;
        let solana = SolanaAccount::from_seed(bytes);
        Ok(Wallet { evm, solana })
    }

    /// Returns a fingerprint of the seed: 32 hex digits of SHA-256 over the index-0 address of
    /// each family. Addresses are public, so the fingerprint reveals nothing about the keys.
    pub fn fingerprint(&self) -> Result<String, DeriveError> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"ctrip-seed-fingerprint-v1");
        for family in Family::ALL {
            hasher.update(b"\n");
            hasher.update(self.derive(family, 0)?.address.as_bytes());
        }
        Ok(hex::encode(&hasher.finalize()[..16]))
    }

    /// Derives the deposit address of `family` at `index`.
    pub fn derive(&self, family: Family, index: u32) -> Result<DerivedAddress, DeriveError> {
        if index > MAX_INDEX {
            return Err(DeriveError::IndexOutOfRange { index });
        }
        match family {
            Family::Evm => self.derive_evm(index),
            Family::Solana => Ok(self.derive_solana(index)),
        }
    }

    fn derive_evm(&self, index: u32) -> Result<DerivedAddress, DeriveError> {
        let path = format!("{}/{index}", evm::ACCOUNT_PATH);
        match self.evm.address(index) {
            Ok(address) => Ok(DerivedAddress { path, address }),
            Err(source) => Err(DeriveError::Bip32 { path, source }),
        }
    }

    fn derive_solana(&self, index: u32) -> DerivedAddress {
        DerivedAddress {
            path: format!("{}/{index}'/0'", solana::PURPOSE_COIN_PATH),
            address: self.solana.address(index),
        }
    }
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Wallet(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_JUNK: &str = "test test test test test test test test test test test junk";

    fn test_junk_wallet() -> Wallet {
        let seed = Mnemonic::parse(TEST_JUNK).unwrap().to_seed("");
        Wallet::from_seed(&seed).unwrap()
    }

    #[test]
    fn evm_test_junk_addresses() {
        let wallet = test_junk_wallet();
        let expected = [
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        ];
        for (index, address) in (0u32..).zip(expected) {
            let derived = wallet.derive(Family::Evm, index).unwrap();
            assert_eq!(derived.address, address, "index {index}");
            assert_eq!(derived.path, format!("m/44'/60'/0'/0/{index}"));
        }
    }

    #[test]
    fn evm_path_format() {
        let derived = test_junk_wallet().derive(Family::Evm, 5).unwrap();
        assert_eq!(derived.path, "m/44'/60'/0'/0/5");
    }

    #[test]
    fn solana_test_junk_address() {
        let derived = test_junk_wallet().derive(Family::Solana, 0).unwrap();
        assert_eq!(
            derived.address,
            "oeYf6KAJkLYhBuR8CiGc6L4D4Xtfepr85fuDgA9kq96"
        );
        assert_eq!(derived.path, "m/44'/501'/0'/0'");
    }

    #[test]
    fn solana_path_format() {
        let derived = test_junk_wallet().derive(Family::Solana, 5).unwrap();
        assert_eq!(derived.path, "m/44'/501'/5'/0'");
    }

    #[test]
    fn derive_rejects_index_above_max() {
        let wallet = test_junk_wallet();
        for family in Family::ALL {
            for index in [MAX_INDEX + 1, u32::MAX] {
                let error = wallet.derive(family, index).unwrap_err();
                assert_eq!(error, DeriveError::IndexOutOfRange { index });
            }
        }
        let message = DeriveError::IndexOutOfRange {
            index: MAX_INDEX + 1,
        }
        .to_string();
        assert!(message.contains("2147483648"), "{message}");
        assert!(message.contains("2147483647"), "{message}");
    }

    #[test]
    fn derive_accepts_max_index() {
        let wallet = test_junk_wallet();
        let evm = wallet.derive(Family::Evm, MAX_INDEX).unwrap();
        assert_eq!(evm.path, "m/44'/60'/0'/0/2147483647");
        let solana = wallet.derive(Family::Solana, MAX_INDEX).unwrap();
        assert_eq!(solana.path, "m/44'/501'/2147483647'/0'");
    }

    #[test]
    fn family_parse_and_display() {
        for family in Family::ALL {
            assert_eq!(family.as_str().parse::<Family>(), Ok(family));
            assert_eq!(family.to_string(), family.as_str());
        }
        assert_eq!("EVM".parse::<Family>(), Ok(Family::Evm));
        let error = "bitcoin".parse::<Family>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("\"bitcoin\""), "{message}");
        assert!(message.contains("evm, solana"), "{message}");
    }

    #[test]
    fn wallet_debug_redacted() {
        assert_eq!(format!("{:?}", test_junk_wallet()), "Wallet(redacted)");
    }

    #[test]
    fn wallet_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Wallet>();
    }
}
