//! Scale from zero and back, with real backend processes (tests/it/support/backend.py): cold
//! starts that hold requests until a process is ready, the queue's bounds while it boots,
//! scaling up under load and down to zero when idle, a placeholder answer, and processes that
//! fail to boot, miss their deadline or crash.

use crate::support::*;
use http::StatusCode;
use std::collections::HashSet;
use std::time::Duration;

/// backend.py as revision `r`'s process, with `env` added: ready once `GET /` answers, given
/// 2 s to stop.
fn backend(env: &[(&str, &str)]) -> Process {
    env.iter()
        .fold(app_process("r").stop_grace("2s"), |p, (k, v)| p.env(k, v))
}

/// `clients` clients sending GET `path` to `addr` one after another for `time`; every answer
/// must be 200 and pass `check`. Returns the backend pids that answered.
async fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    time: Duration,
    path: &'static str,
    check: fn(&Got),
) -> HashSet<String> {
    let c = h1_client();
    let until = tokio::time::Instant::now() + time;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut pids = HashSet::new();
                while tokio::time::Instant::now() < until {
                    let got = get(&c, addr, "x", path, &[]).await;
                    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
                    check(&got);
                    pids.insert(got.header("x-pid").to_owned());
                }
                pids
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for t in tasks {
        pids.extend(t.await.unwrap());
    }
    pids
}

/// A gateway (with admin) whose service `svc`, on any host, sends everything to `rev` (named
/// `r`), scaled from zero by `scale`.
async fn scaled(rev: Rev, scale: Scale) -> Gateway {
    Cfg::new()
        .admin()
        .service(Svc::new("svc").host("*").only(rev.scale(scale.min(0))))
        .start()
        .await
}

/// The held-requests gauge of revision `r` of service `svc`.
const HELD: &str = "rouse_revision_held_requests{service=\"svc\",revision=\"r\"}";

async fn gauge(gw: &Gateway, name: &str) -> f64 {
    metric(
        &metrics(gw).await,
        &format!("{name}{{service=\"svc\",revision=\"r\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_wake_a_cold_revision_and_all_succeed() {
    let gw = scaled(
        Rev::new("r").cc(5),
        Scale::new(backend(&[("BOOT_DELAY_MS", "300")])).max(2),
    )
    .await;
    assert_eq!(
        gauge(&gw, "rouse_revision_endpoints").await,
        0.0,
        "starts cold"
    );
    let c = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, addr) = (c.clone(), gw.addr());
        tasks.push(tokio::spawn(async move {
            get(&c, addr, "x", "/?delay=50", &[]).await
        }));
    }
    let mut pids = HashSet::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert_eq!(got.header("rouse-cold-start"), "true");
        let high: u32 = got.header("x-max-in-flight").parse().unwrap();
        assert!(
            high <= 5,
            "backend saw {high} at once, container_concurrency is 5"
        );
        pids.insert(got.header("x-pid").to_owned());
    }
    assert!(!pids.is_empty() && pids.len() <= 2, "pids {pids:?}");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_cold_start_seconds_count{service=\"svc\",revision=\"r\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "rouse_scale_events_total{service=\"svc\",revision=\"r\",direction=\"up\"}"
        ) >= 1.0
    );
    // Warm now: no cold-start header.
    let warm = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(warm.status, StatusCode::OK);
    assert_eq!(warm.header("rouse-cold-start"), "");
    gw.shutdown().await;
    for p in &pids {
        assert!(!pid_alive(p), "backend {p} still running after shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_by_count_and_bytes_is_refused_at_once() {
    let gw = scaled(
        Rev::new("r").queue(Queue::new().max_requests(3).max_bytes(100)),
        Scale::new(backend(&[("BOOT_DELAY_MS", "1500")])),
    )
    .await;
    let c = h1_client();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(spawn_get(&c, gw.addr(), "/"));
    }
    wait_for_gauge(&gw, HELD, 3.0).await;
    let over = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(over.header("rouse-error"), "queue-full");
    assert_eq!(over.header("retry-after"), "1");
    // Refused at once: it never entered the queue, whose wait histogram counts every request
    // that left it (none has yet).
    assert_eq!(
        metric(
            &metrics(&gw).await,
            "rouse_queue_wait_seconds_count{service=\"svc\",revision=\"r\"}"
        ),
        0.0
    );
    for t in held {
        assert_eq!(
            t.await.unwrap().status,
            StatusCode::OK,
            "held requests are served"
        );
    }
    // Bytes: a fresh gateway, cold again, whose queue takes 100 declared body bytes.
    gw.shutdown().await;

    let gw = scaled(
        Rev::new("r").queue(Queue::new().max_bytes(100)),
        Scale::new(backend(&[("BOOT_DELAY_MS", "1500")])),
    )
    .await;
    // A client of its own: the new gateway may have the old one's port, and a connection the
    // old one left in the shared client's pool must not carry these requests.
    let c = h1_client();
    let post = |n: usize| {
        let c = c.clone();
        let addr = gw.addr();
        async move {
            send(
                &c,
                http::Request::post(format!("http://{addr}/"))
                    .header("host", "x")
                    .body(http_body_util::Full::new(bytes::Bytes::from(vec![b'z'; n])))
                    .unwrap(),
            )
            .await
        }
    };
    let first = tokio::spawn(post(80));
    wait_for_gauge(&gw, HELD, 1.0).await;
    let second = post(80).await;
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.header("rouse-error"), "queue-bytes");
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_rejected_requests_total{service=\"svc\",revision=\"r\",reason=\"queue_bytes\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_expiry_and_client_disconnect_free_the_queue() {
    let gw = scaled(
        Rev::new("r").queue(Queue::new().max_requests(1).max_wait("400ms")),
        Scale::new(backend(&[("BOOT_DELAY_MS", "2500")])),
    )
    .await;
    let c = h1_client();
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.header("rouse-error"), "queue-timeout");
    assert_eq!(got.header("retry-after"), "1");
    assert!(got.body.contains("had no free endpoint"), "{}", got.body);
    // A client that gives up while held frees its place at once: the queue holds one, and the
    // next request is held rather than refused.
    let addr = gw.addr();
    let gone = spawn_get(&c, addr, "/");
    wait_for_gauge(&gw, HELD, 1.0).await;
    gone.abort();
    wait_for_gauge(&gw, HELD, 0.0).await;
    let next = spawn_get(&c, addr, "/");
    // Held, not refused.
    wait_for_gauge(&gw, HELD, 1.0).await;
    // It times out too (the backend is still booting), but as a timeout, not as queue-full.
    assert_eq!(next.await.unwrap().header("rouse-error"), "queue-timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_to_boot_is_reported_and_backed_off() {
    let gw = scaled(Rev::new("r"), Scale::new(backend(&[("FAIL_BOOT", "3")]))).await;
    let c = h1_client();
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.header("rouse-error"), "start-failed");
    assert!(
        got.body.contains("revision r failed to start"),
        "{}",
        got.body
    );
    assert!(got.body.contains("exit status: 3"), "{}", got.body);
    assert!(
        got.body.contains("fatal: database unreachable"),
        "{}",
        got.body
    );
    assert!(!got.header("retry-after").is_empty());
    // During the backoff new requests fail fast with the same reason, without a new attempt:
    // the second answer is not held (the queue-wait histogram counts only the first request).
    let again = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(again.header("rouse-error"), "start-failed");
    assert_eq!(
        metric(
            &metrics(&gw).await,
            "rouse_queue_wait_seconds_count{service=\"svc\",revision=\"r\"}"
        ),
        1.0
    );
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_backend_start_failures_total{service=\"svc\",revision=\"r\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "rouse_rejected_requests_total{service=\"svc\",revision=\"r\",reason=\"start_failed\"}"
        ) >= 2.0
    );
    // After the backoff (1 s) the scaler tries again when asked, and fails again: a second
    // failure is counted.
    let mut failures = 1.0;
    for _ in 0..50 {
        let _ = get(&c, gw.addr(), "x", "/", &[]).await;
        failures = gauge(&gw, "rouse_backend_start_failures_total").await;
        if failures >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failures, 2.0, "a second attempt after the backoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_misses_its_boot_deadline_is_killed_and_reported() {
    let pid_file = temp_dir("late-boot").join("pid");
    let pid_path = pid_file.display().to_string();
    let gw = scaled(
        Rev::new("r"),
        Scale::new(
            backend(&[("BOOT_DELAY_MS", "5000"), ("PID_FILE", &pid_path)])
                .boot_timeout("500ms")
                .stop_grace("200ms"),
        ),
    )
    .await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        got.body
            .contains("was not ready within the 500ms boot timeout"),
        "{}",
        got.body
    );
    // Killed, not left booting: gone well before its 5 s boot would have ended. Its first act
    // is to write its pid; on a loaded machine the interpreter may not get that far within
    // the 500 ms before it is killed, and then there is no pid, and no process, to wait for.
    let mut pid = None;
    for _ in 0..100 {
        if let Ok(p) = std::fs::read_to_string(&pid_file)
            && !p.is_empty()
        {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(pid) = pid else {
        return;
    };
    let _cleanup = KillOnDrop(vec![pid.clone()]);
    let gone = async {
        while running(&pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), gone)
        .await
        .expect("the late backend was not stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_backend_is_replaced_and_held_requests_wait_for_it() {
    // Each boot takes 300 ms, so the revision is seen at zero endpoints between the crash and
    // the replacement.
    let gw = scaled(
        Rev::new("r"),
        Scale::new(backend(&[("BOOT_DELAY_MS", "300")])),
    )
    .await;
    let c = h1_client();
    let first = get(&c, gw.addr(), "x", "/exit", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    // It crashed within 10 s of being ready: the replacement waits for the backoff (1 s)
    // before it boots, so a crashing backend is not restarted in a tight loop.
    let crashed = tokio::time::Instant::now();
    let old = first.header("x-pid").to_owned();
    // Once rouse has seen the process go, a request is held until the replacement is ready:
    // one request, one answer, from a new process.
    wait_for_gauge(
        &gw,
        "rouse_revision_endpoints{service=\"svc\",revision=\"r\"}",
        0.0,
    )
    .await;
    assert!(!pid_alive(&old), "the crashed process is gone");
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    let new = got.header("x-pid");
    assert!(
        !new.is_empty() && new != old,
        "replacement pid {new:?} vs {old}"
    );
    assert!(
        crashed.elapsed() >= Duration::from_millis(1300),
        "replaced after {:?}, without the 1 s backoff before its 300 ms boot",
        crashed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_scales_up_to_more_than_one_process() {
    let gw = scaled(
        Rev::new("r").cc(2),
        Scale::new(backend(&[]))
            .max(3)
            .target(1.0)
            .tick("200ms")
            .stable_window("2s"),
    )
    .await;
    let pids = load(gw.addr(), 8, Duration::from_secs(4), "/?delay=100", |got| {
        let high: u32 = got.header("x-max-in-flight").parse().unwrap();
        assert!(high <= 2);
    })
    .await;
    assert!(pids.len() >= 2, "only {pids:?} served the load");
    assert!(gauge(&gw, "rouse_revision_desired_scale").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_revision_scales_to_zero_and_wakes_again() {
    let gw = scaled(
        Rev::new("r"),
        Scale::new(backend(&[]))
            .idle_grace("1s")
            .tick("200ms")
            .stable_window("2s"),
    )
    .await;
    let c = h1_client();
    let first = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let pid = first.header("x-pid").to_owned();
    assert_eq!(gauge(&gw, "rouse_revision_endpoints").await, 1.0);
    // Idle past the grace period: back to zero, process stopped.
    let mut zero = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if gauge(&gw, "rouse_revision_endpoints").await == 0.0 && !pid_alive(&pid) {
            zero = true;
            break;
        }
    }
    assert!(zero, "revision did not scale to zero after idle_grace");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_scale_events_total{service=\"svc\",revision=\"r\",direction=\"down\"}"
        ),
        1.0
    );
    // And wakes again.
    let again = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("rouse-cold-start"), "true");
    assert_ne!(again.header("x-pid"), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_answers_at_once_while_the_revision_wakes() {
    let gw = scaled(
        Rev::new("r").placeholder(Placeholder::new(503, "warming up").header("retry-after", "2")),
        Scale::new(backend(&[])),
    )
    .await;
    let c = h1_client();
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.body, "warming up");
    assert_eq!(got.header("retry-after"), "2");
    assert_eq!(
        got.header("rouse-cold-start"),
        "true",
        "the placeholder is marked"
    );
    // The placeholder started the revision: it becomes ready without further requests.
    wait_for_gauge(
        &gw,
        "rouse_revision_endpoints{service=\"svc\",revision=\"r\"}",
        1.0,
    )
    .await;
    let warm = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_start_the_next_attempt_holds_requests_again() {
    let marker = temp_dir("fail-once").join("booted-once");
    let gw = scaled(
        Rev::new("r"),
        Scale::new(backend(&[(
            "FAIL_ONCE_FILE",
            &marker.display().to_string(),
        )])),
    )
    .await;
    let c = h1_client();
    let failed = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(
        failed.header("rouse-error"),
        "start-failed",
        "{}",
        failed.body
    );
    assert!(failed.body.contains("exit status: 4"), "{}", failed.body);
    assert_eq!(
        failed.header("retry-after"),
        "1",
        "rounded up from just under 1 s"
    );
    // Within the backoff requests are refused; the first one after it is held for the new
    // attempt, which succeeds: the old failure must not answer it.
    let mut ok = failed;
    for _ in 0..40 {
        ok = get(&c, gw.addr(), "x", "/", &[]).await;
        if ok.header("rouse-error") != "start-failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.header("rouse-cold-start"), "true");
}

/// True while process `pid` runs (a zombie waiting to be reaped does not run).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_backend_also_stops_the_workers_it_forked() {
    let pid_file = temp_dir("workers").join("worker.pid");
    // The server and its worker both ignore SIGTERM, as a server that hangs on shutdown does.
    let process = backend(&[
        ("WORKER_PID_FILE", &pid_file.display().to_string()),
        ("IGNORE_SIGTERM", "1"),
    ])
    .stop_grace("300ms");
    let gw = scaled(Rev::new("r"), Scale::new(process)).await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let worker = std::fs::read_to_string(&pid_file).unwrap();
    let server = got.header("x-pid").to_owned();
    let state =
        |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        running(&worker) && running(&server),
        "before the stop: worker {worker:?} [{}], server {server:?} [{}]",
        state(&worker),
        state(&server)
    );
    // Should this test fail, the processes it started do not outlive it.
    let _cleanup = KillOnDrop(vec![worker.clone(), server.clone()]);
    gw.shutdown().await;
    // Shutdown waits for the stop (SIGTERM to the group, SIGKILL after stop_grace); the worker
    // is gone with its parent, not left holding the port.
    let gone = async {
        while running(&worker) || running(&server) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the backend's worker outlived the stop");
}

/// SIGKILLs the processes on drop (those left running are a failed test's leftovers).
struct KillOnDrop(Vec<String>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if running(pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid])
                    .status();
            }
        }
    }
}

/// `cold_start.header: false` leaves the mark off a response that waited for a cold start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_header_false_leaves_the_mark_off() {
    let gw = scaled(
        Rev::new("r").cold_start_header(false),
        Scale::new(backend(&[])),
    )
    .await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "");
    // It did wait for a cold start.
    assert_eq!(
        metric(
            &metrics(&gw).await,
            "rouse_cold_start_seconds_count{service=\"svc\",revision=\"r\"}"
        ),
        1.0
    );
}

/// `max_wait: 0` is no limit of its own, not "no waiting": a request held through a cold
/// start longer than the service's `timeouts.request` gets 504 `request-timeout` when that
/// ends, never 503 `queue-timeout` (and not at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_zero_leaves_a_held_request_to_the_request_timeout() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("svc")
                .host("*")
                .only(
                    Rev::new("r")
                        .queue(Queue::new().max_wait("0"))
                        .scale(Scale::new(backend(&[("BOOT_DELAY_MS", "5000")])).min(0)),
                )
                .timeouts(Timeouts::new().request("1500ms")),
        )
        .start()
        .await;
    let began = tokio::time::Instant::now();
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.body);
    assert_eq!(got.header("rouse-error"), "request-timeout");
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "held until the limit"
    );
    // It was held (and counted as waiting), not refused.
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_queue_wait_seconds_count{service=\"svc\",revision=\"r\"}"
        ),
        1.0,
        "{text}"
    );
}

/// `{port}` in the command is the process's port (here the only way a stock `http.server`
/// learns it), and `cwd` is where it runs: the file it serves is the folder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_gets_its_port_and_runs_in_cwd() {
    let dir = temp_dir("cwd");
    std::fs::write(dir.join("f.txt"), "from cwd").unwrap();
    let gw = scaled(
        Rev::new("r"),
        Scale::new(
            Process::new(&[
                "python3",
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "127.0.0.1",
            ])
            .cwd(&dir.display().to_string())
            .ready_http_get("/"),
        ),
    )
    .await;
    let got = get(&h1_client(), gw.addr(), "x", "/f.txt", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body, "from cwd");
}

/// `scale.min: 1` starts a process with the gateway: the first request finds it warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_one_is_warm_before_the_first_request() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("svc")
                .host("*")
                .only(Rev::new("r").scale(Scale::new(backend(&[])).min(1))),
        )
        .start()
        .await;
    wait_for_gauge(
        &gw,
        "rouse_revision_endpoints{service=\"svc\",revision=\"r\"}",
        1.0,
    )
    .await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "", "no cold start");
}

/// A command that cannot be run at all is a failed start, said as such: 503 `start-failed`
/// naming the program and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_run_is_a_start_failure_naming_it() {
    let gw = scaled(
        Rev::new("r"),
        Scale::new(Process::new(&["/nonexistent/backend", "--flag"])),
    )
    .await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.body);
    assert_eq!(got.header("rouse-error"), "start-failed");
    assert!(got.body.contains("/nonexistent/backend"), "{}", got.body);
    assert!(
        got.body.to_lowercase().contains("no such file"),
        "{}",
        got.body
    );
    assert!(
        got.header("retry-after").parse::<u64>().is_ok(),
        "{:?}",
        got.headers
    );
}

/// Scaling down to a count that is not zero stops the surplus processes and keeps the
/// longest-running one (the most recently ready go first), while the revision stays warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_to_one_keeps_the_oldest_process() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("svc").host("*").only(
                Rev::new("r").cc(1).scale(
                    Scale::new(backend(&[]))
                        .min(1)
                        .max(3)
                        .target(1.0)
                        .tick("200ms")
                        .stable_window("2s"),
                ),
            ),
        )
        .start()
        .await;
    let endpoints = "rouse_revision_endpoints{service=\"svc\",revision=\"r\"}";
    wait_for_gauge(&gw, endpoints, 1.0).await;
    let c = h1_client();
    let oldest = get(&c, gw.addr(), "x", "/", &[])
        .await
        .header("x-pid")
        .to_owned();
    // As many clients as the revision has room for at its max, so none is shed.
    let pids = load(gw.addr(), 3, Duration::from_secs(3), "/?delay=200", |_| {}).await;
    assert!(pids.len() >= 2, "only {pids:?} served the load");
    // Idle: down to min, not to zero.
    let mut now = 0.0;
    for _ in 0..300 {
        now = gauge(&gw, "rouse_revision_endpoints").await;
        if now == 1.0 && pids.iter().filter(|p| pid_alive(p)).count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, 1.0);
    let after = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(after.header("rouse-cold-start"), "", "still warm");
    assert_eq!(after.header("x-pid"), oldest, "the oldest process stayed");
    for p in pids.iter().filter(|p| **p != oldest) {
        assert!(!pid_alive(p), "{p} still runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_port_is_taken_before_it_listens_is_started_again_on_another() {
    // The first boot starts another program on the backend's port before listening itself,
    // as anything else on the machine might in the window between rouse's pick and the
    // backend's bind: the probe it answers is not the backend's, and the backend then fails to
    // listen. The held request must go to a backend started again elsewhere.
    let pid_file = temp_dir("port-taken").join("intruder.pid");
    let gw = scaled(
        Rev::new("r"),
        Scale::new(backend(&[(
            "STEAL_PORT_FILE",
            &pid_file.display().to_string(),
        )])),
    )
    .await;
    let c = h1_client();
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    let intruder = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let _cleanup = KillOnDrop(vec![intruder.clone()]);
    assert!(running(&intruder), "the other program {intruder:?} ran");
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(got.body.starts_with("r "), "answered by {:?}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    // Nothing was counted as a failed start, and later requests stay with the backend.
    for _ in 0..5 {
        let again = get(&c, gw.addr(), "x", "/", &[]).await;
        assert!(again.body.starts_with("r "), "answered by {:?}", again.body);
    }
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_backend_start_failures_total{service=\"svc\",revision=\"r\"}"
        ),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_hands_its_port_to_another_program_is_told_so() {
    // The command starts a server outside its own process group (as `docker run -p` has the
    // docker daemon's proxy listen) and stays running: the answers on the port are not its
    // own, so it never becomes ready, and the start failure says why.
    let pid_file = temp_dir("port-handed").join("server.pid");
    let script = format!(
        "setsid python3 -m http.server \"$PORT\" --bind 127.0.0.1 >/dev/null 2>&1 & echo $! > {}; sleep 30",
        pid_file.display()
    );
    let process = Process::new(&["sh", "-c", &script])
        .ready_http_get("/")
        .boot_timeout("1s")
        .stop_grace("100ms");
    let gw = scaled(Rev::new("r"), Scale::new(process)).await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    let server = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let _cleanup = KillOnDrop(vec![server.trim().to_owned()]);
    assert_eq!(got.header("rouse-error"), "start-failed", "{}", got.body);
    assert!(
        got.body.contains("outside the backend's process group")
            && got.body.contains(&format!("process {}", server.trim())),
        "{}",
        got.body
    );
}
