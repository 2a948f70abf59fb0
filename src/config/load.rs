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
        let read = |source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        };
        // Checked before reading, so a huge file costs nothing.
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_BYTES as u64 {
            return Err(too_large(len));
        }
        Config::parse(&std::fs::read_to_string(path).map_err(read)?)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if text.len() > MAX_BYTES {
            return Err(too_large(text.len() as u64));
        }
        // A byte-order mark is not YAML: left in, it would become part of the first key.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if let Some(issue) = too_deep(text) {
            return Err(ConfigError::Invalid(vec![issue]));
        }
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
                message: shorten_quotes(&message.replace("missing field", "missing key")),
            }])
        })?;
        let issues = cfg.validate();
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(
                issues
                    .into_iter()
                    .map(|i| ConfigIssue {
                        message: shorten_quotes(&i.message),
                        ..i
                    })
                    .collect(),
            ))
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

/// The largest config accepted: four times what a Kubernetes ConfigMap can hold, and far more
/// than any hand-written file. A larger one is refused before it is parsed.
const MAX_BYTES: usize = 4 << 20;

fn too_large(len: u64) -> ConfigError {
    ConfigError::Invalid(vec![ConfigIssue {
        path: String::new(),
        message: format!(
            "the file is {len} bytes, over the limit of {MAX_BYTES}; a config this large is not one written by hand"
        ),
    }])
}

/// The deepest nesting accepted, in flow collections (`[`, `{`) or in indentation columns.
/// Real configs nest under ten levels; the parser's time grows fast with depth, so a file
/// nested thousands deep is refused before it is parsed.
const MAX_DEPTH: usize = 64;
const MAX_INDENT: usize = 512;

/// A problem if `text` nests deeper than [`MAX_DEPTH`] or indents past [`MAX_INDENT`]. Brackets
/// in quoted strings and comments do not count.
fn too_deep(text: &str) -> Option<ConfigIssue> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if indent > MAX_INDENT {
            return Some(ConfigIssue {
                path: String::new(),
                message: format!(
                    "line {} is indented {indent} columns, over the limit of {MAX_INDENT}",
                    n + 1
                ),
            });
        }
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = ' ';
        for c in line.chars() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' if prev.is_whitespace() => break,
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Some(ConfigIssue {
                                path: String::new(),
                                message: format!(
                                    "line {} nests deeper than {MAX_DEPTH} levels of [ and {{",
                                    n + 1
                                ),
                            });
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

/// Quoted text longer than this in a message is cut in the middle.
const QUOTE_MAX: usize = 48;

/// Shortens every quoted string in `message` that is longer than [`QUOTE_MAX`] characters, so
/// that a huge value (a whole file pasted into one key) is named, not echoed.
fn shorten_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let mut inner = String::new();
        let mut escaped = false;
        let mut closed = false;
        for c in chars.by_ref() {
            if !escaped && c == '"' {
                closed = true;
                break;
            }
            escaped = !escaped && c == '\\';
            inner.push(c);
        }
        let count = inner.chars().count();
        if count > QUOTE_MAX {
            let head: String = inner.chars().take(QUOTE_MAX / 2).collect();
            let tail: String = inner.chars().skip(count - QUOTE_MAX / 2).collect();
            out.push_str(&format!("{head}…{tail}"));
            out.push_str(&format!("\" ({count} characters)"));
            if !closed {
                break;
            }
            continue;
        }
        out.push_str(&inner);
        if closed {
            out.push('"');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_values_are_shortened_and_short_ones_kept() {
        let long = "x".repeat(1000);
        let m = shorten_quotes(&format!("invalid size \"{long}\"; write it like \"64MiB\""));
        assert_eq!(
            m,
            format!(
                "invalid size \"{}…{}\" (1000 characters); write it like \"64MiB\"",
                "x".repeat(24),
                "x".repeat(24)
            )
        );
        assert_eq!(shorten_quotes("a \"b\\\"c\" d"), "a \"b\\\"c\" d");
    }

    #[test]
    fn nesting_is_measured_outside_quotes_and_comments() {
        assert!(too_deep("a: [[[1]]]\nb: \"[[[[\" # [[[[[").is_none());
        let deep = format!("a: {}{}", "[".repeat(65), "]".repeat(65));
        assert!(too_deep(&deep).unwrap().message.contains("deeper than 64"));
        let indented = format!("a:\n{}b: 1", " ".repeat(600));
        assert!(
            too_deep(&indented)
                .unwrap()
                .message
                .contains("indented 600")
        );
    }
}
