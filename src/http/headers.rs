//! Header rewriting between client and upstream: hop-by-hop stripping (RFC 9110 §7.6.1) and
//! the forwarding headers (`X-Forwarded-*`, RFC 7239 `Forwarded`), put into the map or, for a
//! request that came without any and goes out over HTTP/1.1, kept aside for the head's writer
//! ([`Hop`]).

use crate::http::h1;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
/// `Trailer` is not among them: it announces the trailer fields an HTTP/1.1 message carries,
/// and dropping it would drop the trailers.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Positions in [`HOP_BY_HOP`] of the headers whose values matter.
const CONNECTION_AT: usize = 0;
const TE_AT: usize = 4;
const TRANSFER_ENCODING_AT: usize = 5;
const UPGRADE_AT: usize = 6;

/// The position of `name` in [`HOP_BY_HOP`].
fn hop_by_hop_at(name: &HeaderName) -> Option<usize> {
    hop_by_hop_index(name.as_str().as_bytes())
}

/// The position in [`HOP_BY_HOP`] of a field named `name` in any case, as a head spells it.
/// Told by its length first, as most names are not one of them, then eight bytes at a time
/// (`h1::is_name`), where comparing `HeaderName`s costs a comparison of the representation
/// against each of the seven.
pub fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    let is = |n: &[u8]| h1::is_name(name, n);
    match name.len() {
        10 if is(b"connection") => Some(CONNECTION_AT),
        10 if is(b"keep-alive") => Some(1),
        16 if is(b"proxy-connection") => Some(2),
        18 if is(b"proxy-authenticate") => Some(3),
        2 if is(b"te") => Some(TE_AT),
        17 if is(b"transfer-encoding") => Some(TRANSFER_ENCODING_AT),
        7 if is(b"upgrade") => Some(UPGRADE_AT),
        _ => None,
    }
}

/// True for headers that belong to a single connection.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_at(name).is_some()
}

/// A message whose body length two parties could read differently (RFC 9112 §6.1, §6.3), the
/// stuff of request smuggling. (`Content-Length` beside `Transfer-Encoding` never gets this far:
/// hyper's parser drops the length, frames the body by the chunks, and closes the connection
/// after the response, as RFC 9112 §6.1 allows.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguous {
    /// `chunked` more than once, or not as the last coding.
    #[error(
        "Transfer-Encoding must end with chunked, once (got {0:?}); send `Transfer-Encoding: chunked`"
    )]
    Chunked(&'static str),
}

/// Checks the codings of a message that has `Transfer-Encoding`.
fn check_chunked(headers: &HeaderMap) -> Result<(), Ambiguous> {
    let codings: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let chunked = |c: &str| c.eq_ignore_ascii_case("chunked");
    match codings.iter().filter(|c| chunked(c)).count() {
        0 => Err(Ambiguous::Chunked("no chunked")),
        1 if codings.last().is_some_and(|c| chunked(c)) => Ok(()),
        1 => Err(Ambiguous::Chunked("chunked not last")),
        _ => Err(Ambiguous::Chunked("chunked twice")),
    }
}

/// Removes hop-by-hop headers, including any named in `Connection`. `TE: trailers` survives
/// because gRPC over HTTP/2 requires it end to end.
///
/// One pass over the names finds which hop-by-hop headers are present, so the common cases
/// cost no lookups at all (none present) or one removal (a backend's `Connection:
/// keep-alive`), instead of a hash lookup per hop-by-hop name. The same pass finds a
/// `Transfer-Encoding`, for [`strip_request_hop_by_hop`] to check the framing only then.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Responses: their framing was the client library's to judge when it read them.
    let _ = strip(headers, false);
}

/// [`strip_hop_by_hop`] for a client's request, which is refused (nothing removed) if its
/// framing is ambiguous. Gives the protocol the client asked to switch to (its `Upgrade`, if
/// its `Connection` lists `upgrade`), read before the stripping removes both: the same pass
/// over the names tells whether either is there, so a request without them costs no lookup.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) -> Result<Option<HeaderValue>, Ambiguous> {
    strip(headers, true)
}

/// The `timeout=N` of a `Keep-Alive` value, less a margin: a second, or half of it if shorter,
/// so that a pooled connection is given up before the backend closes it. The upstream
/// connection reads it while parsing a response head.
pub(crate) fn keep_alive_timeout(v: &[u8]) -> Option<Duration> {
    // Visible ASCII only, as `HeaderValue::to_str` reads a value.
    if !v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)) {
        return None;
    }
    let secs: u64 = std::str::from_utf8(v)
        .ok()?
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("timeout"))?
        .1
        .trim()
        .parse()
        .ok()?;
    let d = Duration::from_secs(secs);
    Some(d.saturating_sub(Duration::from_secs(1)).max(d / 2))
}

fn strip(headers: &mut HeaderMap, check_framing: bool) -> Result<Option<HeaderValue>, Ambiguous> {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_at(k) {
            present[i] = true;
            any = true;
        }
    }
    // A lone `TE: trailers` (every gRPC request) is what would be put back: it stays where
    // it is, instead of being taken out and inserted again. Only as written here: HTTP/2
    // allows no other spelling (h2 refuses `Trailers`), so any other is written anew.
    if present[TE_AT] {
        let mut te = headers.get_all(header::TE).iter();
        if let (Some(v), None) = (te.next(), te.next())
            && v.as_bytes() == b"trailers"
        {
            present[TE_AT] = false;
            any = present.iter().any(|&p| p);
        }
    }
    if !any {
        return Ok(None);
    }
    if check_framing && present[TRANSFER_ENCODING_AT] {
        check_chunked(headers)?;
    }
    let upgrade = match present[CONNECTION_AT] && present[UPGRADE_AT] {
        true => upgrade_asked(headers),
        false => None,
    };
    // Names listed in `Connection` that are not hop-by-hop already (those are handled below,
    // and only if present); usually there are none, and nothing is allocated.
    let listed: Vec<HeaderName> = if present[CONNECTION_AT] {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // Compared as text first: building a name that is not a standard one allocates.
            .filter(|n| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(n))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for name in listed {
        headers.remove(name);
    }
    let te_trailers = present[TE_AT]
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            });
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(upgrade)
}

/// The `Upgrade` value of a request that asks to switch protocols (`Connection: upgrade`).
fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| lists(v.as_bytes(), b"upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client address in the two forms the forwarding headers use, computed once per
/// connection rather than once per request.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// `192.0.2.1` or `2001:db8::1`, as `X-Forwarded-For` writes it.
    pub ip: HeaderValue,
    /// `192.0.2.1` or `"[2001:db8::1]"`, as RFC 7239 `for=` writes it.
    pub node: HeaderValue,
    /// The `Forwarded` value of a request that came without one, with the host and scheme it
    /// was made for: a connection's requests mostly share both, and each made the same value
    /// again (a string, and its check as a header value).
    forwarded: std::sync::OnceLock<(Host, &'static str, HeaderValue)>,
}

impl ClientAddr {
    /// Formats `ip` for both headers.
    pub fn new(ip: IpAddr) -> ClientAddr {
        let text = ip.to_string();
        let node = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        // An address's text is always a valid header value.
        ClientAddr {
            ip: HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("unknown")),
            node: HeaderValue::try_from(node).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded: std::sync::OnceLock::new(),
        }
    }

    /// `for=NODE;host="HOST";proto=PROTO`, this hop's `Forwarded` value for a request that came
    /// with none: made once for the first host and scheme asked for, and kept.
    fn forwarded(&self, host: &Host, proto: &'static str) -> Option<HeaderValue> {
        if let Some((h, p, v)) = self.forwarded.get()
            && *p == proto
            && h.as_bytes() == host.as_bytes()
        {
            return Some(v.clone());
        }
        let v = forwarded_value(None, self, host, proto)?;
        let _ = self.forwarded.set((host.clone(), proto, v.clone()));
        Some(v)
    }
}

/// A `Forwarded` value: the earlier hops' (`prev`), then this hop's element.
fn forwarded_value(
    prev: Option<&str>,
    client: &ClientAddr,
    host: &Host,
    proto: &str,
) -> Option<HeaderValue> {
    let mut fwd = Vec::with_capacity(
        prev.map_or(0, |p| p.len() + 2) + client.node.len() + host.as_bytes().len() + 32,
    );
    if let Some(p) = prev {
        fwd.extend_from_slice(p.as_bytes());
        fwd.extend_from_slice(b", ");
    }
    write_forwarded_element(&mut fwd, client, host, proto);
    HeaderValue::try_from(fwd).ok()
}

/// This hop's `Forwarded` element, `for=NODE;host="HOST";proto=PROTO` (no `host` for an empty
/// one): the one writer of it, for the map and for an HTTP/1.1 head written directly.
fn write_forwarded_element(dst: &mut Vec<u8>, client: &ClientAddr, host: &Host, proto: &str) {
    dst.extend_from_slice(b"for=");
    dst.extend_from_slice(client.node.as_bytes());
    if !host.is_empty() {
        dst.extend_from_slice(b";host=\"");
        dst.extend_from_slice(host.as_bytes());
        dst.push(b'"');
    }
    dst.extend_from_slice(b";proto=");
    dst.extend_from_slice(proto.as_bytes());
}

/// True when a field name (in any case) is one of the forwarding fields this hop adds to:
/// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` or `Forwarded`. Told by its
/// length first, as most names are not.
pub fn is_forwarding_name(name: &[u8]) -> bool {
    match name.len() {
        9 => h1::is_name(name, b"forwarded"),
        15 => h1::is_name(name, b"x-forwarded-for"),
        16 => h1::is_name(name, b"x-forwarded-host"),
        17 => h1::is_name(name, b"x-forwarded-proto"),
        _ => false,
    }
}

/// Which forwarding headers a request arrived with, found in one pass over its names rather
/// than one hash lookup each: most requests have none of them.
struct Forwarding {
    xff: bool,
    proto: bool,
    host: bool,
    forwarded: bool,
}

impl Forwarding {
    fn present(headers: &HeaderMap) -> Forwarding {
        let mut f = Forwarding {
            xff: false,
            proto: false,
            host: false,
            forwarded: false,
        };
        for k in headers.keys() {
            match k.as_str() {
                "x-forwarded-for" => f.xff = true,
                "x-forwarded-proto" => f.proto = true,
                "x-forwarded-host" => f.host = true,
                "forwarded" => f.forwarded = true,
                _ => {}
            }
        }
        f
    }
}

/// Adds this hop to the forwarding headers. `X-Forwarded-For` and `Forwarded` are appended to
/// (each proxy adds its own client); `X-Forwarded-Proto` and `-Host` are set only when absent,
/// so the view of a load balancer in front of rouse is kept.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    proto: &'static str,
    host: &Host,
) {
    let had = Forwarding::present(headers);
    // Up to four headers are added: one growth of the map instead of one per insert.
    headers.reserve(4);
    let prev = had.xff.then(|| joined(headers, &X_FORWARDED_FOR)).flatten();
    append_for(headers, prev, client);
    if !had.proto {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !had.host {
        headers.insert(X_FORWARDED_HOST.clone(), host.to_value());
    }
    let prev = had
        .forwarded
        .then(|| joined(headers, &header::FORWARDED))
        .flatten();
    let value = match prev {
        None => client.forwarded(host, proto),
        Some(prev) => forwarded_value(Some(&prev), client, host, proto),
    };
    if let Some(v) = value {
        headers.insert(header::FORWARDED, v);
    }
}

/// This hop's forwarding fields for a request that arrived with none of its own (most do):
/// what [`add_forwarded`] (or, with no `proto`, [`add_forwarded_knative`]) would put into the
/// map, kept aside for the HTTP/1.1 writer to write straight into the upstream head. Adding
/// four fields to the map, making their values and dropping them again cost more than a
/// thousand instructions for every request.
#[derive(Debug)]
pub struct Hop {
    /// Shared with the connection's other requests.
    client: Arc<ClientAddr>,
    /// `http` or `https`; `None` for Knative's convention, which adds `X-Forwarded-For` only.
    proto: Option<&'static str>,
    host: Host,
}

/// The host a request is addressed to, as it came: the `Host` field's value or the URI's
/// authority, visible ASCII only. It keeps the bytes it was read from (which it shares with
/// the request's head), so that routing and forwarding a request copy no text: as a header
/// value when it came in one, or as the bytes of a head's field kept as written
/// (`lines::Lines`), which a header value would check once more, byte by byte.
#[derive(Clone, Debug)]
pub struct Host(Held);

#[derive(Clone, Debug)]
enum Held {
    Value(HeaderValue),
    /// Bytes a head's reading accepted as a field value.
    Raw(bytes::Bytes),
}

impl Host {
    /// No host: what is left where one was taken away.
    pub const NONE: Host = Host(Held::Raw(bytes::Bytes::from_static(b"")));

    /// `value` as a host; `None` unless it is visible ASCII (spaces and tabs included).
    pub fn new(value: HeaderValue) -> Option<Host> {
        // A header value holds no control byte but tab, nor DEL (http's rule for every way of
        // making one), so it is visible ASCII exactly when it is ASCII: checked a word at a
        // time, where `to_str` tests each byte against both bounds.
        value
            .as_bytes()
            .is_ascii()
            .then_some(Host(Held::Value(value)))
    }

    /// A field value a head's reading accepted (no control byte but tab, no DEL: what a header
    /// value may hold) as a host; `None` unless it is ASCII.
    pub fn from_field(value: bytes::Bytes) -> Option<Host> {
        value.is_ascii().then_some(Host(Held::Raw(value)))
    }

    /// `text` as a host, copied; `None` unless it is visible ASCII.
    pub fn from_text(text: &str) -> Option<Host> {
        HeaderValue::from_str(text).ok().and_then(Host::new)
    }

    /// The host as text.
    pub fn as_str(&self) -> &str {
        // Checked to be ASCII when made, so this cannot fail.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The host's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Held::Value(v) => v.as_bytes(),
            Held::Raw(b) => b,
        }
    }

    /// The host as a header value, sharing its bytes.
    pub fn to_value(&self) -> HeaderValue {
        match &self.0 {
            Held::Value(v) => v.clone(),
            // Bytes a head's reading accepted are a valid value; the check cannot fail.
            Held::Raw(b) => HeaderValue::from_maybe_shared(b.clone())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }

    /// Whether there is no host.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl Hop {
    /// The hop for a request with `headers`, when it has none of the forwarding fields
    /// (their values would have to be joined with this hop's); `None` otherwise, and the
    /// fields go into the map. `proto`: as for [`add_forwarded`], or `None` for Knative's
    /// convention.
    /// The host is taken from `host` only when the hop is kept aside.
    pub fn deferred(
        headers: &HeaderMap,
        client: &Arc<ClientAddr>,
        proto: Option<&'static str>,
        host: &mut Host,
    ) -> Option<Hop> {
        let forwarded = headers
            .keys()
            .any(|k| is_forwarding_name(k.as_str().as_bytes()));
        Hop::unless_forwarded(forwarded, client, proto, host)
    }

    /// [`Hop::deferred`] for a caller that has read the names already: `forwarded` tells
    /// whether any of them is a forwarding field ([`is_forwarding_name`]).
    pub fn unless_forwarded(
        forwarded: bool,
        client: &Arc<ClientAddr>,
        proto: Option<&'static str>,
        host: &mut Host,
    ) -> Option<Hop> {
        (!forwarded).then(|| Hop {
            client: client.clone(),
            proto,
            host: std::mem::replace(host, Host::NONE),
        })
    }

    /// The host the request is addressed to.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Writes the fields, each `name: value` and its CRLF, as [`Hop::into_map`] would add them.
    pub fn write(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(b"x-forwarded-for: ");
        dst.extend_from_slice(self.client.ip.as_bytes());
        dst.extend_from_slice(b"\r\n");
        let Some(proto) = self.proto else {
            return;
        };
        dst.extend_from_slice(b"x-forwarded-proto: ");
        dst.extend_from_slice(proto.as_bytes());
        dst.extend_from_slice(b"\r\n");
        // A host is visible ASCII, so it is a field value as it is.
        dst.extend_from_slice(b"x-forwarded-host: ");
        dst.extend_from_slice(self.host.as_bytes());
        dst.extend_from_slice(b"\r\nforwarded: ");
        write_forwarded_element(dst, &self.client, &self.host, proto);
        dst.extend_from_slice(b"\r\n");
    }

    /// Adds the fields to `headers`, which has none of them: for an exchange whose head is
    /// written from the map.
    pub fn into_map(self, headers: &mut HeaderMap) {
        match self.proto {
            Some(proto) => add_forwarded(headers, &self.client, proto, &self.host),
            None => add_forwarded_knative(headers, &self.client),
        }
    }
}

/// Whether the hop for `headers` is kept aside, and if so, that its written fields are the
/// ones [`Hop::into_map`] adds, byte for byte, in the same order (for the fuzz target and
/// tests): `Ok(kept)`, or what differs.
pub fn hop_agrees(
    headers: &HeaderMap,
    client: &ClientAddr,
    proto: Option<&'static str>,
    host: &Host,
) -> Result<bool, String> {
    let client = Arc::new(client.clone());
    let Some(hop) = Hop::deferred(headers, &client, proto, &mut host.clone()) else {
        return Ok(false);
    };
    let mut written = Vec::new();
    hop.write(&mut written);
    let mut map = headers.clone();
    hop.into_map(&mut map);
    let mut added = Vec::new();
    for (name, value) in &map {
        if !headers.contains_key(name) {
            crate::http::h1::write_field(&mut added, name, value);
        }
    }
    match written == added {
        true => Ok(true),
        false => Err(format!(
            "written {:?}, the map's {:?}",
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&added)
        )),
    }
}

/// Knative's forwarding convention: when the request has no `Forwarded`, one is synthesized
/// from the `X-Forwarded-*` headers it arrived with (the first node carries `host` and
/// `proto`); then this hop's client is appended to `X-Forwarded-For` only.
pub fn add_forwarded_knative(headers: &mut HeaderMap, client: &ClientAddr) {
    let had = Forwarding::present(headers);
    let xff = had.xff.then(|| joined(headers, &X_FORWARDED_FOR)).flatten();
    if !had.forwarded && (had.xff || had.host || had.proto) {
        let first = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (host, proto) = (first(&X_FORWARDED_HOST), first(&X_FORWARDED_PROTO));
        if xff.is_some() || host.is_some() || proto.is_some() {
            let mut nodes = xff.as_deref().unwrap_or("").split(',').map(str::trim);
            let mut pairs = Vec::with_capacity(3);
            if let Some(n) = nodes.next().filter(|n| !n.is_empty()) {
                pairs.push(format!("for={}", forwarded_node(n)));
            }
            if let Some(h) = host {
                pairs.push(format!("host={h}"));
            }
            if let Some(p) = proto {
                pairs.push(format!("proto={p}"));
            }
            let mut elements = vec![pairs.join(";")];
            elements.extend(nodes.map(|n| format!("for={}", forwarded_node(n))));
            if let Ok(v) = HeaderValue::try_from(elements.join(", ")) {
                headers.insert(header::FORWARDED, v);
            }
        }
    }
    append_for(headers, xff, client);
}

/// Sets `X-Forwarded-For` to `prev` (the joined earlier hops) followed by this hop's client.
fn append_for(headers: &mut HeaderMap, prev: Option<String>, client: &ClientAddr) {
    match prev {
        Some(prev) => {
            let ip = client.ip.to_str().unwrap_or("unknown");
            if let Ok(v) = HeaderValue::try_from(format!("{prev}, {ip}")) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        // The common case costs no allocation: the per-connection value is shared.
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client.ip.clone());
        }
    }
}

/// An RFC 7239 node: IPv6 addresses are bracketed and quoted, anything else is kept.
fn forwarded_node(node: &str) -> String {
    match node.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("\"[{node}]\""),
        _ => node.to_owned(),
    }
}

/// All lines of a list-valued header as one comma-separated value (RFC 9110 §5.3).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The items of a comma-separated field value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `value`, a comma-separated list, holds `token` (in any case).
pub fn lists(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// A `Transfer-Encoding` value whose last coding is `chunked`: the last coding decides where
/// the body ends (RFC 9112 §6.3).
pub fn ends_in_chunked(value: &[u8]) -> bool {
    tokens(value)
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

/// A `Content-Length` value as hyper reads it: decimal digits, or a list of equal ones (RFC
/// 9110 §8.6); anything else, or a number past `u64`, is `None`. The request framing check
/// and the upstream connection both read lengths with it.
pub fn content_length(value: &[u8]) -> Option<u64> {
    // The common case, one number of at most 19 digits (which cannot overflow), read without
    // splitting or parsing a string.
    if matches!(value.len(), 1..=19) && value.iter().all(u8::is_ascii_digit) {
        return Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
    }
    let mut n = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if n.is_some_and(|n| n != v) {
            return None;
        }
        n = Some(v);
    }
    n
}

/// Removes a `:port` suffix from a host (keeps IPv6 brackets intact).
pub fn strip_port(host: &str) -> &str {
    // The cut is at an ASCII byte (`:`), so always between characters.
    &host[..strip_port_bytes(host.as_bytes()).len()]
}

/// [`strip_port`] on a host's bytes, as the route table looks a request's host up.
pub fn strip_port_bytes(b: &[u8]) -> &[u8] {
    if b.first() == Some(&b'[') {
        return match memchr::memchr(b']', b) {
            Some(end) => &b[..=end],
            None => b,
        };
    }
    // The port: the digits after the last colon, when no other colon comes before it (an
    // IPv6 address without brackets has no port). Read from the end.
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let colon = b.len() - digits;
    match colon.checked_sub(1) {
        // A plain scan: a host is short, shorter than `memchr`'s set-up is worth.
        Some(at) if b[at] == b':' && !b[..at].contains(&b':') => &b[..at],
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_timeouts_are_read_with_a_margin() {
        let t = |v: &'static str| keep_alive_timeout(v.as_bytes());
        assert_eq!(t("timeout=5, max=100"), Some(Duration::from_secs(4)));
        assert_eq!(t("max=100, Timeout=2"), Some(Duration::from_secs(1)));
        assert_eq!(t("timeout=1"), Some(Duration::from_millis(500)));
        assert_eq!(t("timeout=x"), None);
        assert_eq!(t("max=5"), None);
        assert_eq!(t("timeout=3"), Some(Duration::from_secs(2)));
        let mut h = HeaderMap::new();
        h.insert("keep-alive", HeaderValue::from_static("timeout=3"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("keep-alive").is_none() && h.get("x-kept").is_some());
    }

    /// The forwarding fields kept aside for the HTTP/1.1 writer are written as the map would
    /// hold them, for both conventions and both address families; a request with any
    /// forwarding field of its own has them joined in the map instead.
    #[test]
    fn a_hop_kept_aside_is_written_as_the_map_holds_it() {
        let v4 = ClientAddr::new("192.0.2.7".parse().unwrap());
        let v6 = ClientAddr::new("2001:db8::1".parse().unwrap());
        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        for client in [&v4, &v6] {
            for proto in [Some("http"), Some("https"), None] {
                for host in ["example.com", "h.example:8080", "", "a b\tc"] {
                    let host = Host::from_text(host).unwrap();
                    assert_eq!(
                        hop_agrees(&plain, client, proto, &host),
                        Ok(true),
                        "{host:?}"
                    );
                }
            }
        }
        // What is not visible ASCII is no host: nothing that could not be a field value is
        // ever written into a head.
        for not in ["bad\u{1}host", "b\u{e9}", "a\r\nb", "a\x7f"] {
            assert!(Host::from_text(not).is_none(), "{not:?}");
        }
        let mut written = Vec::new();
        let mut host = Host::from_text("a.example").unwrap();
        let hop = Hop::deferred(&plain, &Arc::new(v6.clone()), Some("https"), &mut host).unwrap();
        assert_eq!(
            (host.as_str(), hop.host().as_str()),
            ("", "a.example"),
            "the host moves"
        );
        hop.write(&mut written);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "x-forwarded-for: 2001:db8::1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: a.example\r\n\
             forwarded: for=\"[2001:db8::1]\";host=\"a.example\";proto=https\r\n"
        );
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            let mut had = plain.clone();
            had.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            assert_eq!(
                hop_agrees(&had, &v4, Some("http"), &Host::from_text("h").unwrap()),
                Ok(false),
                "{name}"
            );
        }
    }

    #[test]
    fn lengths_are_plain_decimals() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"7,7, 7"), Some(7));
        assert_eq!(content_length(b"7,8"), None);
        assert_eq!(content_length(b"+7"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"99999999999999999999"), None);
        // One number alone is read without parsing a string, up to 19 digits; past that, the
        // general reading takes it, up to u64's end.
        assert_eq!(content_length(b"007"), Some(7));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(content_length(b"18446744073709551616"), None);
        assert_eq!(content_length(b"4a"), None);
    }

    /// The names are the table's, in any case, and nothing near them is one.
    #[test]
    fn hop_by_hop_names_are_found_in_any_case() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            let name = h.as_str();
            assert_eq!(hop_by_hop_index(name.as_bytes()), Some(i), "{name}");
            assert_eq!(
                hop_by_hop_index(name.to_ascii_uppercase().as_bytes()),
                Some(i)
            );
            assert_eq!(hop_by_hop_at(h), Some(i));
            assert_eq!(hop_by_hop_index(format!("{name}s").as_bytes()), None);
            assert_eq!(hop_by_hop_index(&name.as_bytes()[1..]), None);
        }
        assert_eq!(hop_by_hop_index(b"trailer"), None);
    }

    #[test]
    fn a_host_is_what_reads_as_text() {
        // Every byte a header value may hold, alone and between others: a host is made of
        // exactly the values `to_str` reads.
        let mut made = 0;
        for b in 0..=255u8 {
            for bytes in [
                vec![b],
                vec![b'a', b, b'b'],
                [b"a.example:80".as_slice(), &[b]].concat(),
            ] {
                let Ok(v) = HeaderValue::from_bytes(&bytes) else {
                    continue;
                };
                made += 1;
                let text = v.to_str().ok().map(str::to_owned);
                // The same bytes as a head's field kept as written make the same host.
                let field = Host::from_field(bytes::Bytes::from(bytes.clone()));
                let host = Host::new(v.clone());
                assert_eq!(host.is_some(), text.is_some(), "{:?}", bytes.escape_ascii());
                assert_eq!(
                    field.is_some(),
                    text.is_some(),
                    "{:?}",
                    bytes.escape_ascii()
                );
                if let (Some(h), Some(f), Some(t)) = (host, field, text) {
                    assert_eq!((h.as_str(), f.as_str()), (&t[..], &t[..]));
                    assert_eq!((h.to_value(), f.to_value()), (v.clone(), v));
                }
            }
        }
        // Tab, space to `~`, and obs-text (0x80 and up) make values; the other controls and
        // DEL do not.
        assert_eq!(made, 3 * (1 + 95 + 128));
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.example:80"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        // The same as reading it as text from the last colon, for any mix of the bytes that
        // matter.
        fn by_text(host: &str) -> &str {
            if host.starts_with('[') {
                return host.find(']').map_or(host, |end| &host[..=end]);
            }
            match host.rfind(':') {
                Some(i)
                    if host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                        && host[..i].find(':').is_none() =>
                {
                    &host[..i]
                }
                _ => host,
            }
        }
        let alphabet = ['a', '1', ':', '[', ']', '.'];
        let mut hosts = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = hosts
                .iter()
                .flat_map(|h| alphabet.iter().map(move |c| format!("{h}{c}")))
                .collect();
            hosts.extend(longer);
        }
        for h in &hosts {
            assert_eq!(strip_port(h), by_text(h), "{h:?}");
        }
    }

    #[test]
    fn hop_by_hop_positions_match_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_at(name), Some(i), "{name}");
        }
        for other in [header::TRAILER, header::HOST, header::CONTENT_LENGTH] {
            assert_eq!(hop_by_hop_at(&other), None, "{other}");
        }
        assert_eq!(
            hop_by_hop_at(&HeaderName::from_static("x-keep-alive")),
            None
        );
    }

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers, deflate;q=0.5".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "yes");
    }

    #[test]
    fn a_lone_te_trailers_stays_and_any_other_te_is_cut_to_it_or_removed() {
        let strip_te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
            for v in values {
                h.append(header::TE, v.parse().unwrap());
            }
            let _ = strip_request_hop_by_hop(&mut h).unwrap();
            assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "application/grpc");
            h.get_all(header::TE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(strip_te(&["trailers"]), ["trailers"]);
        assert_eq!(strip_te(&["Trailers"]), ["trailers"]);
        assert_eq!(strip_te(&["trailers", "trailers"]), ["trailers"]);
        assert_eq!(strip_te(&["deflate, trailers"]), ["trailers"]);
        assert_eq!(strip_te(&["gzip", "trailers"]), ["trailers"]);
        assert!(strip_te(&["deflate"]).is_empty());
        assert!(strip_te(&["trailersx"]).is_empty());
    }

    #[test]
    fn strips_what_connection_lists_in_any_case_and_leaves_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "Close, X-Other, Keep-Alive".parse().unwrap(),
        );
        h.insert("x-other", "1".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get(header::CONTENT_LENGTH).unwrap(), "2");
        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn the_upgrade_asked_for_is_read_before_it_is_stripped() {
        let request = |connection: Option<&str>, upgrade: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "a".parse().unwrap());
            if let Some(c) = connection {
                h.insert(header::CONNECTION, c.parse().unwrap());
            }
            if let Some(u) = upgrade {
                h.insert(header::UPGRADE, u.parse().unwrap());
            }
            let asked = strip_request_hop_by_hop(&mut h).unwrap();
            // Whatever was asked, both fields are gone and the rest stays.
            assert_eq!(h.len(), 1, "{h:?}");
            asked
        };
        assert_eq!(
            request(Some("keep-alive, Upgrade"), Some("websocket")).unwrap(),
            "websocket"
        );
        assert_eq!(request(Some("keep-alive"), Some("websocket")), None);
        assert_eq!(request(None, Some("websocket")), None);
        assert_eq!(request(Some("upgrade"), None), None);
        assert_eq!(request(None, None), None);
    }

    #[test]
    fn knative_forwarded_is_synthesized_from_x_forwarded() {
        let client = ClientAddr::new("10.0.0.9".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "192.0.2.1, 2001:db8::1".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "app.example".parse().unwrap());
        add_forwarded_knative(&mut h, &client);
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=192.0.2.1;host=app.example;proto=https, for=\"[2001:db8::1]\""
        );
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "192.0.2.1, 2001:db8::1, 10.0.0.9"
        );
        assert!(h.get("x-forwarded-proto").is_some());

        // An existing Forwarded is left alone; without X-Forwarded-* none is made up.
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=198.51.100.7".parse().unwrap());
        h.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
        add_forwarded_knative(&mut h, &client);
        assert_eq!(h.get("forwarded").unwrap(), "for=198.51.100.7");
        let mut h = HeaderMap::new();
        add_forwarded_knative(&mut h, &client);
        assert!(h.get("forwarded").is_none());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert!(h.get("x-forwarded-proto").is_none());
    }

    #[test]
    fn forwarded_appends_and_quotes_v6() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        add_forwarded(
            &mut h,
            &ClientAddr::new("::1".parse().unwrap()),
            "http",
            &Host::from_text("a.example").unwrap(),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 10.0.0.2, ::1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=\"[::1]\";host=\"a.example\";proto=http"
        );
    }

    #[test]
    fn a_connections_forwarded_value_is_made_once_and_only_for_its_host_and_scheme() {
        let client = ClientAddr::new("192.0.2.7".parse().unwrap());
        let forwarded = |host: &str, proto: &'static str, prev: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(p) = prev {
                h.insert("forwarded", p.parse().unwrap());
            }
            add_forwarded(&mut h, &client, proto, &Host::from_text(host).unwrap());
            h.get("forwarded").unwrap().clone()
        };
        let first = forwarded("a.example", "http", None);
        assert_eq!(first, "for=192.0.2.7;host=\"a.example\";proto=http");
        // The same value again, shared rather than made anew.
        let again = forwarded("a.example", "http", None);
        assert_eq!(again, first);
        assert_eq!(again.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        // Another host or scheme, or earlier hops, get values of their own.
        assert_eq!(
            forwarded("b.example", "http", None),
            "for=192.0.2.7;host=\"b.example\";proto=http"
        );
        assert_eq!(
            forwarded("a.example", "https", None),
            "for=192.0.2.7;host=\"a.example\";proto=https"
        );
        assert_eq!(
            forwarded("a.example", "http", Some("for=198.51.100.1")),
            "for=198.51.100.1, for=192.0.2.7;host=\"a.example\";proto=http"
        );
        assert_eq!(forwarded("a.example", "http", None), first);
    }
}
