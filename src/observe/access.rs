//! The access log: one line per request, as JSON or from a template, written by a task of its
//! own so a slow disk or a blocked stdout never stalls a request. The JSON line is written by
//! hand: through `serde_json` and `Display` its formatting cost more than the rest of the
//! request path's own code. The queue to that task is
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
        let mut text = match &self.format {
            Format::Json => json_line(r, took),
            Format::Template(pieces) => {
                let line = Line::of(r, took);
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

/// The JSON form of a line, written directly: the same text `serde_json` makes of [`Line`]
/// (a unit test holds them to it), at a fraction of the cost. Field names are fixed; strings
/// are escaped as JSON requires; the time, addresses and numbers are written without the
/// formatting machinery, which was most of a line's cost.
fn json_line(r: &Record, took: Duration) -> String {
    let mut o = String::with_capacity(320);
    o.push_str("{\"time\":\"");
    rfc3339_millis(r.started, &mut o);
    o.push_str("\",\"client\":\"");
    ip_into(r.client.ip(), &mut o);
    o.push_str("\",\"method\":");
    json_str(r.method.as_str(), &mut o);
    o.push_str(",\"host\":");
    json_str(&cut(&r.host), &mut o);
    o.push_str(",\"path\":");
    json_str(&cut(&r.path), &mut o);
    o.push_str(",\"protocol\":\"");
    o.push_str(protocol(r.version));
    o.push_str("\",\"status\":");
    decimal(u64::from(r.status), &mut o);
    o.push_str(",\"bytes\":");
    decimal(r.bytes, &mut o);
    o.push_str(",\"duration_ms\":");
    millis(took, &mut o);
    o.push_str(",\"service\":");
    json_opt(r.service.as_deref(), &mut o);
    o.push_str(",\"revision\":");
    json_opt(r.revision.as_deref(), &mut o);
    o.push_str(",\"upstream\":");
    match r.endpoint {
        Some(e) => {
            o.push('"');
            if e.is_ipv6() {
                o.push('[');
                ip_into(e.ip(), &mut o);
                o.push(']');
            } else {
                ip_into(e.ip(), &mut o);
            }
            o.push(':');
            decimal(u64::from(e.port()), &mut o);
            o.push('"');
        }
        None => o.push_str("null"),
    }
    o.push_str(",\"cold_start\":");
    o.push_str(if r.cold { "true" } else { "false" });
    o.push_str(",\"wait_ms\":");
    match r.waited {
        Some(w) => millis(w, &mut o),
        None => o.push_str("null"),
    }
    o.push_str(",\"error\":");
    json_opt(r.error.as_deref(), &mut o);
    o.push_str(",\"trace_id\":");
    json_opt(r.trace_id().as_deref(), &mut o);
    o.push('}');
    o
}

/// `s` as a JSON string: `"` and `\\` escaped, control characters as `\n`-style escapes or
/// `\u00xx`, everything else as is (as `serde_json` writes it).
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        plain = i + 1;
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(esc);
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

fn json_opt(s: Option<&str>, out: &mut String) {
    match s {
        Some(s) => json_str(s, out),
        None => out.push_str("null"),
    }
}

/// `n` in decimal.
fn decimal(mut n: u64, out: &mut String) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// `d` in milliseconds to the microsecond, as the shortest decimal that reads back as the
/// same number (what [`ms`] gives and `serde_json` prints: `27.563`, `27.56`, `3.0`).
fn millis(d: Duration, out: &mut String) {
    let micros = (d.as_secs_f64() * 1_000_000.0).round() as u64;
    decimal(micros / 1000, out);
    out.push('.');
    let mut frac = micros % 1000;
    if frac == 0 {
        out.push('0');
        return;
    }
    let mut width = 3;
    while frac.is_multiple_of(10) {
        frac /= 10;
        width -= 1;
    }
    for i in (0..width).rev() {
        out.push(char::from(b'0' + (frac / 10u64.pow(i) % 10) as u8));
    }
}

/// An address as `Display` writes it; IPv4 without the formatting machinery.
fn ip_into(ip: std::net::IpAddr, out: &mut String) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                decimal(u64::from(octet), out);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `t` as RFC 3339 in UTC to the millisecond (`2026-12-02T17:32:20.129Z`), as
/// `humantime::format_rfc3339_millis` writes it.
fn rfc3339_millis(t: std::time::SystemTime, out: &mut String) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let two = |n: u64, out: &mut String| {
        out.push(char::from(b'0' + (n / 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    };
    decimal(y as u64, out);
    out.push('-');
    two(m, out);
    out.push('-');
    two(d, out);
    out.push('T');
    two(rest / 3600, out);
    out.push(':');
    two(rest / 60 % 60, out);
    out.push(':');
    two(rest % 60, out);
    out.push('.');
    let ms = u64::from(since.subsec_millis());
    out.push(char::from(b'0' + (ms / 100) as u8));
    two(ms % 100, out);
    out.push('Z');
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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

    fn record(client: &str, endpoint: Option<&str>) -> Box<Record> {
        let observer = std::sync::Arc::new(super::super::Observer::off());
        let mut r = observer
            .record(
                &http::Method::POST,
                "/a\"b\\c\u{1}\t\u{7f}é/\n\u{8}\u{c}\r",
                http::Version::HTTP_11,
                &http::HeaderMap::new(),
                client.parse().unwrap(),
            )
            .unwrap();
        // Longer than a field may be: cut, as in the queue.
        r.host = "h\"ost\u{1f}".repeat(400);
        r.endpoint = endpoint.map(|e| e.parse().unwrap());
        r
    }

    /// The hand-written JSON line is exactly what `serde_json` makes of the same values.
    #[test]
    fn json_lines_are_what_serde_json_writes() {
        let mut cases = [
            record("127.0.0.1:5000", Some("10.0.0.255:8080")),
            record("[2001:db8::1]:443", Some("[::1]:9")),
            record("0.0.0.0:1", None),
        ];
        cases[0].service = Some("svc".into());
        cases[0].revision = Some("rev-1".into());
        cases[0].waited = Some(Duration::from_micros(27_560));
        cases[0].cold = true;
        cases[0].status = 503;
        cases[0].bytes = 18_446_744_073_709_551_615;
        cases[1].error = Some("upstream-failed".into());
        cases[1].waited = Some(Duration::from_secs(3));
        for (i, r) in cases.iter().enumerate() {
            for took in [
                Duration::ZERO,
                Duration::from_nanos(1_499),
                Duration::from_micros(27_563),
                Duration::from_micros(120_000),
                Duration::from_millis(86_400_123),
                Duration::from_nanos(999_999_999),
            ] {
                let serde = serde_json::to_string(&Line::of(r, took)).unwrap();
                assert_eq!(json_line(r, took), serde, "case {i}, {took:?}");
            }
        }
    }

    /// The time is written as humantime writes it, across the calendar.
    #[test]
    fn times_are_rfc3339_to_the_millisecond() {
        let mut t = std::time::UNIX_EPOCH;
        // Every 37 days, 7 hours, 11 minutes, 13.017 seconds from 1970 to past 2100: leap years,
        // month ends and every millisecond digit pass by.
        let step = Duration::from_millis(((37 * 24 + 7) * 60 + 11) * 60_000 + 13_017);
        for _ in 0..1300 {
            let mut ours = String::new();
            rfc3339_millis(t, &mut ours);
            assert_eq!(ours, humantime::format_rfc3339_millis(t).to_string());
            t += step;
        }
    }

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
