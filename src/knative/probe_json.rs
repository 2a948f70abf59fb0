//! The readiness probes of a Knative revision, as the JSON Kubernetes probe (or list of them)
//! that Serving passes in `SERVING_READINESS_PROBE`, turned into the [`Probe`]s rouse runs.

use super::headers::NETWORK_PROBE;
use crate::probe::{Check, PROBE_USER_AGENT, Probe};
use http::Uri;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A readiness probe description that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not JSON of a Kubernetes probe (or a list of them).
    #[error("is not a Kubernetes probe in JSON: {0}")]
    Syntax(String),
    /// Something rouse cannot run.
    #[error("{0}")]
    Unsupported(String),
}

// A list first: a struct also accepts a sequence (its fields in order), so `One` would
// swallow an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<ProbeJson>),
    One(Box<ProbeJson>),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ProbeJson {
    tcp_socket: Option<Target>,
    http_get: Option<HttpGet>,
    grpc: Option<Grpc>,
    exec: Option<serde::de::IgnoredAny>,
    timeout_seconds: u64,
    period_seconds: u64,
    success_threshold: u32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Target {
    host: String,
    port: Option<Port>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct HttpGet {
    host: String,
    port: Option<Port>,
    path: String,
    scheme: String,
    http_headers: Vec<NameValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Grpc {
    port: Option<Port>,
    service: Option<String>,
}

/// Kubernetes' IntOrString.
#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    Number(u16),
    Name(String),
}

fn port(p: Option<&Port>, user_port: u16, at: &str) -> Result<u16, ProbeError> {
    match p {
        None | Some(Port::Number(0)) => Ok(user_port),
        Some(Port::Number(n)) => Ok(*n),
        Some(Port::Name(s)) => s.parse().map_err(|_| {
            ProbeError::Unsupported(format!(
                "{at}.port {s:?} is a named port; give the port number"
            ))
        }),
    }
}

fn addr(host: &str, port: u16, at: &str) -> Result<SocketAddr, ProbeError> {
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|_| {
            ProbeError::Unsupported(format!(
                "{at}.host {host:?} is not an IP address; leave it out to probe the app on 127.0.0.1"
            ))
        })
}

/// The default when a revision declares none: TCP to the user port, aggressive.
pub fn default_probe(user_port: u16) -> Probe {
    Probe {
        check: Check::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), user_port)),
        aggressive: true,
        timeout: Duration::from_secs(1),
        success_threshold: 1,
    }
}

/// Parses `SERVING_READINESS_PROBE`: one probe or a JSON array of them (one per container).
/// A port left out or 0 means `user_port`; an `exec` probe, which only the kubelet can
/// run, becomes a TCP probe of `user_port`, as in Knative.
pub fn parse(json: &str, user_port: u16) -> Result<Vec<Probe>, ProbeError> {
    if json.trim().is_empty() {
        return Ok(vec![default_probe(user_port)]);
    }
    let parsed: OneOrMany =
        serde_norway::from_str(json).map_err(|e| ProbeError::Syntax(e.to_string()))?;
    let list = match parsed {
        OneOrMany::One(p) => vec![*p],
        OneOrMany::Many(v) => v,
    };
    if list.is_empty() {
        return Ok(vec![default_probe(user_port)]);
    }
    list.into_iter()
        .enumerate()
        .map(|(i, p)| from_json(p, user_port, &format!("probe[{i}]")))
        .collect()
}

fn from_json(p: ProbeJson, user_port: u16, at: &str) -> Result<Probe, ProbeError> {
    let kinds = [
        p.tcp_socket.is_some(),
        p.http_get.is_some(),
        p.grpc.is_some(),
        p.exec.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(ProbeError::Unsupported(format!(
            "{at} names more than one of tcpSocket, httpGet, grpc and exec; give one"
        )));
    }
    let check = if let Some(t) = p.tcp_socket {
        let at = format!("{at}.tcpSocket");
        Check::Tcp(addr(&t.host, port(t.port.as_ref(), user_port, &at)?, &at)?)
    } else if let Some(h) = p.http_get {
        let at = format!("{at}.httpGet");
        if !h.scheme.is_empty() && !h.scheme.eq_ignore_ascii_case("http") {
            return Err(ProbeError::Unsupported(format!(
                "{at}.scheme {:?} is not supported; the app is probed over plain HTTP",
                h.scheme
            )));
        }
        let a = addr(&h.host, port(h.port.as_ref(), user_port, &at)?, &at)?;
        // What the kubelet and queue-proxy send; the probe's own headers may replace them.
        let mut headers = vec![
            (
                http::header::USER_AGENT,
                HeaderValue::from_static(PROBE_USER_AGENT),
            ),
            (NETWORK_PROBE, HeaderValue::from_static("queue")),
        ];
        for (j, nv) in h.http_headers.iter().enumerate() {
            let name = HeaderName::from_bytes(nv.name.as_bytes());
            let value = HeaderValue::from_str(&nv.value);
            match (name, value) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => {
                    return Err(ProbeError::Unsupported(format!(
                        "{at}.httpHeaders[{j}] {:?}: {:?} is not a valid header",
                        nv.name, nv.value
                    )));
                }
            }
        }
        let path = if h.path.is_empty() {
            "/".to_owned()
        } else if h.path.starts_with('/') {
            h.path
        } else {
            format!("/{}", h.path)
        };
        if path.parse::<Uri>().is_err() {
            return Err(ProbeError::Unsupported(format!(
                "{at}.path {path:?} is not a valid request path"
            )));
        }
        Check::Http {
            host: if h.host.is_empty() {
                a.to_string()
            } else {
                h.host.clone()
            },
            addr: a,
            path,
            headers,
            ready: 200..400,
        }
    } else if let Some(g) = p.grpc {
        let at = format!("{at}.grpc");
        Check::Grpc {
            addr: addr("", port(g.port.as_ref(), user_port, &at)?, &at)?,
            service: g.service.unwrap_or_default(),
        }
    } else {
        default_probe(user_port).check
    };
    Ok(Probe {
        check,
        aggressive: p.period_seconds == 0,
        timeout: Duration::from_secs(p.timeout_seconds.max(1)),
        success_threshold: p.success_threshold.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knative_probe_json() {
        let p = parse(
            r#"{"httpGet":{"path":"healthz","port":8081,"httpHeaders":[{"name":"X-Check","value":"1"}]},"successThreshold":2,"periodSeconds":0}"#,
            8080,
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].aggressive);
        assert_eq!(p[0].success_threshold, 2);
        match &p[0].check {
            Check::Http {
                addr,
                path,
                headers,
                ready,
                ..
            } => {
                assert_eq!(addr.port(), 8081);
                assert_eq!(path, "/healthz");
                assert_eq!(headers[0].0, "user-agent");
                assert_eq!(headers[1].0, "k-network-probe");
                assert_eq!(headers[2].0, "x-check");
                assert_eq!(*ready, 200..400);
            }
            other => panic!("{other:?}"),
        }
        let p = parse(
            r#"[{"tcpSocket":{"port":0},"periodSeconds":5,"timeoutSeconds":2},{"grpc":{"port":"9000","service":"s"}},{"exec":{"command":["true"]}}]"#,
            8080,
        )
        .unwrap();
        assert_eq!(
            p[0].check,
            Check::Tcp("127.0.0.1:8080".parse().unwrap()),
            "port 0 means the user port"
        );
        assert!(!p[0].aggressive);
        assert_eq!(p[0].timeout, Duration::from_secs(2));
        assert_eq!(
            p[1].check,
            Check::Grpc {
                addr: "127.0.0.1:9000".parse().unwrap(),
                service: "s".into()
            }
        );
        assert_eq!(p[2].check, Check::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse("", 8080).unwrap()[0], default_probe(8080));
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        for (json, says) in [
            ("{not json", "JSON"),
            (r#"{"httpGet":{"port":"http"}}"#, "named port"),
            (r#"{"httpGet":{"scheme":"HTTPS"}}"#, "scheme"),
            (r#"{"tcpSocket":{"host":"app.local"}}"#, "not an IP"),
            (
                r#"{"tcpSocket":{},"httpGet":{}}"#,
                "more than one of tcpSocket",
            ),
        ] {
            let e = parse(json, 8080).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
