//! The access log: one line per request, as JSON or from a template, written by a task of its
//! own so a slow disk or a blocked stdout never stalls a request. The queue to that task is
//! bounded; when it is full a line is dropped and counted (`rouse_access_log_dropped_total`)
//! rather than held in memory.

use super::Record;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Lines waiting for the writer, at most.
const QUEUED: usize = 8192;
/// A host or path longer than this is cut (marked with `…`): with [`QUEUED`], it bounds the
/// queue's bytes whatever clients send.
const FIELD_MAX: usize = 2048;
/// The most bytes written at once.
const BATCH: usize = 64 * 1024;
/// The longest exit waits for queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// What the writer is sent.
enum Msg {
    Line(String),
    /// Write everything before this, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

fn cut(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= FIELD_MAX {
        return s.into();
    }
    let mut end = FIELD_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// Escapes a template field as nginx does: `"`, `\`, control and non-ASCII bytes as `\xHH`,
/// so a client cannot forge fields or lines with its host or path.
fn escape_into(text: &str, out: &mut String) {
    for b in text.bytes() {
        match b {
            b'"' | b'\\' | 0..=0x1f | 0x7f.. => {
                let _ = write!(out, "\\x{b:02X}");
            }
            b => out.push(char::from(b)),
        }
    }
}

/// The fields a line can have, in the JSON form's order; a template names them in braces.
pub const FIELDS: &[&str] = &[
    "time",
    "client",
    "method",
    "host",
    "path",
    "protocol",
    "status",
    "bytes",
    "duration_ms",
    "service",
    "revision",
    "upstream",
    "cold_start",
    "wait_ms",
    "error",
    "trace_id",
];

/// How a line is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Literal text and fields, in order.
    Template(Vec<Piece>),
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Written as is.
    Text(String),
    /// The index of a field in [`FIELDS`].
    Field(usize),
}

impl Format {
    /// Parses `json` or a template; an unknown `{field}` or an unclosed brace is an error that
    /// lists the fields there are.
    pub fn parse(s: &str) -> Result<Format, String> {
        if s == "json" {
            return Ok(Format::Json);
        }
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| {
                format!(
                    "a `{{` has no closing `}}`; write fields as {{name}}, one of {}",
                    FIELDS.join(", ")
                )
            })?;
            let name = &after[..close];
            let i = FIELDS.iter().position(|f| *f == name).ok_or_else(|| {
                format!("no field {{{name}}}; the fields are {}", FIELDS.join(", "))
            })?;
            pieces.push(Piece::Field(i));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(format!(
                "the template names no field; write `json`, or a line like \"{{method}} {{host}}{{path}} {{status}}\" with fields from {}",
                FIELDS.join(", ")
            ));
        }
        Ok(Format::Template(pieces))
    }
}

/// A line's values.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: String,
    method: &'a str,
    host: std::borrow::Cow<'a, str>,
    path: std::borrow::Cow<'a, str>,
    protocol: &'static str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    service: Option<&'a str>,
    revision: Option<&'a str>,
    upstream: Option<String>,
    cold_start: bool,
    wait_ms: Option<f64>,
    error: Option<&'a str>,
    trace_id: Option<String>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl Line<'_> {
    fn of(r: &Record, took: Duration) -> Line<'_> {
        Line {
            time: humantime::format_rfc3339_millis(r.started).to_string(),
            client: r.client.ip().to_string(),
            method: r.method.as_str(),
            host: cut(&r.host),
            path: cut(&r.path),
            protocol: protocol(r.version),
            status: r.status,
            bytes: r.bytes,
            duration_ms: ms(took),
            service: r.service.as_deref(),
            revision: r.revision.as_deref(),
            upstream: r.endpoint.map(|e| e.to_string()),
            cold_start: r.cold,
            wait_ms: r.waited.map(ms),
            error: r.error.as_deref(),
            trace_id: r.trace_id(),
        }
    }

    /// A field as template text, escaped; `-` for one that has no value, as common log
    /// formats do.
    fn field(&self, i: usize, out: &mut String) {
        let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
        let text = match FIELDS[i] {
            "time" => self.time.clone(),
            "client" => self.client.clone(),
            "method" => self.method.to_owned(),
            "host" => self.host.to_string(),
            "path" => self.path.to_string(),
            "protocol" => self.protocol.to_owned(),
            "status" => self.status.to_string(),
            "bytes" => self.bytes.to_string(),
            "duration_ms" => self.duration_ms.to_string(),
            "service" => opt(self.service),
            "revision" => opt(self.revision),
            "upstream" => opt(self.upstream.as_deref()),
            "cold_start" => self.cold_start.to_string(),
            "wait_ms" => self.wait_ms.map_or_else(|| "-".into(), |w| w.to_string()),
            "error" => opt(self.error),
            _ => opt(self.trace_id.as_deref()),
        };
        escape_into(&text, out);
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to.
    File(std::path::PathBuf),
}

impl Sink {
    /// `stdout`, `stderr`, or a path.
    pub fn parse(s: &str) -> Sink {
        match s {
            "stdout" | "-" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            path => Sink::File(path.into()),
        }
    }
}

/// A running access log.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    tx: mpsc::Sender<Msg>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens `sink` and starts the writer; lines that find its queue full are counted in
    /// `dropped`. A file that cannot be opened is an error naming it.
    pub async fn start(sink: Sink, format: Format, dropped: Counter) -> std::io::Result<Self> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &sink {
            Sink::Stdout => Box::new(tokio::io::stdout()),
            Sink::Stderr => Box::new(tokio::io::stderr()),
            Sink::File(p) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .await
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "cannot open the access log {} (`access_log.to`): {e}",
                                p.display()
                            ),
                        )
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel::<Msg>(QUEUED);
        tokio::spawn(write_lines(rx, out));
        Ok(AccessLog {
            format,
            tx,
            dropped,
        })
    }

    /// Queues the line of a finished request.
    pub(super) fn write(&self, r: &Record, took: Duration) {
        let line = Line::of(r, took);
        let mut text = match &self.format {
            Format::Json => serde_json::to_string(&line).unwrap_or_default(),
            Format::Template(pieces) => {
                let mut s = String::with_capacity(128);
                for p in pieces {
                    match p {
                        Piece::Text(t) => s.push_str(t),
                        Piece::Field(i) => line.field(*i, &mut s),
                    }
                }
                // One request, one line: fields are escaped, but a template's own text may
                // hold a line break.
                if s.contains(['\n', '\r']) {
                    s = s.replace(['\n', '\r'], " ");
                }
                s
            }
        };
        text.push('\n');
        if self.tx.try_send(Msg::Line(text)).is_err() {
            self.dropped.inc();
        }
    }

    /// Waits (a little) until the lines queued so far are written: at exit.
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        let wait = async {
            if self.tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        };
        let _ = tokio::time::timeout(FLUSH_WAIT, wait).await;
    }
}

/// Writes queued lines, flushing whenever the queue runs empty.
async fn write_lines(
    mut rx: mpsc::Receiver<Msg>,
    out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    let mut out = tokio::io::BufWriter::new(out);
    let mut batch = String::with_capacity(BATCH);
    let mut flushed = Vec::new();
    while let Some(msg) = rx.recv().await {
        batch.clear();
        let mut next = Some(msg);
        while let Some(m) = next.take() {
            match m {
                Msg::Line(l) => batch.push_str(&l),
                Msg::Flush(done) => flushed.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if out.write_all(batch.as_bytes()).await.is_err() || out.flush().await.is_err() {
            // Nowhere left to write (a closed stdout): lines are dropped from here on.
            return;
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        // A burst's buffer is not kept for good.
        if batch.capacity() > 4 * BATCH {
            batch = String::with_capacity(BATCH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_forge_others_and_long_ones_are_cut() {
        let mut out = String::new();
        escape_into("a\"b c\\d\te\u{e9}", &mut out);
        assert_eq!(out, "a\\x22b c\\x5Cd\\x09e\\xC3\\xA9");
        let long = "é".repeat(FIELD_MAX);
        let c = cut(&long);
        assert!(c.len() <= FIELD_MAX + "…".len() && c.ends_with('…'));
        assert_eq!(cut("/short"), "/short");
    }

    #[test]
    fn templates_name_fields_and_refuse_unknown_ones() {
        let f = Format::parse("{method} {path} -> {status}").unwrap();
        assert_eq!(
            f,
            Format::Template(vec![
                Piece::Field(2),
                Piece::Text(" ".into()),
                Piece::Field(4),
                Piece::Text(" -> ".into()),
                Piece::Field(6),
            ])
        );
        assert_eq!(Format::parse("json").unwrap(), Format::Json);
        let e = Format::parse("{method} {latency}").unwrap_err();
        assert!(
            e.starts_with("no field {latency}; the fields are time, client"),
            "{e}"
        );
        let e = Format::parse("{method").unwrap_err();
        assert!(e.starts_with("a `{` has no closing `}`"), "{e}");
        let e = Format::parse("plain").unwrap_err();
        assert!(e.starts_with("the template names no field"), "{e}");
    }
}
