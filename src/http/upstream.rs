//! rouse's own HTTP/1.1 upstream connection: the request head is written straight from the
//! request's parts, the response head read by `http::head`, and the whole exchange runs in
//! the task of the request itself.
//!
//! Why not hyper's client connection: it runs every connection as a task of its own, so each
//! request crossed from the client connection's task to the upstream connection's task and back
//! (a channel send, a reply oneshot, two scheduler hand-offs), and an idle connection kept a
//! task. Here an exchange is a plain future of the request's task: write the head (and stream
//! the body, if any), read the response head, and hand back a body that reads the rest from the
//! same socket. An idle connection is a socket and two buffers in its pool.
//!
//! Responses are read strictly (RFC 9112 §6): a `Content-Length` (a list of equal values
//! counts as one), a `Transfer-Encoding` ending in `chunked`, or a body that runs to the
//! connection's end; no body after `HEAD`, `204` or `304`. A malformed head or chunk fails the
//! exchange and the connection is dropped. `1xx` answers other than `101` are skipped. A
//! connection goes back to its pool only when the response was read to its end, the request's
//! body was sent whole, nothing more arrived, and neither side said `close`.
//!
//! A response's fields usually go to the client as the backend wrote them
//! ([`h1::Verbatim`]): the head's lines are kept, the connection's own fields and the length
//! taken out in place, and no `HeaderMap` is built. The request's forwarding fields, when kept
//! aside ([`Outgoing`]), are written into the head after the map's.

pub use crate::http::downstream::{BodyFault, OutBody, Outgoing};
use crate::http::h1::{
    self, Chunk, Framing, MAX_HEAD, Malformed, Next, Verbatim, head_fault, next_frame, write_field,
};
use crate::http::headers::{Hop, content_length, ends_in_chunked, tokens};
use crate::http::lines::Lines;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// First read size; reads that fill it grow the next one, up to [`MAX_READ`].
const FIRST_READ: usize = 8 << 10;
/// The most an upstream connection buffers from the backend. Body pieces handed to the client
/// are slices of this buffer, so while a client reads slowly, the buffer stays allocated for
/// it: 64 KiB still takes a backend's write in one read.
const MAX_READ: usize = 64 << 10;

/// The transport of an upstream connection.
#[derive(Debug)]
pub enum Io {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS to the backend.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(t) => t,
            Io::Tls(t) => t.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, data),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One upstream HTTP/1.1 connection, idle or carrying one exchange.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    /// Bytes read from the backend and not yet handed on.
    buf: BytesMut,
    /// The request head being written; kept between requests so its allocation is reused.
    head: Vec<u8>,
    /// Size of the next read.
    next_read: usize,
    /// The exchange whose response is being read, if any.
    ex: Carrying,
}

/// What a connection knows of the exchange it carries while the response body is read. Kept
/// in the connection's box rather than in the body: the response moves through several
/// futures on its way to the client, and with a body of one pointer it is small enough
/// (128 bytes) to move in a few loads and stores instead of a call to `memcpy` each time.
#[derive(Debug)]
struct Carrying {
    body: Framing,
    /// The rest of the request body, when the backend answered before taking all of it.
    pump: Option<Box<Pump>>,
    /// The connection may carry another exchange once this one is over.
    reuse: bool,
    keep_alive: Option<Duration>,
    /// Where the connection goes back to when the body is over; none while it idles there
    /// (an idle connection holding its set would keep the set alive).
    home: Option<Arc<dyn Home>>,
    /// A `101` the request asked for: the connection is the tunnel's.
    upgrade: bool,
    /// The head's fields as the backend wrote them, until the client's writer takes them.
    verbatim: Option<Verbatim>,
}

impl Carrying {
    /// The body is over and the connection is not a tunnel's: nothing keeps it from going
    /// home but, when they were kept, the fields as written, until they are taken.
    fn over(&self) -> bool {
        self.body == Framing::Done && !self.upgrade
    }

    /// No exchange.
    const NONE: Carrying = Carrying {
        body: Framing::Done,
        pump: None,
        reuse: false,
        keep_alive: None,
        home: None,
        upgrade: false,
        verbatim: None,
    };
}

impl Conn {
    /// A connection over `io`, as yet unused. Boxed: it moves with each exchange, from its
    /// pool into the response body and back.
    pub fn new(io: Io) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            next_read: FIRST_READ,
            ex: Carrying::NONE,
        })
    }

    /// True when an idle connection can carry no request: the backend closed it, or sent
    /// something nobody asked for. Peeks at the socket without blocking.
    pub fn is_closed(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let tcp = self.io.tcp();
        // The socket is asked only when tokio knows it readable: an idle connection that got
        // nothing since its last read costs no call here (nor a turn of the task's budget,
        // as a peek through tokio would), and a peek that finds nothing clears the mark.
        let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
            use std::os::fd::AsRawFd;
            let mut one = [0u8; 1];
            nix::sys::socket::recv(
                tcp.as_raw_fd(),
                &mut one,
                nix::sys::socket::MsgFlags::MSG_PEEK,
            )
            .map_err(io::Error::from)
        });
        // A byte or the end (or an error): either way not an idle HTTP/1.1 connection any
        // more.
        !matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more from the backend into the buffer; `Ok(0)` is the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.next_read / 2 {
            self.buf.reserve(self.next_read);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        // A read that filled the room asks for more next time, up to the cap.
        if n == room {
            self.next_read = (self.next_read * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes the encoded head from `*at` on; `*at` counts what went out.
    fn poll_write_head(&mut self, cx: &mut Context<'_>, at: &mut usize) -> Poll<io::Result<()>> {
        while *at < self.head.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.head[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads until a final response head is in (skipping `1xx` other than `101`).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        read_any: &mut bool,
        head_only: bool,
    ) -> Poll<Result<Head, Failure>> {
        loop {
            if let Some(head) = final_head(&mut self.buf, head_only, true)? {
                return Poll::Ready(Ok(head));
            }
            let n = ready!(self.poll_fill(cx)).map_err(Failure::Read)?;
            if n == 0 {
                return Poll::Ready(Err(match self.buf.is_empty() && !*read_any {
                    true => Failure::Closed,
                    false => Failure::HeadCut,
                }));
            }
            *read_any = true;
        }
    }
}

/// What made an exchange fail.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The shared HTTP/2 connection's error.
    #[error("{0}")]
    H2(#[from] hyper::Error),
    /// Writing the request failed.
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    /// Reading the response failed.
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    /// The backend closed the connection before answering.
    #[error("the backend closed the connection before answering")]
    Closed,
    /// The backend closed the connection in the middle of the response head.
    #[error("the backend closed the connection in the middle of the response head")]
    HeadCut,
    /// The response head is not valid HTTP/1.1.
    #[error("malformed response head: {0}")]
    Head(&'static str),
    /// The response head is larger than rouse accepts.
    #[error("response head larger than {} KiB", MAX_HEAD >> 10)]
    HeadTooLarge,
    /// The body ended before its length or its last chunk.
    #[error("the backend closed the connection before the response body ended")]
    BodyCut,
    /// The chunked framing of the body is broken.
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
    /// The client's request body failed while it was being sent.
    #[error("the request body failed: {0}")]
    RequestBody(String),
    /// The backend switched protocols though the request asked for no upgrade.
    #[error("the backend answered 101 to a request that asked for no upgrade")]
    UnaskedSwitch,
}

impl From<Malformed> for Failure {
    fn from(m: Malformed) -> Failure {
        Failure::Chunk(m.0)
    }
}

impl Failure {
    /// The shared HTTP/2 connection's error, if that is what failed.
    pub fn h2(&self) -> Option<&hyper::Error> {
        match self {
            Failure::H2(e) => Some(e),
            _ => None,
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    /// The fields read into a map, when they are not kept as written. Boxed: that is the rare
    /// case, and a head moves a few times on its way to the response, each time a call to
    /// `memcpy` when the map made it larger than a few words.
    headers: Option<Box<HeaderMap>>,
    /// The fields as the backend wrote them, when they go to the client so (`headers` is then
    /// none).
    verbatim: Option<Verbatim>,
    body: Framing,
    /// Neither side asked to close (`Connection: close`, or HTTP/1.0 without `keep-alive`).
    reuse: bool,
    /// How long the backend keeps an idle connection, less a margin (`Keep-Alive: timeout=N`).
    keep_alive: Option<Duration>,
}

/// A head's fields read into a map (a copy; empty for a head kept as written), for the
/// checks that compare heads.
fn map(head: &Head) -> HeaderMap {
    head.headers.as_deref().cloned().unwrap_or_default()
}

/// The final response head at the front of `buf`, once it is whole: `1xx` answers other than
/// `101` are taken out and skipped; a head not whole within [`MAX_HEAD`] is refused.
/// `verbatim`: as for [`parse_head`].
fn final_head(
    buf: &mut BytesMut,
    head_only: bool,
    verbatim: bool,
) -> Result<Option<Head>, Failure> {
    while !buf.is_empty() {
        match parse_head(buf, head_only, verbatim)? {
            Some(h)
                if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Some(h) => return Ok(Some(h)),
            None if buf.len() >= MAX_HEAD => return Err(Failure::HeadTooLarge),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// What a response field is to the connection reading it, by its name (matched by length,
/// then in any case, without making a `HeaderName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Length,
    TransferEncoding,
    Connection,
    KeepAlive,
    Upgrade,
    /// `Proxy-Connection`, `Proxy-Authenticate`, `TE`: a connection's, dropped.
    Scoped,
    Date,
    /// Any other field: the client's.
    Other,
}

fn role(name: &[u8]) -> Role {
    let is = |n: &[u8]| h1::is_name(name, n);
    match name.len() {
        2 if is(b"te") => Role::Scoped,
        4 if is(b"date") => Role::Date,
        7 if is(b"upgrade") => Role::Upgrade,
        10 if is(b"connection") => Role::Connection,
        10 if is(b"keep-alive") => Role::KeepAlive,
        14 if is(b"content-length") => Role::Length,
        16 if is(b"proxy-connection") => Role::Scoped,
        17 if is(b"transfer-encoding") => Role::TransferEncoding,
        18 if is(b"proxy-authenticate") => Role::Scoped,
        _ => Role::Other,
    }
}

/// A mark for each of a head's fields (at most [`crate::http::head::MAX_HEADERS`]), as two
/// words: a `u128` shifted by a field's index cost a dozen instructions for each mark and
/// each test.
#[derive(Debug, Default, Clone, Copy)]
struct Marks([u64; 2]);

impl Marks {
    fn set(&mut self, i: usize) {
        self.0[(i >> 6) & 1] |= 1 << (i & 63);
    }

    fn has(&self, i: usize) -> bool {
        self.0[(i >> 6) & 1] & (1 << (i & 63)) != 0
    }

    fn or(self, other: Marks) -> Marks {
        Marks([self.0[0] | other.0[0], self.0[1] | other.0[1]])
    }

    fn count(&self) -> usize {
        (self.0[0].count_ones() + self.0[1].count_ones()) as usize
    }
}

/// Parses a response head from the front of `buf`, taking it out if complete. With `verbatim`,
/// a head that allows it keeps its fields as the backend wrote them ([`Verbatim`]) and its map
/// stays empty; one that does not (a `1xx`, a field line ending in a bare LF, a `Connection`
/// naming other fields, a doubtful length) is read into the map.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    verbatim: bool,
) -> Result<Option<Head>, Failure> {
    // Each field as (name start, name end, value start, value end) in the head.
    let mut at = crate::http::head::Spans::new();
    let (len, minor, code, bare) = match crate::http::head::response(buf, &mut at) {
        Ok(Some((n, ..))) if n > MAX_HEAD => return Err(Failure::HeadTooLarge),
        Ok(Some(read)) => read,
        Ok(None) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Failure::Head("more than 100 header fields"));
        }
        Err(e) => return Err(Failure::Head(head_fault(e))),
    };
    let count = at.len();
    let status = StatusCode::from_u16(code).map_err(|_| Failure::Head("invalid status code"))?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let fields = &at[..count];
    // Fields that describe this connection are read here and not kept: the proxy would only
    // strip them again (RFC 9110 §7.6.1). A `Connection` naming other fields is kept, for the
    // proxy's stripping to remove those too; so is `Upgrade` on a `101`, which the tunnel
    // passes on. `kept` has a bit for each field the client is to get.
    let mut kept = Marks::default();
    // The lengths: only the map keeps them as fields.
    let mut in_map = Marks::default();
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut odd_length = false;
    let mut chunked: Option<bool> = None;
    let mut close = false;
    let mut keep = false;
    let mut keep_alive = None;
    let mut date = false;
    // A `Connection` naming other fields is kept, for the proxy's stripping.
    let mut names_others = false;
    let head = &buf[..len];
    for (i, &(ns, ne, vs, ve)) in fields.iter().enumerate() {
        let value = &head[vs as usize..ve as usize];
        let client_gets = match role(&head[ns as usize..ne as usize]) {
            Role::Length => {
                // A length written other than as its number (`5, 5`, `05`), or given twice, is
                // kept in the map as written.
                odd_length |= value.first() == Some(&b'0') && value.len() > 1
                    || !value.iter().all(u8::is_ascii_digit)
                    || length.is_some()
                    || bad_length;
                match content_length(value) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => bad_length = true,
                }
                // Kept in the map; a head kept as written carries it apart.
                in_map.set(i);
                false
            }
            Role::TransferEncoding => {
                // The last coding of the last field decides.
                chunked = Some(ends_in_chunked(value));
                false
            }
            Role::Connection => {
                let mut others = false;
                for t in tokens(value) {
                    let (c, k) = (
                        t.eq_ignore_ascii_case(b"close"),
                        t.eq_ignore_ascii_case(b"keep-alive"),
                    );
                    close |= c;
                    keep |= k;
                    others |= !(c || k || t.eq_ignore_ascii_case(b"upgrade"));
                }
                names_others |= others;
                others
            }
            Role::KeepAlive => {
                keep_alive = crate::http::headers::keep_alive_timeout(value);
                false
            }
            Role::Upgrade => code == 101,
            Role::Scoped => false,
            Role::Date => {
                date = true;
                true
            }
            Role::Other => true,
        };
        if client_gets {
            kept.set(i);
        }
    }
    // Transfer-Encoding in an HTTP/1.0 message is faulty framing (RFC 9112 §6.1); hyper's
    // client refuses it too.
    if version == Version::HTTP_10 && chunked.is_some() {
        return Err(Failure::Head("Transfer-Encoding in an HTTP/1.0 response"));
    }
    let mut reuse = match version {
        Version::HTTP_10 => keep && !close,
        _ => !close,
    };
    let no_body = head_only || matches!(code, 100..=199 | 204 | 304);
    let body = match chunked {
        _ if no_body => Framing::Done,
        Some(true) => {
            // A length beside chunked is ignored (RFC 9112 §6.3), but such a connection is
            // not trusted with another exchange.
            reuse &= length.is_none() && !bad_length;
            Framing::Chunked(Chunk::Size)
        }
        Some(false) => {
            reuse = false;
            Framing::Close
        }
        None if bad_length => return Err(Failure::Head("invalid Content-Length")),
        None => match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => {
                reuse = false;
                Framing::Close
            }
        },
    };
    // A length the framing does not follow goes to the client as the map path reads it.
    let plain_length = !bad_length && !odd_length && (chunked.is_none() || length.is_none());
    // Every field kept must be one a client may get as it is: a `Connection` naming others
    // needs the proxy's stripping, and a line ending in LF alone is not passed on.
    let as_is = verbatim && !bare && plain_length && !status.is_informational() && !names_others;
    let mut raw = buf.split_to(len);
    let (headers, verbatim) = match as_is {
        true => {
            // The kept lines move up over the dropped ones, in place: the lines only shrink.
            // Every line ends in CRLF, so each one ends where the next begins, and the last
            // where the head's empty line does; lines before the first dropped one stay put.
            let end = len - 2;
            let mut to = fields.first().map_or(0, |f| f.0 as usize);
            let from = to;
            for (i, &(ns, ..)) in fields.iter().enumerate() {
                if !kept.has(i) {
                    continue;
                }
                let (s, e) = (ns as usize, fields.get(i + 1).map_or(end, |f| f.0 as usize));
                if s != to {
                    raw.copy_within(s..e, to);
                }
                to += e - s;
            }
            let lines = raw.freeze().slice(from..to);
            (None, Some(Verbatim::new(lines, length, date)))
        }
        false => {
            let raw = raw.freeze();
            let kept = kept.or(in_map);
            let mut headers = HeaderMap::with_capacity(kept.count());
            for (i, &(ns, ne, vs, ve)) in fields.iter().enumerate() {
                if !kept.has(i) {
                    continue;
                }
                let name = h1::field_name(&raw[ns as usize..ne as usize])
                    .map_err(|_| Failure::Head("invalid header name"))?;
                let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
                    .map_err(|_| Failure::Head("invalid header value"))?;
                headers.append(name, value);
            }
            (Some(Box::new(headers)), None)
        }
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        verbatim,
        body,
        reuse,
        keep_alive,
    }))
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// No body.
    Nothing,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked (the length is not known in advance).
    Chunked,
}

/// What writing a request's head found out in its one pass over the fields.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// How the body goes out, which the head's framing says.
    sending: Sending,
    /// The request asks to switch protocols (`Upgrade`).
    asks_upgrade: bool,
}

/// How `req`'s body goes out: by its `Content-Length` fields when there are some that agree
/// (`lengths`: the first one's value, and whether every other said the same), otherwise as
/// its body says.
fn sending(req: &Request<OutBody>, lengths: Option<(Option<u64>, bool)>) -> Sending {
    // Both server sides refuse disagreeing or unreadable lengths before a request gets here;
    // never forward one nobody can trust.
    if let Some((Some(n), true)) = lengths {
        return Sending::Length(n);
    }
    if req.body().is_end_stream() {
        return Sending::Nothing;
    }
    match req.body().size_hint().exact() {
        Some(n) => Sending::Length(n),
        None => Sending::Chunked,
    }
}

/// Writes the head of `req` into `dst`, with its framing: the lengths among its fields are
/// read in the same pass as they are left out (a route may have set one). `fields`, the
/// client's fields kept as written, go first, as they came before anything in the map.
fn encode_head(
    dst: &mut Vec<u8>,
    req: &Request<OutBody>,
    fields: Option<&Lines>,
    hop: Option<&Hop>,
) -> Written {
    dst.clear();
    dst.extend_from_slice(req.method().as_str().as_bytes());
    dst.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut lengths, mut asks_upgrade) = (None, false);
    if let Some(f) = fields {
        // They hold no `Upgrade` and no `Transfer-Encoding`, and their length is read already.
        f.write(dst);
        lengths = f.length().map(|n| (Some(n), true));
    }
    for (name, value) in req.headers() {
        // The framing is this function's to write, never a field's to claim: a stray
        // `Transfer-Encoding` or a second length would make the backend read a body that is
        // not there, or a second request out of one.
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let n = content_length(value.as_bytes());
            lengths = match lengths {
                None => Some((n, true)),
                Some((first, agree)) => Some((first, agree && n.is_some() && n == first)),
            };
            continue;
        }
        asks_upgrade |= name == header::UPGRADE;
        write_field(dst, name, value);
    }
    if let Some(hop) = hop {
        hop.write(dst);
    }
    let sending = sending(req, lengths);
    match sending {
        Sending::Nothing => {}
        Sending::Length(n) => {
            h1::write_length(dst, n);
        }
        Sending::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    dst.extend_from_slice(b"\r\n");
    Written {
        sending,
        asks_upgrade,
    }
}

/// The head this connection writes for `req` and `hop` (for the fuzz target and tests).
pub fn head_bytes(req: &Request<OutBody>, hop: Option<&Hop>) -> Vec<u8> {
    let mut dst = Vec::new();
    encode_head(&mut dst, req, None, hop);
    dst
}

/// The part of a request body still to be sent, sent as the exchange goes on.
#[derive(Debug)]
struct Pump {
    body: OutBody,
    chunked: bool,
    /// Bytes left to send under a `Content-Length`.
    left: u64,
    /// Framing and data waiting to be written, in order.
    out: VecDeque<Bytes>,
    /// The body has ended (its last framing may still be in `out`, or in the TLS session).
    ended: bool,
    /// All of it is written and flushed.
    finished: bool,
}

enum PumpError {
    /// The client's body failed or did not match its length.
    Body(String),
    /// Writing to the backend failed.
    Write(io::Error),
}

impl Sending {
    /// There are body bytes to send (a `Content-Length: 0` body has none: it is written as
    /// that field, and the request can go out again like one without a body).
    fn has_body(self) -> bool {
        !matches!(self, Sending::Nothing | Sending::Length(0))
    }
}

impl Pump {
    fn new(body: OutBody, sending: Sending) -> Pump {
        Pump {
            body,
            chunked: sending == Sending::Chunked,
            left: match sending {
                Sending::Length(n) => n,
                _ => 0,
            },
            out: VecDeque::new(),
            ended: false,
            finished: false,
        }
    }

    /// True once the whole body is written and flushed. Not before the flush: over TLS a
    /// write is taken into the session's buffer even when the socket is full, and nothing
    /// else would flush the last chunk.
    fn done(&self) -> bool {
        self.finished
    }

    /// Moves the body towards the backend as far as it can without waiting.
    fn poll(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            while let Some(front) = self.out.front_mut() {
                let n =
                    ready!(Pin::new(&mut *io).poll_write(cx, front)).map_err(PumpError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                }
                front.advance(n);
                if front.is_empty() {
                    self.out.pop_front();
                }
            }
            // Nothing is left buffered (TLS) while the body is waited for.
            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(PumpError::Write)?;
            if self.ended {
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    if self.chunked {
                        self.out.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    } else if self.left > 0 {
                        return Poll::Ready(Err(PumpError::Body(format!(
                            "the body ended {} bytes short of its Content-Length",
                            self.left
                        ))));
                    }
                    self.ended = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Body(e.to_string()))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        let mut line = Vec::with_capacity(18);
                        h1::write_chunk_size(&mut line, data.len());
                        self.out.push_back(Bytes::from(line));
                        self.out.push_back(data);
                        self.out.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => {
                        let n = data.len() as u64;
                        if n > self.left {
                            return Poll::Ready(Err(PumpError::Body(
                                "the body is longer than its Content-Length".into(),
                            )));
                        }
                        self.left -= n;
                        self.out.push_back(data);
                    }
                    Err(frame) => {
                        // Trailers travel only in a chunked body; the last chunk carries them.
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            let mut t = b"0\r\n".to_vec();
                            for (name, value) in &trailers {
                                write_field(&mut t, name, value);
                            }
                            t.extend_from_slice(b"\r\n");
                            self.out.push_back(Bytes::from(t));
                            self.chunked = false;
                            self.left = 0;
                            self.ended = true;
                        }
                    }
                },
            }
        }
    }
}

/// Where a connection goes back when its exchange ended cleanly: its endpoint's pool.
pub trait Home: Send + Sync + std::fmt::Debug {
    /// Takes `conn` back; `keep_alive` is how long the backend said it keeps an idle
    /// connection, if it did.
    fn put(self: Arc<Self>, conn: Box<Conn>, keep_alive: Option<Duration>);
}

/// Why an exchange failed, and what is left of its request.
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub failure: Failure,
    /// The request, handed back untouched when it can go out again: nothing of it was
    /// written (`unsent`), or it has no body and nothing of the response was read.
    pub back: Option<Box<Outgoing>>,
    /// Nothing of the request was written.
    pub unsent: bool,
}

/// Sends `req` over `conn` and reads the response head; the body reads the rest, and takes
/// the connection home when done.
///
/// The request comes boxed, and is handed back in the same box: it passes through three
/// futures on its way here (forwarding, pool, exchange), and a request of a few hundred bytes
/// inline in each would be copied at every step and make the whole larger than the
/// allocator's cheap sizes.
///
/// Written as a function returning an `async move` block rather than an `async fn`, which
/// would keep its arguments twice in the future (as given, and again as locals): this future
/// is part of what every request holds while it waits.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn exchange(
    mut conn: Box<Conn>,
    mut req: Box<Outgoing>,
    home: Arc<dyn Home>,
) -> impl Future<Output = Result<Response<UpBody>, Failed>> {
    async move {
        let head_only = req.method() == Method::HEAD;
        let Written {
            sending,
            asks_upgrade,
        } = encode_head(&mut conn.head, &req, req.fields.as_ref(), req.hop.as_ref());
        let mut written = 0;
        if let Err(e) = poll_fn(|cx| conn.poll_write_head(cx, &mut written)).await {
            return Err(Failed {
                failure: Failure::Write(e),
                unsent: written == 0,
                back: (written == 0 || !sending.has_body()).then_some(req),
            });
        }
        let mut pump = sending
            .has_body()
            .then(|| Pump::new(std::mem::replace(req.body_mut(), OutBody::Empty), sending));
        let mut read_any = false;
        let head = poll_fn(|cx| {
            if let Some(p) = &mut pump
                && !p.done()
            {
                match p.poll(&mut conn.io, cx) {
                    Poll::Ready(Err(PumpError::Body(why))) => {
                        return Poll::Ready(Err(Failure::RequestBody(why)));
                    }
                    // The backend stopped reading; it may have answered first.
                    Poll::Ready(Err(PumpError::Write(e))) => {
                        tracing::debug!(error = %e, "the backend stopped taking the request body");
                        pump = None;
                    }
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            conn.poll_head(cx, &mut read_any, head_only)
        })
        .await;
        let head = match head {
            Ok(h) => h,
            Err(failure) => {
                let replayable = !sending.has_body() && !read_any && conn.buf.is_empty();
                return Err(Failed {
                    failure,
                    unsent: false,
                    back: replayable.then_some(req),
                });
            }
        };
        // The request is done with: its header map is kept for the next head read on this
        // thread, moved out rather than taken, which would leave an empty map to drop.
        let Outgoing { req, .. } = *req;
        h1::maps::put(req.into_parts().0.headers);
        // A request body the backend stopped taking leaves the connection unfit for reuse (one
        // still being sent is judged when the response ends).
        let broken = sending.has_body() && pump.is_none();
        let body = match head.status.as_u16() {
            101 if asks_upgrade => Framing::Done,
            101 => {
                return Err(Failed {
                    failure: Failure::UnaskedSwitch,
                    unsent: false,
                    back: None,
                });
            }
            _ => head.body,
        };
        conn.ex = Carrying {
            body,
            pump: pump.filter(|p| !p.done()).map(Box::new),
            reuse: head.reuse && !broken,
            keep_alive: head.keep_alive,
            home: Some(home),
            upgrade: head.status == StatusCode::SWITCHING_PROTOCOLS,
            verbatim: head.verbatim,
        };
        // A body that is already over sends its connection home at once, for a request the
        // freed slot wakes; one whose fields were kept as written when they are taken, as
        // they are in the connection's care until then.
        let home_now = conn.ex.over() && conn.ex.verbatim.is_none();
        let mut out = H1Body { conn: Some(conn) };
        if home_now {
            out.finish();
        }
        // Made as the pool hands it on: mapping the body afterwards moves the response twice.
        let mut res = Response::new(UpBody::Left(out));
        *res.status_mut() = head.status;
        *res.version_mut() = head.version;
        if let Some(map) = head.headers {
            h1::maps::release(std::mem::replace(res.headers_mut(), *map));
        }
        Ok(res)
    }
}

/// A response body read from an upstream HTTP/1.1 connection, by whoever polls it.
#[derive(Debug)]
pub struct H1Body {
    /// The connection, with the exchange's state ([`Carrying`]), until the body is over and
    /// its fields kept as written are taken.
    conn: Option<Box<Conn>>,
}

/// The head's fields as the backend wrote them, if they were kept so (the response's map is
/// then empty). They are in the connection's care, so they must be taken before the body is
/// first polled: a body read to its end sends its connection home and lets go of them.
/// `ProxyBody::upstream` and `ProxyBody::timed`, the only readers of an upstream body, take
/// them as they wrap it.
impl crate::http::h1::Carries for H1Body {
    fn take_verbatim(&mut self) -> Option<Verbatim> {
        let conn = self.conn.as_mut()?;
        let taken = conn.ex.verbatim.take();
        // A body over from the start waited for this to send its connection home.
        if conn.ex.over() {
            self.finish();
        }
        taken
    }
}

/// A body dropped while over but not yet home (its fields kept as written never taken) sends
/// its connection home; one dropped half-read drops it. Only on a runtime: the pool's reaper
/// is a task, and a body dropped elsewhere (a runtime's own end) just closes its connection.
impl Drop for H1Body {
    fn drop(&mut self) {
        if self.conn.as_ref().is_some_and(|c| c.ex.over())
            && tokio::runtime::Handle::try_current().is_ok()
        {
            self.finish();
        }
    }
}

impl H1Body {
    /// The connection of a `101 Switching Protocols` answer, for the tunnel.
    pub fn upgraded(&mut self) -> Option<Upgraded> {
        if !self.conn.as_ref().is_some_and(|c| c.ex.upgrade) {
            return None;
        }
        let conn = *self.conn.take()?;
        Some(Upgraded {
            io: conn.io,
            rest: conn.buf.freeze(),
        })
    }

    /// The body is over: the connection goes home if it can carry another exchange.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // What is left of the exchange's state is set anew by the next exchange.
        let ex = &mut conn.ex;
        // The backend answered before the request body was all sent: the rest is dropped
        // with the connection.
        let whole = ex.pump.take().is_none_or(|p| p.done());
        if let Some(home) = ex.home.take()
            && ex.reuse
            && !ex.upgrade
            && whole
            && conn.buf.is_empty()
        {
            let keep_alive = ex.keep_alive;
            // Fields not taken by a writer point into the connection's old buffer.
            ex.verbatim = None;
            // A buffer grown for a large body is not kept while the connection idles.
            if conn.next_read > FIRST_READ {
                conn.buf = BytesMut::new();
                conn.next_read = FIRST_READ;
            }
            home.put(conn, keep_alive);
        }
    }

    /// Drives the rest of the request body, if any, as far as it goes without waiting.
    fn pump(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let Conn { io, ex, .. } = &mut **conn;
        let Some(p) = &mut ex.pump else {
            return;
        };
        match p.poll(io, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => ex.pump = None,
            Poll::Ready(Err(_)) => {
                ex.pump = None;
                ex.reuse = false;
            }
        }
    }

    /// The next frame from the buffer and the connection.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match next_frame(&mut conn.buf, &mut conn.ex.body)? {
                Next::Frame(f) => {
                    if conn.ex.body == Framing::Done {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Next::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Next::Need => {}
            }
            let n = ready!(conn.poll_fill(cx)).map_err(Failure::Read)?;
            if n == 0 {
                return match conn.ex.body {
                    Framing::Close => {
                        conn.ex.reuse = false;
                        self.finish();
                        Poll::Ready(None)
                    }
                    _ => Poll::Ready(Some(Err(Failure::BodyCut))),
                };
            }
        }
    }
}

/// Reads the head at the front of `wire` both ways, into a map and kept as written, and says
/// whether the two agree, for the fuzz target and tests: `Ok(Some(kept))` when both read it
/// (`kept`: it was kept as written), `Ok(None)` when both refused it or it is not whole, and
/// what differs otherwise. Kept as written, its lines must be whole fields, each ending in
/// CRLF, that read back as the map's fields less the length (carried apart), with the same
/// framing and the same bytes left for the body.
pub fn verbatim_agrees(wire: &[u8]) -> Result<Option<bool>, String> {
    let sorted = |m: &HeaderMap| {
        let mut f: Vec<(String, Vec<u8>)> = m
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        // Fields of different names may come in any order (RFC 9110 §5.3).
        f.sort_by(|a, b| a.0.cmp(&b.0));
        f
    };
    let (mut a, mut b) = (BytesMut::from(wire), BytesMut::from(wire));
    let (mapped, head) = match (
        parse_head(&mut a, false, false),
        parse_head(&mut b, false, true),
    ) {
        (Ok(Some(m)), Ok(Some(h))) => (m, h),
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => return Ok(None),
        (m, h) => return Err(format!("read into a map: {m:?}; kept as written: {h:?}")),
    };
    let same = a == b && mapped.body == head.body && mapped.reuse == head.reuse;
    if !same || mapped.status != head.status {
        return Err(format!("the heads differ: {mapped:?}, {head:?}"));
    }
    let Some(v) = head.verbatim.clone() else {
        return match sorted(&map(&head)) == sorted(&map(&mapped)) {
            true => Ok(Some(false)),
            false => Err(format!("the maps differ: {mapped:?}, {head:?}")),
        };
    };
    if head.headers.is_some() {
        return Err(format!("a head kept as written has a map: {head:?}"));
    }
    let mapped_map = map(&mapped);
    let mut without_length = mapped_map.clone();
    let length = without_length.remove(header::CONTENT_LENGTH);
    if v.length() != length.and_then(|l| content_length(l.as_bytes()))
        || v.date() != mapped_map.contains_key(header::DATE)
    {
        return Err(format!("length or date differ: {v:?}, {mapped:?}"));
    }
    let lines = v.lines();
    let mut again = b"HTTP/1.1 200 OK\r\n".to_vec();
    again.extend_from_slice(lines);
    again.extend_from_slice(b"\r\n");
    let whole = crate::http::head::httparse_response(&again);
    let ends = lines.iter().filter(|&&c| c == b'\n').count();
    let crs = lines.iter().filter(|&&c| c == b'\r').count();
    let fields = match whole {
        Ok(Some((len, _, _, fields)))
            if len == again.len()
                && fields.len() == ends
                && crs == ends
                && (lines.is_empty() || lines.ends_with(b"\r\n")) =>
        {
            fields
        }
        _ => return Err(format!("the lines are not whole fields: {lines:?}")),
    };
    let mut read = HeaderMap::new();
    for (ns, ne, vs, ve) in fields {
        let (name, value) = (
            &again[ns as usize..ne as usize],
            &again[vs as usize..ve as usize],
        );
        match (h1::field_name(name), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => read.append(n, v),
            _ => return Err(format!("a field of the lines is invalid: {lines:?}")),
        };
    }
    if sorted(&read) != sorted(&without_length) {
        return Err(format!(
            "the lines hold other fields: {lines:?}, {mapped:?}"
        ));
    }
    let mut into = HeaderMap::new();
    v.into_map(&mut into);
    match sorted(&into) == sorted(&mapped_map) {
        true => Ok(Some(true)),
        false => Err(format!("into_map differs: {into:?}, {mapped:?}")),
    }
}

/// Reads `wire` as a client's request head and, when its fields are kept as the client wrote
/// them, writes the upstream head from them, for the fuzz target and tests: `Ok(Some(()))`
/// when that head parses back as exactly one request, ending where it was written to end,
/// with the request's method and target, every field the map reading gives (names in any
/// case, values as the map holds them, those of one name in their order) but the length, and the length once, as a
/// number; `Ok(None)` when no head is read or its fields go into the map; what differs
/// otherwise.
pub fn kept_agrees(wire: &[u8]) -> Result<Option<()>, String> {
    let mut buf = BytesMut::from(wire);
    let Ok(Some(parsed)) = crate::http::downstream::parse_head(&mut buf, MAX_HEAD, true) else {
        return Ok(None);
    };
    let Some(lines) = parsed.request.fields.clone() else {
        return Ok(None);
    };
    let mut map = HeaderMap::new();
    lines.clone().into_map(&mut map);
    let req = parsed.request.req;
    let mut bytes = Vec::new();
    encode_head(&mut bytes, &req, Some(&lines), None);
    let mut fields = vec![httparse::EMPTY_HEADER; map.len() + 2];
    let mut back = httparse::Request::new(&mut fields);
    match back.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        other => return Err(format!("{other:?}: {:?}", String::from_utf8_lossy(&bytes))),
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if back.method != Some(req.method().as_str()) || back.path != Some(target) {
        return Err(format!(
            "the start line differs: {:?}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let is_length = |n: &str| n.eq_ignore_ascii_case("content-length");
    let mut want: Vec<(String, &[u8])> = map
        .iter()
        .filter(|(n, _)| !is_length(n.as_str()))
        .map(|(n, v)| (n.to_string(), v.as_bytes()))
        .collect();
    let mut got: Vec<(String, &[u8])> = back
        .headers
        .iter()
        .filter(|h| !is_length(h.name))
        .map(|h| (h.name.to_ascii_lowercase(), h.value.trim_ascii()))
        .collect();
    // Fields of different names may come in any order (RFC 9110 §5.3), and the map holds
    // each name's values together; those of one name keep their order.
    want.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let lengths: Vec<&[u8]> = back
        .headers
        .iter()
        .filter(|h| is_length(h.name))
        .map(|h| h.value)
        .collect();
    let length = lines.length().map(|n| n.to_string());
    let written = match lengths[..] {
        [] => None,
        [one] => Some(String::from_utf8_lossy(one).into_owned()),
        _ => {
            return Err(format!(
                "more than one length: {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
    };
    if got != want || written != length {
        return Err(format!(
            "the fields differ: {:?} against {map:?}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(Some(()))
}

/// A whole response as this connection reads it, from `wire` arriving in pieces of the given
/// lengths (the rest in one piece), then the connection's end: its status, fields, body and
/// trailers, or the failure. For the fuzz target and tests: however the bytes are cut, the
/// answer must be the same.
pub fn read_whole(
    wire: &[u8],
    pieces: &[usize],
    head_only: bool,
) -> Result<(StatusCode, HeaderMap, Vec<u8>, Option<HeaderMap>), Failure> {
    let mut cuts = pieces.iter().copied();
    let mut at = 0;
    let mut buf = BytesMut::new();
    // Feeds the next piece; false at the connection's end.
    let mut feed = |buf: &mut BytesMut| {
        if at >= wire.len() {
            return false;
        }
        let n = cuts.next().unwrap_or(wire.len()).clamp(1, wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        true
    };
    let head = loop {
        if let Some(h) = final_head(&mut buf, head_only, false)? {
            break h;
        }
        if !feed(&mut buf) {
            return Err(match buf.is_empty() && at == 0 {
                true => Failure::Closed,
                false => Failure::HeadCut,
            });
        }
    };
    let mut body = match head.status.as_u16() {
        101 => Framing::Done,
        _ => head.body,
    };
    let (mut data, mut trailers) = (Vec::new(), None);
    loop {
        match next_frame(&mut buf, &mut body)? {
            Next::Frame(f) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Next::End => break,
            Next::Need if feed(&mut buf) => {}
            Next::Need if body == Framing::Close => break,
            Next::Need => return Err(Failure::BodyCut),
        }
    }
    Ok((head.status, map(&head), data, trailers))
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        let this = self.get_mut();
        if this.conn.as_ref().is_some_and(|c| c.ex.pump.is_some()) {
            this.pump(cx);
        }
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken body leaves the connection in an unknown state: it is dropped.
            this.conn = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.conn
            .as_ref()
            .is_none_or(|c| c.ex.body == Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.as_ref().map(|c| c.ex.body) {
            None | Some(Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream response body: `Left` from rouse's own HTTP/1.1 connection, `Right` from
/// hyper's HTTP/2 one.
///
/// Both sides are a pointer, so that the response moves inline (see [`Carrying`]); hyper's
/// body (40 bytes) is boxed.
pub type UpBody = http_body_util::Either<H1Body, Box<Incoming>>;

/// Only rouse's own HTTP/1.1 connection keeps fields as the backend wrote them.
impl crate::http::h1::Carries for UpBody {
    fn take_verbatim(&mut self) -> Option<Verbatim> {
        match self {
            UpBody::Left(b) => b.take_verbatim(),
            UpBody::Right(_) => None,
        }
    }
}

/// The upstream connection of an upgrade the backend accepted (`101`).
pub fn upgraded(body: &mut UpBody) -> Option<Upgraded> {
    match body {
        UpBody::Left(b) => b.upgraded(),
        UpBody::Right(_) => None,
    }
}

/// The upstream side of a tunnel: the connection, and what the backend sent past its `101`.
#[derive(Debug)]
pub struct Upgraded {
    io: Io,
    rest: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let n = this.rest.len().min(buf.remaining());
            buf.put_slice(&this.rest[..n]);
            this.rest.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::{MAX_CHUNK_LINE, Step, chunk_step};

    fn head(bytes: &[u8], head_only: bool) -> Result<Option<Head>, Failure> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, head_only, false)
    }

    /// The upstream response, and the results that carry it from the exchange to the
    /// forwarding, move inline (see [`Carrying`]): 128 bytes or less.
    #[test]
    fn an_upstream_response_is_small_enough_to_move_inline() {
        use std::mem::size_of;
        type Res = Response<UpBody>;
        assert!(size_of::<Res>() <= 128, "{}", size_of::<Res>());
        let failed = size_of::<Result<Res, Failed>>();
        assert!(failed <= 128, "{failed}");
        let sent = size_of::<Result<Res, crate::http::client::SendError>>();
        assert!(sent <= 128, "{sent}");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = |b: &str| head(b.as_bytes(), false).unwrap().unwrap();
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").body,
            Framing::Length(5)
        );
        assert_eq!(
            h("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").body,
            Framing::Length(5)
        );
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").body,
            Framing::Chunked(Chunk::Size)
        );
        let close = h("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((close.body, close.reuse), (Framing::Close, false));
        let bare = h("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((bare.body, bare.reuse), (Framing::Close, false));
        // Length beside chunked: the chunks frame it, and the connection is not reused.
        let both = h("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(
            (both.body, both.reuse),
            (Framing::Chunked(Chunk::Size), false)
        );
        assert_eq!(
            h("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n").body,
            Framing::Done
        );
        assert_eq!(h("HTTP/1.1 304 Not Modified\r\n\r\n").body, Framing::Done);
        let after_head = head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true);
        assert_eq!(after_head.unwrap().unwrap().body, Framing::Done);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let h = |b: &str| head(b.as_bytes(), false).unwrap().unwrap();
        assert!(h("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").reuse);
        assert!(!h("HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n").reuse);
        assert!(!h("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").reuse);
        let ten = h(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(ten.reuse);
        assert_eq!(ten.keep_alive, Some(Duration::from_secs(4)));
        assert_eq!(ten.version, Version::HTTP_10);
    }

    #[test]
    fn bad_heads_are_refused_and_partial_ones_wait() {
        let err = |b: &str| head(b.as_bytes(), false).unwrap_err().to_string();
        assert!(
            err("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n")
                .contains("Content-Length")
        );
        assert!(err("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").contains("Content-Length"));
        assert!(err("HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n").contains("Content-Length"));
        assert!(err("HTTP/1.1 2000 OK\r\n\r\n").contains("malformed"));
        assert!(err("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").contains("HTTP/1.0"));
        assert!(err("SSH-2.0-OpenSSH\r\n\r\n").contains("malformed"));
        assert!(err("HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n").contains("header name"));
        assert!(
            head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
        let many: String = (0..=crate::http::head::MAX_HEADERS)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert!(err(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).contains("100"));
    }

    #[test]
    fn the_head_is_taken_out_and_the_body_stays() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nx-a: 1\r\nX-B: two\r\ncontent-length: 2\r\n\r\nokHTTP"[..],
        );
        let h = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(&buf[..], b"okHTTP");
        assert_eq!(map(&h).get("x-a").unwrap(), "1");
        assert_eq!(map(&h).get("x-b").unwrap(), "two");
        assert_eq!(h.status, StatusCode::OK);
    }

    /// A head kept as the backend wrote it gives the client what the map would: its lines,
    /// read back as a head, are the map's fields less the length (carried apart), and
    /// `into_map` makes the same map. A head that cannot be kept so is read into the map.
    #[test]
    fn verbatim_lines_hold_what_the_map_would() {
        let corpus: &[(&[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", true),
            (b"HTTP/1.1 200 OK\r\nX-A:   spaced \t \r\nx-b:\r\nX-A:b\r\nKeep-Alive: timeout=5\r\nTE: x\r\nx-c: caf\xc3\xa9\r\ncontent-length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\n\r\nto the end", true),
            (b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nContent-Length: 10\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n0\r\n\r\n", true),
            // Read into the map: a line with a bare LF (a kept one, or one the client does
            // not get), a Connection naming another field, a length beside chunked, a switch.
            (b"HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\ncontent-length: 0\r\n\r\n", false),
            (b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\nconnection: close\ncontent-length: 0\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\n", false),
            (b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: 1\r\ncontent-length: 0\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", false),
            (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n", false),
        ];
        for &(wire, kept) in corpus {
            let what = String::from_utf8_lossy(wire);
            assert_eq!(verbatim_agrees(wire), Ok(Some(kept)), "{what}");
        }
        // Refused heads are refused both ways.
        for wire in [
            &b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n",
        ] {
            assert_eq!(verbatim_agrees(wire), Ok(None));
        }
    }

    fn decode_all(mut wire: BytesMut) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), Failure> {
        let mut state = Chunk::Size;
        let mut data = Vec::new();
        loop {
            match chunk_step(&mut wire, state)? {
                Step::Need => return Err(Failure::BodyCut),
                Step::Moved(s) => state = s,
                Step::Data(d, s) => {
                    data.extend_from_slice(&d);
                    state = s;
                }
                Step::Trailers(t) => return Ok((data, Some(t), wire)),
                Step::End => return Ok((data, None, wire)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, trailers, rest) = decode_all(BytesMut::from(
            &b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT"[..],
        ))
        .unwrap();
        assert_eq!(data, b"hello!");
        assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
        assert_eq!(&rest[..], b"NEXT", "nothing past the body is consumed");
        let (data, trailers, _) =
            decode_all(BytesMut::from(&b"A\r\n0123456789\r\n0\r\n\r\n"[..])).unwrap();
        assert_eq!((data.len(), trailers), (10, None));
    }

    #[test]
    fn broken_chunk_framing_is_refused() {
        for (wire, why) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], "CRLF"),
            (b"z\r\nhello\r\n0\r\n\r\n", "hexadecimal"),
            (b"5 x\r\nhello\r\n0\r\n\r\n", "hexadecimal"),
            (b"5\r\nhelloXX0\r\n\r\n", "followed by CRLF"),
            (b"1000000000000000\r\n", "too large"),
            (b"\r\n", "hexadecimal"),
        ] {
            let err = decode_all(BytesMut::from(wire)).unwrap_err().to_string();
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    /// A request whose fields the client's connection kept goes out with its lines as the
    /// client wrote them (case and spacing), its length once and last, and what the map holds
    /// (what rouse added) after them; put into the map, the same fields go out as the map
    /// writes them.
    #[test]
    fn kept_fields_go_out_as_written_with_the_length_once() {
        let wire = "POST /u?q HTTP/1.1\r\nHost: a.test\r\nX-A:  1 \r\nContent-Length: 3\r\nUser-Agent: t\r\n\r\n";
        let mut buf = BytesMut::from(wire.as_bytes());
        let p = crate::http::downstream::parse_head(&mut buf, 1 << 16, true)
            .unwrap()
            .unwrap();
        let lines = p.request.fields.clone().unwrap();
        let mut req = p.request.req;
        req.headers_mut()
            .insert("x-added", HeaderValue::from_static("r"));
        let mut head = Vec::new();
        let written = encode_head(&mut head, &req, Some(&lines), None);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /u?q HTTP/1.1\r\nHost: a.test\r\nX-A:  1 \r\nUser-Agent: t\r\nx-added: r\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(written.sending, Sending::Length(3));
        assert!(!written.asks_upgrade);
        let mut out = Outgoing {
            req,
            hop: None,
            fields: Some(lines),
        };
        out.materialise();
        assert!(out.fields.is_none());
        assert_eq!(
            String::from_utf8(head_bytes(&out, None)).unwrap(),
            "POST /u?q HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\nuser-agent: t\r\nx-added: r\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn marks_hold_each_field_apart() {
        let (mut a, mut b) = (Marks::default(), Marks::default());
        for i in [0, 63, 64, 99] {
            a.set(i);
        }
        b.set(1);
        b.set(64);
        for i in 0..crate::http::head::MAX_HEADERS {
            assert_eq!(a.has(i), [0, 63, 64, 99].contains(&i), "{i}");
        }
        assert_eq!((a.count(), b.count(), a.or(b).count()), (4, 2, 5));
    }

    /// Heads whose fields are kept as written go upstream holding what the map reading
    /// holds; heads whose fields go into the map are not judged here.
    #[test]
    fn kept_request_fields_go_upstream_as_the_map_holds_them() {
        let kept = [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /x?y HTTP/1.0\r\nX-A:\t1 \t\r\nhost: a\r\nx-a: 2\r\nX-Empty:\r\n\r\n",
            "POST /u HTTP/1.1\r\nContent-Length: 3\r\nHost: a\r\nX-Obs: caf\u{e9}\r\n\r\nabc",
            "PUT / HTTP/1.1\r\nHost: a\r\nX-Z: z\r\nContent-Length: 0\r\n\r\n",
        ];
        for head in kept {
            assert_eq!(kept_agrees(head.as_bytes()), Ok(Some(())), "{head:?}");
        }
        for other in [
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(kept_agrees(other.as_bytes()), Ok(None), "{other:?}");
        }
    }

    #[test]
    fn request_heads_carry_the_framing_they_need() {
        let enc = |req: Request<OutBody>| {
            let mut head = Vec::new();
            let written = encode_head(&mut head, &req, None, None);
            assert_eq!(head, head_bytes(&req, None));
            (written.sending, String::from_utf8(head).unwrap())
        };
        let get = Request::get("/a?b=1")
            .header("host", "x")
            .body(OutBody::Empty)
            .unwrap();
        assert_eq!(
            enc(get),
            (
                Sending::Nothing,
                "GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n".into()
            )
        );
        let post = Request::post("/")
            .header("Content-Length", "3")
            .header("content-length", "3")
            .body(OutBody::Empty)
            .unwrap();
        let (s, text) = enc(post);
        assert_eq!(s, Sending::Length(3));
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        // A zero length is written, and counts as no body (such a request may go out again).
        let empty = Request::get("/")
            .header("content-length", "0")
            .body(OutBody::Empty)
            .unwrap();
        let (s, text) = enc(empty);
        assert_eq!(s, Sending::Length(0));
        assert!(
            !s.has_body() && text.contains("\r\ncontent-length: 0\r\n"),
            "{text}"
        );
        assert!(Sending::Length(1).has_body() && Sending::Chunked.has_body());
        // Lengths that disagree are never forwarded: without a body, there is none to frame.
        for lengths in [&["3, 4"][..], &["3", "4"], &["x"]] {
            let mut b = Request::post("/");
            for l in lengths {
                b = b.header("content-length", *l);
            }
            let (s, text) = enc(b.body(OutBody::Empty).unwrap());
            assert_eq!(s, Sending::Nothing, "{lengths:?}");
            assert!(!text.contains("content-length"), "{text}");
        }
        // A length that agrees with one that cannot be read, in either order, is not trusted.
        for lengths in [["3", "x"], ["x", "3"]] {
            let mut b = Request::post("/");
            for l in lengths {
                b = b.header("content-length", l);
            }
            assert_eq!(enc(b.body(OutBody::Empty).unwrap()).0, Sending::Nothing);
        }
        // Whether it asks to switch protocols is read in the same pass; the field is written.
        let mut head = Vec::new();
        let ws = Request::get("/")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(OutBody::Empty)
            .unwrap();
        let written = encode_head(&mut head, &ws, None, None);
        assert!(written.asks_upgrade);
        assert!(
            String::from_utf8(head)
                .unwrap()
                .contains("\r\nupgrade: websocket\r\n")
        );
        let written = encode_head(&mut Vec::new(), &Request::new(OutBody::Empty), None, None);
        assert!(!written.asks_upgrade);
    }

    /// What a client made of a response: the head, or that it was refused; and then the body
    /// (with its trailers), or that it failed.
    #[derive(Debug, PartialEq)]
    enum Verdict {
        Refused,
        Answered {
            status: u16,
            headers: Vec<(String, Vec<u8>)>,
            body: Option<(Bytes, Option<HeaderMap>)>,
        },
    }

    /// Serves `wire` (in `piece`-byte writes) to one connection after reading its request
    /// head, then closes it.
    async fn backend(wire: &'static [u8], piece: usize) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                    _ => return,
                }
            }
            for p in wire.chunks(piece) {
                if s.write_all(p).await.is_err() {
                    return;
                }
                if piece < wire.len() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        addr
    }

    async fn verdict<B>(res: Result<Response<B>, ()>) -> Verdict
    where
        B: Body<Data = Bytes> + Unpin,
    {
        use http_body_util::BodyExt;
        let Ok(res) = res else {
            return Verdict::Refused;
        };
        let (parts, body) = res.into_parts();
        let body = match tokio::time::timeout(Duration::from_secs(5), body.collect()).await {
            Ok(Ok(c)) => {
                let trailers = c.trailers().cloned();
                Some((c.to_bytes(), trailers))
            }
            _ => None,
        };
        // What the client is given: the fields that describe the backend's connection are
        // stripped on the way, whoever parsed them.
        let mut fields = parts.headers;
        crate::http::headers::strip_hop_by_hop(&mut fields);
        let mut headers: Vec<_> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        // Fields of different names may come in any order (RFC 9110 §5.3): a head kept as
        // the backend wrote it gives its length last. The values of one name keep theirs.
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        Verdict::Answered {
            status: parts.status.as_u16(),
            headers,
            body,
        }
    }

    /// An idle connection is told closed when the backend sent something or closed it, and
    /// open when tokio still marks it readable from a read that emptied the socket but filled
    /// its buffer exactly (a mark only a peek can clear).
    #[tokio::test]
    async fn an_idle_connection_is_closed_once_its_backend_sends_or_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(Io::Tcp(tcp));
        assert!(!conn.is_closed(), "a connection nothing came on is open");
        // Four bytes read into a buffer of four: the read does not clear tokio's mark.
        peer.write_all(b"abcd").await.unwrap();
        let mut four = [0u8; 4];
        conn.io.read_exact(&mut four).await.unwrap();
        assert!(!conn.is_closed(), "a stale readable mark is not a close");
        assert!(
            !conn.is_closed(),
            "and stays open once the peek has cleared the mark"
        );
        peer.write_all(b"x").await.unwrap();
        conn.io.tcp().readable().await.unwrap();
        assert!(conn.is_closed(), "bytes nobody asked for");
        assert!(conn.is_closed(), "a peek leaves them where they are");
        let mut one = [0u8; 1];
        conn.io.read_exact(&mut one).await.unwrap();
        drop(peer);
        conn.io.tcp().readable().await.unwrap();
        assert!(conn.is_closed(), "the backend's end");
    }

    #[derive(Debug)]
    struct Kept(std::sync::Mutex<usize>);

    impl Home for Kept {
        fn put(self: Arc<Self>, _conn: Box<Conn>, _keep_alive: Option<Duration>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    /// A response over from the start whose fields were kept as written goes home when they
    /// are taken, not before (they are in the connection's care until then), or when it is
    /// dropped without them; one dropped half-read does not go home.
    #[tokio::test]
    async fn a_bodiless_kept_response_goes_home_once_its_fields_are_taken_or_it_is_dropped() {
        use crate::http::h1::Carries;
        async fn answered(wire: &'static [u8]) -> (Response<UpBody>, Arc<Kept>) {
            let tcp = TcpStream::connect(backend(wire, usize::MAX).await)
                .await
                .unwrap();
            let home = Arc::new(Kept(std::sync::Mutex::new(0)));
            let req = Request::get("/")
                .header("host", "x")
                .body(OutBody::Empty)
                .unwrap();
            let req = Box::new(Outgoing {
                req,
                hop: None,
                fields: None,
            });
            let res = exchange(Conn::new(Io::Tcp(tcp)), req, home.clone()).await;
            (res.expect("answered"), home)
        }
        let homes = |h: &Kept| *h.0.lock().unwrap();
        const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nx-kept: 1\r\n\r\n";
        let (mut res, home) = answered(NO_CONTENT).await;
        assert_eq!(homes(&home), 0, "home before its fields are taken");
        let kept = res.body_mut().take_verbatim().expect("kept as written");
        assert_eq!(kept.lines(), b"x-kept: 1\r\n");
        assert_eq!(homes(&home), 1, "home once they are");
        assert!(http_body::Body::is_end_stream(res.body()));
        drop(res);
        assert_eq!(homes(&home), 1, "home once only");

        let (res, home) = answered(NO_CONTENT).await;
        drop(res);
        assert_eq!(homes(&home), 1, "dropped with its fields untaken");

        // None of the body has come, so nothing but its framing keeps it from going home.
        let (res, home) =
            answered(b"HTTP/1.1 200 OK\r\nx-kept: 1\r\ncontent-length: 10\r\n\r\n").await;
        drop(res);
        assert_eq!(homes(&home), 0, "dropped before its body");

        let (mut res, home) =
            answered(b"HTTP/1.1 204 No Content\r\nx-kept: 1\r\nconnection: close\r\n\r\n").await;
        assert!(res.body_mut().take_verbatim().is_some());
        drop(res);
        assert_eq!(homes(&home), 0, "the backend said close");
    }

    async fn ours(wire: &'static [u8], piece: usize) -> Verdict {
        let tcp = TcpStream::connect(backend(wire, piece).await)
            .await
            .unwrap();
        let req = Request::get("/")
            .header("host", "x")
            .body(OutBody::Empty)
            .unwrap();
        let home = Arc::new(Kept(std::sync::Mutex::new(0)));
        let req = Box::new(Outgoing {
            req,
            hop: None,
            fields: None,
        });
        let mut res = exchange(Conn::new(Io::Tcp(tcp)), req, home).await;
        if let Ok(res) = &mut res {
            crate::http::h1::materialise(res);
        }
        verdict(res.map_err(|_| ())).await
    }

    async fn hypers(wire: &'static [u8], piece: usize) -> Verdict {
        let tcp = TcpStream::connect(backend(wire, piece).await)
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        verdict(send.send_request(req).await.map_err(|_| ())).await
    }

    /// The same responses, valid and malformed, read by this connection and by hyper's client
    /// (the reference): the same verdict, status, fields, body and trailers, whether the
    /// bytes come in one write or a few at a time.
    #[tokio::test]
    async fn reads_responses_as_hyper_does() {
        let corpus: &[&'static [u8]] = &[
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;a=b\r\nhel\r\n2 \r\nlo\r\n0\r\ngrpc-status: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\n\r\nto the end",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nto the end",
            b"HTTP/1.0 200 OK\r\n\r\nold",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
            b"HTTP/1.1 404 Whatever It Says\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-obs: caf\xc3\xa9\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-empty:\r\ncontent-length: 0\r\n\r\n",
            // Refused heads.
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\0b\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-le",
            b"",
            // Bodies that break.
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n;x\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\t ;x\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: x-secret, Keep-Alive\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: x\r\nte: y\r\nupgrade: z\r\nx-kept: 2\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nproxy-authenticate: Basic\r\ncontent-length: 0\r\n\r\n",
            // Heads kept as written, or not: spacing, case, a date, a bare LF in one line.
            b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\nX-A:   spaced \t \r\nX-A:b\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nx-a: 1\r\nTE: gzip\r\nx-b: 2\r\ncontent-length: 0\r\n\r\n",
        ];
        for wire in corpus {
            let reference = hypers(wire, usize::MAX).await;
            for piece in [usize::MAX, 3] {
                let got = ours(wire, piece).await;
                assert_eq!(
                    got,
                    reference,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    /// However a response's bytes are cut into reads, it is read the same: at every cut in
    /// two, and one byte at a time.
    #[test]
    fn the_verdict_does_not_depend_on_how_the_bytes_are_cut() {
        let long_line = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;{}\r\nx\r\n0\r\n\r\n",
            "e".repeat(MAX_CHUNK_LINE + 10)
        );
        let corpus: Vec<&[u8]> = vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;a=b\r\nhel\r\n2\r\nlo\r\n0\r\nt: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nEXTRA",
            b"HTTP/1.1 200 OK\r\n\r\nto the end",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncont",
            long_line.as_bytes(),
        ];
        for wire in corpus {
            let whole = format!("{:?}", read_whole(wire, &[], false));
            for cut in 0..=wire.len() {
                let cut_in_two = format!("{:?}", read_whole(wire, &[cut], false));
                assert_eq!(cut_in_two, whole, "cut at {cut}");
            }
            let bytewise = format!("{:?}", read_whole(wire, &vec![1; wire.len()], false));
            assert_eq!(bytewise, whole, "one byte at a time");
        }
        // And the verdicts themselves.
        let body = |w: &[u8]| read_whole(w, &[], false).map(|r| r.2);
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA").unwrap(),
            b"hello"
        );
        assert!(matches!(
            read_whole(long_line.as_bytes(), &[], false),
            Err(Failure::Chunk("chunk-size line too long"))
        ));
        assert!(matches!(
            read_whole(
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
                &[],
                false
            ),
            Err(Failure::BodyCut)
        ));
    }

    /// The head written upstream is one request, whatever the fields hold: parsed back, it
    /// ends exactly where it was written to end, with the same method, target and fields, and
    /// no framing but its own.
    #[test]
    fn a_written_head_parses_back_as_one_request() {
        let req = Request::post("/a%20b?c=d;e")
            .header("host", "x")
            .header(
                "x-obs",
                HeaderValue::from_bytes(b"caf\xc3\xa9\tok").unwrap(),
            )
            .header("x-many", "1")
            .header("x-many", "2")
            .header("transfer-encoding", "chunked")
            .body(OutBody::Empty)
            .unwrap();
        let head = head_bytes(&req, None);
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut fields);
        let len = match parsed.parse(&head).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete"),
        };
        assert_eq!(len, head.len());
        assert_eq!(parsed.method, Some("POST"));
        assert_eq!(parsed.path, Some("/a%20b?c=d;e"));
        let names: Vec<&str> = parsed.headers.iter().map(|h| h.name).collect();
        // A stray framing field is never written: this request has no body.
        assert_eq!(names, ["host", "x-obs", "x-many", "x-many"]);
    }
}
