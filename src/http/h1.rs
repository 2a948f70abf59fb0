//! HTTP/1.1 message framing both connections share: the client's (`downstream`) reads request
//! bodies with it, the backend's (`upstream`) response bodies. One decoder for both sides means
//! one set of rules (RFC 9112 §6-7) and one fuzz target that holds them.
//!
//! Every step is a pure function of a buffer and a state: the caller reads the socket, these
//! take what is whole from the front of the buffer. The verdict never depends on how the bytes
//! were cut by the network.
//!
//! Beside the framing, the small pieces of a head both sides read and write: field names, field lines, lengths and chunk sizes,
//! each written for the request path's cost (it runs twice for every proxied request); a
//! response's fields as the backend wrote them ([`Verbatim`]), which the upstream connection
//! keeps and the client's connection copies out; and request header maps kept for reuse
//! ([`maps`]): the client's connection takes them, the upstream connection gives them back.

use super::head;
use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use std::ops::Range;

/// Request header maps kept per thread for the next request head: a map is two allocations (its
/// table and its entries), taken for every request and freed once its head has gone upstream.
/// A kept map is emptied, its room kept; it is taken again only for a head that asks the same
/// room, so a held request never keeps more room than its head needs.
pub mod maps {
    use crate::http::kept::Kept;
    use http::header::HeaderMap;

    /// Larger maps are freed: a rare head with many fields does not keep its room.
    const LARGEST: usize = 48;

    thread_local! {
        /// At most 64 kept per thread; more are freed.
        static KEPT_MAPS: Kept<HeaderMap> = const { Kept::new(64) };
    }

    /// An empty map with room for `room` entries: a kept one of exactly that room, or a new one.
    pub fn take(room: usize) -> HeaderMap {
        KEPT_MAPS
            .with(|kept| kept.take_if(|m| m.capacity() == room))
            .unwrap_or_else(|| HeaderMap::with_capacity(room))
    }

    /// How many maps this thread keeps.
    #[cfg(test)]
    pub fn kept() -> usize {
        KEPT_MAPS.with(Kept::len)
    }

    /// Keeps `map`, emptied, for another request.
    pub fn put(mut map: HeaderMap) {
        if map.capacity() == 0 || map.capacity() > LARGEST {
            return release(map);
        }
        map.clear();
        KEPT_MAPS.with(|kept| kept.put(map));
    }

    /// Lets go of `map`. A map without room (`HeaderMap::new()`, which `Request::new` and
    /// `Response::new` put in place before the real map replaces it) has nothing allocated:
    /// no table, entries or extra values, since the first insert is what allocates them. It
    /// is forgotten rather than dropped, as its drop still walks all three: about 60
    /// instructions, five times a request. Any other map is dropped.
    pub fn release(map: HeaderMap) {
        if map.capacity() == 0 {
            std::mem::forget(map);
        }
    }
}

/// Why a body's framing could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// Most bytes a response head, or a trailer section, may take.
pub const MAX_HEAD: usize = 64 << 10;

/// The name of a field as a head spells it. The names nearly every request and response
/// carries are matched here (by length, then in any case) and given as http's own constants:
/// `HeaderName::from_bytes` lowercases every name into a buffer and then looks it up, which
/// cost more than a hundred instructions a field. Every other name goes to it.
pub fn field_name(b: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header as h;
    let is = |name: &[u8]| is_name(b, name);
    let known = match b.len() {
        4 if is(b"host") => h::HOST,
        4 if is(b"date") => h::DATE,
        6 if is(b"accept") => h::ACCEPT,
        6 if is(b"server") => h::SERVER,
        10 if is(b"connection") => h::CONNECTION,
        10 if is(b"user-agent") => h::USER_AGENT,
        12 if is(b"content-type") => h::CONTENT_TYPE,
        14 if is(b"content-length") => h::CONTENT_LENGTH,
        _ => return HeaderName::from_bytes(b),
    };
    Ok(known)
}

/// `b` is `lower` (a field name spelled in lowercase letters and `-`) in any case, whatever
/// bytes `b` holds. Eight bytes are compared at once: where `lower` has a letter, setting bit
/// 5 of `b`'s byte gives the letter only if the byte was it in either case; where it has a
/// `-`, the byte must be `-`. (`eq_ignore_ascii_case` takes a byte at a time, and names are
/// compared for every field of every head.)
#[inline]
pub fn is_name(b: &[u8], lower: &[u8]) -> bool {
    fn word(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    }
    if b.len() != lower.len() {
        return false;
    }
    b.chunks(8).zip(lower.chunks(8)).all(|(x, y)| {
        let (x, y) = (word(x), word(y));
        // Bit 6 marks the letters of `lower` (`-` is 0x2d); moved to bit 5, it is their case.
        let case = (y & 0x4040_4040_4040_4040) >> 1;
        x | case == y
    })
}

/// Longest chunk-size line accepted (size and extensions).
pub const MAX_CHUNK_LINE: usize = 4 << 10;

/// How a body is framed, and where its reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of the framing.
    Chunked(Chunk),
    /// Runs until the sender closes the connection (responses only).
    Close,
    /// The body is over.
    Done,
}

/// Where the reading of a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the final CRLF.
    Trailers,
}

/// What the buffer gave of a body.
#[derive(Debug)]
pub enum Next {
    /// A frame; the body may now be [`Framing::Done`].
    Frame(Frame<Bytes>),
    /// The body is over.
    End,
    /// More bytes are needed (or the connection's end, for [`Framing::Close`]).
    Need,
}

/// Takes the next frame of a body framed as `body` from the front of `buf`, moving `body`
/// along; never takes a byte past the body's end.
pub fn next_frame(buf: &mut BytesMut, body: &mut Framing) -> Result<Next, Malformed> {
    loop {
        match *body {
            Framing::Done => return Ok(Next::End),
            Framing::Length(_) | Framing::Close if buf.is_empty() => return Ok(Next::Need),
            Framing::Length(left) => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                *body = match left - n as u64 {
                    0 => Framing::Done,
                    more => Framing::Length(more),
                };
                return Ok(Next::Frame(Frame::data(buf.split_to(n).freeze())));
            }
            Framing::Close => return Ok(Next::Frame(Frame::data(buf.split().freeze()))),
            Framing::Chunked(state) => match chunk_step(buf, state)? {
                Step::Need => return Ok(Next::Need),
                Step::Moved(next) => *body = Framing::Chunked(next),
                Step::Data(data, next) => {
                    *body = Framing::Chunked(next);
                    // The terminator often came in the same read: the body is over now, so
                    // the connection goes home before the response is reported complete.
                    if next == Chunk::DataEnd && buf.starts_with(b"\r\n0\r\n\r\n") {
                        buf.advance(7);
                        *body = Framing::Done;
                    }
                    return Ok(Next::Frame(Frame::data(data)));
                }
                Step::Trailers(t) => {
                    *body = Framing::Done;
                    return Ok(Next::Frame(Frame::trailers(t)));
                }
                Step::End => {
                    *body = Framing::Done;
                    return Ok(Next::End);
                }
            },
        }
    }
}

/// What one step of chunked decoding found.
pub enum Step {
    /// More bytes are needed.
    Need,
    /// Framing was consumed; go on from this state.
    Moved(Chunk),
    /// Data of a chunk.
    Data(Bytes, Chunk),
    /// The trailer fields; the body is over.
    Trailers(HeaderMap),
    /// The last chunk and no trailers; the body is over.
    End,
}

/// Decodes what `buf` holds of a chunked body from `state` on.
pub fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, Malformed> {
    match state {
        Chunk::Size => {
            let Some(lf) = memchr::memchr(b'\n', buf) else {
                return match buf.len() > MAX_CHUNK_LINE {
                    true => Err(Malformed("chunk-size line too long")),
                    false => Ok(Step::Need),
                };
            };
            // Judged by the line, not by how much of it has arrived: the verdict must not
            // depend on how the bytes were cut.
            if lf > MAX_CHUNK_LINE {
                return Err(Malformed("chunk-size line too long"));
            }
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(Malformed("chunk-size line without CRLF"));
            }
            let size = chunk_size(&buf[..lf - 1])?;
            buf.advance(lf + 1);
            Ok(Step::Moved(match size {
                0 => Chunk::Trailers,
                n => Chunk::Data(n),
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::Need);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let next = match left - n as u64 {
                0 => Chunk::DataEnd,
                more => Chunk::Data(more),
            };
            Ok(Step::Data(data, next))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::Need);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Malformed("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Step::Moved(Chunk::Size))
        }
        Chunk::Trailers => {
            let mut at = head::Spans::new();
            match head::fields(buf, 0, &mut at) {
                Ok(None) => match buf.len() > MAX_HEAD {
                    true => Err(Malformed("trailer fields too large")),
                    false => Ok(Step::Need),
                },
                Ok(Some((len, _))) if len > MAX_HEAD => Err(Malformed("trailer fields too large")),
                // As in a head: a line end another reader may not see as one.
                Ok(Some((_, true))) => Err(Malformed("a trailer line ends in LF without CR")),
                Ok(Some((len, false))) => {
                    let mut trailers = HeaderMap::with_capacity(at.len());
                    for &(ns, ne, vs, ve) in &at {
                        let name = field_name(&buf[ns as usize..ne as usize])
                            .map_err(|_| Malformed("invalid trailer name"))?;
                        let value = HeaderValue::from_bytes(&buf[vs as usize..ve as usize])
                            .map_err(|_| Malformed("invalid trailer value"))?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    Ok(match trailers.is_empty() {
                        true => Step::End,
                        false => Step::Trailers(trailers),
                    })
                }
                Err(_) => Err(Malformed("malformed trailer fields")),
            }
        }
    }
}

/// The hexadecimal size of a chunk-size line (`size [; extensions]`), extensions ignored.
pub fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(Malformed("chunk size is not a hexadecimal number"));
    }
    if digits > 15 {
        return Err(Malformed("chunk size too large"));
    }
    // Only spaces and tabs may stand between the size and its extensions.
    let rest = &line[digits..];
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[blank..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Malformed("chunk size is not a hexadecimal number"));
    }
    if rest.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(Malformed("control character in a chunk extension"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n * 16 + u64::from(v)
    }))
}

/// `name: value` and its line end, as a head or a trailer section holds a field. (A
/// `HeaderValue` holds no CR or LF, so a field never becomes two.)
pub fn write_field(dst: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// The fields of a backend's response head as it wrote them, on their way to an HTTP/1.1
/// client: the lines the client is to get, verbatim (each `name: value` and its CRLF, the
/// connection's own fields and the length taken out), and what the writer of the client's
/// head must know of them. Copying these lines costs one `memcpy`; building a `HeaderMap` of
/// them, reading it and dropping it cost about 2,000 instructions for every response.
///
/// Anything that reads or edits a response's fields puts these into its map first
/// ([`Verbatim::into_map`], through [`materialise`]); the HTTP/1.1 writer
/// writes them, then the map's.
///
/// Held in place: in the upstream body until the response body takes it, then in that body's
/// box (`body::ProxyBody`). A box of its own cost a `malloc` and a `free` a response, more
/// than its fifty bytes cost in the few moves of the upstream body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbatim(Kept);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    /// Whole field lines, each ending in CRLF, their names and values as httparse checked them.
    lines: Bytes,
    /// The head's `Content-Length`, which the lines do not hold.
    length: Option<u64>,
    /// The lines hold a `Date`.
    date: bool,
}

impl Verbatim {
    /// `lines`: whole field lines, each `name:` OWS `value` OWS CRLF, with valid names and values.
    pub fn new(lines: Bytes, length: Option<u64>, date: bool) -> Verbatim {
        Verbatim(Kept {
            lines,
            length,
            date,
        })
    }

    /// The lines, to copy into the client's head.
    pub fn lines(&self) -> &[u8] {
        &self.0.lines
    }

    /// The head's `Content-Length`, which the lines do not hold: the client's writer frames the
    /// body itself, and needs the length for `HEAD` and `304`, which carry none.
    pub fn length(&self) -> Option<u64> {
        self.0.length
    }

    /// The lines hold a `Date`.
    pub fn date(&self) -> bool {
        self.0.date
    }

    /// Appends the fields to `map`, in their order, the length last (where a reader of the map
    /// finds it as it would in a head read into a map).
    pub fn into_map(self, map: &mut HeaderMap) {
        let Kept {
            lines,
            length,
            date: _,
        } = self.0;
        append_lines(&lines, map);
        if let Some(n) = length {
            map.append(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// Appends each field of `lines` (whole field lines, each `name:` OWS `value` OWS CRLF, with
/// valid names and values) to `map`, in their order.
pub fn append_lines(lines: &Bytes, map: &mut HeaderMap) {
    append_fields(lines, field_spans(lines), map);
}

/// Appends the fields of `lines` that `places` gives (each its name's range and its value's,
/// as [`field_spans`] gives them) to `map`, in their order, the values sharing `lines`.
pub fn append_fields(
    lines: &Bytes,
    places: impl Iterator<Item = (Range<usize>, Range<usize>)>,
    map: &mut HeaderMap,
) {
    for (name, value) in places {
        // Both were checked when the head was read, so neither fails here.
        if let (Ok(name), Ok(value)) = (
            field_name(&lines[name]),
            HeaderValue::from_maybe_shared(lines.slice(value)),
        ) {
            map.append(name, value);
        }
    }
}

/// Where each field of `lines` (whole field lines, each `name:` OWS `value` OWS CRLF) lies:
/// its name, and its value without the whitespace around it, in their order.
pub fn field_spans(lines: &[u8]) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
    // Each line ends in CRLF and a name holds no CR, LF or colon, so a line's end is its first
    // LF and its name ends at its first colon: memchr finds both a word at a time, where a
    // search for the pair CRLF went byte by byte.
    let mut start = 0;
    memchr::memchr_iter(b'\n', lines).filter_map(move |nl| {
        let at = start;
        start = nl + 1;
        let line = &lines[at..nl.saturating_sub(1).max(at)];
        let colon = memchr::memchr(b':', line)?;
        let after = &line[colon + 1..];
        let from = at + colon + 1 + (after.len() - after.trim_ascii_start().len());
        Some((at..at + colon, from..from + after.trim_ascii().len()))
    })
}

/// A response body that may carry its head's fields as the backend wrote them
/// ([`Verbatim`]), the response's map then holding only what rouse added. The HTTP/1.1
/// client's writer takes them and copies them out; every other reader of a response's fields
/// calls [`materialise`] first.
pub trait Carries {
    /// The fields the body carries, taken out.
    fn take_verbatim(&mut self) -> Option<Verbatim>;
}

/// Puts the fields `res` carries as the backend wrote them into its map, before them whatever
/// the map held: for everything that reads or edits a proxied response's fields (an HTTP/2
/// client's writer, a route's response headers, a sticky cookie). Call it before editing, so
/// that an edit meant to replace a field finds it.
pub fn materialise<B: Carries>(res: &mut Response<B>) {
    if let Some(verbatim) = res.body_mut().take_verbatim() {
        fill_before(res.headers_mut(), HeaderMap::new(), |map| {
            verbatim.into_map(map)
        });
    }
}

/// Puts what `fill` appends into `map` before the fields `map` held, `fresh` (an empty map)
/// taking its place: for the fields a message kept as written, which came before anything
/// rouse added.
pub fn fill_before(map: &mut HeaderMap, fresh: HeaderMap, fill: impl FnOnce(&mut HeaderMap)) {
    let added = std::mem::replace(map, fresh);
    fill(map);
    if added.is_empty() {
        // Nearly always: nothing was added yet. A map without room is not walked to drop.
        return maps::release(added);
    }
    let mut name = None;
    for (k, v) in added {
        // A name comes with its first value only.
        if k.is_some() {
            name = k;
        }
        if let Some(n) = &name {
            map.append(n.clone(), v);
        }
    }
}

/// `content-length: n` and its line end. (`write!` would take the formatting machinery's
/// path, a few hundred instructions, for every response.)
pub fn write_length(dst: &mut Vec<u8>, n: u64) {
    dst.extend_from_slice(b"content-length: ");
    dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// A chunk's size line: the size in hex and its line end, without the formatting machinery.
pub fn write_chunk_size(dst: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut left = n;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[left & 0xf];
        left >>= 4;
        if left == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[at..]);
    dst.extend_from_slice(b"\r\n");
}

/// What httparse found wrong in a head, in words for whoever sent it (a client's request or a
/// backend's response).
pub fn head_fault(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line end",
        httparse::Error::Status => "invalid status code",
        httparse::Error::Token => "invalid method or start line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_lines_go_into_the_map_as_their_fields() {
        let lines = Bytes::from_static(
            b"Server:  nginx \t\r\nx-a:1\r\nEmpty:\r\nX-A: two words\r\nWeird.Name_1:\tv:w\r\n",
        );
        let mut map = HeaderMap::new();
        map.insert("rouse-added", HeaderValue::from_static("first"));
        Verbatim::new(lines, Some(12), false).into_map(&mut map);
        let all = |n: &str| {
            map.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("server"), ["nginx"]);
        assert_eq!(all("x-a"), ["1", "two words"]);
        assert_eq!(all("empty"), [""]);
        assert_eq!(all("weird.name_1"), ["v:w"]);
        assert_eq!(all("content-length"), ["12"]);
        assert_eq!(all("rouse-added"), ["first"]);
        assert_eq!(map.len(), 7);
    }

    #[test]
    fn a_kept_map_comes_back_empty_and_only_for_its_own_room() {
        use http::header::{HOST, USER_AGENT};
        let mut map = maps::take(6);
        assert_eq!((map.len(), map.capacity()), (0, 6));
        map.insert(HOST, HeaderValue::from_static("a"));
        map.append(USER_AGENT, HeaderValue::from_static("b"));
        map.append(USER_AGENT, HeaderValue::from_static("c"));
        let before = maps::kept();
        maps::put(map);
        assert_eq!(maps::kept(), before + 1);
        // Another room does not take it: a held request keeps no more room than it asked.
        let other = maps::take(12);
        assert_eq!((other.len(), other.capacity()), (0, 12));
        assert_eq!(maps::kept(), before + 1);
        let again = maps::take(6);
        assert_eq!(maps::kept(), before);
        assert_eq!((again.len(), again.capacity()), (0, 6));
        assert!(again.get(HOST).is_none() && again.get_all(USER_AGENT).iter().next().is_none());
        // A large map, or one that never had room, is not kept.
        maps::put(HeaderMap::with_capacity(100));
        maps::put(HeaderMap::new());
        assert_eq!(maps::kept(), before);
    }

    /// A released map that holds anything, or has room for anything, is dropped: its values
    /// go (their owner sees it), and nothing it owns is forgotten. Only a map without room,
    /// which owns nothing, is not dropped.
    #[test]
    fn only_a_map_without_room_is_let_go_undropped() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Owner(Arc<AtomicUsize>, Vec<u8>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.1
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let value = || {
            let bytes = bytes::Bytes::from_owner(Owner(dropped.clone(), b"v".to_vec()));
            HeaderValue::from_maybe_shared(bytes).unwrap()
        };
        let mut map = HeaderMap::new();
        map.insert(http::header::HOST, value());
        map.append(http::header::HOST, value());
        maps::release(map);
        assert_eq!(dropped.load(Ordering::SeqCst), 2, "both values dropped");
        // Emptied, it keeps its room: still dropped (its table and entries freed).
        let mut map = HeaderMap::new();
        map.insert(http::header::HOST, value());
        map.clear();
        assert_eq!(dropped.load(Ordering::SeqCst), 3);
        assert!(map.capacity() > 0);
        maps::release(map);
        assert_eq!(HeaderMap::<HeaderValue>::new().capacity(), 0);
        maps::release(HeaderMap::new());
    }

    #[test]
    fn chunk_sizes_are_written_in_hex() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, usize::MAX] {
            let mut line = Vec::new();
            write_chunk_size(&mut line, n);
            assert_eq!(line, format!("{n:x}\r\n").into_bytes());
        }
    }

    #[test]
    fn field_names_match_https_own_reading() {
        // The names matched by hand, in the cases heads spell them, and names beside them
        // that only share a length or a prefix: each gives what http gives, or its refusal.
        let names: &[&[u8]] = &[
            b"host",
            b"Host",
            b"HOST",
            b"date",
            b"Date",
            b"accept",
            b"Accept",
            b"server",
            b"Server",
            b"connection",
            b"Connection",
            b"user-agent",
            b"User-Agent",
            b"content-type",
            b"Content-Type",
            b"content-length",
            b"Content-Length",
            b"CONTENT-LENGTH",
            b"hosts",
            b"hostx",
            b"datE",
            b"x-date",
            b"accepts",
            b"content-typo",
            b"content-lengths",
            b"Content-Encoding",
            b"X-Request-Id",
            b"etag",
            b"",
            b"bad name",
            b"host:",
            b"da\xffe",
            b"content\x00length",
        ];
        // Every byte in every position of a name, against `eq_ignore_ascii_case`.
        for lower in [&b"content-length"[..], b"te", b"date", b"x-a-b-c-d"] {
            for at in 0..lower.len() {
                for byte in 0..=255u8 {
                    let mut b = lower.to_vec();
                    b[at] = byte;
                    assert_eq!(is_name(&b, lower), b.eq_ignore_ascii_case(lower), "{b:?}");
                }
            }
            assert!(!is_name(&lower[1..], lower));
        }
        for &n in names {
            let ours = field_name(n);
            let https = HeaderName::from_bytes(n);
            assert_eq!(
                ours.is_ok(),
                https.is_ok(),
                "{:?}",
                String::from_utf8_lossy(n)
            );
            if let (Ok(a), Ok(b)) = (ours, https) {
                assert_eq!(a, b);
                assert_eq!(a.as_str(), b.as_str());
            }
        }
    }
}
