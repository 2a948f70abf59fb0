//! rouse's own server side of HTTP/1.1: the client's connection. Request heads are read
//! straight from the connection's buffer (`http::head`, which reads as httparse does), the handler runs in the connection's own
//! task, the request body is read from the socket by whoever polls it, and the response head is
//! written from the response's parts, with the body's framing decided here.
//!
//! Why not hyper's server connection: its dispatcher hands every body chunk across a channel,
//! keeps an 8 KiB read buffer and a write buffer for every open connection (most of what a
//! held request costs), and rouse still had to check the framing below it ([`Refusal`]: a bare
//! LF, `Content-Length` beside `Transfer-Encoding`), since hyper reads both leniently. Here one
//! parser decides, and the connection frees its read buffer while a request is held.
//!
//! Requests are read strictly (RFC 9112): a head with a line ending in a bare LF, a
//! `Content-Length` beside a `Transfer-Encoding`, lengths that disagree or cannot be read, a
//! `Transfer-Encoding` that does not end in `chunked`, or one in an HTTP/1.0 request is refused
//! with `400` and the connection closes; a head over `limits.max_header_bytes` or with more
//! than 100 fields gets `431`. Every refusal names what was wrong. A chunked body is decoded by
//! [`h1`], the same decoder as the upstream side's. The writer owns the response framing: no
//! `Content-Length` or `Transfer-Encoding` of the response is copied.

use crate::http::cut::Cut;
use crate::http::h1::{self, Carries, Framing, Next, Verbatim, write_field};
use crate::http::head;
use crate::http::headers::{
    Hop, content_length, ends_in_chunked, hop_by_hop_index, is_forwarding_name, lists,
};
use crate::http::lines::Lines;
use crate::http::signal::{self, Signal};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client connection's transport: TCP, or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// Why a request head was refused; each says what was wrong and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A line of the head ends in LF without CR.
    #[error("a line of the request ends in LF without CR; end every line with CRLF")]
    BareLf,
    /// `Content-Length` and `Transfer-Encoding` in one request.
    #[error("the request has both Content-Length and Transfer-Encoding; send one of them")]
    LengthAndChunked,
    /// A `Content-Length` that is not one decimal number. A list, even of equal numbers, is
    /// refused too, as hyper's server refuses it: a request has one length.
    #[error(
        "the request's Content-Length is not a decimal number; send the body's length in digits"
    )]
    LengthUnreadable,
    /// Two `Content-Length` values that differ.
    #[error("the request has Content-Length fields that disagree; send one length")]
    LengthsDisagree,
    /// A `Transfer-Encoding` whose last coding is not `chunked`: the body's end is unknown.
    #[error(
        "the request's Transfer-Encoding does not end in chunked, so its body's end cannot be found; end it with chunked, or send a Content-Length instead"
    )]
    NotChunked,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 §6.1).
    #[error(
        "an HTTP/1.0 request cannot have a Transfer-Encoding; send a Content-Length, or use HTTP/1.1"
    )]
    ChunkedOnHttp10,
    /// More header fields than rouse reads.
    #[error("the request has more than 100 header fields; send fewer")]
    TooManyFields,
    /// A head larger than `limits.max_header_bytes`.
    #[error(
        "the request head is larger than limits.max_header_bytes allows; send fewer or shorter fields and a shorter target"
    )]
    TooLarge,
    /// Not an HTTP/1.x request head.
    #[error("the request head is malformed ({0}); send a valid HTTP/1.1 request")]
    Malformed(&'static str),
    /// `CONNECT`: a reverse proxy routes requests, it does not open tunnels to addresses the
    /// client names (and the bytes after the head would not be a request).
    #[error(
        "CONNECT is not served: rouse is a reverse proxy and opens no tunnels; send the request itself to the service's host"
    )]
    Connect,
}

impl Refusal {
    /// The head is too large to read (`431`), rather than malformed (`400`).
    pub fn too_large(self) -> bool {
        matches!(self, Refusal::TooLarge | Refusal::TooManyFields)
    }
}

/// A request head and what the connection must know of it.
#[derive(Debug)]
pub struct Parsed {
    /// Method, target, version and every field, as the client sent them: in the map, or,
    /// for a head that allows it, in its `fields` as written, the map empty. Its body is
    /// [`OutBody::Empty`] until the connection starts the exchange.
    ///
    /// Boxed as the handler takes it, from the start: the request is made in its box, and the
    /// head's way to the handler moves a pointer, where a request made on the stack (224
    /// bytes) was copied about ten times (about 300 instructions a request).
    pub request: Box<Outgoing>,
    /// How its body is framed.
    pub body: Framing,
    /// The client may send another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` with a body to come.
    pub expect_continue: bool,
    /// It asks to switch protocols (`Upgrade`, HTTP/1.1 only).
    pub upgrade: bool,
    /// `TE: trailers`: the client takes trailer fields in a chunked response.
    pub trailers: bool,
}

impl Parsed {
    /// The request with every field in its map.
    pub fn into_request(self) -> Request<()> {
        let mut request = self.request;
        request.materialise();
        request.req.map(|_| ())
    }
}

/// A request as the head gives it, in its box, its fields not yet in the map or kept.
fn boxed_request(method: Method, uri: Uri, version: Version) -> Box<Outgoing> {
    // The box first, then the request written into it, rather than made on the stack and
    // copied in.
    let slot = Box::new_uninit();
    let mut request = Box::write(
        slot,
        Outgoing {
            req: Request::new(OutBody::Empty),
            hop: None,
            fields: None,
        },
    );
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    request
}

/// Fields the proxy adds to a request it forwards: `X-Forwarded-For`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Forwarded`. Going to an HTTP/1.1 upstream, they go into the header
/// map only when the request carries one of them already (otherwise the writer adds them to the
/// head it writes, `headers::Hop`), and such a map is given room for them; going to an h2c
/// upstream, they always go into the map, which grows for them then.
const ADDED_FIELDS: usize = 4;

/// The capacity to ask of a header map for `fields` read: the smallest table that holds them.
/// A map of capacity `n` gets a table of the next power of two of `n + n/3` slots, of which
/// three quarters hold entries (http's `HeaderMap`): asking for exactly three quarters of the
/// smallest table that fits keeps the table that small (three fields get four slots; four
/// get eight and room for six). Each room is an entry of about 100 bytes, held as long as the
/// request is, and a map that must grow later (a route's `set_headers`, the forwarding fields
/// of an HTTP/2 upstream) doubles once.
fn map_room(fields: usize) -> usize {
    let mut slots = fields.next_power_of_two();
    if slots - slots / 4 < fields {
        slots *= 2;
    }
    slots - slots / 4
}

/// The refusal of a head longer than `max`: a bare LF if one is in its first `max` bytes (the
/// likelier cause, and what the client must fix), else its size.
fn past_limit(buf: &[u8], max: usize) -> Refusal {
    match head::bare_lf(&buf[..max.min(buf.len())]) {
        true => Refusal::BareLf,
        false => Refusal::TooLarge,
    }
}

/// True when the error found in `buf` lies past its first `max + 1` bytes: a reader
/// of those alone would have found the head too large first.
fn error_past(buf: &[u8], max: usize) -> bool {
    let first = &buf[..(max + 1).min(buf.len())];
    matches!(head::request(first, &mut head::Spans::new()), Ok(None))
}

fn malformed(e: httparse::Error) -> Refusal {
    match e {
        httparse::Error::TooManyHeaders => Refusal::TooManyFields,
        e => Refusal::Malformed(h1::head_fault(e)),
    }
}

/// A copy of a request head in one allocation, its count of references beside its bytes: a
/// copy made with `Bytes::copy_from_slice` takes a second allocation (and a free) for that
/// count when the first field is sliced from it. Heads up to 1 KiB (nearly all) are kept in
/// room at most half as large again as they are (a held request keeps its head); longer ones
/// as before.
fn own_copy(head: &[u8]) -> Bytes {
    use smallvec::SmallVec;
    macro_rules! room {
        ($($n:literal),*) => {
            match head.len() {
                $(n if n <= $n => Bytes::from_owner(SmallVec::<[u8; $n]>::from_slice(head)),)*
                _ => Bytes::copy_from_slice(head),
            }
        };
    }
    room!(64, 96, 128, 192, 256, 384, 512, 768, 1024)
}

/// Where a head's `Host` field is and where its `Content-Length` is, if it has one, when its
/// fields can go to the backend as the client wrote them: one `Host`, at most one
/// `Content-Length`, and none of the fields the proxy reads or edits (hop-by-hop ones, which it
/// strips; forwarding ones, which it joins; `Expect`, which it answers).
fn plain(head: &[u8], fields: &[(u32, u32, u32, u32)]) -> Option<(usize, Option<usize>)> {
    let (mut host, mut length) = (None, None);
    for (i, &(ns, ne, _, _)) in fields.iter().enumerate() {
        let name = &head[ns as usize..ne as usize];
        let is = |n: &[u8]| h1::is_name(name, n);
        match name.len() {
            4 if is(b"host") => match host {
                None => host = Some(i),
                Some(_) => return None,
            },
            14 if is(b"content-length") => match length {
                None => length = Some(i),
                Some(_) => return None,
            },
            6 if is(b"expect") => return None,
            // Longer than a `HeaderName` may be: the map's reading refuses it.
            n if n >= 1 << 16 => return None,
            _ if hop_by_hop_index(name).is_some() || is_forwarding_name(name) => return None,
            _ => {}
        }
    }
    host.map(|h| (h, length))
}

/// Parses a request head from the front of `buf`, taking it out if whole. `max` is the most
/// bytes a head may take. The verdict depends only on the bytes, never on how they were cut.
/// With `keep`, a head that allows it keeps its fields as written ([`Outgoing::fields`]).
pub fn parse_head(buf: &mut BytesMut, max: usize, keep: bool) -> Result<Option<Parsed>, Refusal> {
    // Each field as (name start, name end, value start, value end) in the head.
    let mut at = head::Spans::new();
    // Each verdict depends only on bytes every way of cutting them has shown: a head past the
    // limit is judged by its first `max` bytes, an error by the bytes up to it.
    let (len, line) = match head::request(buf, &mut at) {
        Ok(Some((n, _))) if n > max => return Err(past_limit(buf, max)),
        Ok(Some(read)) => read,
        Ok(None) if buf.len() > max => return Err(past_limit(buf, max)),
        Ok(None) => return Ok(None),
        Err(_) if buf.len() > max && error_past(buf, max) => return Err(past_limit(buf, max)),
        Err(e) => return Err(malformed(e)),
    };
    let count = at.len();
    let (ms, ml) = (line.method.0 as usize, line.method.1 as usize);
    let method =
        Method::from_bytes(&buf[ms..ms + ml]).map_err(|_| Refusal::Malformed("invalid method"))?;
    if method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let (target, minor) = (line.target, line.minor);
    if line.bare_lf {
        return Err(Refusal::BareLf);
    }
    // The head gets an allocation of its own, sized to it: the fields are slices of it, and
    // the read buffer can then be reused, or freed while the request is held.
    let raw = own_copy(&buf[..len]);
    buf.advance(len);
    let (ts, tl) = (target.0 as usize, target.1 as usize);
    let uri = Uri::from_maybe_shared(raw.slice(ts..ts + tl))
        .map_err(|_| Refusal::Malformed("invalid request target"))?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let fields = &at[..count];
    // A head with nothing the proxy reads or edits but its `Host` keeps its lines as written
    // (see `lines`); any other is read into the map.
    if keep
        && uri.authority().is_none()
        && let Some((host, length)) = plain(&raw, fields)
    {
        let length = match length {
            None => None,
            Some(i) => {
                let (vs, ve) = (fields[i].2 as usize, fields[i].3 as usize);
                let value = &raw[vs..ve];
                match content_length(value) {
                    _ if value.contains(&b',') => return Err(Refusal::LengthUnreadable),
                    None => return Err(Refusal::LengthUnreadable),
                    Some(n) => Some((i, n)),
                }
            }
        };
        // Its value is not made a `HeaderValue`, which would check its bytes once more.
        let host = (fields[host].2 as usize, fields[host].3 as usize);
        // The lines run from the first field to the empty line that ends the head (a CRLF: a
        // bare LF was refused); a line ends where the next begins.
        let to = len - 2;
        let line_end = |i: usize| fields.get(i + 1).map_or(to, |f| f.0 as usize);
        let cut = length.map_or((to, to), |(i, _)| (fields[i].0 as usize, line_end(i)));
        let from = fields[0].0 as usize;
        let body = match length {
            None | Some((_, 0)) => Framing::Done,
            Some((_, n)) => Framing::Length(n),
        };
        // The lines written into the request's box once it exists, which lets the compiler
        // make them there instead of on the stack and copy them in (about 180 bytes).
        let mut request = boxed_request(method, uri, version);
        request.fields = Some(Lines::new(
            raw,
            (from, to),
            fields,
            cut,
            host,
            length.map(|(_, n)| n),
            map_room(count),
        ));
        return Ok(Some(Parsed {
            request,
            body,
            keep_alive: version == Version::HTTP_11,
            expect_continue: false,
            upgrade: false,
            trailers: false,
        }));
    }
    // Room for the forwarding fields only where they will go into the map, decided before it
    // is taken: a map grown afterwards would come back to the kept ones with a room no head
    // asks for.
    let forwarded = fields
        .iter()
        .any(|&(ns, ne, _, _)| is_forwarding_name(&raw[ns as usize..ne as usize]));
    let room = match forwarded {
        true => map_room(count + ADDED_FIELDS),
        false => map_room(count),
    };
    let mut headers = h1::maps::take(room);
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let (mut close, mut keep, mut expect, mut upgrade, mut trailers) =
        (false, false, false, false, false);
    for &(ns, ne, vs, ve) in &at[..count] {
        let name = h1::field_name(&raw[ns as usize..ne as usize])
            .map_err(|_| Refusal::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
            .map_err(|_| Refusal::Malformed("invalid header value"))?;
        match name.as_str() {
            "content-length" => match content_length(value.as_bytes()) {
                _ if value.as_bytes().contains(&b',') => return Err(Refusal::LengthUnreadable),
                None => return Err(Refusal::LengthUnreadable),
                Some(n) if length.is_some_and(|l| l != n) => return Err(Refusal::LengthsDisagree),
                Some(n) => length = Some(n),
            },
            "transfer-encoding" => {
                if version == Version::HTTP_10 {
                    return Err(Refusal::ChunkedOnHttp10);
                }
                // The last coding of the last field decides.
                chunked = Some(ends_in_chunked(value.as_bytes()));
            }
            "connection" => {
                close |= lists(value.as_bytes(), b"close");
                keep |= lists(value.as_bytes(), b"keep-alive");
            }
            "expect" => expect = value.as_bytes().eq_ignore_ascii_case(b"100-continue"),
            "upgrade" => upgrade = version == Version::HTTP_11,
            "te" => trailers = lists(value.as_bytes(), b"trailers"),
            _ => {}
        }
        headers.append(name, value);
    }
    let body = match (chunked, length) {
        (Some(_), Some(_)) => return Err(Refusal::LengthAndChunked),
        (Some(false), None) => return Err(Refusal::NotChunked),
        (Some(true), None) => Framing::Chunked(h1::Chunk::Size),
        (None, Some(0) | None) => Framing::Done,
        (None, Some(n)) => Framing::Length(n),
    };
    let mut request = boxed_request(method, uri, version);
    h1::maps::release(std::mem::replace(request.headers_mut(), headers));
    Ok(Some(Parsed {
        request,
        keep_alive: match version {
            Version::HTTP_10 => keep && !close,
            _ => !close,
        },
        expect_continue: expect && version == Version::HTTP_11 && body != Framing::Done,
        upgrade,
        trailers,
        body,
    }))
}

/// A request as [`read_all`] gives it: its head, its body and its trailers.
pub type Whole = (Request<()>, Vec<u8>, Option<HeaderMap>);

/// Every request in `wire` as this connection reads it, the bytes arriving in pieces of the
/// given lengths (the rest in one piece), then the client's end: the requests read whole, and
/// what stopped the reading, if anything did (a refused head, a broken body, the end inside a
/// request). For the fuzz target and tests: however the bytes are cut, the answer must be the
/// same, and a request is never read twice or as two.
pub fn read_all(wire: &[u8], pieces: &[usize], max: usize) -> (Vec<Whole>, Option<String>) {
    let mut cuts = pieces.iter().copied();
    let mut at = 0;
    let mut buf = BytesMut::new();
    // Feeds the next piece; false at the end.
    let mut feed = |buf: &mut BytesMut| {
        if at >= wire.len() {
            return false;
        }
        let n = cuts.next().unwrap_or(wire.len()).clamp(1, wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        true
    };
    let mut read = Vec::new();
    loop {
        let parsed = loop {
            match parse_head(&mut buf, max, true) {
                Ok(Some(p)) => break p,
                Ok(None) if feed(&mut buf) => {}
                Ok(None) if buf.is_empty() => return (read, None),
                Ok(None) => return (read, Some("the end inside a head".into())),
                Err(why) => return (read, Some(why.to_string())),
            }
        };
        let mut body = parsed.body;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match h1::next_frame(&mut buf, &mut body) {
                Ok(Next::Frame(f)) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Ok(Next::End) => break,
                Ok(Next::Need) if feed(&mut buf) => {}
                Ok(Next::Need) => return (read, Some(BodyError::Cut.to_string())),
                Err(m) => return (read, Some(m.to_string())),
            }
        }
        read.push((parsed.into_request(), data, trailers));
    }
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Room made for a read of a head (a head larger grows the buffer, up to the limit).
const FIRST_READ: usize = 8 << 10;
/// The first read of a head goes to the stack, this large, so that a connection between
/// requests holds no buffer.
const IDLE_READ: usize = 4 << 10;
/// Room made for a read of a body. Body pieces handed on are slices of the buffer, so while the
/// backend takes them slowly the buffer stays allocated for them.
const BODY_READ: usize = 32 << 10;
/// Body bytes up to this size are copied into the write buffer with their framing (one write
/// for head and body); larger ones are written from where they are.
const COPY_BELOW: usize = 8 << 10;
/// A request body the handler left unread is read and dropped up to this many bytes, so the
/// connection can serve the next request; past it the connection closes instead.
const DRAIN_MAX: u64 = 64 << 10;

/// Read buffers of connections whose requests wait, kept per thread for the next read: a
/// connection gives its buffer up while its request is answered and takes one again for the
/// next head, so a held request costs no buffer and a busy thread no allocation.
mod spare {
    use crate::http::kept::Kept;
    use bytes::BytesMut;

    thread_local! {
        /// At most 64 kept per thread; more are freed.
        static SPARE: Kept<BytesMut> = const { Kept::new(64) };
    }

    /// A buffer for a read: a kept one, or a new one.
    pub fn take() -> BytesMut {
        SPARE
            .with(|kept| kept.take_if(|_| true))
            .unwrap_or_else(|| BytesMut::with_capacity(super::FIRST_READ))
    }

    /// Keeps `buf` (empty) for another connection, if it is a whole read buffer.
    pub fn put(mut buf: BytesMut) {
        buf.clear();
        // The whole allocation again, unless a body piece still holds part of it.
        if !buf.try_reclaim(super::FIRST_READ) || buf.capacity() > 2 * super::BODY_READ {
            return;
        }
        SPARE.with(|kept| kept.put(buf));
    }
}

/// The connection's socket and what was read from it, shared by the connection (which writes
/// responses and reads heads) and the request body (which reads the rest). Locked only inside a
/// poll, never across an `.await`.
struct Wire {
    /// `None` once a tunnel took the connection over.
    io: Option<Box<dyn Transport>>,
    buf: BytesMut,
    /// The framing of the current request's body, and how far it has been read.
    body: Framing,
    /// The client closed its sending side.
    eof: bool,
    /// Bytes of [`CONTINUE`] written, while it is due; `None` when it is not.
    cont: Option<usize>,
    /// The body's framing broke or the socket failed: the connection must close.
    broken: bool,
    /// The current exchange's number: a body kept past its exchange must not read the next
    /// request's.
    exchange: u64,
}

/// Locked a dozen times per request, by the connection's task nearly always: parking_lot's
/// lock, whose uncontended lock and unlock are a compare-and-swap each, without the poison
/// checks of the standard one.
type Shared = Arc<parking_lot::Mutex<Wire>>;

fn lock(shared: &Shared) -> parking_lot::MutexGuard<'_, Wire> {
    shared.lock()
}

fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was taken over")
}

impl Wire {
    /// Reads more from the socket into the buffer; `Ok(false)` at the client's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.eof {
            return Poll::Ready(Ok(false));
        }
        let io = self.io.as_mut().ok_or_else(taken)?;
        if self.buf.is_empty() && self.body == Framing::Done {
            // Waiting for the next head, perhaps for long (an idle keep-alive connection): the
            // read goes to the stack, and a buffer is taken only once bytes came.
            if self.buf.capacity() > 0 {
                spare::put(std::mem::take(&mut self.buf));
            }
            let mut space = [const { std::mem::MaybeUninit::<u8>::uninit() }; IDLE_READ];
            let mut rb = ReadBuf::uninit(&mut space);
            ready!(Pin::new(io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                self.eof = true;
                return Poll::Ready(Ok(false));
            }
            self.buf = spare::take();
            self.buf.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(true));
        }
        if self.buf.capacity() == 0 {
            self.buf = spare::take();
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            // A body is read in larger pieces than a head: fewer reads for an upload.
            self.buf.reserve(match self.body {
                Framing::Done => FIRST_READ,
                _ => BODY_READ,
            });
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(io),
            cx,
            &mut self.buf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n > 0))
    }

    /// Watches a connection whose request is being answered for the client's close, with a
    /// one-byte read that needs no buffer: `true` once it closed or failed; `false` when a byte
    /// came (kept for the next head).
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(true);
        };
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        match ready!(Pin::new(io).poll_read(cx, &mut rb)) {
            Err(_) => Poll::Ready(true),
            Ok(()) if rb.filled().is_empty() => {
                self.eof = true;
                Poll::Ready(true)
            }
            Ok(()) => {
                self.buf.extend_from_slice(rb.filled());
                Poll::Ready(false)
            }
        }
    }

    /// Writes what is left of `CONTINUE`, if it is due, and flushes it: over TLS it is not
    /// on the wire until then, and the client waits for it.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(done) = self.cont {
            if done == CONTINUE.len() {
                let io = self.io.as_mut().ok_or_else(taken)?;
                ready!(Pin::new(io).poll_flush(cx))?;
                self.cont = None;
                break;
            }
            let io = self.io.as_mut().ok_or_else(taken)?;
            let n = ready!(Pin::new(io).poll_write(cx, &CONTINUE[done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.cont = Some(done + n);
        }
        Poll::Ready(Ok(()))
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The chunked framing is broken.
    #[error("{0}")]
    Framing(#[from] h1::Malformed),
    /// The client closed the connection before the body's end.
    #[error("the client closed the connection before the request body ended")]
    Cut,
    /// Reading the socket failed.
    #[error("reading the request body failed: {0}")]
    Io(#[from] io::Error),
}

/// An HTTP/1.1 request body, read from the client's connection as it is polled.
pub struct ClientBody {
    wire: Option<Shared>,
    exchange: u64,
    /// Bytes still to come, when the body has a length.
    left: Option<u64>,
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody")
            .field("left", &self.left)
            .field("done", &self.wire.is_none())
            .finish()
    }
}

impl ClientBody {
    fn new(wire: &Shared, framing: Framing, exchange: u64) -> ClientBody {
        ClientBody {
            wire: (framing != Framing::Done).then(|| wire.clone()),
            exchange,
            left: match framing {
                Framing::Length(n) => Some(n),
                Framing::Done => Some(0),
                _ => None,
            },
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(shared) = self.wire.clone() else {
            return Poll::Ready(None);
        };
        let mut w = lock(&shared);
        if w.exchange != self.exchange {
            // The connection went on without this body: what it had was read and dropped.
            drop(w);
            self.get_mut().wire = None;
            return Poll::Ready(Some(Err(BodyError::Cut)));
        }
        let polled = (|| {
            if let Err(e) = ready!(w.poll_continue(cx)) {
                return Poll::Ready(Some(Err(BodyError::Io(e))));
            }
            loop {
                let Wire { buf, body, .. } = &mut *w;
                match h1::next_frame(buf, body) {
                    Ok(Next::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                    Ok(Next::End) => return Poll::Ready(None),
                    Ok(Next::Need) => match ready!(w.poll_fill(cx)) {
                        Ok(true) => {}
                        Ok(false) => return Poll::Ready(Some(Err(BodyError::Cut))),
                        Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
                    },
                    Err(m) => return Poll::Ready(Some(Err(BodyError::Framing(m)))),
                }
            }
        })();
        let state = w.body;
        if let Poll::Ready(Some(Err(_))) = &polled {
            w.broken = true;
            w.body = Framing::Done;
        }
        drop(w);
        let this = self.as_mut().get_mut();
        match (&polled, state) {
            (Poll::Ready(None | Some(Err(_))), _) | (_, Framing::Done) => {
                this.wire = None;
                this.left = Some(0);
            }
            (_, Framing::Length(n)) => this.left = Some(n),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.wire.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A request body as the handler gets it: `Left` from rouse's HTTP/1.1 connection, `Right`
/// a stream of hyper's HTTP/2 one.
pub type RequestBody = http_body_util::Either<ClientBody, hyper::body::Incoming>;

/// A request on its way through rouse to its backend, and this hop's forwarding fields when
/// they are kept aside for the HTTP/1.1 writer ([`Hop`]). It reads as its request.
///
/// Each request is one of these, boxed, before its handler sees it: an HTTP/1.1 connection
/// makes it in its box as it reads the head ([`Parsed::request`]), and hyper's HTTP/2
/// requests are boxed by the listener ([`Outgoing::boxed`]). The box goes on to the backend
/// as it is: the routing, the forwarding and the exchange each move a pointer, not the request
/// (about 500 bytes with room for its lines), and the exchange fills in the hop and where the
/// body records its failure in place.
#[derive(Debug)]
pub struct Outgoing {
    /// The request.
    pub req: Request<OutBody>,
    /// The forwarding fields the HTTP/1.1 writer adds to the head, if the map lacks them.
    pub hop: Option<Hop>,
    /// The client's fields as it wrote them, which the HTTP/1.1 writer copies, when the map
    /// does not hold them ([`Lines`]): only for a handler that calls
    /// [`Outgoing::materialise`] before it reads or edits a field.
    pub fields: Option<Lines>,
}

impl Outgoing {
    /// `req` as rouse carries it: boxed once, its body not yet watched for faults, no hop, its
    /// fields in the map. (An HTTP/1.1 connection makes its requests in their boxes,
    /// [`Parsed::request`], some with their fields kept as written.)
    pub fn boxed(req: Request<RequestBody>) -> Box<Outgoing> {
        // The box first, then the request written into it, rather than made on the stack and
        // copied in.
        let slot = Box::new_uninit();
        Box::write(
            slot,
            Outgoing {
                req: req.map(|b| OutBody::Client(b, None)),
                hop: None,
                fields: None,
            },
        )
    }

    /// Sets the field `name` to `value` in the map, in place of any the request has: of one
    /// kept as the client wrote it too, which first puts those into the map.
    pub fn set_field(&mut self, name: &HeaderName, value: &HeaderValue) {
        if self.fields.as_ref().is_some_and(|f| f.names(name)) {
            self.materialise();
        }
        self.req.headers_mut().insert(name.clone(), value.clone());
    }

    /// Puts the fields kept as the client wrote them into the map, before whatever the map
    /// held: for everything that reads or edits a request's fields other than its host.
    pub fn materialise(&mut self) {
        let Some(lines) = self.fields.take() else {
            return;
        };
        // The map a head read into one takes, from the thread's kept ones.
        let map = h1::maps::take(lines.room());
        h1::fill_before(self.req.headers_mut(), map, |map| lines.into_map(map));
    }
}

impl std::ops::Deref for Outgoing {
    type Target = Request<OutBody>;

    fn deref(&self) -> &Request<OutBody> {
        &self.req
    }
}

impl std::ops::DerefMut for Outgoing {
    fn deref_mut(&mut self) -> &mut Request<OutBody> {
        &mut self.req
    }
}

/// The body of a request sent upstream: the client's, or none, for a request replayed after its
/// client's (empty) body was spent on a connection that failed.
#[derive(Debug)]
pub enum OutBody {
    /// The client's request body, streamed, with where to record its failure.
    Client(RequestBody, Option<Arc<BodyFault>>),
    /// No body.
    Empty,
}

/// Where a client's request body records how it failed. The upstream exchange only learns
/// that the body it was sending failed; the fault is the client's, and this is how the proxy
/// learns it.
#[derive(Debug, Default)]
pub struct BodyFault(std::sync::OnceLock<String>);

impl BodyFault {
    /// Why the client's body failed, if it did.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            OutBody::Client(b, fault) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let (Poll::Ready(Some(Err(e))), Some(f)) = (&polled, fault) {
                    let _ = f.0.set(e.to_string());
                }
                polled
            }
            OutBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Client(b, _) => b.is_end_stream(),
            OutBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Client(b, _) => b.size_hint(),
            OutBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client's connection after a `101`: its socket and the bytes it sent past the request.
pub struct Upgraded {
    io: Box<dyn Transport>,
    read: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(out.remaining());
            out.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The client's side of an upgrade: resolves to the connection once the `101` went out, or to
/// an error if the exchange ended otherwise. Found in the extensions of a request that asked
/// to switch protocols; [`on_upgrade`] takes it.
#[derive(Debug)]
pub struct OnUpgrade(oneshot::Receiver<Upgraded>);

impl Future for OnUpgrade {
    type Output = Result<Upgraded, oneshot::error::RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read", &self.read.len())
            .finish()
    }
}

/// Where a request's [`OnUpgrade`] waits in its extensions (which must be `Clone`).
#[derive(Clone)]
struct UpgradeSlot(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// Takes the upgrade of a request that asked to switch protocols over HTTP/1.1.
pub fn on_upgrade<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    let slot = req.extensions_mut().remove::<UpgradeSlot>()?;
    let rx = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    Some(OnUpgrade(rx))
}

/// Settings of an HTTP/1.1 client connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest request head.
    pub max_head: usize,
    /// Time to receive a request head, counted from when the connection waits for it (so
    /// also the longest a connection stays idle between requests).
    pub head_timeout: Duration,
    /// A head that allows it keeps its fields as the client wrote them ([`Outgoing::fields`]):
    /// for a handler that reads fields only after putting them into the map
    /// ([`crate::http::server::Handler::keeps_fields`]).
    pub keep_fields: bool,
}

/// How the response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (`HEAD`, `1xx`, `204`, `304`), or a `101` before the switch.
    Nothing,
    /// Exactly this many bytes still.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// What the exchange's request told the response.
struct Asked {
    http10: bool,
    head: bool,
    trailers: bool,
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

thread_local! {
    /// The `Date` value for the current second: formatted once a second per thread.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
}

fn write_date(dst: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
                *at = secs;
            }
        }
        dst.extend_from_slice(b"date: ");
        dst.extend_from_slice(&text[..]);
        dst.extend_from_slice(b"\r\n");
    });
}

/// Writes the head of a response into `dst` and says how its body goes out: `verbatim`'s
/// lines (the backend's fields as it wrote them), if any, then `headers`. `close`: the
/// connection closes after it (it may be set here, for a body that must run to the close).
fn encode_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    verbatim: Option<&Verbatim>,
    body_len: Option<u64>,
    asked: &Asked,
    close: &mut bool,
) -> Out {
    // A switch keeps its `Connection: upgrade`; it ends the exchange in any case.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && asked.upgrade.is_some();
    // Made only when needed: even an empty map costs its drop.
    let none;
    let (status, headers, verbatim, body_len) = match status.is_informational() && !switching {
        // A final answer cannot be `1xx` (another `1xx` would be read as the final answer's
        // forerunner, and a `101` nobody asked for as a switch): it becomes an empty `500`, and
        // the connection closes, as hyper's server does.
        true => {
            *close = true;
            none = HeaderMap::new();
            (StatusCode::INTERNAL_SERVER_ERROR, &none, None, Some(0))
        }
        false => (status, headers, verbatim, body_len),
    };
    dst.extend_from_slice(match asked.http10 {
        true => b"HTTP/1.0 ",
        false => b"HTTP/1.1 ",
    });
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let code = status.as_u16();
    let mut length = None;
    let mut date = false;
    if let Some(v) = verbatim {
        dst.extend_from_slice(v.lines());
        length = v.length();
        date = v.date();
    }
    for (name, value) in headers {
        // The framing and the connection's fate are this function's to write.
        match *name {
            header::CONTENT_LENGTH => {
                length = length.or_else(|| content_length(value.as_bytes()));
                continue;
            }
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION if !switching => {
                *close |= lists(value.as_bytes(), b"close");
                continue;
            }
            header::DATE => date = true,
            _ => {}
        }
        write_field(dst, name, value);
    }
    if !date {
        write_date(dst);
    }
    let out = match code {
        _ if switching => Out::Nothing,
        204 => Out::Nothing,
        304 => {
            if let Some(n) = length {
                h1::write_length(dst, n);
            }
            Out::Nothing
        }
        // The answer to `HEAD` tells a length only if the response has one: an empty body says
        // nothing of the `GET`'s.
        _ => match length.or(body_len.filter(|&n| n > 0 || !asked.head)) {
            Some(n) => {
                h1::write_length(dst, n);
                match asked.head {
                    true => Out::Nothing,
                    false => Out::Length(n),
                }
            }
            None if asked.head => Out::Nothing,
            None if asked.http10 => {
                *close = true;
                Out::Close
            }
            None => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Out::Chunked
            }
        },
    };
    if !switching {
        match (asked.http10, *close) {
            (false, true) => dst.extend_from_slice(b"connection: close\r\n"),
            (true, false) => dst.extend_from_slice(b"connection: keep-alive\r\n"),
            _ => {}
        }
    }
    dst.extend_from_slice(b"\r\n");
    out
}

/// Output waiting to be written: framing and small data copied into `buf`, then one large
/// piece of data written from where it is.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    at: usize,
    big: Option<Bytes>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.at == self.buf.len() && self.big.is_none()
    }

    /// Writes it all, then flushes.
    fn poll_write(&mut self, cx: &mut Context<'_>, wire: &Shared) -> Poll<io::Result<()>> {
        let mut w = lock(wire);
        let io = w.io.as_mut().ok_or_else(taken)?;
        let mut io = Pin::new(io);
        while !self.is_empty() {
            let a = &self.buf[self.at..];
            let b = self.big.as_deref().unwrap_or(&[]);
            let n = match (a.is_empty(), b.is_empty()) {
                (false, false) => ready!(
                    io.as_mut()
                        .poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
                )?,
                (false, true) => ready!(io.as_mut().poll_write(cx, a))?,
                _ => ready!(io.as_mut().poll_write(cx, b))?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_a = n.min(a.len());
            self.at += from_a;
            if let Some(big) = &mut self.big {
                big.advance(n - from_a);
                if big.is_empty() {
                    self.big = None;
                }
            }
            if self.at == self.buf.len() {
                self.buf.clear();
                self.at = 0;
            }
        }
        io.poll_flush(cx)
    }
}

/// How writing a response ended.
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// Whole; the connection may serve another request if nothing else closes it.
    Whole,
    /// Cut short (the body failed, or gave other than its length): the connection closes.
    Short,
}

/// Streams `body` framed as `out` after the head already in `pending`.
async fn send_body<B>(
    wire: &Shared,
    pending: &mut Pending,
    body: B,
    mut out: Out,
    trailers_ok: bool,
) -> io::Result<Sent>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let mut body = pin!(body);
    // A chunk's closing CRLF, written with what follows it.
    let mut crlf = false;
    // How it ends, once known: the body is not polled again after that (a body that failed
    // may well say `None` next, which must not become a whole chunked end).
    let mut end = None;
    poll_fn(|cx| {
        loop {
            if let Some(end) = end {
                // What was written stands, also when short: the client sees the response end
                // early, as the connection closes.
                let written = ready!(pending.poll_write(cx, wire));
                return Poll::Ready(match end {
                    Sent::Whole => written.map(|()| Sent::Whole),
                    Sent::Short => Ok(Sent::Short),
                });
            }
            if pending.big.is_some() || pending.buf.len() >= COPY_BELOW {
                ready!(pending.poll_write(cx, wire))?;
            }
            let frame = match body.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    // Nothing more for now: what is waiting goes out.
                    if !pending.is_empty() {
                        ready!(pending.poll_write(cx, wire))?;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => None,
                Poll::Ready(Some(Ok(f))) => Some(f),
                Poll::Ready(Some(Err(_))) => {
                    end = Some(Sent::Short);
                    continue;
                }
            };
            let frame = match frame {
                None => {
                    end = Some(match out {
                        Out::Length(n) if n > 0 => Sent::Short,
                        Out::Chunked => {
                            if crlf {
                                pending.buf.extend_from_slice(b"\r\n");
                            }
                            pending.buf.extend_from_slice(b"0\r\n\r\n");
                            Sent::Whole
                        }
                        _ => Sent::Whole,
                    });
                    continue;
                }
                Some(f) => f,
            };
            let mut data = match frame.into_data() {
                Ok(d) => d,
                Err(f) => {
                    // Trailers end the body; they go out only in chunks to a client that
                    // asked for them (`TE: trailers`). A body that still owed bytes of its
                    // length is short all the same.
                    if let Out::Length(n) = out
                        && n > 0
                    {
                        end = Some(Sent::Short);
                        continue;
                    }
                    if out == Out::Chunked {
                        if crlf {
                            pending.buf.extend_from_slice(b"\r\n");
                        }
                        pending.buf.extend_from_slice(b"0\r\n");
                        if let (Ok(t), true) = (f.into_trailers(), trailers_ok) {
                            for (name, value) in &t {
                                write_field(&mut pending.buf, name, value);
                            }
                        }
                        pending.buf.extend_from_slice(b"\r\n");
                    }
                    end = Some(Sent::Whole);
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            match &mut out {
                Out::Nothing => continue,
                Out::Length(left) => {
                    if data.len() as u64 > *left {
                        // More than the length said: what fits goes, then the connection closes.
                        data.truncate(*left as usize);
                        *left = 0;
                        push(pending, data);
                        end = Some(Sent::Short);
                        continue;
                    }
                    *left -= data.len() as u64;
                }
                Out::Chunked => {
                    if crlf {
                        pending.buf.extend_from_slice(b"\r\n");
                    }
                    h1::write_chunk_size(&mut pending.buf, data.len());
                    crlf = true;
                }
                Out::Close => {}
            }
            push(pending, data);
        }
    })
    .await
}

/// Queues `data` after what `pending` holds: copied when small, else as its large piece.
fn push(pending: &mut Pending, data: Bytes) {
    match data.len() < COPY_BELOW {
        true => pending.buf.extend_from_slice(&data),
        false => pending.big = Some(data),
    }
}

/// Why reading a head stopped without one.
enum NoHead {
    /// The client closed, went quiet past the timeout, or the listener is stopping.
    Closed,
    /// The head was refused.
    Refused(Refusal),
    /// Reading failed.
    Io,
}

/// Waits for the next request head. `stopping` resolves when the listener stops; it is the
/// connection's, polled here only while no request is arriving.
async fn next_head<S: Future<Output = ()>>(
    wire: &Shared,
    settings: &Settings,
    mut stopping: Pin<&mut S>,
    timer: &mut crate::clock::Alarm<'_>,
) -> Result<Parsed, NoHead> {
    // The connection's one timer: set again only if it would fire after this limit (rarely:
    // each head's limit is later than the last one's, but a request's own limit may have moved
    // the timer later), or when it fires before it.
    let limit = tokio::time::Instant::now() + settings.head_timeout;
    timer.no_later_than(limit);
    // Bytes already parsed without a whole head: only a line end after them can complete it,
    // so a head that arrives in many pieces is not parsed from its start for each.
    let mut parsed = 0;
    loop {
        let idle = {
            let mut w = lock(wire);
            let len = w.buf.len();
            if len > parsed
                && (memchr::memchr(b'\n', &w.buf[parsed..]).is_some() || len > settings.max_head)
            {
                match parse_head(&mut w.buf, settings.max_head, settings.keep_fields) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => parsed = len,
                    Err(r) => return Err(NoHead::Refused(r)),
                }
            }
            if w.eof {
                return Err(NoHead::Closed);
            }
            w.buf.is_empty()
        };
        tokio::select! {
            biased;
            r = poll_fn(|cx| lock(wire).poll_fill(cx)) => match r {
                Ok(_) => {}
                Err(_) => return Err(NoHead::Io),
            },
            // A stopping listener closes a connection between requests at once; a request
            // already arriving is served.
            () = stopping.as_mut(), if idle => return Err(NoHead::Closed),
            () = poll_fn(|cx| timer.poll_until(limit, cx)) => {
                return Err(NoHead::Closed);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's wait for its listener's stop: one waiter on the listener's watch,
    /// registered at the first poll and kept, and polled again only when the watch woke it.
    /// Polling the waiter itself each time the connection waits for a head takes the lock of
    /// the watch that all the listener's connections share; this takes none.
    struct StopWait<F> {
        #[pin]
        wait: F,
        // Set when the watch woke the waiter, and at first; it wakes the connection's task.
        woke: Arc<Signal>,
        // The waker the waiter is polled with: it sets `woke`.
        waker: std::task::Waker,
    }
}

impl<F: Future<Output = ()>> StopWait<F> {
    fn new(wait: F) -> StopWait<F> {
        let woke = Arc::new(Signal::new_set());
        StopWait {
            wait,
            waker: signal::waker(&woke),
            woke,
        }
    }
}

impl<F: Future<Output = ()>> Future for StopWait<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.woke.register(cx);
        if !this.woke.take() {
            return Poll::Pending;
        }
        this.wait.poll(&mut Context::from_waker(this.waker))
    }
}

/// Resolves once `rx` turns true: the listener is stopping (also when its owner is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            // The owner is gone: nobody can ask for a graceful stop any more, so stop now.
            return;
        }
    }
}

/// Serves the HTTP/1.1 connection `io` until the client or a limit closes it, the listener
/// stops (`stop`: after the exchange in progress), or it becomes a tunnel. `call` answers each
/// request; `refused` gives the whole answer to a head refused, after which the connection
/// closes.
pub async fn serve<C, F, B>(
    io: Box<dyn Transport>,
    mut call: C,
    refused: impl Fn(Refusal) -> Bytes,
    settings: Settings,
    stop: watch::Receiver<bool>,
    cut: Cut,
) where
    C: FnMut(Box<Outgoing>) -> F,
    F: Future<Output = http::Response<B>>,
    B: Body<Data = Bytes, Error = BoxError> + Carries,
{
    let wire: Shared = Arc::new(parking_lot::Mutex::new(Wire {
        io: Some(io),
        buf: BytesMut::new(),
        body: Framing::Done,
        eof: false,
        cont: None,
        broken: false,
        exchange: 0,
    }));
    // However serving ends (also when this future is dropped), the socket closes with it, not
    // when the last request body kept elsewhere goes.
    let hangup = Hangup(&wire);
    let mut pending = Pending::default();
    // The connection's one timer: the time limit on each request head (see `next_head`), and
    // the one a request in progress asks to be woken at (`Cut::wake_at`).
    let sleep = pin!(tokio::time::sleep_until(
        tokio::time::Instant::now() + settings.head_timeout
    ));
    let mut timer = crate::clock::Alarm::new(sleep);
    cut.wakes();
    // The connection waits for the listener's stop with one waiter, registered once and kept
    // until the connection ends: a wait made anew between each two requests cost a
    // registration and a removal under the lock all the listener's connections share. Once it
    // has resolved, `next_head` returns and the loop ends, so it is never polled again.
    let mut watcher = stop.clone();
    let mut stopping = pin!(StopWait::new(stopped(&mut watcher)));
    loop {
        // The request is made from the head by a plain function, so that none of the head's
        // pieces stays in this future while the request is answered.
        let (req, mut asked, keep_alive) =
            match next_head(&wire, &settings, stopping.as_mut(), &mut timer).await {
                Ok(parsed) => start(parsed, &wire),
                Err(NoHead::Closed | NoHead::Io) => break,
                Err(NoHead::Refused(why)) => {
                    pending.buf.extend_from_slice(&refused(why));
                    let _ = poll_fn(|cx| pending.poll_write(cx, &wire)).await;
                    break;
                }
            };
        let res = {
            let mut call = pin!(call(req));
            let (mut freed, mut watch) = (false, true);
            let res = poll_fn(|cx| {
                if let Poll::Ready(res) = call.as_mut().poll(cx) {
                    return Poll::Ready(Some(res));
                }
                // The request's time limit, if it asked to be woken at it: once the timer
                // reaches it, the request is polled again, and finds it passed.
                if let Some(t) = cut.wake_time() {
                    timer.no_later_than(t);
                    if timer.poll_until(t, cx).is_ready() {
                        cut.woken();
                        if let Poll::Ready(res) = call.as_mut().poll(cx) {
                            return Poll::Ready(Some(res));
                        }
                    }
                }
                let mut w = lock(&wire);
                if !freed {
                    freed = true;
                    // A request that waits (for a slot, an endpoint, the backend) holds no
                    // read buffer when nothing else is in it: a held request costs its head.
                    if w.buf.is_empty() && w.body == Framing::Done {
                        spare::put(std::mem::take(&mut w.buf));
                    }
                }
                // Once its body is read, a client that closes is gone: its request is dropped
                // (it leaves the queue, the backend's exchange is abandoned). Bytes that come
                // instead are the next request's, and are kept.
                if watch && w.body == Framing::Done && w.buf.is_empty() {
                    match w.poll_probe(cx) {
                        Poll::Ready(true) => return Poll::Ready(None),
                        Poll::Ready(false) => watch = false,
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            })
            .await;
            cut.woken();
            res
        };
        let Some(res) = res else {
            break;
        };
        let (parts, mut body) = res.into_parts();
        let verbatim = body.take_verbatim();
        let mut close = !keep_alive || *stop.borrow();
        {
            // Too late for `100 Continue` once the answer starts: the client that waited for it
            // has its answer instead.
            let mut w = lock(&wire);
            // No `100 Continue` once the answer is ready: the client has its answer instead.
            // One a full socket cut short is finished first, so the head stays whole.
            match w.cont.take() {
                Some(0) if w.body != Framing::Done => {
                    // The client was not told to send its body, and may or may not: where the
                    // next request starts is unknown, so the connection closes after this.
                    close = true;
                }
                Some(done) => pending.buf.extend_from_slice(&CONTINUE[done..]),
                None => {}
            }
            close |= w.broken;
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS && asked.upgrade.is_some() {
            // The switch happens only after the whole request: bytes of its body left unread
            // would reach the new protocol as its own. A body read only in part (the backend
            // switched without reading it) makes the answer a `500` instead.
            if lock(&wire).body != Framing::Done && !drain(&wire) {
                asked.upgrade = None;
            }
        }
        let len = match body.is_end_stream() {
            true => Some(0),
            false => body.size_hint().exact(),
        };
        let out = encode_head(
            &mut pending.buf,
            parts.status,
            &parts.headers,
            verbatim.as_ref(),
            len,
            &asked,
            &mut close,
        );
        // Its lines are a slice of the upstream read buffer, which they would keep shared
        // while the body streams.
        drop(verbatim);
        h1::maps::release(parts.headers);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(tx) = asked.upgrade.take()
        {
            drop(body);
            if poll_fn(|cx| pending.poll_write(cx, &wire)).await.is_err() {
                break;
            }
            let mut w = lock(&wire);
            if let Some(io) = w.io.take() {
                let read = w.buf.split().freeze();
                let _ = tx.send(Upgraded { io, read });
            }
            return;
        }
        drop(asked.upgrade.take());
        let sent = send_body(&wire, &mut pending, body, out, asked.trailers).await;
        if !matches!(sent, Ok(Sent::Whole)) || close {
            break;
        }
        // A body the handler did not read is read and dropped if it is short and already
        // here; otherwise the connection closes, as it cannot find the next head.
        if !drain(&wire) {
            break;
        }
        if pending.buf.capacity() > 4 * COPY_BELOW {
            pending.buf = Vec::new();
        }
    }
    let io = lock(&wire).io.take();
    if let Some(mut io) = io {
        use tokio::io::AsyncWriteExt as _;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }
    drop(hangup);
}

/// Starts an exchange with the head `parsed`: the request for the handler, with its body read
/// from `wire`, what the response must know of it, and whether the client may send another.
fn start(parsed: Parsed, wire: &Shared) -> (Box<Outgoing>, Asked, bool) {
    let Parsed {
        mut request,
        body,
        keep_alive,
        expect_continue,
        upgrade,
        trailers,
    } = parsed;
    let exchange = {
        let mut w = lock(wire);
        w.body = body;
        w.cont = expect_continue.then_some(0);
        w.exchange += 1;
        w.exchange
    };
    let http10 = request.version() == Version::HTTP_10;
    let head = request.method() == Method::HEAD;
    let client = RequestBody::Left(ClientBody::new(wire, body, exchange));
    *request.body_mut() = OutBody::Client(client, None);
    let upgrade = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        request
            .extensions_mut()
            .insert(UpgradeSlot(Arc::new(Mutex::new(Some(rx)))));
        tx
    });
    let asked = Asked {
        http10,
        head,
        trailers,
        upgrade,
    };
    (request, asked, keep_alive)
}

/// Closes the connection's socket when dropped, if it is still there.
struct Hangup<'a>(&'a Shared);

impl Drop for Hangup<'_> {
    fn drop(&mut self) {
        drop(lock(self.0).io.take());
    }
}

/// Reads and drops what the handler left of the request body, from what was already read;
/// true if the connection can go on to the next request.
fn drain(wire: &Shared) -> bool {
    let mut w = lock(wire);
    if w.broken {
        return false;
    }
    if w.body != Framing::Done {
        // A body still held (by a stream that outlived the exchange) must not end as if
        // whole once its bytes were dropped here: it is cut instead.
        w.exchange += 1;
    }
    let mut dropped = 0u64;
    loop {
        let Wire { buf, body, .. } = &mut *w;
        match h1::next_frame(buf, body) {
            Ok(Next::End) => return true,
            Ok(Next::Frame(f)) => {
                dropped += f.data_ref().map_or(0, |d| d.len() as u64);
                if dropped > DRAIN_MAX {
                    return false;
                }
            }
            Ok(Next::Need) | Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Outgoing {
        /// The request as a handler of the client's side reads it: every field in the map,
        /// the client's body.
        fn into_client(mut self: Box<Self>) -> Request<RequestBody> {
            self.materialise();
            self.req.map(|b| match b {
                OutBody::Client(b, _) => b,
                OutBody::Empty => unreachable!("the connection gave the request its body"),
            })
        }
    }

    fn parse(s: &str) -> Result<Option<Parsed>, Refusal> {
        let mut buf = BytesMut::from(s.as_bytes());
        parse_head(&mut buf, 64 << 10, true)
    }

    #[test]
    fn a_plain_head_parses_with_its_framing() {
        let p = parse("POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(p.request.method(), Method::POST);
        assert_eq!(p.request.uri(), "/a?b");
        assert_eq!(p.body, Framing::Length(5));
        assert!(p.keep_alive);
        // Its fields are kept as written; its map is empty until they are put into it.
        assert!(p.request.headers().is_empty());
        let lines = p.request.fields.as_ref().unwrap();
        assert_eq!((&lines.host()[..], lines.length()), (&b"x"[..], Some(5)));
        let req = p.into_request();
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers()["content-length"], "5");
        let p = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(p.body, Framing::Done);
        assert!(!p.keep_alive);
        let p = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(p.keep_alive);
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().map(|_| ()),
            None
        );
    }

    #[test]
    fn ambiguous_heads_are_refused_naming_the_rule() {
        let cases = [
            ("GET / HTTP/1.1\nHost: x\r\n\r\n", Refusal::BareLf),
            ("GET / HTTP/1.1\r\nHost: x\n\r\n", Refusal::BareLf),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::LengthAndChunked,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                Refusal::LengthsDisagree,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                Refusal::LengthUnreadable,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
                Refusal::LengthUnreadable,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Refusal::NotChunked,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::ChunkedOnHttp10,
            ),
            (
                "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                Refusal::Malformed("invalid header name"),
            ),
            (
                "GET / HTTP/2.0\r\n\r\n",
                Refusal::Malformed("not HTTP/1.0 or HTTP/1.1"),
            ),
            (
                "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                Refusal::Connect,
            ),
        ];
        for (head, want) in cases {
            assert_eq!(parse(head).map(|_| ()), Err(want), "{head:?}");
        }
        let many: String = (0..=head::MAX_HEADERS)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).map(|_| ()),
            Err(Refusal::TooManyFields)
        );
        let mut big =
            BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000)).as_bytes());
        assert_eq!(
            parse_head(&mut big, 8192, true).map(|_| ()),
            Err(Refusal::TooLarge)
        );
    }

    /// A head keeps its fields as written only when the proxy reads none of them but its one
    /// `Host`: each field it reads or edits, in any case, sends the head to the map, as do a
    /// second `Host` or length, no `Host`, and a target with an authority.
    #[test]
    fn only_heads_with_nothing_to_read_but_the_host_keep_their_lines() {
        let kept = |head: &str| parse(head).unwrap().unwrap().request.fields.is_some();
        for name in [
            "TE",
            "Expect",
            "Upgrade",
            "Forwarded",
            "Connection",
            "Keep-Alive",
            "X-Forwarded-For",
            "Proxy-Connection",
            "X-Forwarded-Host",
            "Transfer-Encoding",
            "X-Forwarded-Proto",
            "Proxy-Authenticate",
        ] {
            for name in [name.to_owned(), name.to_ascii_lowercase()] {
                let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: chunked\r\n\r\n");
                assert!(!kept(&head), "{name}");
                // The field alone decides: the same head with another name keeps its lines.
                let near = format!("GET / HTTP/1.1\r\nHost: x\r\n{name}x: chunked\r\n\r\n");
                assert!(kept(&near), "{name}x");
            }
        }
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n",
        ] {
            assert!(!kept(head), "{head:?}");
        }
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.0\r\nAccept: */*\r\nHOST: x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0\r\nHost: x\r\nX-Forwarded: 1\r\n\r\n",
        ] {
            assert!(kept(head), "{head:?}");
        }
        // The framing and the connection's fate are what the map's reading gives.
        let p = parse("GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert!(!p.keep_alive && p.body == Framing::Done && p.request.fields.is_some());
        let p = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(p.keep_alive && p.body == Framing::Done);
        assert_eq!(p.request.fields.unwrap().length(), Some(0));
    }

    #[test]
    fn equal_length_fields_count_as_one_and_pipelined_bytes_stay() {
        let mut buf = BytesMut::from(
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n"[..],
        );
        let p = parse_head(&mut buf, 1 << 16, true).unwrap().unwrap();
        assert_eq!(p.body, Framing::Length(2));
        assert_eq!(&buf[..], b"hiGET / HTTP/1.1\r\n");
    }

    /// The header map has room for the forwarding fields and no more than its table gives:
    /// after them, a request read with a few fields fills it without a growth.
    #[test]
    fn the_header_map_has_room_for_its_fields_and_the_forwarding_ones_where_they_go() {
        for fields in 0..=40 {
            let room = map_room(fields);
            assert!(room >= fields, "{fields}");
            let map = HeaderMap::<HeaderValue>::with_capacity(room);
            assert_eq!(
                map.capacity(),
                room,
                "{fields}: the table is the smallest that fits"
            );
            // Half the room would not do: the table is not larger than it must be.
            assert!(room / 2 < fields.max(1), "{fields}");
        }
        let add = |req: &mut Outgoing| {
            for name in [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "forwarded",
            ] {
                req.headers_mut().append(
                    http::header::HeaderName::from_static(name),
                    HeaderValue::from_static("v"),
                );
            }
        };
        // The forwarding fields go into the map when the client sent one already: the map
        // is taken with room for them, and does not grow.
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
            "GET / HTTP/1.1\r\nForwarded: for=192.0.2.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nx-forwarded-HOST: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n\r\n",
        ] {
            let mut req = parse(head).unwrap().unwrap().request;
            let before = req.headers().capacity();
            assert_eq!(before, map_room(2 + ADDED_FIELDS), "{head:?}");
            add(&mut req);
            assert_eq!(req.headers().capacity(), before, "no growth: {head:?}");
        }
        // Names near them are not them.
        for name in [
            "forwarder",
            "x-forwarded-fox",
            "x-forwarded-hosts",
            "x-forwarded",
        ] {
            assert!(!is_forwarding_name(name.as_bytes()), "{name}");
        }
        // Otherwise the HTTP/1.1 writer adds them to the head, and the map holds the head's
        // fields only.
        let req = parse("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nConnection: x\r\n\r\n")
            .unwrap()
            .unwrap()
            .request;
        assert_eq!(req.headers().capacity(), 3);
        // A head with nothing the proxy reads but its host keeps no map at all.
        let p = parse("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nUser-Agent: u\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.request.headers().capacity(), 0);
        assert!(p.request.fields.is_some());
    }

    /// A backend's fields kept as it wrote them go out first and as they are, then the map's
    /// (what rouse added); the length and the date come from them, not twice.
    #[test]
    fn verbatim_fields_go_out_as_written_then_the_map() {
        let v = Verbatim::new(
            Bytes::from_static(b"Server: x\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\nX-A:  1 \r\n"),
            Some(5),
            true,
        );
        let mut added = HeaderMap::new();
        added.insert(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        let asked = |head| Asked {
            http10: false,
            head,
            trailers: false,
            upgrade: None,
        };
        let write = |status, asked: &Asked, len| {
            let (mut dst, mut close) = (Vec::new(), false);
            let out = encode_head(&mut dst, status, &added, Some(&v), len, asked, &mut close);
            (String::from_utf8(dst).unwrap(), out, close)
        };
        let fields =
            "Server: x\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\nX-A:  1 \r\nset-cookie: a=1\r\n";
        // HEAD: the length is the head's, and no body follows.
        let (head, out, close) = write(StatusCode::OK, &asked(true), None);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\n{fields}content-length: 5\r\n\r\n")
        );
        assert!(matches!(out, Out::Nothing) && !close);
        let (head, out, _) = write(StatusCode::OK, &asked(false), Some(5));
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\n{fields}content-length: 5\r\n\r\n")
        );
        assert!(matches!(out, Out::Length(5)));
        // A final `1xx` is a bare 500: none of the backend's fields go with it.
        let (head, _, close) = write(StatusCode::CONTINUE, &asked(false), None);
        assert!(
            head.starts_with("HTTP/1.1 500 Internal Server Error\r\ndate: "),
            "{head}"
        );
        assert!(!head.contains("Server: x") && close, "{head}");
    }

    /// A head's copy holds its bytes whatever its length, at each edge of the room it takes,
    /// and slices of it outlive it.
    #[test]
    fn a_head_copy_holds_the_head() {
        for len in [
            0, 1, 64, 65, 96, 97, 128, 129, 700, 768, 769, 1024, 1025, 5000,
        ] {
            let head: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let copy = own_copy(&head);
            assert_eq!(&copy[..], &head[..], "{len}");
            let tail = copy.slice(len / 2..);
            drop(copy);
            assert_eq!(&tail[..], &head[len / 2..], "{len}");
        }
    }

    #[test]
    fn a_bare_lf_in_trailers_fails_the_body() {
        let wire =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nx: y\n\r\n";
        let (read, stop) = read_all(wire, &[], 1 << 16);
        assert!(read.is_empty());
        assert_eq!(
            stop.as_deref(),
            Some("a trailer line ends in LF without CR")
        );
    }

    /// Pipelined requests read the same however the bytes are cut, each body to its end and
    /// no further; a break stops the reading after the requests before it.
    #[test]
    fn however_the_bytes_are_cut_the_requests_are_the_same() {
        let streams: [&[u8]; 3] = [
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nGE\r\n0\r\nt: 1\r\n\r\n",
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        ];
        let same_however_cut = |wire: &[u8], max: usize| {
            let whole = format!("{:?}", read_all(wire, &[], max));
            for cut in 0..=wire.len() {
                assert_eq!(format!("{:?}", read_all(wire, &[cut], max)), whole);
            }
            let ones = vec![1; wire.len()];
            assert_eq!(format!("{:?}", read_all(wire, &ones, max)), whole);
        };
        for wire in streams {
            same_however_cut(wire, 1 << 16);
        }
        // Refusals too: an error seen before the line's bare LF, and heads past a limit of 64
        // bytes, judged by their first 64 bytes whatever comes after.
        let long = "a".repeat(70);
        let refused = [
            (
                b"\x0f\n".to_vec(),
                Refusal::Malformed("invalid method or start line"),
            ),
            (
                format!("GET /{long} HTTP/1.1\r\nX\x01: y\r\n\r\n").into_bytes(),
                Refusal::TooLarge,
            ),
            (
                format!("GET /{long} HTTP/1.1\nHost: x\r\n\r\n").into_bytes(),
                Refusal::TooLarge,
            ),
            (
                format!("GET / HTTP/1.1\nX: {long}\r\n\r\n").into_bytes(),
                Refusal::BareLf,
            ),
        ];
        for (wire, why) in refused {
            same_however_cut(&wire, 64);
            assert_eq!(
                read_all(&wire, &[], 64).1,
                Some(why.to_string()),
                "{wire:?}"
            );
        }
        let (read, stop) = read_all(streams[0], &[], 1 << 16);
        let seen: Vec<_> = read
            .iter()
            .map(|(r, body, t)| (r.uri().to_string(), body.clone(), t.is_some()))
            .collect();
        assert_eq!(
            seen,
            [
                ("/a".to_string(), b"abc".to_vec(), false),
                ("/b".to_string(), vec![], false),
                ("/c".to_string(), b"GE".to_vec(), true),
            ]
        );
        assert_eq!(stop, None);
        let (read, stop) = read_all(streams[1], &[], 1 << 16);
        assert_eq!(read.len(), 1);
        assert_eq!(stop, Some(Refusal::LengthAndChunked.to_string()));
        let (read, stop) = read_all(streams[2], &[], 1 << 16);
        assert!(read.is_empty());
        assert_eq!(stop, Some(BodyError::Cut.to_string()));
    }

    /// A body and its trailers, as a handler read them.
    type Collected = (Bytes, Option<Vec<(String, Vec<u8>)>>);

    /// What a server made of one request: what its handler saw, or the status of its refusal.
    #[derive(Debug, PartialEq)]
    enum Verdict {
        Seen {
            method: String,
            target: String,
            version: Version,
            fields: Vec<(String, Vec<u8>)>,
            /// The body and its trailers, or `None` if reading it failed.
            body: Option<Collected>,
        },
        Refused(u16),
    }

    type Record = Arc<Mutex<Option<Verdict>>>;

    /// Records what `req` is, reading its body to the end.
    async fn record<B>(
        req: Request<B>,
        seen: Record,
    ) -> http::Response<http_body_util::Empty<Bytes>>
    where
        B: Body<Data = Bytes>,
    {
        use http_body_util::BodyExt;
        let fields = |h: &HeaderMap| {
            h.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        };
        let (parts, body) = req.into_parts();
        let body = match tokio::time::timeout(Duration::from_secs(5), body.collect()).await {
            Ok(Ok(c)) => {
                let trailers = c.trailers().map(fields);
                Some((c.to_bytes(), trailers))
            }
            _ => None,
        };
        *seen.lock().unwrap() = Some(Verdict::Seen {
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            version: parts.version,
            fields: fields(&parts.headers),
            body,
        });
        http::Response::new(http_body_util::Empty::new())
    }

    /// Sends `wire` in pieces of `piece` bytes to a server at `addr` and reads the status of
    /// its answer. A request still incomplete after a while is ended by closing the sending
    /// side, as a client that gives up would.
    async fn exchange(addr: std::net::SocketAddr, wire: &[u8], piece: usize) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for part in wire.chunks(piece.max(1)) {
            s.write_all(part).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            let wait = match closed {
                false => Duration::from_millis(300),
                true => Duration::from_secs(3),
            };
            match tokio::time::timeout(wait, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    out.extend_from_slice(&buf[..n]);
                    if memchr::memmem::find(&out, b"\r\n\r\n").is_some() {
                        break;
                    }
                }
                Err(_) if !closed => {
                    let _ = s.shutdown().await;
                    closed = true;
                }
                Err(_) => break,
            }
        }
        let line = out.split(|&b| b == b' ').nth(1)?;
        std::str::from_utf8(line).ok()?.parse().ok()
    }

    fn verdict(seen: &Record, status: Option<u16>) -> Verdict {
        match seen.lock().unwrap().take() {
            Some(v) => v,
            None => Verdict::Refused(status.unwrap_or(0)),
        }
    }

    const MAX: usize = 16 << 10;

    async fn ours(wire: &[u8], piece: usize) -> Verdict {
        judged(wire, piece, |tcp, rec| async move {
            let (_stop, stop) = watch::channel(false);
            let settings = Settings {
                max_head: MAX,
                head_timeout: Duration::from_secs(10),
                keep_fields: true,
            };
            serve(
                Box::new(tcp),
                |req: Box<Outgoing>| {
                    let rec = rec.clone();
                    // Every field, also those kept as the client wrote them.
                    let req = req.into_client();
                    async move {
                        record(req, rec).await.map(|b| {
                            use http_body_util::BodyExt as _;
                            b.map_err(|e| match e {}).boxed()
                        })
                    }
                },
                |why| {
                    let code = if why.too_large() { 431 } else { 400 };
                    Bytes::from(format!("HTTP/1.1 {code} No\r\ncontent-length: 0\r\n\r\n"))
                },
                settings,
                stop,
                Cut::default(),
            )
            .await;
        })
        .await
    }

    async fn hypers(wire: &[u8]) -> Verdict {
        judged(wire, usize::MAX, |tcp, rec| async move {
            let svc = hyper::service::service_fn(move |req| {
                let rec = rec.clone();
                async move { Ok::<_, std::convert::Infallible>(record(req, rec).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        })
        .await
    }

    /// Serves one loopback connection with `server`, sends it `wire` in pieces of `piece`
    /// bytes, and says what the server made of it.
    async fn judged<S, F>(wire: &[u8], piece: usize, server: S) -> Verdict
    where
        S: FnOnce(tokio::net::TcpStream, Record) -> F + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Record::default();
        let rec = seen.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            server(tcp, rec).await;
        });
        let status = exchange(addr, wire, piece).await;
        server.abort();
        verdict(&seen, status)
    }

    /// The same requests, valid and malformed, read by this connection and by hyper's server
    /// (the reference): the same verdict, method, target, fields, body and trailers (so the
    /// same bytes go upstream), whether they come in one write or a few bytes at a time. The
    /// heads hyper reads leniently and this connection refuses are listed apart.
    #[tokio::test]
    async fn reads_requests_as_hyper_does() {
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX + 100));
        let many: String = (0..=head::MAX_HEADERS)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let corpus: Vec<&[u8]> = vec![
            b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET /p/a%20th?q=1&r#f HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nx-a: 2\r\nAccept: */*\r\n\r\n",
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nhel\r\n2 \r\nlo\r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://a.test:8080/x?y HTTP/1.1\r\nHost: a.test:8080\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xc3\xa9\r\nX-Tab: a\tb \r\nX-Empty:\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n",
            // Refused heads.
            b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GE(T / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            big.as_bytes(),
            many.as_bytes(),
            // Bodies that break.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello",
        ];
        for wire in corpus {
            let reference = hypers(wire).await;
            for piece in [usize::MAX, 7] {
                let got = ours(wire, piece).await;
                assert_eq!(
                    got,
                    reference,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(&wire[..wire.len().min(200)])
                );
            }
        }
        // What hyper reads leniently and this connection refuses: a line ended by a bare LF,
        // a length beside chunked (either can hide a second request from another reader), and
        // CONNECT, which a reverse proxy does not serve.
        let stricter: [&[u8]; 4] = [
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ];
        for wire in stricter {
            assert!(matches!(hypers(wire).await, Verdict::Seen { .. }));
            assert_eq!(ours(wire, usize::MAX).await, Verdict::Refused(400));
        }
    }

    /// Exchanges over an in-memory pipe, whose small capacity makes writes wait.
    mod exchanges {
        use super::*;
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

        type Reply = http::Response<http_body_util::combinators::BoxBody<Bytes, BoxError>>;

        /// Serves one connection whose transport is `io` with `call`.
        fn serve_on<T, C, F>(io: T, call: C) -> tokio::task::JoinHandle<()>
        where
            T: Transport,
            C: FnMut(Request<RequestBody>) -> F + Send + 'static,
            F: Future<Output = Reply> + Send + 'static,
        {
            let (stopper, stop) = watch::channel(false);
            tokio::spawn(async move {
                // Kept while serving: a listener gone stops its connections.
                let _stopper = stopper;
                serving(io, call, stop).await;
            })
        }

        /// [`serve_on`], stopped when `stop` turns true.
        fn serve_stopped_by<T, C, F>(
            io: T,
            call: C,
            stop: watch::Receiver<bool>,
        ) -> tokio::task::JoinHandle<()>
        where
            T: Transport,
            C: FnMut(Request<RequestBody>) -> F + Send + 'static,
            F: Future<Output = Reply> + Send + 'static,
        {
            tokio::spawn(serving(io, call, stop))
        }

        /// A connection served by `call` until `stop` turns true.
        async fn serving<T, C, F>(io: T, call: C, stop: watch::Receiver<bool>)
        where
            T: Transport,
            C: FnMut(Request<RequestBody>) -> F + Send + 'static,
            F: Future<Output = Reply> + Send + 'static,
        {
            let settings = Settings {
                max_head: MAX,
                head_timeout: Duration::from_secs(10),
                keep_fields: true,
            };
            let mut call = call;
            serve(
                Box::new(io),
                move |req: Box<Outgoing>| call(req.into_client()),
                |why| {
                    let code = if why.too_large() { 431 } else { 400 };
                    let text = why.to_string();
                    let len = text.len();
                    Bytes::from(format!(
                        "HTTP/1.1 {code} No\r\ncontent-length: {len}\r\n\r\n{text}"
                    ))
                },
                settings,
                stop,
                Cut::default(),
            )
            .await;
        }

        /// A pipe of `cap` bytes each way, served by `call`; the client's end.
        fn pipe<C, F>(cap: usize, call: C) -> (DuplexStream, tokio::task::JoinHandle<()>)
        where
            C: FnMut(Request<RequestBody>) -> F + Send + 'static,
            F: Future<Output = Reply> + Send + 'static,
        {
            let (client, server) = tokio::io::duplex(cap);
            (client, serve_on(server, call))
        }

        /// Everything the server sends until it closes (or 5 s pass: then the test fails).
        async fn to_end(c: &mut DuplexStream) -> Vec<u8> {
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
                .await
                .expect("the server closes the connection")
                .unwrap();
            out
        }

        /// Reads until a head's end is among the bytes read.
        async fn head_of(c: &mut DuplexStream) -> String {
            let mut out = Vec::new();
            let mut byte = [0u8; 1];
            while !out.ends_with(b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
                    .await
                    .expect("a head arrives")
                    .unwrap();
                assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&out));
                out.push(byte[0]);
            }
            String::from_utf8(out).unwrap()
        }

        /// A body of the given frames, in order, then its end.
        fn frames(
            list: Vec<Result<Frame<Bytes>, BoxError>>,
        ) -> http_body_util::combinators::BoxBody<Bytes, BoxError> {
            let stream = futures_util::stream::iter(list);
            http_body_util::StreamBody::new(stream).boxed()
        }

        fn empty() -> http_body_util::combinators::BoxBody<Bytes, BoxError> {
            http_body_util::Empty::new().map_err(|e| match e {}).boxed()
        }

        /// A body that fails while the client takes the response slowly ends the response
        /// short: the chunked end is not written, so the client cannot take it for whole.
        #[tokio::test]
        async fn a_body_that_fails_is_never_ended_as_whole() {
            let (mut c, _server) = pipe(64, |_req| async {
                let body = frames(vec![
                    Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))),
                    Err("the backend's connection broke".into()),
                ]);
                http::Response::new(body)
            });
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let out = to_end(&mut c).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
            assert!(text.ends_with(&"a".repeat(1000)), "{text}");
        }

        /// Trailers that come while the body still owes bytes of its length leave it short:
        /// the connection closes rather than read the next request after a short response.
        #[tokio::test]
        async fn trailers_before_the_length_is_reached_end_the_connection() {
            let (mut c, _server) = pipe(1 << 16, |_req| async {
                let body = frames(vec![
                    Ok(Frame::data(Bytes::from_static(b"12345"))),
                    Ok(Frame::trailers(HeaderMap::new())),
                ]);
                let mut res = http::Response::new(body);
                res.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
                res
            });
            c.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let out = String::from_utf8(to_end(&mut c).await).unwrap();
            assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
            assert!(out.ends_with("\r\n\r\n12345"), "{out}");
        }

        /// The answer to `HEAD` carries no length when the response gave none, rather than a
        /// `content-length: 0` that misstates the `GET`'s; one with a length keeps it.
        #[tokio::test]
        async fn head_answers_tell_only_the_length_they_know() {
            let (mut c, _server) = pipe(1 << 16, |req| async move {
                let mut res = http::Response::new(empty());
                if req.uri().path() == "/sized" {
                    res.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
                }
                res
            });
            c.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let head = head_of(&mut c).await.to_ascii_lowercase();
            assert!(!head.contains("content-length"), "{head}");
            assert!(!head.contains("transfer-encoding"), "{head}");
            c.write_all(b"HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let head = head_of(&mut c).await;
            assert!(head.contains("content-length: 42\r\n"), "{head}");
            // Neither head had a body after it: the next answer starts right away.
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert!(head_of(&mut c).await.contains("content-length: 0\r\n"));
        }

        /// A `1xx` as the final answer (here `103`, or a `101` nobody asked for) becomes an
        /// empty `500`, and the connection closes.
        #[tokio::test]
        async fn an_informational_final_answer_becomes_a_500() {
            for status in [103, 101] {
                let (mut c, _server) = pipe(1 << 16, move |_req| async move {
                    let mut res = http::Response::new(empty());
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                    res
                });
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let out = String::from_utf8(to_end(&mut c).await).unwrap();
                assert!(out.starts_with("HTTP/1.1 500 "), "{status}: {out}");
                assert!(out.contains("connection: close\r\n"), "{status}: {out}");
                assert!(out.contains("content-length: 0\r\n"), "{status}: {out}");
                assert_eq!(out.matches("HTTP/1.1").count(), 1, "{status}: {out}");
            }
        }

        /// Answered without `100 Continue`, the client may or may not send its body: the
        /// answer says the connection closes, and it does.
        #[tokio::test]
        async fn an_answer_without_100_continue_closes_the_connection() {
            let (mut c, _server) = pipe(1 << 16, |_req| async {
                let mut res = http::Response::new(empty());
                *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                res
            });
            c.write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            )
            .await
            .unwrap();
            let out = String::from_utf8(to_end(&mut c).await).unwrap();
            assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
            assert!(!out.contains("100 Continue"), "{out}");
            assert!(out.contains("connection: close\r\n"), "{out}");
        }

        /// `100 Continue` is flushed before the body is waited for: over a transport that
        /// buffers writes (as TLS does) the client still gets it, sends its body and has its
        /// answer.
        #[tokio::test]
        async fn continue_is_flushed_through_a_buffering_transport() {
            let (mut c, server) = tokio::io::duplex(8);
            let _server = serve_on(tokio::io::BufWriter::new(server), |req| async move {
                let got = req.into_body().collect().await.unwrap().to_bytes();
                http::Response::new(
                    http_body_util::Full::new(got)
                        .map_err(|e| match e {})
                        .boxed(),
                )
            });
            c.write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            )
            .await
            .unwrap();
            assert_eq!(head_of(&mut c).await, "HTTP/1.1 100 Continue\r\n\r\n");
            c.write_all(b"hello").await.unwrap();
            let head = head_of(&mut c).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            let mut body = [0u8; 5];
            c.read_exact(&mut body).await.unwrap();
            assert_eq!(&body, b"hello");
        }

        /// A body kept past its exchange, whose unread bytes the connection dropped to go on,
        /// fails as cut rather than ending as if whole.
        #[tokio::test]
        async fn a_body_kept_past_its_exchange_is_cut_when_its_bytes_are_dropped() {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let (mut c, _server) = pipe(1 << 16, move |req| {
                let _ = tx.send(req.into_body());
                async { http::Response::new(empty()) }
            });
            c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            let head = head_of(&mut c).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            let body = rx.recv().await.unwrap();
            let err = body
                .collect()
                .await
                .expect_err("the body was dropped unread");
            assert_eq!(
                err.to_string(),
                "the client closed the connection before the request body ended"
            );
            // The connection went on: the next request is served.
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert!(head_of(&mut c).await.starts_with("HTTP/1.1 200 OK\r\n"));
        }

        /// However serving ends, the socket closes with it, even while a request body is still
        /// kept elsewhere.
        #[tokio::test]
        async fn a_stopped_connection_closes_though_its_body_is_kept() {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let (mut c, server) = pipe(1 << 16, move |req| {
                let _ = tx.send(req.into_body());
                std::future::pending()
            });
            c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
                .await
                .unwrap();
            let body = rx.recv().await.unwrap();
            server.abort();
            assert!(server.await.unwrap_err().is_cancelled());
            assert!(to_end(&mut c).await.is_empty());
            drop(body);
        }

        /// The switch to another protocol happens after the whole request: the bytes after its
        /// body reach the new protocol. When the body has not all come, the answer is a `500`
        /// and nothing switches.
        #[tokio::test]
        async fn a_switch_comes_only_after_the_request_body() {
            for whole in [true, false] {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let (mut c, _server) = pipe(1 << 16, move |mut req| {
                    let _ = tx.send(on_upgrade(&mut req));
                    async {
                        let mut res = http::Response::new(empty());
                        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        res.headers_mut()
                            .insert(header::UPGRADE, HeaderValue::from_static("echo"));
                        res.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        res
                    }
                });
                let body: &[u8] = match whole {
                    true => b"12345after",
                    false => b"123",
                };
                let mut wire = b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\nContent-Length: 5\r\n\r\n".to_vec();
                wire.extend_from_slice(body);
                c.write_all(&wire).await.unwrap();
                let upgrade = rx
                    .recv()
                    .await
                    .unwrap()
                    .expect("the request asked to switch");
                if whole {
                    let head = head_of(&mut c).await;
                    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
                    let mut up = upgrade.await.expect("the connection switched");
                    let mut after = [0u8; 5];
                    up.read_exact(&mut after).await.unwrap();
                    assert_eq!(&after, b"after");
                } else {
                    let out = String::from_utf8(to_end(&mut c).await).unwrap();
                    assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
                    assert!(out.contains("connection: close\r\n"), "{out}");
                    assert!(upgrade.await.is_err());
                }
            }
        }

        /// A stopping listener closes a connection idle between requests at once, though the
        /// connection's wait for the stop began before its first request; an answer in
        /// progress is finished first, and says the connection closes.
        #[tokio::test]
        async fn a_stop_closes_an_idle_connection_and_finishes_an_answer_first() {
            let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
            let (stopper, stop) = watch::channel(false);
            let (mut c, server) = tokio::io::duplex(1 << 16);
            let served =
                serve_stopped_by(server, |_req| async { http::Response::new(empty()) }, stop);
            for _ in 0..3 {
                c.write_all(get).await.unwrap();
                let head = head_of(&mut c).await;
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                assert!(!head.contains("connection: close"), "{head}");
            }
            stopper.send_replace(true);
            assert_eq!(to_end(&mut c).await, b"", "closed without a word");
            served.await.unwrap();

            // Stopped while a request is answered: the answer comes whole, then the end.
            let (stopper, stop) = watch::channel(false);
            let (answer, answered) = tokio::sync::oneshot::channel::<()>();
            let answered = std::sync::Mutex::new(Some(answered));
            let (mut c, server) = tokio::io::duplex(1 << 16);
            let served = serve_stopped_by(
                server,
                move |_req| {
                    let wait = answered.lock().unwrap().take();
                    async move {
                        if let Some(w) = wait {
                            let _ = w.await;
                        }
                        http::Response::new(empty())
                    }
                },
                stop,
            );
            c.write_all(get).await.unwrap();
            tokio::task::yield_now().await;
            stopper.send_replace(true);
            answer.send(()).unwrap();
            let out = String::from_utf8(to_end(&mut c).await).unwrap();
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(out.contains("connection: close\r\n"), "{out}");
            served.await.unwrap();
        }

        /// The time limit on a head counts from when the connection starts waiting for it:
        /// after answers, an idle connection closes a whole limit (10 s here) after the last
        /// one, though its one timer was first set for the first head's limit.
        #[tokio::test(start_paused = true)]
        async fn an_idle_connection_closes_a_whole_limit_after_its_last_answer() {
            let (mut c, _server) = pipe(1 << 16, |_req| async { http::Response::new(empty()) });
            for _ in 0..2 {
                c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .unwrap();
                let head = head_of(&mut c).await;
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                // Past the first head's limit by the second round (6 s + 6 s > 10 s).
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            let waited = tokio::time::Instant::now();
            assert_eq!(to_end(&mut c).await, b"");
            assert_eq!(
                waited.elapsed(),
                Duration::from_secs(4),
                "10 s after the last answer"
            );
        }

        /// A connection waiting for its next head holds no read buffer (an idle keep-alive
        /// connection costs its socket and task only); the bytes that come are read whole.
        #[tokio::test]
        async fn a_waiting_connection_holds_no_read_buffer() {
            let (mut c, server) = tokio::io::duplex(1 << 16);
            let wire: Shared = Arc::new(parking_lot::Mutex::new(Wire {
                io: Some(Box::new(server)),
                buf: spare::take(),
                body: Framing::Done,
                eof: false,
                cont: None,
                broken: false,
                exchange: 0,
            }));
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(lock(&wire).poll_fill(&mut cx).is_pending());
            assert_eq!(lock(&wire).buf.capacity(), 0);
            let head = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(6000));
            c.write_all(head.as_bytes()).await.unwrap();
            let mut w = lock(&wire);
            while w.buf.len() < head.len() {
                assert!(matches!(w.poll_fill(&mut cx), Poll::Ready(Ok(true))));
            }
            assert_eq!(&w.buf[..], head.as_bytes());
        }

        /// A head longer than the limit is refused with `431` though no line of it ended (the
        /// connection parses only when a line may have ended, and when past the limit).
        #[tokio::test]
        async fn a_head_past_the_limit_without_a_line_end_is_refused() {
            let (mut c, _server) = pipe(1 << 20, |_req| async { http::Response::new(empty()) });
            let line = format!("GET /{}", "a".repeat(MAX + 10));
            for piece in line.as_bytes().chunks(1000) {
                c.write_all(piece).await.unwrap();
            }
            let out = String::from_utf8(to_end(&mut c).await).unwrap();
            assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        }
    }
}
