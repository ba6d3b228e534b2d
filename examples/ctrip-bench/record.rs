//! Result records: one line per result, tab-separated `key=value` fields, the first of which
//! is `kind`. scripts/bench.sh writes the same format for pgbench, memory and machine facts.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// One result line.
#[derive(Debug, Clone, Default)]
pub struct Record {
    fields: Vec<(String, String)>,
}

impl Record {
    pub fn new(kind: &str) -> Record {
        Record::default().with("kind", kind)
    }

    /// Adds a field. Tabs and newlines in the value are replaced by spaces.
    pub fn with(mut self, key: &str, value: impl ToString) -> Record {
        let value = value.to_string().replace(['\t', '\n', '\r'], " ");
        self.fields.push((key.to_owned(), value));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    pub fn kind(&self) -> &str {
        self.get("kind").unwrap_or("")
    }

    /// Returns field `key` as a number, or an error naming the record.
    pub fn number(&self, key: &str) -> anyhow::Result<f64> {
        let text = self
            .get(key)
            .with_context(|| format!("field {key} is missing in record {}", self.to_line()))?;
        text.parse()
            .with_context(|| format!("field {key}={text} is not a number"))
    }

    pub fn to_line(&self) -> String {
        let parts: Vec<String> = self
            .fields
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        parts.join("\t")
    }

    /// Appends this record to `path` as one line.
    pub fn append_to(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the results file {}", path.display()))?;
        writeln!(file, "{}", self.to_line())
            .with_context(|| format!("cannot write to the results file {}", path.display()))
    }
}

/// Reads every record of `path`, skipping blank lines.
pub fn read_all(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the results file {}", path.display()))?;
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut record = Record::default();
        for field in line.split('\t') {
            let Some((key, value)) = field.split_once('=') else {
                bail!(
                    "line {} of {} has a field without '=': {field:?}",
                    number + 1,
                    path.display()
                );
            };
            record.fields.push((key.to_owned(), value.to_owned()));
        }
        records.push(record);
    }
    Ok(records)
}
