//! The worker threads of the `rouse` process (`--workers`, `--work-stealing`): client
//! connections spread over them, each worker with its own upstream connections, and the
//! command line's bad values refused.

use crate::support::*;
use http::StatusCode;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `rouse_worker_connections` per worker, in worker order, from a metrics page.
fn per_worker_in(text: &str) -> Vec<u64> {
    let mut got: Vec<(usize, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("rouse_worker_connections{worker=\""))
        .map(|l| {
            let (i, v) = l.split_once("\"} ").unwrap();
            (i.parse().unwrap(), v.trim().parse().unwrap())
        })
        .collect();
    got.sort();
    got.into_iter().map(|(_, v)| v).collect()
}

/// [`per_worker_in`] the admin listener's metrics, over a connection of its own.
async fn per_worker(admin: std::net::SocketAddr) -> Vec<u64> {
    let text = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    per_worker_in(&text)
}

/// One kept-alive connection to the admin listener that reads the per-worker gauge, itself
/// counted on worker 0 alone. A connection of its own for each reading would be counted on
/// whichever worker it landed, and still for a moment after its answer, while the test's next
/// connections are placed by the fewest open.
struct Scrape(TcpStream);

impl Scrape {
    /// Connected again until its connection is the only one open and is on worker 0: the
    /// readiness checks' connections may still be counted when it first connects.
    async fn on_first_worker(admin: std::net::SocketAddr) -> Scrape {
        let mut open = Vec::new();
        for _ in 0..20 {
            let mut s = Scrape(TcpStream::connect(admin).await.unwrap());
            open = s.open_in_all(1).await;
            if open.first() == Some(&1) {
                return s;
            }
        }
        panic!("the scrape's connection never had worker 0 to itself: {open:?}");
    }

    async fn per_worker(&mut self) -> Vec<u64> {
        self.0
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        per_worker_in(&read_response(&mut self.0).await)
    }

    /// Read again (for up to 5 s) until the workers hold `total` connections in all, this
    /// one included; the last reading.
    async fn open_in_all(&mut self, total: u64) -> Vec<u64> {
        let mut open = Vec::new();
        for _ in 0..200 {
            open = self.per_worker().await;
            if open.iter().sum::<u64>() == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        open
    }
}

/// The names of a process's threads.
fn threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// A backend that numbers its connections from 1 and answers each request with its
/// connection's number; `GET /slow` answers after 300 ms. Returns its address, the count of
/// connections accepted and of requests being answered now.
async fn numbering_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let (c, b) = (conns.clone(), busy.clone());
    let addr = serve_each(move |mut s| {
        let number = c.fetch_add(1, Ordering::SeqCst) + 1;
        let busy = b.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(end) = head_in(&mut s, &mut buf).await {
                let slow = buf.starts_with(b"GET /slow ");
                buf.drain(..end);
                busy.fetch_add(1, Ordering::SeqCst);
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let body = number.to_string();
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let sent = s.write_all(res.as_bytes()).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                if sent.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, conns, busy)
}

/// Sends `GET path` on `s` (kept alive); the backend connection's number it was answered on.
async fn ask(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let res = read_response(s).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    res.rsplit("\r\n\r\n").next().unwrap().to_owned()
}

/// With `--workers 3` the process runs three worker threads (and one that accepts for them),
/// and client connections opened one after another are spread one to a worker. An idle upstream connection is found on any
/// worker before a new one is opened (a backend that serves one connection at a time keeps
/// being served); once each worker has one of its own, each uses its own. Closed client
/// connections are counted off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_workers_and_each_keeps_its_own_upstream_connections() {
    let (backend, upstream, busy) = numbering_backend().await;
    let (listen, admin) = (dead_addr().await, dead_addr().await);
    let cfg = Cfg::new()
        .listen(listen)
        .admin_at(admin)
        .service(Svc::single(Rev::new("r").endpoint(backend)))
        .write("workers");
    let p = run_binary_with(&["--workers", "3"], &cfg);
    wait_ready(listen).await;
    wait_ready(admin).await;
    let names = threads(p.0.id());
    let workers: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("rouse-worker"))
        .collect();
    assert_eq!(
        workers,
        ["rouse-worker-0", "rouse-worker-1", "rouse-worker-2"],
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "rouse-accept"), "{names:?}");
    // The readiness checks' connections are gone before the test's own are made, and the
    // scrape's is on worker 0: the three go to workers 1 and 2, then to worker 0, the first
    // of three with one each.
    let mut scrape = Scrape::on_first_worker(admin).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(TcpStream::connect(listen).await.unwrap());
    }
    // One request at a time, each client connection on a worker of its own: the one upstream
    // connection opened for the first is idle when the others come, and they take it.
    for c in &mut conns {
        assert_eq!(ask(c, "/").await, "1");
    }
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        1,
        "the idle connection was reused"
    );
    // Three at once: each worker opens one more, or takes the idle one first.
    let mut slow = Vec::new();
    for (i, mut c) in conns.drain(..).enumerate() {
        slow.push(tokio::spawn(async move {
            let n = ask(&mut c, "/slow").await;
            (c, n)
        }));
        // Each has reached the backend before the next starts, so which connection each
        // takes does not depend on timing.
        for _ in 0..400 {
            if busy.load(Ordering::SeqCst) == i + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(busy.load(Ordering::SeqCst), i + 1);
    }
    let mut answered = Vec::new();
    for t in slow {
        let (c, n) = t.await.unwrap();
        conns.push(c);
        answered.push(n);
    }
    assert_eq!(answered, ["1", "2", "3"]);
    assert_eq!(upstream.load(Ordering::SeqCst), 3);
    // Now each worker has an idle connection of its own, and uses it: one shared stack of
    // idle connections would give all three the one returned last.
    for _ in 0..3 {
        let mut got = Vec::new();
        for c in &mut conns {
            got.push(ask(c, "/").await);
        }
        assert_eq!(got, ["1", "2", "3"]);
    }
    assert_eq!(upstream.load(Ordering::SeqCst), 3);
    // Three, one on each worker, and the scrape's own.
    let open = scrape.open_in_all(4).await;
    assert_eq!(open.len(), 3, "{open:?}");
    assert_eq!(open.iter().sum::<u64>(), 4, "{open:?}");
    assert!(open.iter().all(|&n| n >= 1), "{open:?}");
    drop(conns);
    let open = scrape.open_in_all(1).await;
    assert_eq!(
        open.iter().sum::<u64>(),
        1,
        "closed connections are counted off: {open:?}"
    );
}

/// `--work-stealing` serves on tokio's shared scheduler (no worker threads, no per-worker
/// gauge); `--workers` must be a count from 1, and the two do not go together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_serves_and_bad_worker_counts_are_refused() {
    let b = Backend::start("b").await;
    let (listen, admin) = (dead_addr().await, dead_addr().await);
    let cfg = Cfg::new()
        .listen(listen)
        .admin_at(admin)
        .service(Svc::single(Rev::new("r").endpoint(b.addr)))
        .write("work-stealing");
    let c = cfg.to_str().unwrap();
    let refused = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .args(["validate", c])
            .env_remove("ROUSE_WORKERS");
        if let Some(v) = env {
            cmd.env("ROUSE_WORKERS", v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = refused(&["--workers", "0"], None);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--workers") && err.contains("0 is not in 1..=1024"),
        "{err}"
    );
    let (code, err) = refused(&[], Some("many"));
    assert_eq!(code, Some(2));
    assert!(err.contains("--workers") && err.contains("many"), "{err}");
    let (code, err) = refused(&["--workers", "2", "--work-stealing"], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot be used with"), "{err}");
    // A good count passes through to the subcommand.
    let (code, err) = refused(&["--workers", "2"], None);
    assert_eq!(code, Some(0), "{err}");

    let p = run_binary_with(&["--work-stealing"], &cfg);
    wait_ready(listen).await;
    wait_ready(admin).await;
    let got = get(&h1_client(), listen, "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "b");
    assert!(
        !threads(p.0.id())
            .iter()
            .any(|n| n.starts_with("rouse-worker") || n == "rouse-accept"),
        "{:?}",
        threads(p.0.id())
    );
    assert_eq!(per_worker(admin).await, Vec::<u64>::new());
}
