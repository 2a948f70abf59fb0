//! A client's request fields as it wrote them, kept for the upstream HTTP/1.1 writer instead of
//! a header map: the request-side twin of a response's [`crate::http::h1::Verbatim`].
//!
//! Most requests carry nothing the proxy must read or edit but their `Host`: no hop-by-hop
//! field, no forwarding field, no `Expect`. Building a `HeaderMap` of such a request's fields,
//! hashing each name, reading the map again to strip and to forward it, and dropping it cost
//! about a thousand instructions a request; copying the lines costs one `memcpy`. The
//! downstream reader keeps such a request's lines ([`Lines`]) and its map stays empty; whoever
//! reads or edits a request's fields puts the lines into the map first
//! ([`crate::http::downstream::Outgoing::materialise`]), which gives the map the head read into
//! it would have held, field for field.

use crate::http::h1;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::ops::Range;

/// A request head's field lines, each `name:` OWS `value` OWS CRLF, with valid names and
/// values, none of them hop-by-hop, a forwarding field or `Expect`, exactly one of them `Host`
/// and at most one `Content-Length`; the `Host` value and the length read from them.
///
/// Held in place in the request's box ([`crate::http::downstream::Outgoing`]), which is made
/// as the head is read and goes on as a pointer: a box of its own would cost a `malloc` and a
/// `free` more a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines(Kept);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    /// The head as read; the lines are `head[from..to]`.
    head: Bytes,
    from: u32,
    to: u32,
    /// The `Content-Length` line (empty when there is none), which the writer leaves out: it
    /// frames the body itself, from `length`.
    cut: (u32, u32),
    /// Where the `Host` value is in `head`.
    host: (u32, u32),
    length: Option<u64>,
    /// The room a header map takes for these fields (`downstream::map_room`).
    room: u16,
    /// Each field as (name start, name end, value start, value end) from `from`, copied from
    /// the head's reading for those who read the lines (a route's header match, the sidecar's
    /// Knative fields), who then need not find the lines again: a search for each line's end
    /// and colon cost the sidecar about 400 instructions a request. Only the first `count`
    /// hold fields; `count` is [`FOUND_AGAIN`] for lines with more fields than this holds, or
    /// longer than its offsets reach, whose fields are found again when read.
    spans: [(u16, u16, u16, u16); SPANS],
    count: u8,
}

/// The most fields whose places [`Kept`] holds: most requests have fewer.
const SPANS: usize = 12;

/// [`Kept::count`] for lines whose fields are found again when read.
const FOUND_AGAIN: u8 = u8::MAX;

impl Lines {
    /// `head[from..to]` are whole field lines as [`Lines`] describes, `fields` where each of
    /// them lies in `head` as (name start, name end, value start, value end), the value
    /// without the whitespace around it, `cut` the `Content-Length` line among them (or an
    /// empty range), `head[host.0..host.1]` the `Host` value, `length` the length and `room`
    /// what a header map of them is taken with.
    pub fn new(
        head: Bytes,
        (from, to): (usize, usize),
        fields: &[(u32, u32, u32, u32)],
        cut: (usize, usize),
        host: (usize, usize),
        length: Option<u64>,
        room: usize,
    ) -> Lines {
        debug_assert!(from <= to && to <= head.len() && from <= cut.0 && cut.1 <= to);
        debug_assert!(from <= host.0 && host.0 <= host.1 && host.1 <= to);
        let mut spans = [(0, 0, 0, 0); SPANS];
        let count = match u16::try_from(to - from) {
            Ok(_) if fields.len() <= SPANS => {
                // Each offset is below `to - from`, which fits.
                let at = |p: u32| (p as usize - from) as u16;
                for (s, &(ns, ne, vs, ve)) in spans.iter_mut().zip(fields) {
                    *s = (at(ns), at(ne), at(vs), at(ve));
                }
                fields.len() as u8
            }
            _ => FOUND_AGAIN,
        };
        Lines(Kept {
            head,
            from: from as u32,
            to: to as u32,
            cut: (cut.0 as u32, cut.1 as u32),
            host: (host.0 as u32, host.1 as u32),
            length,
            room: room.min(u16::MAX as usize) as u16,
            spans,
            count,
        })
    }

    /// The room a header map of these fields is taken with: the smallest table that holds
    /// them, as the head's reading into a map takes it.
    pub fn room(&self) -> usize {
        self.0.room as usize
    }

    /// The `Host` value, as the head's reading accepted it (a valid field value), sharing
    /// the head's bytes.
    pub fn host(&self) -> Bytes {
        let (s, e) = self.0.host;
        self.0.head.slice(s as usize..e as usize)
    }

    /// The `Content-Length`, if the request has one.
    pub fn length(&self) -> Option<u64> {
        self.0.length
    }

    /// Copies the lines into a head being written, all but the `Content-Length`.
    pub fn write(&self, dst: &mut Vec<u8>) {
        let k = &self.0;
        let (from, to) = (k.from as usize, k.to as usize);
        let (cs, ce) = (k.cut.0 as usize, k.cut.1 as usize);
        dst.extend_from_slice(&k.head[from..cs.max(from)]);
        dst.extend_from_slice(&k.head[ce.max(from)..to]);
    }

    /// Where each field's name and value lie in the lines (`head[from..to]`), the value
    /// without the whitespace around it, in their order, as the head's reading found them;
    /// `None` for lines whose places were not kept, which [`h1::field_spans`] finds again.
    fn known(&self) -> Option<impl Iterator<Item = (Range<usize>, Range<usize>)> + '_> {
        let n = match self.0.count {
            FOUND_AGAIN => return None,
            n => n as usize,
        };
        Some(
            self.0.spans[..n]
                .iter()
                .map(|&(ns, ne, vs, ve)| (ns as usize..ne as usize, vs as usize..ve as usize)),
        )
    }

    /// The lines: `head[from..to]`.
    fn all(&self) -> &[u8] {
        &self.0.head[self.0.from as usize..self.0.to as usize]
    }

    /// Each field as its name and its value, without the whitespace around the value, as a
    /// map would hold it, in their order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let all = self.all();
        let known = self.known();
        // Each mapped to slices before they are chained (one of them is empty): one iterator
        // of places chained first, then mapped, cost the sidecar about 160 instructions a
        // request more, its step between the two not inlined.
        let again = known.is_none().then(|| h1::field_spans(all));
        let known = known.into_iter().flatten();
        let again = again.into_iter().flatten();
        let slices = move |(name, value): (Range<usize>, Range<usize>)| (&all[name], &all[value]);
        known.map(slices).chain(again.map(slices))
    }

    /// Calls `f` with each field's name and value, as [`Lines::iter`] gives them: a plain
    /// loop over the known places, for a reader that takes every field (the sidecar's
    /// Knative reading), where the iterator's chain of two kinds of places cost a few dozen
    /// instructions a field.
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a [u8], &'a [u8])) {
        let all = self.all();
        match self.0.count {
            FOUND_AGAIN => {
                for (name, value) in h1::field_spans(all) {
                    f(&all[name], &all[value]);
                }
            }
            n => {
                for &(ns, ne, vs, ve) in &self.0.spans[..n as usize] {
                    f(
                        &all[ns as usize..ne as usize],
                        &all[vs as usize..ve as usize],
                    );
                }
            }
        }
    }

    /// True when a field is named `name`.
    pub fn names(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// True when one of the values of the field `name` is `value`, as a map's would be.
    pub fn has(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        let name = name.as_str().as_bytes();
        self.iter()
            .any(|(n, v)| v == value.as_bytes() && n.eq_ignore_ascii_case(name))
    }

    /// Appends the fields to `map`, in their order, as a head read into a map puts them.
    pub fn into_map(self, map: &mut HeaderMap) {
        let all = self.0.head.slice(self.0.from as usize..self.0.to as usize);
        match self.known() {
            Some(places) => h1::append_fields(&all, places, map),
            None => h1::append_lines(&all, map),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `head` as the downstream reader keeps them, with the places of its
    /// fields as the head's reading found them.
    fn kept(head: impl Into<Bytes>, host: &[u8], length: Option<u64>) -> Lines {
        let head: Bytes = head.into();
        let mut spans = crate::http::head::Spans::new();
        let (len, _) = crate::http::head::request(&head, &mut spans)
            .unwrap()
            .unwrap();
        let at = |s: &[u8]| head.windows(s.len()).position(|w| w == s).unwrap();
        let to = len - 2;
        let cut = match length {
            Some(_) => {
                let i = spans
                    .iter()
                    .position(|f| f.0 as usize == at(b"Content-Length"));
                let i = i.unwrap();
                let end = spans.get(i + 1).map_or(to, |f| f.0 as usize);
                (spans[i].0 as usize, end)
            }
            None => (to, to),
        };
        let h = spans
            .iter()
            .find(|f| head[f.2 as usize..f.3 as usize] == *host);
        let h = h.unwrap();
        Lines::new(
            head.clone(),
            (spans[0].0 as usize, to),
            &spans,
            cut,
            (h.2 as usize, h.3 as usize),
            length,
            6,
        )
    }

    fn lines() -> Lines {
        kept(
            &b"POST / HTTP/1.1\r\nHost: a\r\nX-A:  1 \r\nContent-Length: 2\r\nX-B: 2\r\n\r\n"[..],
            b"a",
            Some(2),
        )
    }

    /// The fields read from the places the head's reading found are those found again in
    /// the lines, which is how lines with too many fields for those places are read.
    #[test]
    fn the_fields_kept_in_place_are_those_found_again() {
        let many = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB:2\r\nC: 3 \r\nD:\r\nE: 5\r\n\
            F: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\nJ: 10\r\nK: 11\r\nL: 12\r\n\r\n";
        let few = b"GET / HTTP/1.1\r\nHost:h \r\nX-Empty:\r\nX-Tab:\tv\tw\t\r\n\r\n";
        for (head, counted) in [(&many[..], false), (&few[..], true)] {
            let l = kept(head, b"h", None);
            assert_eq!(l.0.count != FOUND_AGAIN, counted, "{:?}", l.0.count);
            let all = &l.0.head[l.0.from as usize..l.0.to as usize];
            let again: Vec<_> = h1::field_spans(all)
                .map(|(n, v)| (&all[n], &all[v]))
                .collect();
            let read: Vec<_> = l.iter().collect();
            assert_eq!(read, again);
            let mut each = Vec::new();
            l.for_each(|n, v| each.push((n, v)));
            assert_eq!(each, again);
            assert_eq!(read.len(), if counted { 3 } else { 13 });
            // The map gets the same fields either way.
            let mut found = HeaderMap::new();
            h1::append_lines(
                &l.0.head.slice(l.0.from as usize..l.0.to as usize),
                &mut found,
            );
            let mut kept_map = HeaderMap::new();
            l.clone().into_map(&mut kept_map);
            assert_eq!(kept_map, found);
            assert_eq!(kept_map.len(), read.len());
        }
        // As many fields as the places hold, and one more.
        for (n, counted) in [(11, true), (12, false)] {
            let mut head = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
            for i in 0..n {
                head.push_str(&format!("X-{i}: {i}\r\n"));
            }
            head.push_str("\r\n");
            let l = kept(head.into_bytes(), b"h", None);
            assert_eq!(l.0.count != FOUND_AGAIN, counted, "{n} fields and the host");
            assert_eq!(l.iter().count(), n + 1);
            let (name, value) = (format!("X-{}", n - 1), format!("{}", n - 1));
            assert_eq!(l.iter().last(), Some((name.as_bytes(), value.as_bytes())));
        }
        // Few fields, but lines longer than the places' offsets reach.
        let long = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Long: {}\r\nX-B: 2\r\n\r\n",
            "v".repeat(70_000)
        );
        let l = kept(long.into_bytes(), b"h", None);
        assert_eq!(l.0.count, FOUND_AGAIN);
        let lengths: Vec<_> = l.iter().map(|(_, v)| v.len()).collect();
        assert_eq!(lengths, [1, 70_000, 1]);
        let l = kept(
            &b"GET / HTTP/1.1\r\nHost:h \r\nX-Tab:\tv\tw\t\r\n\r\n"[..],
            b"h",
            None,
        );
        assert_eq!(l.iter().nth(1), Some((&b"X-Tab"[..], &b"v\tw"[..])));
    }

    #[test]
    fn the_writer_copies_every_line_but_the_length() {
        let mut dst = Vec::new();
        lines().write(&mut dst);
        assert_eq!(dst, b"Host: a\r\nX-A:  1 \r\nX-B: 2\r\n");
        let l = lines();
        assert_eq!((&l.host()[..], l.length()), (&b"a"[..], Some(2)));
    }

    #[test]
    fn names_and_values_are_read_as_a_map_holds_them() {
        let l = lines();
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        let value = HeaderValue::from_static;
        for n in ["host", "x-a", "content-length", "x-b"] {
            assert!(l.names(&name(n)), "{n}");
        }
        assert!(!l.names(&name("x-c")) && !l.names(&name("x")));
        assert!(
            l.has(&name("x-a"), &value("1")),
            "the value without its spaces"
        );
        assert!(l.has(&name("host"), &value("a")) && l.has(&name("x-b"), &value("2")));
        assert!(!l.has(&name("x-a"), &value("2")) && !l.has(&name("x-a"), &value(" 1 ")));
        assert!(!l.has(&name("x-b"), &value("1")));
    }

    #[test]
    fn the_map_gets_every_field_in_order_as_a_head_read_into_one() {
        let mut map = HeaderMap::new();
        lines().into_map(&mut map);
        let got: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("host", "a"),
                ("x-a", "1"),
                ("content-length", "2"),
                ("x-b", "2")
            ]
        );
    }
}
