//! rouse's own upstream HTTP/1.1 connection (`http::upstream`), both ways:
//!
//! - any bytes as a backend's response, read whole, cut in two at up to 65 points, and (for
//!   short inputs) one byte at a time: no panic, and the same answer however the bytes are
//!   cut, since the network decides how they arrive; and its head read both ways, into a map
//!   and kept as the backend wrote it for the client: the same verdict, and lines that are
//!   whole fields holding what the map holds (`verbatim_agrees`);
//! - a request built from the bytes (method, target and fields, whatever `http` accepts)
//!   written as a head: it parses back as exactly one request, ending where it was written to
//!   end, with the same method, target and fields, so no request can become two; and so does
//!   its head with this hop's forwarding fields written after its own (`Hop`);
//! - any bytes as a response head and as a request head through rouse's reading of head lines
//!   (`http::head`) and through httparse: the same verdict, length, start line and fields;
//! - any bytes as a client's request head whose fields are kept as the client wrote them: the
//!   upstream head written from them parses back as exactly one request with the fields the
//!   map reading gives and one length (`kept_agrees`).

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use rouse::http::headers::{ClientAddr, Hop, Host};
use rouse::http::upstream::{OutBody, head_bytes, kept_agrees, read_whole, verbatim_agrees};
use std::net::{IpAddr, Ipv6Addr};

fn response(data: &[u8]) {
    if let Err(e) = rouse::http::head::agrees_with_httparse(data) {
        panic!("{e}: {:?}", String::from_utf8_lossy(data));
    }
    if let Err(e) = verbatim_agrees(data) {
        panic!("{e}: {:?}", String::from_utf8_lossy(data));
    }
    if let Err(e) = kept_agrees(data) {
        panic!("{e}: {:?}", String::from_utf8_lossy(data));
    }
    let whole = format!("{:?}", read_whole(data, &[], false));
    for cut in (0..=data.len()).step_by((data.len() / 64).max(1)) {
        assert_eq!(
            format!("{:?}", read_whole(data, &[cut], false)),
            whole,
            "cut at {cut}"
        );
    }
    if data.len() <= 512 {
        let ones = vec![1; data.len()];
        assert_eq!(
            format!("{:?}", read_whole(data, &ones, false)),
            whole,
            "bytewise"
        );
    }
}

/// A request from `data`: fields separated by 0xff, the first the method, the second the
/// target, then name and value in turn; parts `http` refuses are left out.
fn request(data: &[u8]) -> Option<Request<OutBody>> {
    let mut parts = data.split(|&b| b == 0xff);
    let method = Method::from_bytes(parts.next()?).ok()?;
    let target = std::str::from_utf8(parts.next()?).ok()?;
    let mut b = Request::builder().method(method).uri(target);
    while let (Some(n), Some(v)) = (parts.next(), parts.next()) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            b = b.header(n, v);
        }
    }
    b.body(OutBody::Empty).ok()
}

fn head(req: &Request<OutBody>) {
    check(req, None, req.headers());
    // With this hop's forwarding fields kept aside (the request has none of its own): the head
    // holds them after its own fields, as the map would.
    let client = std::sync::Arc::new(ClientAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let host = || Host::from_text("h.example").unwrap();
    if let (Some(hop), Some(again)) = (
        Hop::deferred(req.headers(), &client, Some("https"), &mut host()),
        Hop::deferred(req.headers(), &client, Some("https"), &mut host()),
    ) {
        let mut with = req.headers().clone();
        again.into_map(&mut with);
        check(req, Some(&hop), &with);
    }
}

/// The head written for `req` (and `hop`'s fields) parses back as exactly one request, with
/// `req`'s method and target and `expected`'s fields in order (the framing aside).
fn check(req: &Request<OutBody>, hop: Option<&Hop>, expected: &HeaderMap) {
    let bytes = head_bytes(req, hop);
    let mut fields = vec![httparse::EMPTY_HEADER; expected.len() + 2];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("{other:?}: {:?}", String::from_utf8_lossy(&bytes)),
    };
    assert_eq!(
        len,
        bytes.len(),
        "one request, ending where it was written to end"
    );
    assert_eq!(parsed.method, Some(req.method().as_str()));
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    assert_eq!(parsed.path, Some(target));
    // Every field but the framing, in order; httparse trims a value's surrounding whitespace.
    let framing = |n: &str| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    };
    let sent: Vec<(&str, &[u8])> = expected
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes().trim_ascii()))
        .filter(|(n, _)| !framing(n))
        .collect();
    let got: Vec<(&str, &[u8])> = parsed
        .headers
        .iter()
        .map(|h| (h.name, h.value))
        .filter(|(n, _)| !framing(n))
        .collect();
    assert_eq!(got, sent);
    // The framing is the writer's own: at most one length, and no chunked coding for a
    // request without a body.
    let lengths = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    assert!(lengths <= 1);
    assert!(
        !parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    );
}

fuzz_target!(|data: &[u8]| {
    response(data);
    if let Some(req) = request(data) {
        head(&req);
    }
});
