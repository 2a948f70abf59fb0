//! Knative's `Ingress` (`networking.internal.knative.dev/v1alpha1`) as rouse reads it: the
//! spec's types in the field order and with the `omitempty` rules of Knative's Go types, so
//! that [`hash`] gives the same bytes to SHA-256 as Knative's `ComputeHash` does, and
//! [`check`] refuses what Knative's own validation refuses, in words.

use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// Annotation naming the ingress implementation that serves an Ingress.
pub const CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// The older spelling of [`CLASS_ANNOTATION`], read when the first is absent.
pub const CLASS_ANNOTATION_OLD: &str = "networking.knative.dev/ingress-class";

/// `spec`, field for field.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// TLS certificates by host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    /// Host rules; the first that matches a request wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
    /// `Enabled` (serve cleartext) or `Redirected` (301 to HTTPS); empty = `Enabled`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http_option: String,
}

/// `spec.tls[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// Hosts the certificate serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The Secret with `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_namespace: String,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Host names; empty = every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `ExternalIP` (default) or `ClusterLocal`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub visibility: String,
    /// The paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRule>,
}

/// `spec.rules[].http`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct HttpRule {
    /// Not `omitempty` in Go: an absent list is `null`, an empty one `[]`.
    #[serde(default)]
    pub paths: Option<Vec<HttpPath>>,
}

/// `spec.rules[].http.paths[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPath {
    /// Literal prefix; empty = every path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Replaces the Host of matching requests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rewrite_host: String,
    /// Headers that must match exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
    /// Not `omitempty` in Go.
    #[serde(default)]
    pub splits: Option<Vec<Split>>,
    /// Headers set before the split.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

/// `headers.<name>`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct HeaderMatch {
    /// The value the header must have (not `omitempty` in Go).
    #[serde(default)]
    pub exact: String,
}

/// `splits[]`: Go's `IngressBackendSplit`, whose embedded `IngressBackend` fields come first.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    /// Not `omitempty` in Go.
    #[serde(default)]
    pub service_namespace: String,
    /// Not `omitempty` in Go.
    #[serde(default)]
    pub service_name: String,
    /// A port number or name of the Service.
    #[serde(default)]
    pub service_port: IntOrString,
    /// Share of requests.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub percent: i64,
    /// Headers set after the split is chosen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Kubernetes' `intstr.IntOrString`: a JSON number or string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name.
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(n) => s.serialize_i64(*n),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::String(v) => write!(f, "{v:?}"),
        }
    }
}

/// Knative's `ComputeHash`: SHA-256 over Go's `json.Marshal(spec)` followed by the namespace
/// and the name, in lower-case hex. Go's encoder escapes `<`, `>`, `&`, U+2028 and U+2029 in
/// strings, which serde_json does not; [`GoFormatter`] does.
pub fn hash(spec: &IngressSpec, namespace: &str, name: &str) -> String {
    let mut bytes = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut bytes, GoFormatter);
    spec.serialize(&mut ser)
        .expect("serializing plain data into memory cannot fail");
    bytes.extend_from_slice(namespace.as_bytes());
    bytes.extend_from_slice(name.as_bytes());
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// serde_json's compact output with Go's HTML-safe string escapes.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some(i) = rest.find(['<', '>', '&', '\u{2028}', '\u{2029}']) {
            w.write_all(&rest.as_bytes()[..i])?;
            let c = rest[i..]
                .chars()
                .next()
                .expect("find returned a char boundary");
            write!(w, "\\u{:04x}", c as u32)?;
            rest = &rest[i + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
}

/// What Knative's validation and defaulting make of a spec: `Err` with every problem, each
/// with its field path, or the spec with defaults applied (a lone split with no percent
/// takes 100 %).
pub fn check(mut spec: IngressSpec, namespace: &str) -> Result<IngressSpec, Vec<String>> {
    let mut errs = Vec::new();
    if spec.rules.is_empty() {
        errs.push("spec.rules: at least one rule is required".to_owned());
    }
    match spec.http_option.as_str() {
        "" | "Enabled" | "Redirected" => {}
        other => errs.push(format!(
            "spec.httpOption: {other:?} is not one of Enabled, Redirected"
        )),
    }
    for (i, t) in spec.tls.iter().enumerate() {
        if t.secret_name.is_empty() {
            errs.push(format!("spec.tls[{i}].secretName: required"));
        }
        if t.secret_namespace.is_empty() {
            errs.push(format!("spec.tls[{i}].secretNamespace: required"));
        }
    }
    for (i, r) in spec.rules.iter_mut().enumerate() {
        let rp = format!("spec.rules[{i}]");
        match r.visibility.as_str() {
            "" | "ExternalIP" | "ClusterLocal" => {}
            other => errs.push(format!(
                "{rp}.visibility: {other:?} is not one of ExternalIP, ClusterLocal"
            )),
        }
        let paths = match r.http.as_mut().and_then(|h| h.paths.as_mut()) {
            Some(p) if !p.is_empty() => p,
            _ => {
                errs.push(format!("{rp}.http.paths: at least one path is required"));
                continue;
            }
        };
        for (j, p) in paths.iter_mut().enumerate() {
            let pp = format!("{rp}.http.paths[{j}]");
            if !p.path.is_empty() && !p.path.starts_with('/') {
                errs.push(format!("{pp}.path: {:?} must start with \"/\"", p.path));
            }
            for (h, m) in &p.headers {
                if m.exact.is_empty() {
                    errs.push(format!(
                        "{pp}.headers.{h}: only exact matches exist; give `exact`"
                    ));
                }
            }
            let splits = match p.splits.as_mut() {
                Some(s) if !s.is_empty() => s,
                _ => {
                    errs.push(format!("{pp}.splits: at least one split is required"));
                    continue;
                }
            };
            if splits.len() == 1 && splits[0].percent == 0 {
                splits[0].percent = 100;
            }
            let mut sum = 0;
            for (k, s) in splits.iter().enumerate() {
                let sp = format!("{pp}.splits[{k}]");
                if s.service_name.is_empty() {
                    errs.push(format!("{sp}.serviceName: required"));
                }
                if s.service_namespace != namespace {
                    errs.push(format!(
                        "{sp}.serviceNamespace: {:?} must be the Ingress's namespace {namespace:?}",
                        s.service_namespace
                    ));
                }
                match &s.service_port {
                    IntOrString::Int(n) if !(1..=65535).contains(n) => {
                        errs.push(format!("{sp}.servicePort: {n} is not a port (1-65535)"))
                    }
                    IntOrString::String(v) if v.is_empty() => {
                        errs.push(format!("{sp}.servicePort: required"))
                    }
                    _ => {}
                }
                if !(0..=100).contains(&s.percent) {
                    errs.push(format!("{sp}.percent: {} is not 0-100", s.percent));
                }
                sum += s.percent;
            }
            if sum != 100 {
                errs.push(format!("{pp}.splits: percents sum to {sum}, must be 100"));
            }
        }
    }
    if errs.is_empty() { Ok(spec) } else { Err(errs) }
}

/// The names a host is also reached by inside the cluster, as Knative's `ExpandedHosts` gives
/// them: the host, and the host without `.<domain>` and without `.svc.<domain>`, where the
/// rest still ends in a plausible top-level label (at most 63 characters, not all digits).
/// `name.ns.svc.<domain>` is also `name.ns.svc` and `name.ns`.
pub fn expanded_hosts(host: &str, cluster_domain: &str) -> Vec<String> {
    let host = host.to_ascii_lowercase();
    let mut out = vec![host.clone()];
    for suffix in [
        format!(".{cluster_domain}"),
        format!(".svc.{cluster_domain}"),
    ] {
        if let Some(short) = host.strip_suffix(&suffix)
            && let Some(top) = short.rsplit('.').next()
            && !top.is_empty()
            && top.len() <= 63
            && !top.bytes().all(|b| b.is_ascii_digit())
            && !out.iter().any(|h| h == short)
        {
            out.push(short.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_json_layout() {
        let spec: IngressSpec = serde_json::from_str(
            r#"{"rules":[{"hosts":["a.example"],"visibility":"ExternalIP","http":{"paths":[
                {"splits":[{"serviceName":"s","serviceNamespace":"ns","servicePort":80,
                "appendHeaders":{"b":"<&>","a":"x"}}]}]}}],"tls":[]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        spec.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            GoFormatter,
        ))
        .unwrap();
        // Declaration order, omitempty fields left out, non-omitempty ones kept, map keys
        // sorted, HTML characters escaped: what Go's encoding/json writes.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"rules":[{"hosts":["a.example"],"visibility":"ExternalIP","http":{"paths":[{"splits":[{"serviceNamespace":"ns","serviceName":"s","servicePort":80,"appendHeaders":{"a":"x","b":"\u003c\u0026\u003e"}}]}]}}]}"#
        );
    }

    #[test]
    fn hash_equals_knatives_compute_hash() {
        // The value Knative's own ingress.ComputeHash gives for this spec
        // (scripts/knative-hash.go); the JSON keys arrive in another order than Go writes them.
        let spec: IngressSpec = serde_json::from_str(
            r#"{"httpOption":"Enabled","rules":[{"visibility":"ExternalIP","hosts":["probe-x.example.com"],
              "http":{"paths":[{"splits":[
                {"percent":100,"appendHeaders":{"b":"&","a":"x"},"servicePort":77,"serviceName":"s","serviceNamespace":"serving-tests"},
                {"serviceNamespace":"serving-tests","serviceName":"t","servicePort":"http"}],
              "headers":{"K-Tag":{"exact":"a<b"}}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            hash(&spec, "serving-tests", "probe-x"),
            "393af5b93a4e88c383a8031e9ea040437a6114b28f88a01f8fe401eadd31ffb6"
        );
        assert_ne!(
            hash(&spec, "serving-tests", "probe-y"),
            hash(&spec, "serving-tests", "probe-x")
        );
    }

    #[test]
    fn checks_name_the_field() {
        let spec: IngressSpec = serde_json::from_str(
            r#"{"httpOption":"Sometimes","rules":[{"visibility":"Everywhere","http":{"paths":[
                {"path":"x","splits":[{"serviceName":"s","serviceNamespace":"other","servicePort":0,"percent":50}]}]}}]}"#,
        )
        .unwrap();
        let errs = check(spec, "ns").unwrap_err();
        for want in [
            "spec.httpOption: \"Sometimes\"",
            "spec.rules[0].visibility: \"Everywhere\"",
            "spec.rules[0].http.paths[0].path: \"x\" must start",
            "splits[0].serviceNamespace: \"other\" must be the Ingress's namespace \"ns\"",
            "splits[0].servicePort: 0 is not a port",
            "paths[0].splits: percents sum to 50",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want} in {errs:#?}");
        }
    }

    #[test]
    fn a_lone_split_defaults_to_all_traffic() {
        let spec: IngressSpec = serde_json::from_str(
            r#"{"rules":[{"http":{"paths":[{"splits":[{"serviceName":"s","serviceNamespace":"ns","servicePort":"http"}]}]}}]}"#,
        )
        .unwrap();
        let spec = check(spec, "ns").unwrap();
        let split = &spec.rules[0].http.as_ref().unwrap().paths.as_ref().unwrap()[0]
            .splits
            .as_ref()
            .unwrap()[0];
        assert_eq!(split.percent, 100);
    }

    #[test]
    fn cluster_local_hosts_expand() {
        assert_eq!(
            expanded_hosts("Hello.NS.svc.cluster.local", "cluster.local"),
            ["hello.ns.svc.cluster.local", "hello.ns.svc", "hello.ns"]
        );
        assert_eq!(
            expanded_hosts("hello.example.com", "cluster.local"),
            ["hello.example.com"]
        );
    }
}
