//! What operators see of each request and of the whole process: the access log, trace spans
//! exported to a real OTLP/HTTP receiver, the status page's JSON and its route table, and the
//! CLI that prints routes.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reads the access log at `path` until it has `n` lines.
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    wait_until(
        &format!("{n} access log lines in {}", path.display()),
        || {
            got = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            got.len() >= n
        },
    )
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request_with_its_fields() {
    let b = Backend::start("b").await;
    let dir = temp_dir("access-json");
    let log = dir.join("access.log");
    let gw = Cfg::new()
        .access_log(log.to_str().unwrap(), "json")
        .service(
            Svc::new("shop")
                .host("shop.test")
                .only(Rev::new("r").endpoint(b.addr)),
        )
        .start()
        .await;
    let c = h1_client();
    let ok = get(
        &c,
        gw.addr(),
        "shop.test",
        "/items?id=1",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let missing = get(&c, gw.addr(), "nowhere.test", "/x", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // A last request marks the end: three requests, three lines, in order.
    let head = head(&c, gw.addr(), "shop.test", "/last").await;
    assert_eq!(head.status, StatusCode::OK);
    let got = lines(&log, 3).await;
    let last: serde_json::Value = serde_json::from_str(&got[2]).unwrap();
    assert_eq!(
        (&last["method"], &last["path"]),
        (&"HEAD".into(), &"/last".into())
    );
    assert_eq!(last["bytes"], 0, "a HEAD answer has no body");
    assert_eq!(got.len(), 3, "one line per request: {got:#?}");
    let first: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.test");
    assert_eq!(first["path"], "/items");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], ok.body.len() as u64);
    assert_eq!(first["service"], "shop");
    assert_eq!(first["revision"], "r");
    assert_eq!(first["upstream"], b.addr.to_string());
    assert_eq!(first["cold_start"], false);
    assert!(first["wait_ms"].is_null(), "not held: {first}");
    assert!(first["error"].is_null());
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    // Not traced here (no OTLP endpoint): no trace id is made up.
    assert!(first["trace_id"].is_null());
    let second: serde_json::Value = serde_json::from_str(&got[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert_eq!(second["error"], "no-service");
    assert!(second["revision"].is_null() && second["upstream"].is_null());
    assert_eq!(
        second["host"], "nowhere.test",
        "the host that matched nothing is shown"
    );
    assert_eq!(second["bytes"], missing.body.len() as u64);
}

/// rouse's own answer after routing (here a backend that refuses connections) is logged with
/// the status and error code the client got, and a HEAD request's answer with no bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_forwarding_is_logged_with_the_answer_the_client_got() {
    let down = refusing_addr();
    let log = temp_dir("access-failed").join("access.log");
    let gw = Cfg::new()
        .access_log(log.to_str().unwrap(), "json")
        .service(Svc::single(Rev::new("r").endpoint(down)))
        .start()
        .await;
    let c = h1_client();
    let got = get(&c, gw.addr(), "x", "/down", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.body);
    let code = got.header("rouse-error");
    assert!(!code.is_empty(), "rouse's answer names its error");
    let head = head(&c, gw.addr(), "x", "/down-head").await;
    assert_eq!(head.status, StatusCode::BAD_GATEWAY);
    let lines = lines(&log, 2).await;
    assert_eq!(lines.len(), 2, "one line per request: {lines:#?}");
    let json = |path: &str| -> serde_json::Value {
        let line = lines.iter().find(|l| l.contains(path)).unwrap();
        serde_json::from_str(line).unwrap()
    };
    let get_line = json("\"/down\"");
    assert_eq!(get_line["status"], 502);
    assert_eq!(get_line["error"], code);
    assert_eq!(get_line["revision"], "r");
    assert_eq!(get_line["bytes"], got.body.len() as u64);
    assert!(!got.body.is_empty(), "the 502 explains itself");
    let head_line = json("\"/down-head\"");
    assert_eq!(head_line["status"], 502);
    assert_eq!(head_line["error"], code);
    assert_eq!(head_line["bytes"], 0, "a HEAD answer has no body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_templates_fill_their_fields_and_mark_held_requests() {
    let b = Backend::start("b").await;
    let dir = temp_dir("access-template");
    let log = dir.join("access.log");
    let gw = Cfg::new()
        .access_log(
            log.to_str().unwrap(),
            "{method} {host}{path} {status} rev={revision} held={wait_ms} err={error}",
        )
        .service(Svc::single(Rev::new("r").cc(1).endpoint(b.addr)))
        .start()
        .await;
    // The first request takes the only slot for 300 ms; the second waits for it.
    let c = h1_client();
    let slow = spawn_get(&c, gw.addr(), "/first?delay=300");
    wait_until("the first request in flight", || b.requests() == 1).await;
    let second = get(&c, gw.addr(), "x", "/second", &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let got = lines(&log, 2).await;
    let held = got
        .iter()
        .find(|l| l.contains("/second"))
        .unwrap_or_else(|| panic!("{got:#?}"));
    let (head, wait) = held.split_once(" held=").unwrap();
    assert_eq!(head, "GET x/second 200 rev=r");
    let (ms, err) = wait.split_once(' ').unwrap();
    assert!(ms.parse::<f64>().unwrap() > 0.0, "held time {ms}");
    assert_eq!(err, "err=-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_held_is_logged_as_499_with_its_wait() {
    let b = Backend::start("b").await;
    let log = temp_dir("access-gone").join("access.log");
    let gw = Cfg::new()
        .access_log(
            log.to_str().unwrap(),
            "{path} {status} {error} held={wait_ms}",
        )
        .service(Svc::single(Rev::new("r").cc(1).endpoint(b.addr)))
        .start()
        .await;
    let c = h1_client();
    let slow = spawn_get(&c, gw.addr(), "/slow?delay=800");
    wait_until("the slow request in flight", || b.requests() == 1).await;
    // A second client waits for the only slot, then gives up.
    let gone = spawn_get(&h1_client(), gw.addr(), "/gone");
    wait_until("the second request held", || {
        gw.proxy().table().revisions()[0].held() == 1
    })
    .await;
    gone.abort();
    let got = lines(&log, 1).await;
    let (head, held) = got[0].split_once(" held=").unwrap();
    assert_eq!(head, "/gone 499 client-closed");
    assert!(held.parse::<f64>().unwrap() > 0.0, "{held}");
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let got = lines(&log, 2).await;
    assert!(got[1].starts_with("/slow 200 - held=-"), "{got:?}");
}

#[test]
fn a_bad_access_log_is_refused_by_key_and_nothing_starts() {
    let yaml = Cfg::single(Rev::new("r").endpoint("127.0.0.1:9"))
        .access_log("stdout", "{method} {latency}")
        .yaml();
    let e = Config::parse(&yaml).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("access_log.format: no field {latency}; the fields are time, client, method"),
        "{msg}"
    );
    // A file that cannot be opened stops the start, named.
    let path = write_config(
        "access-unopenable",
        &Cfg::single(Rev::new("r").endpoint("127.0.0.1:9"))
            .access_log("/nonexistent/dir/access.log", "json")
            .yaml(),
    );
    let out = Command::new(bin())
        .args(["run", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the access log /nonexistent/dir/access.log (`access_log.to`)"),
        "{err}"
    );
}

/// Spans received by an in-process OTLP/HTTP receiver.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

/// A real OTLP/HTTP receiver: decodes each `POST /v1/traces` (protobuf) and keeps its spans.
async fn otlp_receiver() -> (SocketAddr, Received) {
    let got = Received::default();
    let keep = got.clone();
    let addr = serve_each(move |s| {
        let keep = keep.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let keep = keep.clone();
                async move {
                    assert_eq!(req.uri().path(), "/v1/traces");
                    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut k = keep.0.lock().unwrap();
                    for rs in export.resource_spans {
                        for ss in rs.scope_spans {
                            k.extend(ss.spans);
                        }
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    (addr, got)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

fn attr(span: &Span, key: &str) -> String {
    let v = span
        .attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .unwrap_or_else(|| panic!("{} has no {key}", span.name));
    format!("{:?}", v.value.unwrap())
}

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

/// Runs the `rouse` binary with `args` and `env`, its log to a file, until dropped.
fn rouse(args: &[&str], env: &[(&str, String)], log: &std::path::Path) -> Proc {
    Proc(
        Command::new(bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_clients_trace_through_a_cold_start_to_the_backend() {
    let (otlp, received) = otlp_receiver().await;
    let listen = dead_addr().await;
    let cfg = Cfg::new()
        .listen(listen)
        .service(
            Svc::new("svc")
                .host("*")
                .only(Rev::new("r").scale(app_at_zero("r"))),
        )
        .write("trace-cold");
    let log = cfg.with_file_name("rouse.log");
    let _rouse = rouse(
        &["run", cfg.to_str().unwrap()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))],
        &log,
    );
    wait_ready(listen).await;
    let c = h1_client();
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let got = get(
        &c,
        listen,
        "x",
        "/?echo=traceparent,tracestate",
        &[("traceparent", parent.as_str()), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    // The backend (it echoes the headers it got) sees the same trace, under rouse's span.
    let sent = got.header("x-echo-traceparent").to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", CLIENT_TRACE, "01"),
        "{sent}"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "rouse's own span is the backend's parent"
    );
    assert_eq!(got.header("x-echo-tracestate"), "vendor=1");
    wait_until("three spans exported", || received.spans().len() >= 3).await;
    let spans = received.spans();
    let server = named(&spans, "GET");
    let hold = named(&spans, "rouse.hold");
    let up = named(&spans, "rouse.upstream");
    for s in [server, hold, up] {
        assert_eq!(hex(&s.trace_id), CLIENT_TRACE, "{}", s.name);
    }
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(hold.parent_span_id, server.span_id);
    assert_eq!(up.parent_span_id, server.span_id);
    assert_eq!(
        hex(&up.span_id),
        parts[2],
        "the backend's parent is the upstream span"
    );
    assert_eq!(attr(hold, "rouse.cold_start"), "BoolValue(true)");
    assert_eq!(attr(server, "http.response.status_code"), "IntValue(200)");
    assert_eq!(attr(server, "rouse.revision"), "StringValue(\"r\")");
    // The hold ends before the exchange begins; both lie inside the request's span.
    assert!(hold.end_time_unix_nano <= up.start_time_unix_nano);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("tracing: exporting spans over OTLP/HTTP"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes when stdout is a file"
    );
    assert!(server.start_time_unix_nano <= hold.start_time_unix_nano);
    assert!(up.end_time_unix_nano <= server.end_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_endpoint_rouse_cannot_use_is_refused_at_start_by_name() {
    let cfg = Cfg::single(Rev::new("r").endpoint("127.0.0.1:9")).write("trace-bad");
    for (var, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector:4318",
            "rouse sends OTLP over plain http://",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "grpc",
            "rouse exports http/protobuf only",
        ),
    ] {
        let mut cmd = Command::new(bin());
        cmd.args(["run", cfg.to_str().unwrap()]).env(var, value);
        if var != "OTEL_EXPORTER_OTLP_ENDPOINT" {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{var}=\"{value}\": {says}")), "{err}");
    }
}

/// Knative's variables for a sidecar whose app is at `user`, on ports from `free`.
async fn sidecar_env(user: SocketAddr) -> (SocketAddr, Vec<(&'static str, String)>) {
    let serving = dead_addr().await;
    let mut env = vec![
        ("CONTAINER_CONCURRENCY", "0".to_owned()),
        ("QUEUE_SERVING_PORT", serving.port().to_string()),
        ("USER_PORT", user.port().to_string()),
        ("REVISION_TIMEOUT_SECONDS", "30".into()),
        ("SERVING_NAMESPACE", "ns".into()),
        ("SERVING_CONFIGURATION", "c".into()),
        ("SERVING_REVISION", "r".into()),
        ("SERVING_POD", "p".into()),
        ("SERVING_POD_IP", "127.0.0.1".into()),
        ("ROUSE_BIND", "127.0.0.1".into()),
    ];
    for k in ["ROUSE_ADMIN_PORT", "ROUSE_STATS_PORT", "ROUSE_METRICS_PORT"] {
        env.push((k, dead_addr().await.port().to_string()));
    }
    (serving, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_samples_as_knatives_tracing_config_says() {
    let (otlp, received) = otlp_receiver().await;
    let app = Backend::start("app").await;
    let (serving, mut env) = sidecar_env(app.addr).await;
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")));
    // Knative's config-tracing: sample nothing that does not arrive sampled.
    env.push(("TRACING_CONFIG_BACKEND", "zipkin".into()));
    env.push(("TRACING_CONFIG_SAMPLE_RATE", "0".into()));
    let log = temp_dir("sidecar-trace").join("sidecar.log");
    let _sc = rouse(&["sidecar"], &env, &log);
    wait_ready(serving).await;
    let c = h1_client();
    // A fresh trace, not sampled at rate 0: the app still gets a trace context, marked so.
    let fresh = get(&c, serving, "x", "/fresh", &[]).await;
    assert_eq!(fresh.status, StatusCode::OK);
    let tp = app.headers_at("/fresh")["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    // A sampled parent is followed (parent-based), and its spans are exported.
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let sampled = get(
        &c,
        serving,
        "x",
        "/sampled",
        &[("traceparent", parent.as_str())],
    )
    .await;
    assert_eq!(sampled.status, StatusCode::OK);
    wait_until("the sampled request's spans", || {
        received.spans().iter().any(|s| s.name == "rouse.upstream")
    })
    .await;
    let spans = received.spans();
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == CLIENT_TRACE),
        "only the sampled trace is exported"
    );
    assert_eq!(hex(&named(&spans, "GET").parent_span_id), CLIENT_SPAN);
}

#[test]
fn the_sidecar_refuses_a_sample_rate_outside_zero_to_one() {
    let mut cmd = Command::new(bin());
    cmd.arg("sidecar")
        .env("TRACING_CONFIG_SAMPLE_RATE", "2")
        .env("CONTAINER_CONCURRENCY", "0")
        .env("QUEUE_SERVING_PORT", "0")
        .env("USER_PORT", "8080")
        .env("REVISION_TIMEOUT_SECONDS", "30")
        .env("SERVING_NAMESPACE", "ns")
        .env("SERVING_CONFIGURATION", "c")
        .env("SERVING_REVISION", "r")
        .env("SERVING_POD", "p")
        .env("SERVING_POD_IP", "127.0.0.1")
        .env("ROUSE_BIND", "127.0.0.1")
        .env("ROUSE_ADMIN_PORT", "0")
        .env("ROUSE_STATS_PORT", "0")
        .env("ROUSE_METRICS_PORT", "0");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TRACING_CONFIG_SAMPLE_RATE=\"2\": must be a number from 0 to 1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_json_shows_phases_splits_held_requests_and_cold_starts() {
    let b = Backend::start("b").await;
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .split(&[("warm", 90), ("spare", 10)])
                .route(Route::new("/slow").to("warm"))
                .revision(Rev::new("warm").cc(1).endpoint(b.addr))
                .revision(Rev::new("spare").endpoint(b.addr)),
        )
        .service(
            Svc::new("lab")
                .host("lab.test")
                .only(Rev::new("cold").scale(app_at_zero("cold"))),
        )
        .start()
        .await;
    let admin = gw.admin_addr().unwrap();
    let c = h1_client();
    let status = async || -> serde_json::Value {
        let got = get(&c, admin, "admin", "/api/status", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), "application/json");
        serde_json::from_str(&got.body).unwrap()
    };
    let rev = |doc: &serde_json::Value, name: &str| -> serde_json::Value {
        doc["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no revision {name} in {doc}"))
    };
    let doc = status().await;
    assert_eq!(doc["rouse"]["role"], "gateway");
    assert_eq!(doc["rouse"]["ready"], true);
    assert_eq!(rev(&doc, "cold")["phase"], "cold");
    assert_eq!(rev(&doc, "warm")["phase"], "warm");
    assert_eq!(rev(&doc, "warm")["container_concurrency"], 1);
    let shop = &doc["services"][0];
    assert_eq!(shop["hosts"][0], "shop.test");
    assert_eq!(shop["routes"][0]["path"], "/slow");
    let arms = &shop["default"]["arms"];
    assert_eq!(
        (&arms[0]["revision"], &arms[0]["percent"]),
        (&"warm".into(), &90.into())
    );
    assert_eq!(
        (&arms[1]["revision"], &arms[1]["percent"]),
        (&"spare".into(), &10.into())
    );
    // One slow request fills the warm revision; a second is held behind it.
    let shop_get = |path: &'static str| {
        let addr = gw.addr();
        tokio::spawn(async move { get(&h1_client(), addr, "shop.test", path, &[]).await })
    };
    // Under the default `queue.target_wait` (1 s), so the held one is not shed.
    let slow = shop_get("/slow/1?delay=500");
    wait_until("the slow request in flight", || b.requests() == 1).await;
    let second = shop_get("/slow/2");
    let mut held = None;
    for _ in 0..500 {
        let w = rev(&status().await, "warm");
        if w["held"] == 1 {
            held = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w = held.expect("a held request shows up");
    assert_eq!(w["in_flight"], 1);
    assert_eq!(w["endpoints"][0]["address"], b.addr.to_string());
    assert_eq!(w["endpoints"][0]["in_flight"], 1);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(second.await.unwrap().status, StatusCode::OK);
    // A cold start shows in the list with its duration, and its revision turns warm.
    let cold = get(&c, gw.addr(), "lab.test", "/", &[]).await;
    assert_eq!(cold.status, StatusCode::OK);
    let doc = status().await;
    let starts = doc["cold_starts"].as_array().unwrap();
    assert_eq!(starts.len(), 1, "{doc}");
    assert_eq!(starts[0]["revision"], "cold");
    assert!(starts[0]["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(rev(&doc, "cold")["phase"], "warm");
    assert_eq!(rev(&doc, "cold")["requests"]["2xx"], 1);
    assert_eq!(rev(&doc, "warm")["requests"]["2xx"], 2);
}

/// The metric names a PromQL text uses (`rouse_...`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("rouse_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// Every `expr` (panels, targets, template variables' queries) in a Grafana dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    (_, v) => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_uses_is_exported_and_documented() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/rouse-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let mut used: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 10, "the dashboard uses few metrics: {used:?}");
    // A gateway with a scaled revision, a static one and a request, so every family exists.
    let b = Backend::start("b").await;
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("s")
                .host("s.test")
                .only(Rev::new("r").endpoint(b.addr)),
        )
        .service(
            Svc::new("z")
                .host("z.test")
                .only(Rev::new("p").scale(app_at_zero("p"))),
        )
        .start()
        .await;
    let c = h1_client();
    assert_eq!(
        get(&c, gw.addr(), "s.test", "/", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, gw.addr(), "z.test", "/", &[]).await.status,
        StatusCode::OK
    );
    let text = metrics(&gw).await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    for m in &used {
        assert!(
            exported.contains(m.as_str()),
            "the dashboard uses {m}, which /metrics does not export"
        );
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m);
        assert!(
            docs.contains(&format!("`{family}")),
            "docs/metrics.md does not describe {family}"
        );
    }
}

/// `rouse_request_duration_seconds` records each request once, from arrival to the end of the
/// body, in the documented buckets: three requests of at least 1.1 s and one quick one (the
/// buckets are far apart, so a loaded machine does not move a request across).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duration_histogram_counts_each_request_in_its_bucket() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .admin()
        .start()
        .await;
    let c = h1_client();
    for path in ["/?delay=1100", "/?delay=1100", "/?delay=1100", "/"] {
        assert_eq!(
            get(&c, gw.addr(), "x", path, &[]).await.status,
            http::StatusCode::OK
        );
    }
    let text = metrics(&gw).await;
    let series = |suffix: &str| metric(&text, &format!("rouse_request_duration_seconds{suffix}"));
    let labels = "service=\"s\",revision=\"r\"";
    assert_eq!(series(&format!("_count{{{labels}}}")), 4.0, "{text}");
    // The three slow ones are above 1.024 s; the quick one below it.
    // (prometheus-client writes `le` first.)
    let bucket = |le: &str| series(&format!("_bucket{{le=\"{le}\",{labels}}}"));
    assert_eq!(bucket("1.024"), 1.0, "{text}");
    assert_eq!(bucket("8.192"), 4.0, "{text}");
    assert_eq!(bucket("+Inf"), 4.0, "{text}");
    let sum = series(&format!("_sum{{{labels}}}"));
    assert!((3.3..30.0).contains(&sum), "{sum}");
}
