//! rouse's own reading of an HTTP/1.1 head's lines: a response's status line, a request's
//! request line and the field lines after either, into where each field lies in the buffer.
//!
//! It accepts and refuses exactly what `httparse` (with its default settings) does, with the
//! same error for the same fault, and reports the same fields; a test and the `upstream` fuzz
//! target hold the two to it. It exists for its cost: a head's reading runs twice for every
//! proxied request, and httparse spent about 230 instructions a field, most of it in moving its
//! cursor a byte at a time, a call through a function pointer for each value, and writing
//! each field out as two slices. Here a field's value is checked eight bytes at a time, and
//! each field is written as four offsets.
//!
//! The stricter rules rouse keeps beside these (a bare LF in a request, a head past the limit)
//! stay with the callers, as they were with httparse.

use httparse::Error;

/// Most fields in a head or a trailer section (hyper's default as well).
pub const MAX_HEADERS: usize = 100;

/// Where each field of a head is, as (name start, name end, value start, value end): room
/// for [`MAX_HEADERS`] of them, not zeroed (1.6 KB cleared for every head, when an array:
/// about 200 instructions per request for its two heads).
pub type Spans = smallvec::SmallVec<[(u32, u32, u32, u32); MAX_HEADERS]>;

/// `Ok(None)`: the bytes so far are a valid beginning, and more are needed.
pub type Read<T> = Result<Option<T>, Error>;

/// A request head's line and more: its method and target as (start, length) in the buffer,
/// the minor version, and whether a line of the head ended in LF alone (which every line end
/// the reading finds tells at no cost; a LF can be nowhere else in a head it accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine {
    pub method: (u32, u32),
    pub target: (u32, u32),
    pub minor: u8,
    pub bare_lf: bool,
}

/// The bytes a field name, a method and the other tokens of a head are made of (RFC 9110
/// §5.6.2).
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

/// The bytes a field value or a reason phrase is made of: tab, space, visible characters and
/// obs-text (RFC 9110 §5.5); every other control character and DEL end one.
static VALUE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i == 0x09 || (i >= 0x20 && i != 0x7f);
        i += 1;
    }
    t
};

/// The bytes a request target is made of: visible characters and obs-text.
static TARGET: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i > 0x20 && i != 0x7f;
        i += 1;
    }
    t
};

/// Where the run of value bytes from `i` ends: the first byte that is not one, or the end.
///
/// Eight bytes at a time. In each word, `(x - 0x20..) & !x & 0x80..` marks the bytes below 0x20
/// and the same on `x ^ 0x7f..` with 0x01 marks DEL; a borrow can mark a byte above a marked
/// one falsely, never one below, so the lowest mark is exact. A tab is the only marked byte a
/// value may hold: the reading goes on past it.
#[inline(always)]
fn value_end(buf: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = buf.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let ctl = x.wrapping_sub(ONES * 0x20) & !x;
        let d = x ^ (ONES * 0x7f);
        let del = d.wrapping_sub(ONES) & !d;
        let marks = (ctl | del) & HIGH;
        if marks == 0 {
            i += 8;
            continue;
        }
        // Little-endian: the lowest mark is the first byte.
        i += (marks.trailing_zeros() / 8) as usize;
        if buf[i] != b'\t' {
            return i;
        }
        i += 1;
    }
    run_end(buf, i, &VALUE)
}

/// Where the run of bytes of `set` from `i` ends.
///
/// Four bytes a round while four are left, which tests the end of the buffer once for four
/// bytes rather than for each (a name or a method is a few such rounds).
fn run_end(buf: &[u8], mut i: usize, set: &[bool; 256]) -> usize {
    while let Some(&[a, b, c, d]) = buf.get(i..i + 4) {
        if !set[a as usize] {
            return i;
        }
        if !set[b as usize] {
            return i + 1;
        }
        if !set[c as usize] {
            return i + 2;
        }
        if !set[d as usize] {
            return i + 3;
        }
        i += 4;
    }
    while let Some(&b) = buf.get(i) {
        if !set[b as usize] {
            return i;
        }
        i += 1;
    }
    i
}

/// Past the line end at `i` (CRLF or a bare LF), `fault` if the byte there is neither or a CR
/// is not followed by LF.
fn line_end(buf: &[u8], i: usize, fault: Error) -> Read<usize> {
    match buf.get(i) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(i + 1)),
        Some(b'\r') => match buf.get(i + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(i + 2)),
            Some(_) => Err(fault),
        },
        Some(_) => Err(fault),
    }
}

/// Past the empty lines before a start line (which a reader may ignore, RFC 9112 §2.2).
/// Also whether one of them was a LF alone.
fn skip_empty_lines(buf: &[u8]) -> Read<(usize, bool)> {
    let (mut i, mut bare) = (0, false);
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\r' | b'\n') => match line_end(buf, i, Error::NewLine)? {
                Some(next) => {
                    bare |= next == i + 1;
                    i = next;
                }
                None => return Ok(None),
            },
            Some(_) => return Ok(Some((i, bare))),
        }
    }
}

/// The minor version of `HTTP/1.x` at `i`, and where it ends.
fn version(buf: &[u8], i: usize) -> Read<(u8, usize)> {
    match buf.get(i..i + 8) {
        Some(b"HTTP/1.0") => Ok(Some((0, i + 8))),
        Some(b"HTTP/1.1") => Ok(Some((1, i + 8))),
        Some(_) => Err(Error::Version),
        None => {
            // Too short to tell: a beginning of the version waits for more.
            let have = &buf[i.min(buf.len())..];
            let n = have.len().min(7);
            match have[..n] == b"HTTP/1."[..n] {
                true => Ok(None),
                false => Err(Error::Version),
            }
        }
    }
}

/// Reads a response head from the front of `buf`: its length, minor version and status code,
/// and whether a field line or the empty line that ends them ended in LF alone; each field
/// pushed onto `spans`. `spans` holds what was read so far if the answer is not a whole head.
pub fn response(buf: &[u8], spans: &mut Spans) -> Read<(usize, u8, u16, bool)> {
    let Some((i, _)) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    let Some((minor, mut i)) = version(buf, i)? else {
        return Ok(None);
    };
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') => i += 1,
        Some(_) => return Err(Error::Version),
    }
    let mut code = 0u16;
    for _ in 0..3 {
        match buf.get(i) {
            None => return Ok(None),
            Some(&d) if d.is_ascii_digit() => code = code * 10 + u16::from(d - b'0'),
            Some(_) => return Err(Error::Status),
        }
        i += 1;
    }
    // A space and a reason phrase, or the line's end at once (the phrase may be left out).
    if buf.get(i) == Some(&b' ') {
        i = value_end(buf, i + 1);
    }
    let Some(i) = line_end(buf, i, Error::Status)? else {
        return Ok(None);
    };
    Ok(fields(buf, i, spans)?.map(|(len, bare)| (len, minor, code, bare)))
}

/// Reads a request head from the front of `buf`: its length and request line, each field
/// pushed onto `spans`.
pub fn request(buf: &[u8], spans: &mut Spans) -> Read<(usize, RequestLine)> {
    let Some((start, empty_bare)) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    // The method: a token, then one space.
    let end = run_end(buf, start, &TOKEN);
    match buf.get(end) {
        _ if end == start => return Err(Error::Token),
        None => return Ok(None),
        Some(b' ') => {}
        Some(_) => return Err(Error::Token),
    }
    let method = (start as u32, (end - start) as u32);
    // The target: visible bytes, then one space; UTF-8 as a whole.
    let ts = end + 1;
    let te = run_end(buf, ts, &TARGET);
    match buf.get(te) {
        None => return Ok(None),
        Some(b' ') if te > ts => {}
        Some(_) => return Err(Error::Token),
    }
    if !buf[ts..te].is_ascii() && std::str::from_utf8(&buf[ts..te]).is_err() {
        return Err(Error::Token);
    }
    let target = (ts as u32, (te - ts) as u32);
    let Some((minor, i)) = version(buf, te + 1)? else {
        return Ok(None);
    };
    let Some(next) = line_end(buf, i, Error::NewLine)? else {
        return Ok(None);
    };
    let line_bare = next == i + 1;
    Ok(fields(buf, next, spans)?.map(|(len, fields_bare)| {
        let line = RequestLine {
            method,
            target,
            minor,
            bare_lf: empty_bare | line_bare | fields_bare,
        };
        (len, line)
    }))
}

/// Reads the field lines from `i` to the empty line that ends them: where the head ends and
/// whether a line ended in LF alone, each field pushed onto `spans` as (name start, name end,
/// value start, value end), the value without the whitespace around it.
pub fn fields(buf: &[u8], mut i: usize, spans: &mut Spans) -> Read<(usize, bool)> {
    let mut bare = false;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\r' | b'\n') => {
                let end = line_end(buf, i, Error::NewLine)?;
                return Ok(end.map(|end| (end, bare | (end == i + 1))));
            }
            Some(_) => {}
        }
        let ns = i;
        i = run_end(buf, i, &TOKEN);
        match buf.get(i) {
            // A name must have a byte, and a field must not begin with whitespace (an
            // obsolete line folding) or any other byte that is not a token's.
            _ if i == ns => return Err(Error::HeaderName),
            None => return Ok(None),
            Some(b':') => {}
            Some(_) => return Err(Error::HeaderName),
        }
        let ne = i;
        i += 1;
        while let Some(b' ' | b'\t') = buf.get(i) {
            i += 1;
        }
        let vs = i;
        i = value_end(buf, i);
        let value = &buf[vs..i];
        let Some(next) = line_end(buf, i, Error::HeaderValue)? else {
            return Ok(None);
        };
        bare |= next == i + 1;
        i = next;
        let ve = match value.last() {
            Some(b' ' | b'\t') => {
                vs + value
                    .iter()
                    .rposition(|&b| b != b' ' && b != b'\t')
                    .map_or(0, |p| p + 1)
            }
            _ => vs + value.len(),
        };
        if spans.len() == MAX_HEADERS {
            return Err(Error::TooManyHeaders);
        }
        spans.push((ns as u32, ne as u32, vs as u32, ve as u32));
    }
}

/// True when a line of `head` ends in LF alone: for bytes not read as a head, as those of a
/// head too large to read whole (a head read whole tells it line by line).
pub fn bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Each field as (name start, name end, value start, value end).
type Fields = Vec<(u32, u32, u32, u32)>;

/// What httparse makes of `buf` as a response head, in the terms [`response`] gives.
#[doc(hidden)]
pub fn httparse_response(buf: &[u8]) -> Read<(usize, u8, u16, Fields)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let spans = at(buf, res.headers);
    Ok(Some((
        len,
        res.version.unwrap_or(1),
        res.code.unwrap_or(0),
        spans,
    )))
}

/// What httparse makes of `buf` as a request head, in the terms [`request`] gives.
#[doc(hidden)]
pub fn httparse_request(buf: &[u8]) -> Read<(usize, RequestLine, Fields)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &str| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let line = RequestLine {
        method: span(req.method.unwrap_or("")),
        target: span(req.path.unwrap_or("")),
        minor: req.version.unwrap_or(1),
        bare_lf: bare_lf(&buf[..len]),
    };
    Ok(Some((len, line, at(buf, req.headers))))
}

fn at(buf: &[u8], fields: &[httparse::Header<'_>]) -> Fields {
    let base = buf.as_ptr() as usize;
    fields
        .iter()
        .map(|f| {
            let n = (f.name.as_ptr() as usize - base) as u32;
            let v = (f.value.as_ptr() as usize - base) as u32;
            (n, n + f.name.len() as u32, v, v + f.value.len() as u32)
        })
        .collect()
}

/// Whether [`response`], [`request`] and [`fields`] read `buf` as httparse does: the same
/// verdict (the same error for an error) and, for a whole head, the same length, start line
/// and fields. Three ways of reading it: as a response, as a request, and as a trailer
/// section (field lines alone).
#[doc(hidden)]
pub fn agrees_with_httparse(buf: &[u8]) -> Result<(), String> {
    let mut spans = Spans::new();
    let ours = response(buf, &mut spans).map(|r| r.map(|(l, v, c, _)| (l, v, c, spans.to_vec())));
    let theirs = httparse_response(buf);
    if ours != theirs {
        return Err(format!("as a response: ours {ours:?}, httparse {theirs:?}"));
    }
    let mut spans = Spans::new();
    let ours = request(buf, &mut spans).map(|r| r.map(|(l, line)| (l, line, spans.to_vec())));
    let theirs = httparse_request(buf);
    if ours != theirs {
        return Err(format!("as a request: ours {ours:?}, httparse {theirs:?}"));
    }
    let mut spans = Spans::new();
    let ours = fields(buf, 0, &mut spans).map(|r| r.map(|(l, bare)| (l, bare, spans.to_vec())));
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let theirs = httparse::parse_headers(buf, &mut slots).map(|r| match r {
        httparse::Status::Partial => None,
        httparse::Status::Complete((len, read)) => Some((len, bare_lf(&buf[..len]), at(buf, read))),
    });
    if ours != theirs {
        return Err(format!("as trailers: ours {ours:?}, httparse {theirs:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heads valid and malformed, each also cut at every point and with each byte changed
    /// to ones that matter to the reading.
    const HEADS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 404 Not Found\nA: b\n\n",
        b"HTTP/1.1 204\r\n\r\n",
        b"\r\n\nHTTP/1.1 200 \xffobs\r\nX-Empty:\r\nX-Ws: \t a b \t \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nName : v\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: a value longer than eight\tbytes\x7f\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n:\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: \xc3\xa9\x80\xff and on and on\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x?y=z HTTP/1.0\r\nContent-Length: 1\r\n\r\nz",
        b"M-SEARCH * HTTP/1.1\r\nA:b\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET /\xc3 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\rX\r\n\r\n",
        b"GET / HTTP/1.1\r\nA:\r\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\n\rX",
        b"\rX",
        b"",
    ];

    #[test]
    fn reads_heads_as_httparse_does() {
        let bytes: &[u8] = b"\r\n\t \x00\x7f\x80:/1H";
        let mut checked = 0;
        for head in HEADS {
            for cut in 0..=head.len() {
                agrees_with_httparse(&head[..cut]).unwrap();
                checked += 1;
            }
            for at in 0..head.len() {
                for &b in bytes {
                    let mut changed = head.to_vec();
                    changed[at] = b;
                    if let Err(e) = agrees_with_httparse(&changed) {
                        panic!("{e}: {:?}", String::from_utf8_lossy(&changed));
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
        // Every byte in every part: a name, a value, a reason, a method, a target.
        for b in 0..=255u8 {
            for head in [
                [
                    b"HTTP/1.1 200 OK\r\nA".as_slice(),
                    &[b],
                    b": v",
                    &[b],
                    b"v\r\n\r\n",
                ]
                .concat(),
                [b"HTTP/1.1 200 O".as_slice(), &[b], b"K\r\n\r\n"].concat(),
                [b"G".as_slice(), &[b], b"T /", &[b], b" HTTP/1.1\r\n\r\n"].concat(),
            ] {
                if let Err(e) = agrees_with_httparse(&head) {
                    panic!("{e}: {:?}", String::from_utf8_lossy(&head));
                }
            }
        }
    }

    #[test]
    fn random_heads_are_read_as_httparse_reads_them() {
        // Field lines of bytes that matter to the reading, at random, after a valid start line.
        let alphabet: &[u8] = b"\r\n\t :aZ0-\x00\x01\x1f\x7f\x80\xff\xc3\xa9/ HTP1.";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut seen = [0usize; 3];
        for round in 0..100_000 {
            // Whole start lines, and beginnings of them with the rest at random.
            let mut head = match round % 4 {
                0 => b"HTTP/1.1 200 OK\r\n".to_vec(),
                1 => b"GET /a HTTP/1.1\r\n".to_vec(),
                2 => b"HTTP/1.1 2".to_vec(),
                _ => b"GET /".to_vec(),
            };
            let n = (next() % 40) as usize;
            for _ in 0..n {
                head.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            if let Err(e) = agrees_with_httparse(&head) {
                panic!("{e}: {:?}", String::from_utf8_lossy(&head));
            }
            let mut spans = Spans::new();
            seen[match response(&head, &mut spans) {
                Ok(Some(_)) => 0,
                Ok(None) => 1,
                Err(_) => 2,
            }] += 1;
        }
        // The inputs reach every verdict.
        assert!(seen.iter().all(|&n| n > 1_000), "{seen:?}");
    }

    #[test]
    fn more_than_a_hundred_fields_are_refused_once_the_next_one_is_whole() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            head.extend_from_slice(format!("F{i}: v\r\n").as_bytes());
        }
        let mut spans = Spans::new();
        assert_eq!(response(&head, &mut spans), Ok(None));
        head.extend_from_slice(b"Over: v");
        assert_eq!(response(&head, &mut Spans::new()), Ok(None));
        head.extend_from_slice(b"\r\n");
        assert_eq!(
            response(&head, &mut Spans::new()),
            Err(Error::TooManyHeaders)
        );
        agrees_with_httparse(&head).unwrap();
    }

    /// A response tells whether a field line or its end came with LF alone; the status line's
    /// own end is not among them.
    #[test]
    fn a_response_tells_field_lines_that_end_in_lf_alone() {
        let bare = |head: &[u8]| response(head, &mut Spans::new()).unwrap().unwrap().3;
        assert!(!bare(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"));
        assert!(!bare(b"HTTP/1.1 200 OK\nA: 1\r\n\r\n"));
        assert!(bare(b"HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n"));
        assert!(bare(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\n\r\n"));
        assert!(bare(b"HTTP/1.1 200 OK\r\nA: 1\r\n\n"));
        assert!(!bare(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }

    #[test]
    fn a_bare_lf_is_a_line_end_without_its_cr() {
        assert!(!bare_lf(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(bare_lf(b"GET / HTTP/1.1\r\nHost: x\n\r\n"));
        assert!(bare_lf(b"\n"));
        assert!(!bare_lf(b""));
    }

    #[test]
    fn a_value_is_read_whole_across_words_and_tabs() {
        let value = b"a\tbcdefgh\tijklmnopqrstuvwxyz \t";
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n\r\n");
        let mut spans = Spans::new();
        let (len, minor, code, bare) = response(&head, &mut spans).unwrap().unwrap();
        assert_eq!((len, minor, code, bare), (head.len(), 1, 200, false));
        let (_, _, vs, ve) = spans[0];
        assert_eq!(
            &head[vs as usize..ve as usize],
            b"a\tbcdefgh\tijklmnopqrstuvwxyz"
        );
    }
}
