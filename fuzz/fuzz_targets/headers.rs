//! Any request headers through the hop-by-hop stripping and both forwarding conventions: no
//! panic, a request that is accepted carries no connection-scoped header on to the backend
//! (but `TE: trailers`), and the forwarding fields kept aside for an HTTP/1.1 head are written
//! as the map would hold them.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rouse::http::headers::{
    ClientAddr, Host, add_forwarded, add_forwarded_knative, hop_agrees, is_hop_by_hop,
    strip_request_hop_by_hop,
};
use std::net::{IpAddr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    for line in text.split('\n') {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_bytes(v.trim().as_bytes()),
            )
        {
            headers.append(k, v);
        }
    }
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let mut knative = headers.clone();
    if strip_request_hop_by_hop(&mut headers).is_ok() {
        for name in headers.keys() {
            let te_trailers = name == http::header::TE && headers[name] == "trailers";
            assert!(!is_hop_by_hop(name) || te_trailers, "{name} was forwarded");
            assert!(
                te_trailers || !listed.contains(&name.as_str().to_owned()),
                "{name} was named in Connection"
            );
        }
    }
    let client = ClientAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST));
    // The forwarding fields kept aside for an HTTP/1.1 head are the map's, byte for byte; the
    // first line stands for the host.
    let host = text.split('\n').next().unwrap_or("");
    // What is not visible ASCII is no host: a request addressed so is refused before this.
    if let Some(host) = Host::from_text(host) {
        for proto in [Some("https"), None] {
            if let Err(e) = hop_agrees(&headers, &client, proto, &host) {
                panic!("{e}");
            }
        }
    }
    let host = Host::from_text("host.example").unwrap();
    add_forwarded(&mut headers, &client, "https", &host);
    assert!(headers.contains_key("x-forwarded-for"));
    add_forwarded_knative(&mut knative, &client);
});
