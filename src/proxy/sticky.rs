//! Sticky splits: a client keeps the revision it first got, so a canary's users stay on the
//! canary and everyone else on the stable revision, while new clients are still split by
//! percent. No state is kept in rouse: the pin is a cookie rouse sets (its value a short hash
//! of the revision's name), or a hash of a request header's value (a user or session id the
//! client already sends).
//!
//! A pin to a revision that has left the split (0 % or removed) is ignored and replaced, so a
//! rollout that ends moves its pinned clients along. A `rouse-tag` header still wins over any
//! pin: it is an explicit ask.

use http::HeaderMap;
use http::header::{COOKIE, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use std::time::Duration;

/// How a service pins its clients.
#[derive(Debug)]
pub enum Pin {
    /// A cookie: its name, and the attributes it is set with (`; Path=/; ...`).
    Cookie {
        /// The cookie's name.
        name: Box<str>,
        /// What follows `name=value` in `Set-Cookie`.
        attributes: Box<str>,
    },
    /// A hash of this request header's value.
    Header(HeaderName),
}

/// A service's pinning and its counters.
#[derive(Debug)]
pub struct Sticky {
    /// How clients are pinned.
    pub pin: Pin,
    /// Requests that followed a pin.
    pub pinned: Counter,
    /// Requests without a pin, split by percent (and, for cookies, given one).
    pub new: Counter,
    /// Requests whose pin named a revision no longer in the split, split anew.
    pub replaced: Counter,
    /// The tokens of every revision with a share somewhere in the service, sorted: a pin to
    /// one of them is kept by routes that do not lead there.
    known: Box<[Box<str>]>,
}

impl Sticky {
    /// Pins by the cookie `name`, set with `max_age` (none: until the browser closes);
    /// `counters` are `[pinned, new, replaced]` (`rouse_sticky_requests_total`).
    pub fn cookie(name: &str, max_age: Option<Duration>, counters: [Counter; 3]) -> Sticky {
        let mut attributes = String::from("; Path=/; HttpOnly; SameSite=Lax");
        if let Some(a) = max_age {
            attributes.push_str(&format!("; Max-Age={}", a.as_secs()));
        }
        Sticky::with(
            Pin::Cookie {
                name: name.into(),
                attributes: attributes.into(),
            },
            counters,
        )
    }

    /// Pins by a hash of the request header `name`.
    pub fn header(name: HeaderName, counters: [Counter; 3]) -> Sticky {
        Sticky::with(Pin::Header(name), counters)
    }

    fn with(pin: Pin, [pinned, new, replaced]: [Counter; 3]) -> Sticky {
        Sticky {
            pin,
            pinned,
            new,
            replaced,
            known: Box::default(),
        }
    }

    /// Knows `tokens` (sorted) as the pins the service's routes may hold.
    pub fn knowing(mut self, tokens: Vec<Box<str>>) -> Sticky {
        self.known = tokens.into();
        self
    }

    /// True for a pin to a revision with a share somewhere in the service.
    pub fn knows(&self, token: &str) -> bool {
        self.known.binary_search_by(|t| (**t).cmp(token)).is_ok()
    }

    /// The `Set-Cookie` value that pins a client to the revision whose token is `token`.
    pub fn set_cookie(&self, token: &str) -> Option<HeaderValue> {
        match &self.pin {
            Pin::Cookie { name, attributes } => {
                HeaderValue::from_str(&format!("{name}={token}{attributes}")).ok()
            }
            Pin::Header(_) => None,
        }
    }
}

/// FNV-1a, 64 bits: a stable hash (the same in every rouse, across restarts and versions),
/// which a pin needs and std's hasher does not promise.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cookie value that names a revision: a hash, so names (which may hold any character)
/// stay out of cookies and are not shown to clients.
pub fn token(revision: &str) -> Box<str> {
    format!("{:016x}", hash(revision.as_bytes())).into()
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2 may send several).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv_1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(token("a").len(), 16);
    }

    #[test]
    fn cookies_are_found_among_others_and_across_headers() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; pin=abc".parse().unwrap());
        h.append(COOKIE, "other=2".parse().unwrap());
        assert_eq!(cookie(&h, "pin"), Some("abc"));
        assert_eq!(cookie(&h, "other"), Some("2"));
        assert_eq!(cookie(&h, "pi"), None);
        assert_eq!(cookie(&HeaderMap::new(), "pin"), None);
    }

    #[test]
    fn set_cookie_carries_its_attributes() {
        let s = Sticky::cookie(
            "rouse-shop",
            Some(Duration::from_secs(3600)),
            Default::default(),
        );
        assert_eq!(
            s.set_cookie("00ff").unwrap(),
            "rouse-shop=00ff; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"
        );
        let session = Sticky::cookie("c", None, Default::default());
        assert_eq!(
            session.set_cookie("1").unwrap(),
            "c=1; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
