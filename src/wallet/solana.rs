//! Solana deposit addresses on the SLIP-0010 ed25519 path
//! `m/44'/501'/{index}'/0'`.
//!
//! SLIP-0010 ed25519 supports only hardened private derivation: the master
//! node is HMAC-SHA512 keyed with "ed25519 seed" over the seed, and a child is
//! HMAC-SHA512 keyed with the parent chain code over
//! `0x00 || parent key || ser32(index + 2^31)`, whose left half is the child
//! key and right half the child chain code.
//!
//! Invariant: [`SolanaAccount`] contains the `m/44'/501'` node, prepared once
//! from the seed, so an address costs two hardened steps. Every private key
//! and chain code lives in a [`Zeroizing`] buffer and is never printed.

use ed25519_dalek::SigningKey;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha512;
use zeroize::Zeroizing;

/// SLIP-0010 path of the node that [`SolanaAccount`] keeps.
pub(super) const PURPOSE_COIN_PATH: &str = "m/44'/501'";

/// Flag that marks a child index as hardened.
const HARDENED: u32 = 0x8000_0000;

/// HMAC key for the SLIP-0010 ed25519 master node.
const MASTER_HMAC_KEY: &[u8] = b"ed25519 seed";

/// A SLIP-0010 ed25519 node: a 32-byte private key and a 32-byte chain code.
#[derive(Clone)]
pub(super) struct Node {
    key: Zeroizing<[u8; 32]>,
    chain_code: Zeroizing<[u8; 32]>,
}

impl Node {
    /// Derives the master node from a seed of any length.
    pub(super) fn master(seed: &[u8]) -> Node {
        hmac_sha512_node(MASTER_HMAC_KEY, &[seed])
    }

    /// Derives hardened child `index`.
    ///
    /// # Panics
    /// Panics if `index` is 2^31 or more, because setting the hardened flag
    /// would then derive a different child than requested.
    pub(super) fn derive_hardened(&self, index: u32) -> Node {
        assert!(index < HARDENED, "child index {index} is not below 2^31");
        let child_number = (index | HARDENED).to_be_bytes();
        hmac_sha512_node(
            self.chain_code.as_slice(),
            &[&[0u8], self.key.as_slice(), &child_number],
        )
    }

    /// Computes the ed25519 public key of this node.
    pub(super) fn public_key(&self) -> [u8; 32] {
        SigningKey::from_bytes(&self.key).verifying_key().to_bytes()
    }
}

/// Splits HMAC-SHA512(key, data parts) into a node.
fn hmac_sha512_node(key: &[u8], data: &[&[u8]]) -> Node {
    let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in data {
        mac.update(part);
    }
    let output: Zeroizing<[u8; 64]> = Zeroizing::new(mac.finalize().into_bytes().into());
    let mut node = Node {
        key: Zeroizing::new([0u8; 32]),
        chain_code: Zeroizing::new([0u8; 32]),
    };
    node.key.copy_from_slice(&output[..32]);
    node.chain_code.copy_from_slice(&output[32..]);
    node
}

/// The `m/44'/501'` node, from which each address is derived.
#[derive(Clone)]
pub(super) struct SolanaAccount {
    purpose_coin: Node,
}

impl SolanaAccount {
    /// Derives `m/44'/501'` from a BIP39 seed.
    pub(super) fn from_seed(seed: &[u8]) -> SolanaAccount {
        let purpose_coin = Node::master(seed).derive_hardened(44).derive_hardened(501);
        SolanaAccount { purpose_coin }
    }

    /// Derives the base58 address of `m/44'/501'/{index}'/0'`.
    ///
    /// # Panics
    /// Panics if `index` is 2^31 or more.
    pub(super) fn address(&self, index: u32) -> String {
        let node = self.purpose_coin.derive_hardened(index).derive_hardened(0);
        bs58::encode(node.public_key()).into_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of SLIP-0010 "Test vector 1 for ed25519".
    struct VectorNode {
        path: &'static str,
        chain_code: &'static str,
        private: &'static str,
        public: &'static str,
    }

    /// SLIP-0010 test vector 1 for ed25519 (seed 000102030405060708090a0b0c0d0e0f),
    /// from slip-0010.md in satoshilabs/slips. Each row after m is the previous
    /// row's hardened child 0', 1', 2', 2', 1000000000'. Public keys carry the
    /// 00 prefix that the specification prints.
    const VECTOR_1: [VectorNode; 6] = [
        VectorNode {
            path: "m",
            chain_code: "90046a93de5380a72b5e45010748567d5ea02bbf6522f979e05c0d8d8ca9fffb",
            private: "2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7",
            public: "00a4b2856bfec510abab89753fac1ac0e1112364e7d250545963f135f2a33188ed",
        },
        VectorNode {
            path: "m/0'",
            chain_code: "8b59aa11380b624e81507a27fedda59fea6d0b779a778918a2fd3590e16e9c69",
            private: "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3",
            public: "008c8a13df77a28f3445213a0f432fde644acaa215fc72dcdf300d5efaa85d350c",
        },
        VectorNode {
            path: "m/0'/1'",
            chain_code: "a320425f77d1b5c2505a6b1b27382b37368ee640e3557c315416801243552f14",
            private: "b1d0bad404bf35da785a64ca1ac54b2617211d2777696fbffaf208f746ae84f2",
            public: "001932a5270f335bed617d5b935c80aedb1a35bd9fc1e31acafd5372c30f5c1187",
        },
        VectorNode {
            path: "m/0'/1'/2'",
            chain_code: "2e69929e00b5ab250f49c3fb1c12f252de4fed2c1db88387094a0f8c4c9ccd6c",
            private: "92a5b23c0b8a99e37d07df3fb9966917f5d06e02ddbd909c7e184371463e9fc9",
            public: "00ae98736566d30ed0e9d2f4486a64bc95740d89c7db33f52121f8ea8f76ff0fc1",
        },
        VectorNode {
            path: "m/0'/1'/2'/2'",
            chain_code: "8f6d87f93d750e0efccda017d662a1b31a266e4a6f5993b15f5c1f07f74dd5cc",
            private: "30d1dc7e5fc04c31219ab25a27ae00b50f6fd66622f6e9c913253d6511d1e662",
            public: "008abae2d66361c879b900d204ad2cc4984fa2aa344dd7ddc46007329ac76c429c",
        },
        VectorNode {
            path: "m/0'/1'/2'/2'/1000000000'",
            chain_code: "68789923a0cac2cd5a29172a475fe9e0fb14cd6adb5ad98a3fa70333e7afa230",
            private: "8f94d394a8e8fd6b1bc2f3f49f5c47e385281d5c17e65324b0f62483e37e8793",
            public: "003c24da049451555d51a7014a37337aa4e12d41e485abccfa46b47dfb2af54b7a",
        },
    ];

    #[test]
    fn slip10_ed25519_vector_1() {
        let seed = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let children = [0, 1, 2, 2, 1_000_000_000];
        let mut node = Node::master(&seed);
        for (row, expected) in VECTOR_1.iter().enumerate() {
            if row > 0 {
                node = node.derive_hardened(children[row - 1]);
            }
            let path = expected.path;
            let public = format!("00{}", hex::encode(node.public_key()));
            assert_eq!(
                hex::encode(*node.chain_code),
                expected.chain_code,
                "chain code {path}"
            );
            assert_eq!(
                hex::encode(*node.key),
                expected.private,
                "private key {path}"
            );
            assert_eq!(public, expected.public, "public key {path}");
        }
    }

    #[test]
    fn account_matches_full_path() {
        let seed = [3u8; 64];
        let account = SolanaAccount::from_seed(&seed);
        for index in [0, 1, 7, 0x7fff_ffff] {
            let node = [44, 501, index, 0]
                .into_iter()
                .fold(Node::master(&seed), |node, child| {
                    node.derive_hardened(child)
                });
            let expected = bs58::encode(node.public_key()).into_string();
            assert_eq!(account.address(index), expected, "index {index}");
        }
    }
}
