//! Any host, path and headers against a route table with exact and wildcard hosts, prefixes,
//! header matches and tags: the lookup never panics and always lands on a revision of the
//! service that matched.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rouse::config::Config;
use rouse::metrics::Metrics;
use rouse::proxy::router::RouteTable;
use std::sync::{Arc, OnceLock};

const CONFIG: &str = r#"
listen: "127.0.0.1:0"
services:
  - name: a
    hosts: ["a.example", "[::1]"]
    routes:
      - { path: /api, traffic: [{ revision: two, percent: 100 }] }
      - path: /api/v1
        headers: { x-canary: "yes" }
        traffic: [{ revision: one, percent: 100 }]
    traffic:
      - { revision: one, percent: 70 }
      - { revision: two, percent: 30, tag: next }
    revisions:
      - { name: one, endpoints: ["127.0.0.1:1"] }
      - { name: two, endpoints: ["127.0.0.1:2"] }
  - name: rest
    hosts: ["*"]
    traffic: [{ revision: three, percent: 100 }]
    revisions: [{ name: three, endpoints: ["127.0.0.1:3"] }]
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let cfg = Config::parse(CONFIG).expect("the fuzz config is valid");
        RouteTable::build(&cfg, &Arc::new(Metrics::new()), None).expect("it builds")
    })
}

fuzz_target!(|data: &[u8]| {
    // host \n path \n name: value \n name: value ...
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let host = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    let Some(svc) = table().service(host) else {
        panic!("the * service matches every host, but not {host:?}");
    };
    let rev = &svc.route(path, &headers).pick(&headers).revision;
    assert_eq!(rev.service, svc.name);
});
