//! The chains and tokens this deployment accepts, from `config.toml`.
//!
//! The registry is read once at start-up and shared read-only by request handlers. [`sync`]
//! writes it into `ctrip.chains` and `ctrip.tokens` (as the schema owner), so the database's
//! foreign keys reject a payment on a chain or token that is not configured. Entries removed
//! from the config are disabled, never deleted, because old payments still refer to them.

use postgres::GenericClient;

use crate::config::ChainConfig;
use crate::wallet::Family;

/// A token accepted on one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub symbol: String,
    pub address: String,
    pub decimals: u8,
}

/// A configured chain with its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub family: Family,
    pub symbol: String,
    pub decimals: u8,
    pub tokens: Vec<Token>,
}

impl Chain {
    pub fn token(&self, symbol: &str) -> Option<&Token> {
        self.tokens.iter().find(|token| token.symbol == symbol)
    }

    pub fn token_symbols(&self) -> Vec<&str> {
        self.tokens
            .iter()
            .map(|token| token.symbol.as_str())
            .collect()
    }
}

/// All configured chains, in config order.
#[derive(Debug, Clone, Default)]
pub struct ChainRegistry {
    chains: Vec<Chain>,
}

impl ChainRegistry {
    pub fn from_config(chains: &[ChainConfig]) -> ChainRegistry {
        let chains = chains
            .iter()
            .map(|chain| Chain {
                name: chain.name.clone(),
                family: chain.family,
                symbol: chain.symbol.clone(),
                decimals: chain.decimals,
                tokens: chain
                    .tokens
                    .iter()
                    .map(|token| Token {
                        symbol: token.symbol.clone(),
                        address: token.address.clone(),
                        decimals: token.decimals,
                    })
                    .collect(),
            })
            .collect();
        ChainRegistry { chains }
    }

    pub fn get(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|chain| chain.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.chains
            .iter()
            .map(|chain| chain.name.as_str())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Chain> {
        self.chains.iter()
    }

    /// Returns a summary such as `ethereum(evm: ETH, USDC), solana(solana: SOL)` for logs.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .chains
            .iter()
            .map(|chain| {
                let mut assets = vec![chain.symbol.as_str()];
                assets.extend(chain.token_symbols());
                format!("{}({}: {})", chain.name, chain.family, assets.join(", "))
            })
            .collect();
        parts.join(", ")
    }
}

/// Writes the registry into the database in one transaction, disabling chains and tokens
/// that are no longer configured.
///
/// Fails when a configured chain changes family, because existing addresses would no longer
/// match their chain.
pub fn sync(client: &mut impl GenericClient, registry: &ChainRegistry) -> Result<(), SyncError> {
    let mut transaction = client.transaction()?;
    transaction.execute(
        "UPDATE ctrip.chains SET enabled = false, updated_at = now()",
        &[],
    )?;
    transaction.execute(
        "UPDATE ctrip.tokens SET enabled = false, updated_at = now()",
        &[],
    )?;
    for chain in registry.iter() {
        let written = transaction.execute(
            "INSERT INTO ctrip.chains (name, family, symbol, decimals)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE
             SET symbol = EXCLUDED.symbol, decimals = EXCLUDED.decimals, enabled = true,
                 updated_at = now()
             WHERE ctrip.chains.family = EXCLUDED.family",
            &[
                &chain.name,
                &chain.family.as_str(),
                &chain.symbol,
                &i16::from(chain.decimals),
            ],
        )?;
        if written == 0 {
            return Err(SyncError::FamilyChanged {
                chain: chain.name.clone(),
                family: chain.family,
            });
        }
        for token in &chain.tokens {
            transaction.execute(
                "INSERT INTO ctrip.tokens (chain, symbol, address, decimals)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (chain, symbol) DO UPDATE
                 SET address = EXCLUDED.address, decimals = EXCLUDED.decimals, enabled = true,
                     updated_at = now()",
                &[
                    &chain.name,
                    &token.symbol,
                    &token.address,
                    &i16::from(token.decimals),
                ],
            )?;
        }
    }
    Ok(transaction.commit()?)
}

/// A failure to write the configured chains to the database.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "chain {chain:?} is configured with family {family}, but the database has it under \
         another family: restore the family in config.toml, or add the chain under a new name"
    )]
    FamilyChanged { chain: String, family: Family },
    #[error("cannot write chains and tokens: {0}")]
    Database(#[from] postgres::Error),
}
