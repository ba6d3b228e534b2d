//! The `ctrip` command line: argument parsing and wiring only. Each subcommand loads the
//! config, sets up logging and calls into the library; any error ends the process with one
//! line on stderr and exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ctrip::config::Config;
use ctrip::{cli, logging, serve};

#[derive(Parser)]
#[command(name = "ctrip", version, about = "Self-hosted crypto payment gateway")]
struct Cli {
    /// Path of the configuration file.
    #[arg(
        long,
        global = true,
        env = "CTRIP_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check secrets, apply migrations, then serve the HTTP API until SIGTERM.
    Serve,
    /// Apply pending migrations, or show applied, pending and drifted ones.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Create and list merchants, the owners of payments and API keys.
    #[command(subcommand)]
    Merchant(MerchantAction),
    /// Create, list and revoke API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyAction),
    /// Verify, read and checkpoint the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditAction),
    /// Check the deployment's security posture; exit 1 when a critical check fails.
    Doctor {
        /// Print the checks as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create, verify, restore, prune and rekey encrypted backups.
    #[command(subcommand)]
    Backup(cli::BackupAction),
    /// Erase personal data and prune audit events past their retention periods.
    #[command(subcommand)]
    Retention(cli::RetentionAction),
    /// Erase the personal fields (reference, metadata) of payments.
    Erase(cli::EraseArgs),
}

#[derive(Subcommand)]
enum MigrateAction {
    /// List every migration with its state, without changing anything.
    Status,
}

#[derive(Subcommand)]
enum MerchantAction {
    /// Create a merchant and print its id.
    Create {
        /// The merchant's name, unique across merchants.
        name: String,
    },
    /// List merchants with their ids.
    List,
}

#[derive(Subcommand)]
enum ApiKeyAction {
    /// Create a key and print it once; only its hash is kept.
    Create {
        /// A label for the key, such as the shop or service that uses it.
        #[arg(long)]
        name: String,
        /// Merchant id the key acts for; optional while there is at most one merchant.
        #[arg(long)]
        merchant: Option<String>,
        /// Comma-separated scopes: payments:read, payments:write, payments:erase.
        #[arg(long, default_value = "payments:read,payments:write")]
        scopes: String,
    },
    /// List keys with merchant, prefix, scopes, creation, last use and revocation times.
    List,
    /// Revoke a key by id; requests with it get 401 from then on.
    Revoke {
        /// The key's id, as shown by `ctrip api-key list`.
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Recompute the hash chain (and checkpoint signatures); exit 1 on any problem.
    Verify {
        /// Checkpoint file to check the log against, which detects a cut tail (default:
        /// audit.checkpoint_file, when it exists).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// Audit key that signed the checkpoints (default: audit.key_file).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print recent events, oldest first. The read is itself audited.
    Tail {
        /// RFC 3339 time, or a duration back from now such as 30m, 12h, 7d (default 24h).
        #[arg(long)]
        since: Option<String>,
        /// Newest events to print at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Sign the newest row's id and hash and append them to audit.checkpoint_file.
    Checkpoint,
    /// Create a new ed25519 audit key file (mode 0600); never overwrites one.
    Keygen {
        /// Path of the new key file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line on stderr, which journald also keeps under systemd.
            eprintln!("error: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Joins the error's causes into one line, skipping a cause its wrapper already quotes.
fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for part in err.chain().map(ToString::to_string) {
        if line.contains(&part) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&part);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Audit(AuditAction::Keygen { out }) = &cli.command {
        return cli::audit_keygen(out);
    }
    if let Command::Backup(cli::BackupAction::Keygen { out }) = &cli.command {
        return cli::backup_keygen(out);
    }
    let config = Config::load(&cli.config)?;
    // Commands other than serve print their results; their log shows only problems.
    let serving = matches!(cli.command, Command::Serve);
    let level = if serving {
        config.log.level.as_str()
    } else {
        "warn"
    };
    logging::init(level, config.log.file.as_deref()).map_err(anyhow::Error::msg)?;

    // Commands that write audit rows chain them before exiting.
    let chains_after = matches!(
        cli.command,
        Command::Migrate { action: None }
            | Command::Merchant(MerchantAction::Create { .. })
            | Command::ApiKey(ApiKeyAction::Create { .. } | ApiKeyAction::Revoke { .. })
            | Command::Audit(AuditAction::Tail { .. })
            | Command::Backup(_)
            | Command::Retention(_)
            | Command::Erase(_)
    );
    let result = match cli.command {
        Command::Serve => serve::run(&config),
        Command::Migrate { action: None } => cli::migrate_apply(&config),
        Command::Migrate {
            action: Some(MigrateAction::Status),
        } => cli::migrate_status(&config),
        Command::Merchant(MerchantAction::Create { name }) => cli::merchant_create(&config, &name),
        Command::Merchant(MerchantAction::List) => cli::merchant_list(&config),
        Command::ApiKey(ApiKeyAction::Create {
            name,
            merchant,
            scopes,
        }) => cli::api_key_create(&config, &name, merchant.as_deref(), &scopes),
        Command::ApiKey(ApiKeyAction::List) => cli::api_key_list(&config),
        Command::ApiKey(ApiKeyAction::Revoke { id }) => cli::api_key_revoke(&config, &id),
        Command::Audit(AuditAction::Verify { checkpoints, key }) => {
            cli::audit_verify(&config, checkpoints.as_deref(), key.as_deref())
        }
        Command::Audit(AuditAction::Tail { since, limit }) => {
            cli::audit_tail(&config, since.as_deref(), limit)
        }
        Command::Audit(AuditAction::Checkpoint) => cli::audit_checkpoint(&config),
        Command::Doctor { json } => cli::doctor(&config, json),
        Command::Audit(AuditAction::Keygen { .. }) => {
            unreachable!("handled before loading the config")
        }
        Command::Backup(action) => cli::backup(&config, action),
        Command::Retention(action) => cli::retention(&config, action),
        Command::Erase(args) => cli::erase(&config, &args),
    };
    if chains_after {
        // A failed command may still have written a row saying so. Its own error is the one
        // to report, so a chaining failure after it is not shown.
        if let Err(err) = cli::chain_audit(&config) {
            if result.is_ok() {
                log::warn!(
                    "the command's audit rows are saved but not yet chained, and `ctrip serve` \
                     or the next `ctrip audit verify` chains them: {err:#}"
                );
            }
        }
    }
    result
}
