//! The `ctrip` command line: wiring only. Each subcommand loads the config, sets up logging
//! and calls into the library; any error ends the process with one line and exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use ctrip::config::Config;
use ctrip::db::migrate::{self, MigrationState};
use ctrip::{apikeys, logging, serve};

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
    /// Create, list and revoke API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyAction),
}

#[derive(Subcommand)]
enum MigrateAction {
    /// List every migration with its state, without changing anything.
    Status,
}

#[derive(Subcommand)]
enum ApiKeyAction {
    /// Create a key and print it once; only its hash is stored.
    Create {
        /// A label for the key, such as the shop or service that uses it.
        #[arg(long)]
        name: String,
    },
    /// List keys with their prefixes, creation, last use and revocation times.
    List,
    /// Revoke a key by id; requests with it get 401 from then on.
    Revoke {
        /// The key's id, as shown by `ctrip api-key list`.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let line = error_line(&err);
            log::error!("{line}");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Joins the error's causes into one line.
fn error_line(err: &anyhow::Error) -> String {
    let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
    let mut line = String::new();
    for part in chain {
        if !line.contains(&part) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&part);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    let quiet = !matches!(cli.command, Command::Serve);
    let level = if quiet && std::env::var_os("RUST_LOG").is_none() {
        "warn"
    } else {
        config.log.level.as_str()
    };
    logging::init(level, config.log.file.as_deref()).map_err(anyhow::Error::msg)?;

    match cli.command {
        Command::Serve => serve::run(&config),
        Command::Migrate { action: None } => migrate_apply(&config),
        Command::Migrate {
            action: Some(MigrateAction::Status),
        } => migrate_status(&config),
        Command::ApiKey(action) => api_key(&config, action),
    }
}

fn migrate_apply(config: &Config) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    let applied = migrate::apply(&mut client, &migrate::embedded())?;
    if applied.is_empty() {
        println!("migrations are current; nothing to apply");
    }
    for migration in applied {
        println!(
            "applied {:04}_{} in {} ms",
            migration.version, migration.name, migration.execution_ms
        );
    }
    Ok(())
}

fn migrate_status(config: &Config) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    let lines = migrate::status(&mut client, &migrate::embedded())?;
    println!(
        "{:<8} {:<8} {:<30} {:<32} APPLIED BY",
        "VERSION", "STATE", "NAME", "APPLIED AT"
    );
    let mut problems = 0;
    for line in lines {
        let state = match line.state {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Drifted => "DRIFTED",
            MigrationState::Missing => "MISSING",
        };
        if matches!(
            line.state,
            MigrationState::Drifted | MigrationState::Missing
        ) {
            problems += 1;
        }
        let (at, by) = match &line.applied {
            Some(row) => (row.applied_at.to_rfc3339(), row.applied_by.clone()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<8} {:<8} {:<30} {:<32} {}",
            format!("{:04}", line.version),
            state,
            line.name,
            at,
            by
        );
    }
    if problems > 0 {
        anyhow::bail!(
            "{problems} migration(s) drifted or missing: restore the original sql/ files of this \
             build; see `ctrip serve` for details"
        );
    }
    Ok(())
}

fn api_key(config: &Config, action: ApiKeyAction) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    match action {
        ApiKeyAction::Create { name } => {
            let (key, secret) = apikeys::create(&mut client, &name)?;
            println!("id:     {}", key.id);
            println!("name:   {}", key.name);
            println!("prefix: {}", key.prefix);
            println!("key:    {}", secret.expose());
            eprintln!("Store the key now: it is shown only once and only its hash is kept.");
        }
        ApiKeyAction::List => {
            println!(
                "{:<36}  {:<14}  {:<25}  {:<25}  {:<25}  NAME",
                "ID", "PREFIX", "CREATED", "LAST USED", "REVOKED"
            );
            let show = |time: Option<chrono::DateTime<chrono::Utc>>| {
                time.map_or("-".to_owned(), |t| {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                })
            };
            for key in apikeys::list(&mut client)? {
                println!(
                    "{:<36}  {:<14}  {:<25}  {:<25}  {:<25}  {}",
                    key.id,
                    key.prefix,
                    show(Some(key.created_at)),
                    show(key.last_used_at),
                    show(key.revoked_at),
                    key.name
                );
            }
        }
        ApiKeyAction::Revoke { id } => {
            let id = Uuid::parse_str(&id).map_err(|_| {
                anyhow::anyhow!(
                    "{id:?} is not an API key id: run `ctrip api-key list` to see the ids"
                )
            })?;
            apikeys::revoke(&mut client, id)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
