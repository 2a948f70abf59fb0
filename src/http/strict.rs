//! HTTP/1.1 request framing checked on the bytes as they arrive, below hyper.
//!
//! hyper's parser is lenient where RFC 9112 lets a recipient be: a bare LF ends a line, and a
//! request with both `Content-Length` and `Transfer-Encoding` is read by the latter (the length
//! dropped, the connection closed after the answer). Each reading is safe for rouse itself,
//! but a proxy in front of rouse that reads the same bytes differently could hide a second
//! request inside the first (request smuggling). rouse refuses both, as nginx does for the
//! second: `400 bad-request`, then the connection closes.
//!
//! [`Strict`] wraps a client connection's stream. It follows the framing of every request on
//! it (head, then a body by length or by chunks, then the next head) so that it looks only at
//! heads, chunk-size lines and trailers, never at body bytes: a `memchr` for each line end,
//! and a few bytes at each line start. A request that breaks a rule never reaches hyper
//! whole: its offending byte is replaced by one no head may hold, so hyper's own parser fails
//! there and answers 400. On a connection's first request [`Strict`] rewrites that answer into
//! rouse's, naming the rule; later on a keep-alive connection, hyper's plain 400 goes out as it
//! is, since earlier answers may still be on their way in the same writes. Once a request that
//! asked for an upgrade (or a `CONNECT`) has been answered with a switch, the bytes are a
//! tunnel's and pass unlooked-at.

use crate::http::body::Cut;
use crate::http::headers::content_length;
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request was refused, for the answer and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// A line of the head (or of a chunked body's framing) ends in LF without CR.
    BareLf,
    /// `Content-Length` and `Transfer-Encoding` in one request.
    LengthAndChunked,
    /// A `Content-Length` that is not one decimal number (a list of equal ones counts as
    /// one), or too long to read.
    LengthUnreadable,
}

impl Broken {
    /// What was wrong and what to do, for the client.
    pub const fn message(self) -> &'static str {
        match self {
            Broken::BareLf => {
                "a line of the request ends in LF without CR; end every line with CRLF"
            }
            Broken::LengthAndChunked => {
                "the request has both Content-Length and Transfer-Encoding; send one of them"
            }
            Broken::LengthUnreadable => {
                "the request's Content-Length is not a decimal number; send the body's length in digits"
            }
        }
    }
}

/// Where in the framing of the requests the next byte is.
#[derive(Debug, Clone, Copy)]
enum At {
    /// In a request head, or in a chunked body's trailer section.
    Head(Head),
    /// This many body bytes to go.
    Body(u64),
    /// A chunk-size line: the size so far, whether its digits have ended (an extension
    /// follows), and whether the last byte was CR.
    Size {
        size: u64,
        digits_done: bool,
        cr: bool,
    },
    /// This many bytes of chunk data to go, then CRLF.
    Data(u64),
    /// The CRLF after chunk data; `true` once its CR was seen.
    DataEnd(bool),
    /// Past the switch of an upgrade or `CONNECT`: the bytes are a tunnel's.
    Through,
}

/// The state of one head.
#[derive(Debug, Clone, Copy)]
struct Head {
    /// The trailer section of a chunked body, not a request head.
    trailer: bool,
    /// Lines ended so far (the request line is the first).
    lines: u32,
    /// The start of the current line, when it goes on in the next read.
    start: [u8; START],
    /// How many bytes of the current line there are so far.
    len: usize,
    /// The last byte seen was CR.
    cr: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// An `Upgrade` header or a `CONNECT`: the bytes after the answer may be a tunnel's.
    tunnel: bool,
    /// A `Content-Length` that could not be read (not a number, or too long to keep).
    unread: bool,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            trailer: false,
            lines: 0,
            start: [0; START],
            len: 0,
            cr: false,
            content_length: None,
            chunked: false,
            tunnel: false,
            unread: false,
        }
    }
}

/// The bytes of a line kept when it goes on in the next read: enough for `content-length:`
/// and a length of 20 digits, with room for spaces and a repeated value.
const START: usize = 96;

/// What scanning a read found.
enum Found {
    /// All bytes are fine.
    Fine,
    /// The byte at this index breaks a rule.
    Broken(usize, Broken),
}

/// A client connection's stream whose HTTP/1.1 requests are checked as they are read; see
/// the module docs. `refused` is told once, when a request is refused.
pub struct Strict<T, F> {
    io: T,
    framing: Framing,
    /// The connection's switch, which says when it became a tunnel.
    cut: Cut,
    refused: Option<Broken>,
    /// rouse's answer for the refused request, which replaces hyper's 400: only when it was
    /// the connection's first, so that nothing else is being written.
    rewrite: Option<Bytes>,
    on_refuse: Option<F>,
    /// rouse's answer still to write, once hyper started its own 400.
    answer: Option<Bytes>,
    /// hyper's 400 was replaced: whatever it writes after is dropped.
    answered: bool,
}

impl<T, F: FnOnce(Broken) -> Option<Bytes>> Strict<T, F> {
    /// Wraps `io`, whose next byte starts a request; `cut` is the connection's. `on_refuse` is
    /// told when a request head is refused, and gives the answer for it, if any (hyper's
    /// plain 400 goes out otherwise).
    pub fn new(io: T, cut: Cut, on_refuse: F) -> Self {
        Strict {
            io,
            framing: Framing::default(),
            cut,
            refused: None,
            rewrite: None,
            on_refuse: Some(on_refuse),
            answer: None,
            answered: false,
        }
    }
}

/// The field names whose values decide the framing, as they start a line (in any case).
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const UPGRADE: &[u8] = b"upgrade:";
/// Methods are case-sensitive (RFC 9110, section 9.1).
const CONNECT: &[u8] = b"CONNECT ";

/// What one line of a head says about the framing.
enum Field {
    Other,
    Connect,
    /// A `Content-Length`, or `None` when it cannot be read here.
    Length(Option<u64>),
    TransferEncoding,
    Upgrade,
}

/// `line` starts with `prefix`, whatever the case.
fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Reads line `line` of a request head (`first`: the request line); `whole` is false when
/// only its start is known.
fn judge(line: &[u8], first: bool, whole: bool) -> Field {
    if first {
        return match line.starts_with(CONNECT) {
            true => Field::Connect,
            false => Field::Other,
        };
    }
    // Most lines are none of these: one byte tells.
    match line.first().map(|b| b | 0x20) {
        Some(b'c') if starts_with_ci(line, CONTENT_LENGTH) => {
            Field::Length(content_length(&line[CONTENT_LENGTH.len()..]).filter(|_| whole))
        }
        Some(b't') if starts_with_ci(line, TRANSFER_ENCODING) => Field::TransferEncoding,
        Some(b'u') if starts_with_ci(line, UPGRADE) => Field::Upgrade,
        _ => Field::Other,
    }
}

impl Head {
    /// Keeps the next bytes of a line that goes on in the next read (up to `START`).
    fn keep(&mut self, bytes: &[u8]) {
        let at = self.len.min(START);
        let n = bytes.len().min(START - at);
        self.start[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += bytes.len();
    }

    /// Judges the line that ends with `tail` (its bytes in this read, up to and with the CR
    /// before its LF); returns true when it was the empty line that ends the head.
    fn line_ended(&mut self, tail: &[u8]) -> bool {
        // Most lines arrive whole in one read and are judged where they are; the others from
        // what was kept of them.
        let (len, field) = if self.len == 0 {
            let line = &tail[..tail.len() - 1];
            (line.len(), judge(line, self.lines == 0, true))
        } else {
            self.keep(tail);
            let len = self.len - 1;
            let line = &self.start[..len.min(START)];
            (len, judge(line, self.lines == 0, len <= START))
        };
        self.len = 0;
        if len == 0 {
            // Empty lines before a request line are skipped (RFC 9112, section 2.2).
            return self.lines > 0 || self.trailer;
        }
        self.lines += 1;
        if self.trailer {
            return false;
        }
        match field {
            Field::Other => {}
            Field::Connect | Field::Upgrade => self.tunnel = true,
            Field::Length(Some(n)) => self.content_length = Some(n),
            // Too long to keep, or not a number: hyper refuses it, or it is huge.
            Field::Length(None) => self.unread = true,
            Field::TransferEncoding => self.chunked = true,
        }
        false
    }

    /// Where the bytes after this head are.
    fn next(self) -> Result<At, Broken> {
        if self.trailer {
            return Ok(At::Head(Head::default()));
        }
        let length = self.content_length.is_some() || self.unread;
        match (self.content_length, self.chunked) {
            _ if length && self.chunked => Err(Broken::LengthAndChunked),
            _ if self.unread => Err(Broken::LengthUnreadable),
            (None, true) => Ok(At::Size {
                size: 0,
                digits_done: false,
                cr: false,
            }),
            (Some(n), false) if n > 0 => Ok(At::Body(n)),
            _ => Ok(At::Head(Head::default())),
        }
    }
}

/// What the scan tells the connection besides the framing.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Request heads read to their end.
    heads: u32,
    /// The last of them asked for an upgrade (or was a `CONNECT`).
    asked: bool,
}

impl At {
    /// Follows `bytes`; stops at the first one that breaks a rule.
    fn scan(&mut self, bytes: &[u8], seen: &mut Seen) -> Found {
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            match self {
                At::Through => return Found::Fine,
                At::Body(n) => {
                    let take = rest.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                    *n -= take as u64;
                    i += take;
                    if *n == 0 {
                        *self = At::Head(Head::default());
                    }
                }
                At::Data(n) => {
                    let take = rest.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                    *n -= take as u64;
                    i += take;
                    if *n == 0 {
                        *self = At::DataEnd(false);
                    }
                }
                At::DataEnd(cr) => {
                    match (rest[0], *cr) {
                        (b'\r', false) => *cr = true,
                        (b'\n', true) => {
                            *self = At::Size {
                                size: 0,
                                digits_done: false,
                                cr: false,
                            }
                        }
                        (b'\n', false) => return Found::Broken(i, Broken::BareLf),
                        // Not CRLF at all: hyper refuses the body.
                        _ => *self = At::Through,
                    }
                    i += 1;
                }
                At::Size {
                    size,
                    digits_done,
                    cr,
                } => {
                    match rest[0] {
                        b'\n' if !*cr => return Found::Broken(i, Broken::BareLf),
                        b'\n' => {
                            *self = match *size {
                                0 => At::Head(Head {
                                    trailer: true,
                                    ..Head::default()
                                }),
                                n => At::Data(n),
                            };
                        }
                        b'\r' => {
                            *digits_done = true;
                            *cr = true;
                        }
                        b => {
                            *cr = false;
                            if !*digits_done {
                                match (char::from(b).to_digit(16), size.checked_mul(16)) {
                                    (Some(d), Some(s)) => *size = s + u64::from(d),
                                    // The extension begins; or a size too big, which hyper
                                    // refuses.
                                    (None, _) => *digits_done = true,
                                    (Some(_), None) => *self = At::Through,
                                }
                            }
                        }
                    }
                    i += 1;
                }
                At::Head(h) => {
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        h.keep(rest);
                        h.cr = rest.last() == Some(&b'\r');
                        return Found::Fine;
                    };
                    let cr = match nl {
                        0 => h.cr,
                        _ => rest[nl - 1] == b'\r',
                    };
                    if !cr {
                        return Found::Broken(i + nl, Broken::BareLf);
                    }
                    h.cr = false;
                    let ended = h.line_ended(&rest[..nl]);
                    i += nl + 1;
                    if ended {
                        let (request, tunnel) = (!h.trailer, h.tunnel);
                        match h.next() {
                            Ok(next) => *self = next,
                            Err(why) => return Found::Broken(i - 1, why),
                        }
                        if request {
                            seen.heads += 1;
                            seen.asked = tunnel;
                        }
                    }
                }
            }
        }
        Found::Fine
    }
}

/// The framing of one connection's requests, followed read by read: what [`Strict`] runs,
/// public so that it can be fuzzed.
#[derive(Debug, Clone)]
pub struct Framing {
    at: At,
    seen: Seen,
}

impl Default for Framing {
    /// At the start of a connection: a request head comes first.
    fn default() -> Self {
        Framing {
            at: At::Head(Head::default()),
            seen: Seen::default(),
        }
    }
}

impl Framing {
    /// Follows the next bytes read; returns the index (in `bytes`) of the first byte that
    /// breaks a rule, and the rule. After a broken rule the framing is lost: scan no further.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<(usize, Broken)> {
        match self.at.scan(bytes, &mut self.seen) {
            Found::Fine => None,
            Found::Broken(k, why) => Some((k, why)),
        }
    }

    /// The last request asked for an upgrade (or was a `CONNECT`): if it was answered with
    /// a switch, what follows is a tunnel's.
    pub fn asked_to_switch(&self) -> bool {
        self.seen.asked
    }

    /// The connection switched protocols: its bytes are no longer looked at.
    pub fn switched(&mut self) {
        self.at = At::Through;
    }

    /// True once the bytes are no longer looked at.
    pub fn stood_aside(&self) -> bool {
        matches!(self.at, At::Through)
    }

    /// The next byte is in a request head (not a body, nor a body's trailers): a request
    /// refused here never reached the handler.
    pub fn in_request_head(&self) -> bool {
        matches!(&self.at, At::Head(h) if !h.trailer)
    }

    /// Request heads read to their end so far.
    pub fn heads(&self) -> u32 {
        self.seen.heads
    }
}

/// The start of the answer hyper writes when its parser fails.
const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\n";

impl<T: AsyncRead + Unpin, F: FnOnce(Broken) -> Option<Bytes> + Unpin> AsyncRead for Strict<T, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refused.is_some() {
            // The refused request is where reading ends.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        // A request that asked to switch protocols was answered with the switch: the rest is
        // a tunnel's (the client sends nothing of it before the answer).
        if this.framing.asked_to_switch() && this.cut.switched() {
            this.framing.switched();
        }
        if this.framing.stood_aside() {
            return Poll::Ready(Ok(()));
        }
        if let Some((k, why)) = this.framing.scan(&buf.filled()[before..]) {
            // hyper gets the request up to the offending byte, which becomes one no head may
            // hold: its parser fails right there, whatever it was reading.
            let at = before + k;
            buf.filled_mut()[at] = POISON;
            buf.set_filled(at + 1);
            this.refused = Some(why);
            // A request whose head was whole is the handler's: it answers the broken body.
            if this.framing.in_request_head()
                && let Some(f) = this.on_refuse.take()
            {
                let answer = f(why);
                if this.framing.heads() == 0 {
                    this.rewrite = answer;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A byte that ends any head hyper is parsing with an error: a control character is allowed
/// in no method, target, version, field name or value, and is no line end.
const POISON: u8 = 0x01;

impl<T: AsyncWrite + Unpin, F: Unpin> Strict<T, F> {
    /// Writes what is left of rouse's answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(a) = self.answer.as_mut() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, a))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = a.split_to(n);
            if a.is_empty() {
                self.answer = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin, F: Unpin> AsyncWrite for Strict<T, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() && !this.answered {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        if this.answered {
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(data.len()));
        }
        // Answers to earlier requests go out as they are; hyper's 400 for the refused one
        // becomes rouse's.
        match memchr::memmem::find(data, HYPER_400) {
            Some(0) => {
                this.answered = true;
                this.answer = this.rewrite.take();
                ready!(this.poll_answer(cx))?;
                Poll::Ready(Ok(data.len()))
            }
            Some(s) => Pin::new(&mut this.io).poll_write(cx, &data[..s]),
            None => Pin::new(&mut this.io).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() && !this.answered {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `parts` as successive reads; the first broken rule, with its index in the whole.
    fn scan(parts: &[&[u8]]) -> Option<(usize, Broken)> {
        let mut at = Framing::default();
        let mut offset = 0;
        for p in parts {
            if let Some((k, why)) = at.scan(p) {
                return Some((offset + k, why));
            }
            offset += p.len();
        }
        None
    }

    /// Every way of cutting `whole` in two.
    fn every_split(whole: &[u8]) -> impl Iterator<Item = Option<(usize, Broken)>> + '_ {
        (0..=whole.len()).map(move |i| scan(&[&whole[..i], &whole[i..]]))
    }

    #[test]
    fn well_framed_requests_pass_however_they_are_cut() {
        let whole: &[u8] = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab\ncd\
            POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;ext=1\r\na\nb\r\n0\r\nx-trailer: 1\r\n\r\n\
            GET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        for (i, r) in every_split(whole).enumerate() {
            assert_eq!(r, None, "cut at {i}");
        }
    }

    #[test]
    fn a_bare_lf_anywhere_in_framing_is_found_at_its_byte() {
        for (whole, lf) in [
            (&b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..], 14),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 23),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 25),
            (b"\nGET / HTTP/1.1\r\n\r\n", 0),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
                48,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
                53,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nt: 1\n\r\n",
                54,
            ),
            // A second request on the connection, after a body holding LFs of its own.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n\n\nGET / HTTP/1.1\n\r\n",
                54,
            ),
        ] {
            for (i, r) in every_split(whole).enumerate() {
                assert_eq!(
                    r,
                    Some((lf, Broken::BareLf)),
                    "{:?} cut at {i}",
                    String::from_utf8_lossy(whole)
                );
            }
        }
    }

    #[test]
    fn length_and_chunked_together_are_found_at_the_end_of_the_head() {
        let whole: &[u8] =
            b"POST / HTTP/1.1\r\ncontent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let end = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 3;
        for (i, r) in every_split(whole).enumerate() {
            assert_eq!(r, Some((end, Broken::LengthAndChunked)), "cut at {i}");
        }
    }

    #[test]
    fn after_an_upgrade_request_the_next_request_is_checked_until_a_switch() {
        // Not switched (the upgrade was declined): the next request is a request.
        let whole: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\r\n";
        assert_eq!(scan(&[whole]), Some((46, Broken::BareLf)));
        let mut f = Framing::default();
        assert_eq!(
            f.scan(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            None
        );
        assert!(f.asked_to_switch());
        // Switched: a tunnel's bytes are not looked at.
        f.switched();
        assert_eq!(f.scan(b"any\nbytes"), None);
        assert!(f.stood_aside());
    }

    #[test]
    fn lengths_are_read_as_hyper_reads_them_and_the_rest_refused() {
        for (whole, want) in [
            (&b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\na\nb\ncGET / HTTP/1.1\r\n\r\n"[..], None),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nab", Some(Broken::LengthUnreadable)),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nab", Some(Broken::LengthUnreadable)),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999999\r\n\r\nx",
                Some(Broken::LengthUnreadable),
            ),
            // A length that cannot be read does not hide a Transfer-Encoding beside it.
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5, 5\r\n\r\n0\r\n\r\n",
                Some(Broken::LengthAndChunked),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n",
                Some(Broken::LengthAndChunked),
            ),
        ] {
            for (i, r) in every_split(whole).enumerate() {
                assert_eq!(
                    r.map(|(_, why)| why),
                    want,
                    "{:?} cut at {i}",
                    String::from_utf8_lossy(whole)
                );
            }
        }
        // Leading zeros past what a split line keeps: refused, not passed unread.
        let long = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0".repeat(120)
        );
        let (a, b) = long.as_bytes().split_at(40);
        assert_eq!(
            scan(&[a, b]).map(|(_, why)| why),
            Some(Broken::LengthAndChunked)
        );
    }

    /// Reads what `Strict` passes on from `input`, then writes `answer` through it; returns
    /// (what was passed on, what reached the client).
    async fn through(input: &[u8], answer: &[u8]) -> (Vec<u8>, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut s = Strict::new(server, Cut::default(), |_| {
            Some(Bytes::from_static(b"rouse's answer"))
        });
        client.write_all(input).await.unwrap();
        let mut passed = vec![0u8; 4096];
        let n = s.read(&mut passed).await.unwrap();
        passed.truncate(n);
        s.write_all(answer).await.unwrap();
        s.flush().await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        (passed, got)
    }

    #[tokio::test]
    async fn only_a_first_refused_requests_400_becomes_rouses() {
        let hyper_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        // The first request breaks a rule: hyper gets it up to the poisoned byte, and its 400
        // is replaced.
        let (passed, got) = through(b"GET / HTTP/1.1\nHost: a\r\n\r\n", hyper_400).await;
        assert_eq!(passed, b"GET / HTTP/1.1\x01");
        assert_eq!(got, b"rouse's answer");
        // After a good request, the earlier answer and hyper's 400 go out as they are.
        let earlier = [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            hyper_400,
        ]
        .concat();
        let (passed, got) = through(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\r\n\r\n",
            &earlier,
        )
        .await;
        assert!(passed.ends_with(b"GET /b HTTP/1.1\x01"), "{passed:?}");
        assert_eq!(got, earlier);
        // Nothing refused: writes pass untouched.
        let (passed, got) = through(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", hyper_400).await;
        assert_eq!(passed, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(got, hyper_400);
    }
}
