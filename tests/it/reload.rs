//! Live reconfiguration: the config file is watched; valid changes apply at once without a
//! failed request, invalid ones change nothing.

use crate::support::*;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What the first request after a reload must show: (response, backend a, b, c).
type Check = Box<dyn Fn(&Got, &Backend, &Backend, &Backend) -> bool>;

/// A config (with admin) with `svc`, whose file is checked every 50 ms.
fn watched(svc: Svc) -> Cfg {
    Cfg::new().admin().watch_interval("50ms").service(svc)
}

/// Writes `yaml` and waits until the gateway reports a reload with `result`.
async fn change(gw: &Gateway, path: &std::path::Path, yaml: &str, result: &str) {
    let key = format!("rouse_config_reloads_total{{result=\"{result}\"}}");
    let before = metric(&metrics(gw).await, &key);
    // Write to a temp file and rename, as editors and Kubernetes do, so no half file is read.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    for _ in 0..1000 {
        if metric(&metrics(gw).await, &key) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {result} reload reported after writing:\n{yaml}");
}

/// The set of bodies (backend names) of `n` requests to `/`.
async fn bodies(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    addr: std::net::SocketAddr,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        seen.insert(get(client, addr, "x", "/", &[]).await.body);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_updates_under_load_fail_no_request_and_apply_at_once() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    // Version `x_v` of the config: route /h sets `x-v`, and it and the default route split
    // by `arms` between `revs`.
    let v = |x_v: &str, arms: &[Target], revs: &[&Rev]| {
        let mut route = Route::new("/h").set_header("x-v", x_v);
        let mut svc = Svc::new("s").host("*");
        for t in arms {
            route = route.traffic(t.clone());
            svc = svc.traffic(t.clone());
        }
        for r in revs {
            svc = svc.revision((*r).clone());
        }
        watched(svc.route(route))
    };
    let t = Target::new;
    let ra = Rev::new("ra").endpoint(a.addr);
    let rb = Rev::new("rb").endpoint(b.addr);
    let rc = Rev::new("rc").endpoint(c.addr);
    let first = v("0", &[t("ra", 100)], &[&ra]);
    let path = first.write("reload");
    let gw = first.start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));

    // Steady load throughout: 4 clients, each request checked.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), gw.addr());
        load.push(tokio::spawn(async move {
            let c = h1_client();
            while !stop.load(Ordering::Relaxed) {
                let got = get(&c, addr, "x", "/?delay=5", &[]).await;
                if got.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during reload: {got:?}");
                }
            }
        }));
    }
    let client = h1_client();
    let probe = |h: &'static str| {
        let client = client.clone();
        let addr = gw.addr();
        async move { get(&client, addr, "x", h, &[]).await }
    };
    let steps: Vec<(Cfg, Check)> = vec![
        // 1. A header changes.
        (
            v("1", &[t("ra", 100)], &[&ra]),
            Box::new(|_, a, _, _| a.headers_at("/h").get("x-v").is_some_and(|v| v == "1")),
        ),
        // 2. A revision is added at 0 % with a tag.
        (
            v("1", &[t("ra", 100), t("rb", 0).tag("bee")], &[&ra, &rb]),
            Box::new(|g, _, _, _| g.body == "a"),
        ),
        // 3. The split moves to 50/50.
        (
            v("1", &[t("ra", 50), t("rb", 50)], &[&ra, &rb]),
            Box::new(|g, _, _, _| g.body == "a" || g.body == "b"),
        ),
        // 4. Header again.
        (
            v("2", &[t("ra", 50), t("rb", 50)], &[&ra, &rb]),
            Box::new(|g, a, b, _| {
                let be = if g.body == "a" { a } else { b };
                be.headers_at("/h").get("x-v").is_some_and(|v| v == "2")
            }),
        ),
        // 5. All to rb.
        (
            v("2", &[t("ra", 0), t("rb", 100)], &[&ra, &rb]),
            Box::new(|g, _, _, _| g.body == "b"),
        ),
        // 6. ra removed from the config (its backend is shut down after this step).
        (
            v("2", &[t("rb", 100)], &[&rb]),
            Box::new(|g, _, _, _| g.body == "b"),
        ),
        // 7. rc added and given everything.
        (
            v("3", &[t("rb", 0), t("rc", 100)], &[&rb, &rc]),
            Box::new(|g, _, _, c| {
                g.body == "c" && c.headers_at("/h").get("x-v").is_some_and(|v| v == "3")
            }),
        ),
        // 8. rc gets a concurrency limit.
        (
            v(
                "3",
                &[t("rc", 100)],
                &[&Rev::new("rc").cc(2).endpoint(c.addr)],
            ),
            Box::new(|g, _, _, _| g.body == "c"),
        ),
        // 9. Split 20/80 between rb and rc.
        (
            v("4", &[t("rb", 20), t("rc", 80)], &[&rb, &rc]),
            Box::new(|g, _, _, _| g.body == "b" || g.body == "c"),
        ),
        // 10. Back to rb alone.
        (
            v("5", &[t("rb", 100)], &[&rb]),
            Box::new(|g, _, b, _| {
                g.body == "b" && b.headers_at("/h").get("x-v").is_some_and(|v| v == "5")
            }),
        ),
    ];
    let mut a = Some(a);
    for (i, (cfg, check)) in steps.iter().enumerate() {
        change(&gw, &path, &cfg.yaml(), "ok").await;
        // Served as soon as the reload is reported: the very next request shows it.
        let got = probe("/h").await;
        let a_ref = a.as_ref().unwrap_or(&c);
        assert!(check(&got, a_ref, &b, &c), "step {}: {got:?}", i + 1);
        // What each step changed, shown to have taken effect: none of these holds under the
        // config before it.
        match i + 1 {
            2 => {
                let got = get(&client, gw.addr(), "x", "/", &[("rouse-tag", "bee")]).await;
                assert_eq!(got.body, "b", "step 2: the new tag reaches rb");
            }
            3 => assert_eq!(
                bodies(&client, gw.addr(), 40).await,
                ["a", "b"].map(String::from).into(),
                "step 3: the 50/50 split reaches both"
            ),
            6 => {
                // Its live gauges are read from the current table's revisions only (its counters
                // keep their totals).
                let m = metrics(&gw).await;
                assert!(
                    m.contains("rouse_revision_in_flight{service=\"s\",revision=\"rb\"}")
                        && !m.contains("rouse_revision_in_flight{service=\"s\",revision=\"ra\"}"),
                    "step 6: the removed revision's live gauges are gone:\n{m}"
                );
            }
            8 => {
                // Six slow requests at once: rc never gets more than its 2.
                c.seen.max_in_flight.store(0, Ordering::SeqCst);
                let slow: Vec<_> = (0..6)
                    .map(|_| {
                        let (client, addr) = (client.clone(), gw.addr());
                        tokio::spawn(
                            async move { get(&client, addr, "x", "/?delay=200", &[]).await },
                        )
                    })
                    .collect();
                for s in slow {
                    assert_eq!(s.await.unwrap().status, StatusCode::OK);
                }
                assert_eq!(
                    c.seen.max_in_flight.load(Ordering::SeqCst),
                    2,
                    "step 8: container_concurrency 2 holds, and is used"
                );
            }
            9 => assert_eq!(
                bodies(&client, gw.addr(), 60).await,
                ["b", "c"].map(String::from).into(),
                "step 9: the 20/80 split reaches both"
            ),
            _ => {}
        }
        if i == 5 {
            // Removed revision's backend goes away once its last requests are done; nothing
            // may be routed to it any more.
            let seen = a.as_ref().unwrap().seen.clone();
            wait_until("a's last requests done", || {
                seen.in_flight.load(Ordering::SeqCst) == 0
            })
            .await;
            drop(a.take());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    watcher.abort();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "load kept running");
}

#[tokio::test]
async fn invalid_file_keeps_the_running_config() {
    let a = Backend::start("a").await;
    let split_to_r = |percent| {
        Svc::new("s")
            .host("*")
            .split(&[("r", percent)])
            .revision(Rev::new("r").endpoint(a.addr))
    };
    let good = watched(split_to_r(100));
    let path = good.write("invalid-reload");
    let gw = good.start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    change(&gw, &path, &watched(split_to_r(90)).yaml(), "invalid").await;
    // Text that is not YAML at all.
    change(&gw, &path, "listen: [", "invalid").await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "a");
    // The reloader reports the reason with its key path.
    let err = gw
        .reloader(&path)
        .reload()
        .await
        .expect_err("still invalid");
    assert!(err.to_string().contains("listen"), "{err}");
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_removed_revision_finish_normally() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let first = watched(Svc::single(Rev::new("ra").endpoint(a.addr)));
    let then = watched(Svc::single(Rev::new("rb").endpoint(b.addr)));
    let path = first.write("removed");
    let gw = first.start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let c = h1_client();
    let addr = gw.addr();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            get(
                &c,
                addr,
                "x",
                "/?delay=200&size=1000000&body_delay=600",
                &[],
            )
            .await
        })
    };
    wait_until("the slow request at ra's backend", || a.requests() == 1).await;
    change(&gw, &path, &then.yaml(), "ok").await;
    assert_eq!(get(&c, addr, "x", "/", &[]).await.body, "b");
    let got = slow.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body.len(),
        1_000_000,
        "the stream on the removed revision completed"
    );
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let listen = dead_addr().await;
    let cfg = |be: &Backend| {
        Cfg::single(Rev::new("r").endpoint(be.addr))
            .listen(listen)
            .watch_interval("0s")
    };
    let path = cfg(&a).write("sighup");
    let child = run_binary(&path);
    wait_ready(listen).await;
    let c = h1_client();
    assert_eq!(get(&c, listen, "x", "/", &[]).await.body, "a");
    std::fs::write(&path, cfg(&b).yaml()).unwrap();
    // watch_interval 0: nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&c, listen, "x", "/", &[]).await.body, "a");
    signal(child.0.id(), "-HUP");
    let mut switched = false;
    for _ in 0..100 {
        if get(&c, listen, "x", "/", &[]).await.body == "b" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(child);
    assert!(switched, "SIGHUP did not reload the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_moves_between_static_and_scaled_endpoints() {
    let a = Backend::start("static").await;
    let fixed = watched(Svc::single(Rev::new("r").endpoint(a.addr)));
    let process = Process::new(&["python3", BACKEND_PY])
        .env("REVISION", "proc")
        .stop_grace("1s");
    let scaled = watched(Svc::single(Rev::new("r").scale(Scale::new(process))));
    let path = fixed.write("static-scaled");
    let gw = fixed.start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let c = h1_client();
    assert_eq!(get(&c, gw.addr(), "x", "/", &[]).await.body, "static");
    change(&gw, &path, &scaled.yaml(), "ok").await;
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(
        got.body.starts_with("proc "),
        "served by a started process: {}",
        got.body
    );
    let pid = got.header("x-pid").to_owned();
    change(&gw, &path, &fixed.yaml(), "ok").await;
    for _ in 0..20 {
        let got = get(&c, gw.addr(), "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert_eq!(got.body, "static");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process is stopped once it is no longer needed.
    let mut gone = false;
    for _ in 0..60 {
        if !pid_alive(&pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "process {pid} still running");
    watcher.abort();
}

/// A file whose content is what the last reload applied is not applied (or counted) again,
/// however often a reload is asked for (a SIGHUP, or the watcher after a touch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_is_not_applied_again() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let first = Cfg::new()
        .admin()
        .service(Svc::single(Rev::new("ra").endpoint(a.addr)));
    let then = Cfg::new()
        .admin()
        .service(Svc::single(Rev::new("rb").endpoint(b.addr)));
    let path = first.write("identical");
    let gw = first.start().await;
    let reloader = gw.reloader(&path);
    let ok = "rouse_config_reloads_total{result=\"ok\"}";
    let count = || async { metric(&metrics(&gw).await, ok) };
    std::fs::write(&path, then.yaml()).unwrap();
    reloader.reload().await.unwrap();
    assert_eq!(count().await, 1.0);
    assert_eq!(get(&h1_client(), gw.addr(), "x", "/", &[]).await.body, "b");
    // Written again, byte for byte: not applied again.
    std::fs::write(&path, then.yaml()).unwrap();
    reloader.reload().await.unwrap();
    reloader.reload().await.unwrap();
    assert_eq!(count().await, 1.0);
}

/// Requests held for a revision at its `container_concurrency` are let in at once when a
/// reload raises it, not when the running requests finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_let_in_when_a_reload_raises_container_concurrency() {
    let a = Backend::start("a").await;
    let v = |cc: u32| watched(Svc::single(Rev::new("r").endpoint(a.addr).cc(cc)));
    let path = v(1).write("raise-cc");
    let gw = v(1).start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let c = h1_client();
    let running: Vec<_> = (0..3)
        .map(|_| spawn_get(&c, gw.addr(), "/?delay=3000"))
        .collect();
    wait_for_gauge(
        &gw,
        "rouse_revision_held_requests{service=\"s\",revision=\"r\"}",
        2.0,
    )
    .await;
    // The one with the slot may still be on its way to the backend when the other two are
    // counted as held.
    let seen = a.seen.clone();
    wait_until("the first at the backend", || {
        seen.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    change(&gw, &path, &v(3).yaml(), "ok").await;
    let seen = a.seen.clone();
    wait_until("all three at the backend", || {
        seen.in_flight.load(Ordering::SeqCst) == 3
    })
    .await;
    assert!(
        running.iter().all(|t| !t.is_finished()),
        "let in before the first finished"
    );
    for t in running {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    watcher.abort();
}

/// `listen` changes only on restart: a reload that changes it (with a route change) is
/// applied but for it, and the gateway keeps serving where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_keys_are_kept_and_the_rest_applied() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let first = watched(Svc::single(Rev::new("ra").endpoint(a.addr)));
    let path = first.write("restart-only");
    let gw = first.start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let elsewhere = dead_addr().await;
    let then = watched(Svc::single(Rev::new("rb").endpoint(b.addr))).listen(elsewhere);
    change(&gw, &path, &then.yaml(), "ok").await;
    // The new route is served on the old address; nothing listens on the new one.
    assert_eq!(get(&h1_client(), gw.addr(), "x", "/", &[]).await.body, "b");
    assert!(tokio::net::TcpStream::connect(elsewhere).await.is_err());
    watcher.abort();
}

/// A changed `scale` section restarts the revision's scaler: the old process is stopped, and
/// the next request is held for a new one started with the new settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_scale_section_restarts_the_scaler() {
    let v = |tag: &str| {
        watched(Svc::single(Rev::new("r").scale(
            Scale::new(app_process("r").env("TAG", tag).stop_grace("1s")).min(0),
        )))
    };
    let path = v("one").write("scale-restart");
    let gw = v("one").start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let c = h1_client();
    let before = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(before.status, StatusCode::OK);
    let old = before.header("x-pid").to_owned();
    change(&gw, &path, &v("two").yaml(), "ok").await;
    // The reload is reported once the old process has stopped.
    assert!(!pid_alive(&old), "{old} still runs after the reload");
    let after = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    assert_eq!(
        after.header("rouse-cold-start"),
        "true",
        "held for a new process"
    );
    assert_ne!(after.header("x-pid"), old);
    watcher.abort();
}

/// Stopping a process waits up to `stop_grace` for its in-flight request, then sends SIGTERM,
/// then SIGKILL `stop_grace` later to a process that ignores SIGTERM: the request is answered,
/// and the reload that restarted the scaler is reported only once the process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_request_then_terms_then_kills() {
    let v = |tag: &str| {
        watched(Svc::single(
            Rev::new("r").scale(
                Scale::new(
                    app_process("r")
                        .env("TAG", tag)
                        .env("IGNORE_SIGTERM", "1")
                        .stop_grace("1s"),
                )
                .min(0),
            ),
        ))
    };
    let path = v("one").write("stop-grace");
    let gw = v("one").start().await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let c = h1_client();
    let warm = get(&c, gw.addr(), "x", "/", &[]).await;
    let old = warm.header("x-pid").to_owned();
    let began = tokio::time::Instant::now();
    let running = spawn_get(&c, gw.addr(), "/?delay=700");
    wait_for_gauge(
        &gw,
        "rouse_revision_in_flight{service=\"s\",revision=\"r\"}",
        1.0,
    )
    .await;
    change(&gw, &path, &v("two").yaml(), "ok").await;
    let took = began.elapsed();
    let got = running.await.unwrap();
    assert_eq!(
        got.status,
        StatusCode::OK,
        "the in-flight request was cut: {}",
        got.body
    );
    assert_eq!(got.header("x-pid"), old);
    assert!(!pid_alive(&old), "{old} outlived SIGKILL");
    // At least 0.7 s for the request, then the 1 s it ignored SIGTERM for.
    assert!(
        took >= Duration::from_millis(1700),
        "stopped after {took:?}"
    );
    watcher.abort();
}
