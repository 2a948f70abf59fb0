//! Loading a config: read, parse (serde, through `serde_path_to_error`, reports the first
//! syntax, type or unknown-key problem with its path), validate (every remaining problem at
//! once), and load every TLS file it names, so a file with any problem is refused before
//! anything starts.

use super::types::{Config, Protocol};
use super::words::plain_words;
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
    /// The error on one line, its problems separated by `; `: a log line is one event.
    pub fn one_line(&self) -> String {
        match self {
            ConfigError::Invalid(v) => format!(
                "invalid config: {}",
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            other => other.to_string(),
        }
    }

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
        let cfg: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::Invalid(vec![parse_issue(text, e)]))?;
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

/// The first problem the parser found, in the file's words (see [`plain_words`]) and with the
/// place it is at.
fn parse_issue(text: &str, e: serde_path_to_error::Error<serde_norway::Error>) -> ConfigIssue {
    let path = e.path().to_string();
    let mut path = if path == "." { String::new() } else { path };
    let inner = e.into_inner();
    let at = inner.location().map(|l| (l.line(), l.column()));
    // serde_norway appends "at line N column M" (kept: it helps find the spot) and may
    // prefix its own, coarser path (dropped: ours is exact).
    let mut message = inner.to_string();
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(char::is_whitespace)
    {
        message = rest.to_owned();
    }
    if let Some(rest) = message.strip_prefix("duplicate field `")
        && let Some((key, _)) = rest.split_once('`')
    {
        // serde_norway places a duplicate at the start of its mapping (and not at all for the
        // top level, which starts at line 1 column 1): the key's own lines are found here.
        let key = key.to_owned();
        let (line, column) = at.unwrap_or((1, 1));
        message = match duplicate_key(text, line, column, &key) {
            Some((first, again, column)) => {
                format!("given twice: first at line {first}, again at line {again} column {column}")
            }
            None => format!("given twice in the mapping at line {line} column {column}"),
        };
        path = if path.is_empty() {
            key
        } else {
            format!("{path}.{key}")
        };
    } else if message.contains("while scanning an alias") || message.starts_with("unknown anchor") {
        // A bare `*` (a wildcard host) is YAML's alias syntax.
        let (line, column) = message
            .split_once("while scanning an alias at ")
            .and_then(|(_, rest)| line_column(rest))
            .or(at)
            .unwrap_or((1, 1));
        let alias = alias_at(text, line, column);
        let name = alias.trim_start_matches('*');
        let undefined = if name.is_empty() || message.contains("while scanning an alias") {
            String::new()
        } else {
            format!(" to an anchor &{name} that is not defined")
        };
        message = format!(
            "a bare {alias} starts a YAML alias{undefined}; quote it: {alias:?} at line {line} column {column}"
        );
    } else if at == Some((1, 1))
        && !message.contains(" at line ")
        && !message.starts_with("missing field")
    {
        // serde_norway leaves out a place at line 1 column 1; a key there is still named by it.
        message.push_str(" at line 1 column 1");
    }
    ConfigIssue {
        path,
        message: shorten_quotes(&plain_words(&message)),
    }
}

/// `line L column C` at the start of `text`.
fn line_column(text: &str) -> Option<(usize, usize)> {
    let rest = text.strip_prefix("line ")?;
    let (line, rest) = rest.split_once(" column ")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((line.parse().ok()?, rest[..end].parse().ok()?))
}

/// The alias that starts at `line` and `column` (1-based) of `text`, as written: `*`, or
/// `*.example.com` for a wildcard name. `*` if the place holds none.
fn alias_at(text: &str, line: usize, column: usize) -> String {
    let rest: String = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or_default()
        .chars()
        .skip(column.saturating_sub(1))
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ']' | '}'))
        .collect();
    if rest.starts_with('*') {
        rest
    } else {
        "*".to_owned()
    }
}

/// Where `key` is given twice in the block mapping whose first key is at `line` and `column`
/// (1-based, as the parser counts): the line of the first, and the line and column of the
/// second. None when it is not found so (a flow mapping, `{ a: 1, a: 2 }`).
fn duplicate_key(
    text: &str,
    line: usize,
    column: usize,
    key: &str,
) -> Option<(usize, usize, usize)> {
    let indent = column.checked_sub(1)?;
    let mut first = None;
    for (n, l) in text.lines().enumerate().skip(line.checked_sub(1)?) {
        let number = n + 1;
        let rest = if number == line {
            // The mapping may start after `- ` on its first line: the column says where.
            let (i, _) = l.char_indices().nth(indent)?;
            &l[i..]
        } else {
            let rest = l.trim_start_matches(' ');
            let lead = l.len() - rest.len();
            if rest.is_empty() || rest.starts_with('#') || lead > indent {
                continue;
            }
            if lead < indent {
                break;
            }
            rest
        };
        if names_key(rest, key) {
            match first {
                None => first = Some(number),
                Some(f) => return Some((f, number, column)),
            }
        }
    }
    None
}

/// Whether a line (from its key on) gives `key`, bare or quoted.
fn names_key(rest: &str, key: &str) -> bool {
    [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .any(|k| {
            rest.strip_prefix(k.as_str()).is_some_and(|after| {
                after
                    .trim_start_matches(' ')
                    .strip_prefix(':')
                    .is_some_and(|v| v.is_empty() || v.starts_with([' ', '\t']))
            })
        })
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

    /// The issues `yaml` gets, as `path: message` lines.
    fn issues(yaml: &str) -> Vec<String> {
        match Config::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.issues().iter().map(ToString::to_string).collect(),
        }
    }

    const SERVICES: &str = "services:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{ revision: r, percent: 100 }]\n    revisions:\n      - { name: r, endpoints: [127.0.0.1:2] }\n";
    const TARGET: &str = "{ revision: r, percent: 100 }";
    const REVISION: &str = "{ name: r, endpoints: [127.0.0.1:2] }";

    /// A file with one service, of these `hosts`, extra keys, split arm and revision.
    fn service(hosts: &str, extra: &str, target: &str, revision: &str) -> String {
        format!(
            "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: {hosts}\n{extra}    traffic: [{target}]\n    revisions:\n      - {revision}\n"
        )
    }

    #[test]
    fn parse_errors_say_what_to_write_and_where() {
        let cases: [(String, &str); 17] = [
            (
                format!("listen: 127.0.0.1:1\ndrain_timeout: -5s\n{SERVICES}"),
                "drain_timeout: must not be negative: write a duration like 5s, 300ms or 1m at line 2 column 16",
            ),
            (
                service(
                    "[\"*\"]",
                    "",
                    TARGET,
                    "{ name: r, container_concurrency: -1, endpoints: [127.0.0.1:2] }",
                ),
                "services[0].revisions[0].container_concurrency: expected a whole number from 0 to 4294967295, got -1 at line 7 column 43",
            ),
            (
                service("[\"*\"]", "", "{ revision: r, percent: \"x\" }", REVISION),
                "services[0].traffic[0].percent: expected a whole number from 0 to 4294967295, got text \"x\" at line 5 column 39",
            ),
            (
                service(
                    "[\"*\"]",
                    "    redirect_to_https: yes please\n",
                    TARGET,
                    REVISION,
                ),
                "services[0].redirect_to_https: expected true or false, got text \"yes please\" at line 5 column 24",
            ),
            (
                format!("listen: 127.0.0.1:1\nlimits: {{ max_header_bytes: 1.5MiB }}\n{SERVICES}"),
                "limits.max_header_bytes: whole numbers only: write 1536KiB instead of 1.5MiB at line 2 column 29",
            ),
            (
                service("[*]", "", TARGET, REVISION),
                "services[0].hosts: a bare * starts a YAML alias; quote it: \"*\" at line 4 column 13",
            ),
            (
                service("\n      - *", "", TARGET, REVISION),
                "services[0].hosts: a bare * starts a YAML alias; quote it: \"*\" at line 5 column 9",
            ),
            (
                service("[*.example.com]", "", TARGET, REVISION),
                "services[0].hosts: a bare *.example.com starts a YAML alias; quote it: \"*.example.com\" at line 4 column 13",
            ),
            (
                format!("listen: 127.0.0.1:1\nbogus: 1\n{SERVICES}"),
                "bogus: unknown key \"bogus\"; the keys here are listen, listen_internal, admin, drain_timeout, watch_interval, tls, limits, upstream, kubernetes, access_log and services at line 2 column 1",
            ),
            // serde_norway leaves out line 1 column 1; it is put back.
            (
                format!("bogus: 1\nlisten: 127.0.0.1:1\n{SERVICES}"),
                "bogus: unknown key \"bogus\"; the keys here are listen, listen_internal, admin, drain_timeout, watch_interval, tls, limits, upstream, kubernetes, access_log and services at line 1 column 1",
            ),
            (
                format!("listen: 127.0.0.1:1\nlisten: 127.0.0.1:3\n{SERVICES}"),
                "listen: given twice: first at line 1, again at line 2 column 1",
            ),
            (
                format!("# two listeners\n\nlisten: 127.0.0.1:1\n{SERVICES}listen: 127.0.0.1:3\n"),
                "listen: given twice: first at line 3, again at line 10 column 1",
            ),
            (
                "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: [\"*\"]\n    name: t\n"
                    .to_owned(),
                "services[0].name: given twice: first at line 3, again at line 5 column 5",
            ),
            (
                service(
                    "[\"*\"]",
                    "",
                    TARGET,
                    "{ name: r, protocol: http3, endpoints: [127.0.0.1:2] }",
                ),
                "services[0].revisions[0].protocol: expected one of http1, h2c or auto, got \"http3\" at line 7 column 30",
            ),
            (
                format!(
                    "listen: 127.0.0.1:1\nkubernetes: {{ peers: {{ service: rouse, port: -1 }} }}\n{SERVICES}"
                ),
                "kubernetes.peers.port: expected a port number from 1 to 65535 or a port name, like 8080 or http at line 2 column 22",
            ),
            (
                format!("listen: [1]\n{SERVICES}"),
                "listen: expected an address like 127.0.0.1:8080, got a list at line 1 column 9",
            ),
            (
                format!("listen: 127.0.0.1:1\nlimits: 5\n{SERVICES}"),
                "limits: expected a mapping (key: value lines), got 5 at line 2 column 9",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(issues(&yaml), [want], "for\n{yaml}");
        }
    }

    #[test]
    fn a_duplicate_is_found_in_its_own_mapping() {
        let text = "a:\n  b: 1\n  c:\n    b: 2\n  # b: 3\n  'b': 4\nb: 5\n";
        assert_eq!(duplicate_key(text, 2, 3, "b"), Some((2, 6, 3)));
        assert_eq!(duplicate_key(text, 1, 1, "b"), None);
        assert_eq!(duplicate_key("{ a: 1, a: 2 }", 1, 1, "a"), None);
        assert_eq!(
            duplicate_key("- x: 1\n  y: 2\n  x: 3\n- x: 4\n", 1, 3, "x"),
            Some((1, 3, 3))
        );
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
