//! Log set-up with fern: plain lines on stderr, an optional file copy, no colours.
//!
//! The level comes from `RUST_LOG` when set (a level, or `module=level` pairs separated by
//! commas), else from `log.level` in the config. Under systemd (`JOURNAL_STREAM` set) lines
//! carry no timestamp, because journald adds its own.

use std::path::Path;

use std::sync::atomic::{AtomicUsize, Ordering};

use log::LevelFilter;

/// Parsed log filter: a default level and per-module levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    pub default: LevelFilter,
    pub modules: Vec<(String, LevelFilter)>,
}

impl LogFilter {
    /// Parses `info` or `warn,ctrip=debug,rouille=error`.
    pub fn parse(spec: &str) -> Result<LogFilter, String> {
        let mut filter = LogFilter {
            default: LevelFilter::Info,
            modules: Vec::new(),
        };
        for part in spec
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part.split_once('=') {
                Some((module, level)) => filter
                    .modules
                    .push((module.to_owned(), parse_level(level)?)),
                None => filter.default = parse_level(part)?,
            }
        }
        Ok(filter)
    }
}

fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse().map_err(|_| {
        format!("invalid log level {text:?}: expected off, error, warn, info, debug or trace")
    })
}

fn dispatch(filter: &LogFilter) -> fern::Dispatch {
    let with_time = std::env::var_os("JOURNAL_STREAM").is_none();
    let overridden: Vec<String> = filter
        .modules
        .iter()
        .map(|(module, _)| module.clone())
        .collect();
    let mut dispatch = fern::Dispatch::new()
        .format(move |out, message, record| {
            if with_time {
                out.finish(format_args!(
                    "{} {:<5} {}: {}",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    record.level(),
                    record.target(),
                    message
                ))
            } else {
                out.finish(format_args!(
                    "{:<5} {}: {}",
                    record.level(),
                    record.target(),
                    message
                ))
            }
        })
        .level(LevelFilter::Trace)
        .filter(move |metadata| {
            // Modules with their own level are filtered by level_for alone.
            let own_level = overridden
                .iter()
                .any(|module| metadata.target().starts_with(module));
            own_level || metadata.level() <= default_level()
        });
    // tokio_postgres logs the parameters of every statement at debug, and they include
    // personal fields and API key hashes, so it stays at info unless the filter names it.
    let names_driver = filter
        .modules
        .iter()
        .any(|(module, _)| module.split("::").next() == Some("tokio_postgres"));
    if !names_driver {
        dispatch = dispatch.level_for("tokio_postgres", LevelFilter::Info);
    }
    for (module, level) in &filter.modules {
        dispatch = dispatch.level_for(module.clone(), *level);
    }
    DEFAULT_LEVEL.store(filter.default as usize, Ordering::Relaxed);
    dispatch
}

/// The level for modules without their own, changeable while running (see [`set_level`]).
static DEFAULT_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

fn default_level() -> LevelFilter {
    match DEFAULT_LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Changes the default level of the installed logger, as SIGHUP does from `log.level`. A
/// `RUST_LOG` set at start-up keeps precedence, so this then does nothing and returns false.
pub fn set_level(config_level: &str) -> Result<bool, String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let level = parse_level(config_level)?;
    DEFAULT_LEVEL.store(level as usize, Ordering::Relaxed);
    Ok(true)
}

/// Installs the process logger: stderr, plus `file` when given. Fails on a bad `RUST_LOG`,
/// an unwritable file, or a second call.
pub fn init(config_level: &str, file: Option<&Path>) -> Result<(), String> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| config_level.to_owned());
    let filter = LogFilter::parse(&spec)?;
    let mut dispatch = dispatch(&filter).chain(std::io::stderr());
    if let Some(path) = file {
        let output = fern::log_file(path)
            .map_err(|err| format!("cannot open log file {}: {err}", path.display()))?;
        dispatch = dispatch.chain(output);
    }
    dispatch
        .apply()
        .map_err(|err| format!("cannot install the logger: {err}"))
}

/// Installs a logger that appends to `file`, and also to stderr when `echo` is true. The test
/// harness uses it to capture the logs of a whole run.
pub fn init_capture(file: &Path, filter: &LogFilter, echo: bool) -> Result<(), String> {
    let output = fern::log_file(file)
        .map_err(|err| format!("cannot open log file {}: {err}", file.display()))?;
    let mut dispatch = dispatch(filter).chain(output);
    if echo {
        dispatch = dispatch.chain(std::io::stderr());
    }
    dispatch
        .apply()
        .map_err(|err| format!("cannot install the logger: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_default_and_modules() {
        let filter = LogFilter::parse("warn,ctrip=debug").unwrap();

        assert_eq!(filter.default, LevelFilter::Warn);
        assert_eq!(
            filter.modules,
            vec![("ctrip".to_owned(), LevelFilter::Debug)]
        );
    }

    #[test]
    fn filter_rejects_unknown_level() {
        let err = LogFilter::parse("loud").unwrap_err();

        assert!(err.contains("\"loud\""), "{err}");
    }
}
