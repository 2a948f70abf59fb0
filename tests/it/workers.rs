//! The worker threads of the `rouse` process (`--workers`, `--work-stealing`): client
//! connections spread over them, each worker with its own upstream connections, and the
//! command line's bad values refused.

use crate::support::*;
use http::StatusCode;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `rouse_worker_connections` per worker, in worker order, from the admin listener.
async fn per_worker(admin: std::net::SocketAddr) -> Vec<u64> {
    let text = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
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

/// One keep-alive request on a new connection, which stays open.
async fn kept(listen: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(listen).await.unwrap();
    // One byte of body, with its length.
    s.write_all(b"GET /?size=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(
        res.starts_with("HTTP/1.1 200") && res.ends_with("\r\n\r\nx"),
        "{res}"
    );
    s
}

/// With `--workers 3` the process runs three worker threads; six client connections opened
/// one after another are spread two to a worker, and each worker opens an upstream connection
/// of its own and reuses it (three upstream connections for six requests, none at once);
/// closed, they are counted off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_workers_and_each_keeps_its_own_upstream_connections() {
    let b = Backend::start("b").await;
    let (listen, admin) = (dead_addr().await, dead_addr().await);
    let cfg = Cfg::new()
        .listen(listen)
        .admin_at(admin)
        .service(Svc::single(Rev::new("r").endpoint(b.addr)))
        .write("workers");
    let p = Proc(
        Command::new(bin())
            .args(["--workers", "3", "gateway"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
    // The readiness checks' connections are gone before the test's own are counted: only
    // the scrape's own connection is open then.
    let mut open = Vec::new();
    for _ in 0..200 {
        open = per_worker(admin).await;
        if open.iter().sum::<u64>() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(open.iter().sum::<u64>(), 1, "{open:?}");
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(kept(listen).await);
    }
    assert_eq!(b.seen.requests.load(Ordering::SeqCst), 6);
    assert_eq!(
        b.seen.connections.load(Ordering::SeqCst),
        3,
        "one upstream connection per worker, reused by its next request"
    );
    // Six, two on each worker, and the scrape's own.
    for _ in 0..200 {
        open = per_worker(admin).await;
        if open.iter().sum::<u64>() == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(open.len(), 3, "{open:?}");
    assert_eq!(open.iter().sum::<u64>(), 7, "{open:?}");
    assert!(open.iter().all(|&n| n >= 2), "{open:?}");
    drop(conns);
    for _ in 0..200 {
        open = per_worker(admin).await;
        if open.iter().sum::<u64>() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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

    let p = Proc(
        Command::new(bin())
            .args(["--work-stealing", "gateway", c])
            .env_remove("ROUSE_WORKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(listen).await;
    wait_ready(admin).await;
    let got = get(&h1_client(), listen, "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "b");
    assert!(
        !threads(p.0.id())
            .iter()
            .any(|n| n.starts_with("rouse-worker")),
        "{:?}",
        threads(p.0.id())
    );
    assert_eq!(per_worker(admin).await, Vec::<u64>::new());
}
