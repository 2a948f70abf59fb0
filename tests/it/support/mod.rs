//! Test fixtures: a typed config builder, counting backends, HTTP clients and a subprocess
//! runner for the real binary. Everything binds loopback. The gateways and backends tests
//! start listen on ports below the kernel's ephemeral range ([`dead_addr`]), away from the
//! ports rouse picks in that range for its process backends; clients and [`refusing_addr`]
//! take ephemeral ones.
//!
//! The library items the suites use are imported here, and only here, and re-exported.

#![allow(dead_code)]

mod config;

pub use config::*;
pub use rouse::config::Config;
use rouse::config::{Protocol, Ready};
pub use rouse::http::tls::provider as tls_provider;
pub use rouse::knative::drain::Phase;
pub use rouse::knative::env::SidecarArgs;
pub use rouse::knative::stat::Stat;
pub use rouse::probe::{HealthCheckRequest, HealthCheckResponse, SERVING, grpc_frame};
pub use rouse::roles::gateway::Gateway;
pub use rouse::roles::sidecar::Sidecar;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// What a backend has seen.
#[derive(Default, Debug)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub connections: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    pub last_version: Mutex<Option<Version>>,
    pub last_uri: Mutex<Option<String>>,
    /// Last headers seen per request path (without the query).
    pub headers_by_path: Mutex<std::collections::HashMap<String, HeaderMap>>,
}

/// A backend on loopback that counts what it sees. Its behaviour per request comes from the
/// query string: `delay` (ms before headers), `status`, `size` (bytes of body, streamed in
/// 64 KiB chunks), `body_delay` (ms between headers and body), `count` (reply with the number
/// of request body bytes read).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(uri: &http::Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

struct InFlight(Arc<Seen>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn backend_handle(
    name: Arc<str>,
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let guard = InFlight(seen.clone());
    *seen.last_headers.lock().unwrap() = Some(req.headers().clone());
    seen.headers_by_path
        .lock()
        .unwrap()
        .insert(req.uri().path().to_owned(), req.headers().clone());
    *seen.last_version.lock().unwrap() = Some(req.version());
    *seen.last_uri.lock().unwrap() = Some(req.uri().to_string());
    let uri = req.uri().clone();
    if let Some(ms) = query(&uri, "delay") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = query(&uri, "status").unwrap_or(200) as u16;
    let mut builder = Response::builder()
        .status(status)
        .header("x-backend", &*name);
    let body: Body = if query(&uri, "trailers").is_some() {
        // A chunked body followed by a trailer field, announced in `Trailer` as HTTP/1.1
        // requires.
        builder = builder.header("trailer", "x-checksum");
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"with trailers")).await;
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "abc123".parse().unwrap());
            let _ = tx.send_trailers(t).await;
            drop(guard);
        });
        body.boxed()
    } else if query(&uri, "count").is_some() {
        let mut n = 0usize;
        let mut b = req.into_body();
        while let Some(f) = b.frame().await {
            if let Ok(d) = f.map(|f| f.into_data()) {
                n += d.map(|d| d.len()).unwrap_or(0);
            } else {
                break;
            }
        }
        drop(guard);
        Full::new(Bytes::from(n.to_string())).boxed()
    } else if let Some(size) = query(&uri, "size") {
        builder = builder.header("content-length", size);
        stream_body(size, query(&uri, "body_delay").unwrap_or(0), guard)
    } else {
        let delay = query(&uri, "body_delay").unwrap_or(0);
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
        let name = name.to_string();
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let _ = tx.send_data(Bytes::from(name)).await;
            drop(guard);
        });
        body.boxed()
    };
    Ok(builder.body(body).unwrap())
}

fn stream_body(size: u64, body_delay: u64, guard: InFlight) -> Body {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
    tokio::spawn(async move {
        if body_delay > 0 {
            tokio::time::sleep(Duration::from_millis(body_delay)).await;
        }
        let chunk = Bytes::from(vec![b'x'; 64 << 10]);
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if tx.send_data(chunk.slice(..n)).await.is_err() {
                break;
            }
            left -= n as u64;
        }
        drop(guard);
    });
    body.boxed()
}

impl Backend {
    /// Starts a backend named `name` (its name is its default response body).
    pub async fn start(name: &str) -> Backend {
        // Not a port-0 pick: the kernel could give it a port that rouse has just picked for a
        // backend process another test starts, and then answer that process's readiness
        // checks in its place.
        // The port was free when picked and may be taken before it is bound again: then
        // another is picked.
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(dead_addr().await).await {
                return Backend::serve(name, listener);
            }
        }
        panic!("no free port for a backend after 100 tries");
    }

    /// Starts a backend on a given address (one that something else was told to use).
    pub async fn start_on(name: &str, at: SocketAddr) -> Backend {
        let listener = TcpListener::bind(at)
            .await
            .unwrap_or_else(|e| panic!("a backend cannot listen on {at}: {e}"));
        Backend::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let name: Arc<str> = name.into();
        let (s, n) = (seen.clone(), name.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Its head and body go out as separate writes: without this, Nagle holds the
                // body until rouse's delayed ACK, 40 ms per request.
                let _ = stream.set_nodelay(true);
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (s, n) = (s.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        backend_handle(n.clone(), s.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            seen,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.seen.max_in_flight.load(Ordering::SeqCst)
    }

    /// The headers of the last request to `path`.
    pub fn headers_at(&self, path: &str) -> HeaderMap {
        self.seen
            .headers_by_path
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .last_headers
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
    }
}

/// Listens on a free loopback port and runs `each` on every connection accepted, each on its
/// own task; returns the address.
pub async fn serve_each<F, Fut>(each: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind(dead_addr().await).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(each(s));
        }
    });
    addr
}

/// Starts a GET of `path` on `addr` (Host `x`) on a task of its own, for a request to run
/// while the test does something else.
pub fn spawn_get(
    c: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> tokio::task::JoinHandle<Got> {
    let (c, path) = (c.clone(), path.to_owned());
    tokio::spawn(async move { get(&c, addr, "x", &path, &[]).await })
}

/// A port on which nothing listens yet, for a listener a test starts itself. It comes from
/// 20000-32767, below the range the kernel hands out for port 0, so nothing else the tests
/// run in parallel (a backend process rouse starts on a port-0 pick, a client's socket) can
/// be given it between this call and the test's bind.
pub async fn dead_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr = SocketAddr::from(([127, 0, 0, 1], 20000 + n % 12000));
        if TcpListener::bind(addr).await.is_ok() {
            return addr;
        }
    }
}

/// An endpoint that refuses every connection: a port bound but never listening, and kept for
/// the life of the test process, so that no other test's listener can be given it meanwhile
/// (a port merely free, as [`dead_addr`] returns for a test to listen on, would then answer).
pub fn refusing_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    Box::leak(Box::new(socket));
    addr
}

/// An HTTP/1.1 pooled client.
pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A raw h2c connection to `addr`, for requests whose `:authority` differs from the address.
pub async fn h2_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Collects a response from a low-level connection.
pub async fn collect(res: Response<Incoming>) -> Got {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body completes").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

/// A finished response: status, headers and whole body.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub version: Version,
}

impl Got {
    pub fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// GET `path` on `addr` with Host `host` and extra headers.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut b = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// `HEAD path` to `addr` with `Host: host`.
pub async fn head(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Got {
    let req = Request::head(format!("http://{addr}{path}")).header("host", host);
    send(client, req.body(Full::new(Bytes::new())).unwrap()).await
}

/// Sends a request and collects the response.
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Got {
    collect(client.request(req).await.expect("request completes")).await
}

/// Starts `GET /?size=N` against `addr` and returns the response with its body unread.
pub async fn download(addr: SocketAddr, size: u64) -> Response<Incoming> {
    h1_client()
        .request(
            Request::get(format!("http://{addr}/?size={size}"))
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// Reads a body to its end, counting bytes as they arrive and keeping none.
pub async fn count_body(body: &mut Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        n += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    n
}

/// Streams `mib` MiB to the backend's `?count=1` through `addr` (chunked, never held whole)
/// and returns the byte count the backend answers.
pub async fn upload(addr: SocketAddr, mib: usize) -> String {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 1 << 20]);
        for _ in 0..mib {
            if tx.send_data(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Channel<Bytes, Infallible>>();
    let res = client
        .request(
            Request::post(format!("http://{addr}/?count=1"))
                .header("host", "x")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    collect(res).await.body
}

/// Fetches the admin `/metrics` text.
pub async fn metrics(gw: &Gateway) -> String {
    let c = h1_client();
    get(&c, gw.admin_addr().unwrap(), "admin", "/metrics", &[])
        .await
        .body
}

/// Value of the metric line starting with `prefix` (name plus labels). A series that is not
/// exported fails the test: a check that it is 0 must not pass because its name or labels
/// changed.
pub fn metric(text: &str, prefix: &str) -> f64 {
    series(text, prefix).unwrap_or_else(|| panic!("no series {prefix} in:\n{text}"))
}

/// The value of a series, if it is exported.
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The metrics text once the series `prefix` has reached `value` (checked every 20 ms, for up
/// to 5 s); fails naming the series otherwise.
pub async fn wait_for_metric(gw: &Gateway, prefix: &str, value: f64) -> String {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(gw).await;
        // A series appears when it is first counted.
        if series(&m, prefix).is_some_and(|v| v >= value) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{prefix} stayed below {value}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (checking every 10 ms, for up to 5 s) until `cond` holds; fails naming `what`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still waiting for {what} after 5 s");
}

/// Waits (checking every 10 ms, for up to 5 s) until the series `prefix` on `gw` reads
/// `value`; fails naming it otherwise.
pub async fn wait_for_gauge(gw: &Gateway, prefix: &str, value: f64) {
    for _ in 0..500 {
        if series(&metrics(gw).await, prefix) == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{prefix} never read {value}: {}", metrics(gw).await);
}

/// Reads from `s` into `buf` until a whole request head is in it; returns the head's length
/// (what came after it stays in `buf`), or `None` if the peer closed (or failed) first.
pub async fn head_in(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Reads from `s` until a whole request head has arrived; returns it.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let whole = head_in(s, &mut head).await;
    assert!(whole.is_some(), "closed before a whole head: {head:?}");
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads one response with a `content-length` body from `s` (at most 10 s: a test that
/// waits for an answer that never comes fails instead of hanging).
pub async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no whole response within 10 s: {text}"))
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

/// Writes `bytes` on `s` and reads until the peer closes (at most 10 s: a test waiting for a
/// close that never comes fails instead of hanging); what was read, as text.
pub async fn send_to_end(s: &mut tokio::net::TcpStream, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not closed within 10 s after: {}",
                String::from_utf8_lossy(&out)
            )
        })
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes raw bytes to `addr` and reads until the peer closes or 2 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The folder of this test process's temp dirs: `rouse-it-PID` in the system's temp dir.
///
/// The test harness has no hook at exit, so a run cannot remove its own files; instead the
/// first call removes those of test processes that have ended, and at most one finished run's
/// files stay behind. A process that is PID 1 (in a PID namespace of its own, where other
/// processes' PIDs are not visible) removes nothing.
fn temp_root() -> &'static std::path::Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir();
        let me = std::process::id();
        if me != 1
            && let Ok(entries) = std::fs::read_dir(&base)
        {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("rouse-it-") else {
                    continue;
                };
                // `rouse-it-PID` now; `rouse-it-NAME-PID-RANDOM` before.
                let pid = rest
                    .parse::<u32>()
                    .ok()
                    .or_else(|| rest.rsplit('-').nth(1).and_then(|p| p.parse().ok()));
                if let Some(pid) = pid
                    && pid != me
                    && pid != 1
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = base.join(format!("rouse-it-{me}"));
        std::fs::create_dir_all(&root).unwrap();
        root
    })
}

/// A fresh, empty temp dir whose name starts with `name`, under [`temp_root`].
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = temp_root().join(format!("{name}-{}", fastrand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a config file into a fresh temp dir and returns its path.
pub fn write_config(name: &str, yaml: &str) -> std::path::PathBuf {
    let p = temp_dir(name).join("config.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// Path of the built `rouse` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rouse")
}

/// Runs `rouse gateway --config <config>` with its output discarded.
pub fn run_binary(config: &std::path::Path) -> Proc {
    run_binary_with(&[], config)
}

/// Runs `rouse <options> gateway --config <config>` with its output discarded; `options` are
/// the process-wide ones (`--workers`, `--work-stealing`), which the environment does not add
/// to.
pub fn run_binary_with(options: &[&str], config: &std::path::Path) -> Proc {
    Proc(
        std::process::Command::new(bin())
            .args(options)
            .args(["gateway", "--config"])
            .arg(config)
            .env_remove("ROUSE_WORKERS")
            .env_remove("ROUSE_WORK_STEALING")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The test app run as a process (see its header for what it does).
pub const BACKEND_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/backend.py");

/// The test app as revision `rev`'s process: `REVISION=rev`, ready once `GET /` answers.
pub fn app_process(rev: &str) -> Process {
    Process::new(&["python3", BACKEND_PY])
        .env("REVISION", rev)
        .ready_http_get("/")
}

/// [`app_process`] scaled from zero.
pub fn app_at_zero(rev: &str) -> Scale {
    Scale::new(app_process(rev)).min(0)
}

/// Where the two-port backend example (REST on `PORT`, gRPC on `GRPC_PORT`) is built: next
/// to this test binary.
pub fn two_port_backend_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples/two_port_backend")
}

/// The two-port backend example, which `cargo test` builds (a run of one test target does not).
pub fn two_port_backend() -> String {
    let path = two_port_backend_path();
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it; a run of one test target does not (`cargo build --example two_port_backend`)",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

/// What a unary gRPC call answered.
#[derive(Debug)]
pub struct GrpcReply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response's headers.
    pub headers: http::HeaderMap,
    /// The `grpc-status` trailer ("" without one).
    pub grpc_status: String,
    /// The first message, as text.
    pub reply: String,
}

/// One unary gRPC call with message `msg` to `addr` over h2c, as `authority`, of the
/// two-port example's method.
pub async fn grpc_call(addr: SocketAddr, authority: &str, msg: &str) -> GrpcReply {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut framed = bytes::BytesMut::new();
    bytes::BufMut::put_u8(&mut framed, 0);
    bytes::BufMut::put_u32(&mut framed, u32::try_from(msg.len()).unwrap());
    framed.extend_from_slice(msg.as_bytes());
    let req = http::Request::post(format!(
        "http://{authority}/inference.GRPCInferenceService/ModelReady"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(framed.freeze()))
    .unwrap();
    // Hang guards: a test whose call is never answered fails instead.
    let res = tokio::time::timeout(Duration::from_secs(60), send.send_request(req))
        .await
        .expect("a gRPC answer within 60 s")
        .unwrap();
    let (parts, body) = res.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(60), body.collect())
        .await
        .expect("the gRPC answer's end within 60 s")
        .unwrap();
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = collected.to_bytes();
    GrpcReply {
        status: parts.status,
        headers: parts.headers,
        grpc_status,
        reply: String::from_utf8_lossy(body.get(5..).unwrap_or_default()).into_owned(),
    }
}

/// Whether process `pid` still exists.
pub fn pid_alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A backend that answers one request per connection with keep-alive framing and then closes
/// the socket shortly after, as an application with a short keep-alive timeout does. Returns
/// its address and a count of connections accepted.
pub async fn closing_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conns = Arc::new(AtomicUsize::new(0));
    let cn = conns.clone();
    let addr = serve_each(move |mut s| {
        cn.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    (addr, conns)
}

/// Sends five requests 150 ms apart through `proxy` to a [`closing_backend`] at `backend`:
/// each finds its pooled connection closed and must go out on a new one, unseen by the client.
pub async fn stale_connections_are_retried(proxy: SocketAddr, conns: &AtomicUsize) {
    let c = h1_client();
    for _ in 0..5 {
        let got = get(&c, proxy, "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert_eq!(got.body, "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 5);
}

/// A child process killed and reaped when the test ends, passed or failed.
pub struct Proc(pub std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` (like `-TERM`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Waits (up to 5 s) until something accepts connections on `addr`.
pub async fn wait_ready(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing started listening on {addr}");
}
