//! Loading a config: read, parse (serde, through `serde_path_to_error`, reports the first
//! syntax, type or unknown-key problem with its path), validate (every remaining problem at
//! once), and load every TLS file it names, so a file with any problem is refused before
//! anything starts.

use super::types::{Config, Protocol};
use crate::http::tls::{CertStore, Connector, TlsError};
use std::fmt;
use std::path::Path;

/// One problem in a config file, anchored at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path such as `services[0].traffic[1].revision`; empty for the document root.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a valid config (syntax, types, unknown keys, or semantic rules).
    #[error("invalid config:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(v) => v,
            ConfigError::Read { .. } => &[],
        }
    }
}

impl From<TlsError> for ConfigError {
    /// A TLS file problem as a config problem. The message names the file; no key path is
    /// given because the same file may serve the listener or a revision.
    fn from(e: TlsError) -> Self {
        ConfigError::Invalid(vec![ConfigIssue {
            path: String::new(),
            message: e.to_string(),
        }])
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // serde_norway appends "at line N column M" (kept: it helps find the spot) and may
            // prefix its own, coarser path (dropped: ours is exact).
            let mut message = e.into_inner().to_string();
            if let Some((prefix, rest)) = message.split_once(": ")
                && !prefix.contains(char::is_whitespace)
            {
                message = rest.to_owned();
            }
            ConfigError::Invalid(vec![ConfigIssue {
                path: if path == "." { String::new() } else { path },
                message: message.replace("missing field", "missing key"),
            }])
        })?;
        let issues = cfg.validate();
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Loads every TLS file the config names (the listener's certificates, the revisions'
    /// CA bundles), so `rouse validate` reports an unusable file the way start-up would.
    pub fn check_tls_files(&self) -> Result<(), TlsError> {
        if let Some(t) = &self.tls {
            CertStore::load(&t.certificates)?;
        }
        for s in &self.services {
            for r in &s.revisions {
                if let Some(t) = &r.tls {
                    Connector::new(t, r.protocol == Protocol::H2c)?;
                }
            }
        }
        Ok(())
    }
}
