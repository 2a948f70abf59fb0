//! Live reconfiguration: the config file is watched; valid changes apply at once without a
//! failed request, invalid ones change nothing.

use crate::support::*;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What the first request after a reload must show: (response, backend a, b, c).
type Check = Box<dyn Fn(&Got, &Backend, &Backend, &Backend) -> bool>;

fn config(body: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nwatch_interval: 50ms\nservices:\n  - name: s\n    hosts: [\"*\"]\n{body}"
    )
}

/// Writes `yaml` and waits until the gateway reports a reload with `result`.
async fn change(
    gw: &rouse::roles::gateway::Gateway,
    path: &std::path::Path,
    yaml: &str,
    result: &str,
) {
    let key = format!("rouse_config_reloads_total{{result=\"{result}\"}}");
    let before = metric(&metrics(gw).await, &key);
    // Write to a temp file and rename, as editors and Kubernetes do, so no half file is read.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    for _ in 0..200 {
        if metric(&metrics(gw).await, &key) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {result} reload reported after writing:\n{yaml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_updates_under_load_fail_no_request_and_apply_at_once() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let rev =
        |n: &str, be: &Backend| format!("      - {{ name: {n}, endpoints: [\"{}\"] }}\n", be.addr);
    let path = write_config("reload", "");
    let v = |route_headers: &str, traffic: &str, revs: &str| {
        config(&format!(
            "    routes:\n      - path: /h\n        set_headers: {{ {route_headers} }}\n        traffic: [{traffic}]\n    traffic: [{traffic}]\n    revisions:\n{revs}"
        ))
    };
    let ra = rev("ra", &a);
    let rb = rev("rb", &b);
    let rc = rev("rc", &c);
    let first = v("x-v: \"0\"", "{ revision: ra, percent: 100 }", &ra);
    std::fs::write(&path, &first).unwrap();
    let gw = gateway(&first).await;
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
    let steps: Vec<(String, Check)> = vec![
        // 1. A header changes.
        (
            v("x-v: \"1\"", "{ revision: ra, percent: 100 }", &ra),
            Box::new(|_, a, _, _| a.headers_at("/h").get("x-v").is_some_and(|v| v == "1")),
        ),
        // 2. A revision is added at 0 % with a tag.
        (
            v(
                "x-v: \"1\"",
                "{ revision: ra, percent: 100 }, { revision: rb, percent: 0, tag: bee }",
                &format!("{ra}{rb}"),
            ),
            Box::new(|g, _, _, _| g.body == "a"),
        ),
        // 3. The split moves to 50/50.
        (
            v(
                "x-v: \"1\"",
                "{ revision: ra, percent: 50 }, { revision: rb, percent: 50 }",
                &format!("{ra}{rb}"),
            ),
            Box::new(|g, _, _, _| g.body == "a" || g.body == "b"),
        ),
        // 4. Header again.
        (
            v(
                "x-v: \"2\"",
                "{ revision: ra, percent: 50 }, { revision: rb, percent: 50 }",
                &format!("{ra}{rb}"),
            ),
            Box::new(|g, a, b, _| {
                let be = if g.body == "a" { a } else { b };
                be.headers_at("/h").get("x-v").is_some_and(|v| v == "2")
            }),
        ),
        // 5. All to rb.
        (
            v(
                "x-v: \"2\"",
                "{ revision: ra, percent: 0 }, { revision: rb, percent: 100 }",
                &format!("{ra}{rb}"),
            ),
            Box::new(|g, _, _, _| g.body == "b"),
        ),
        // 6. ra removed from the config (its backend is shut down after this step).
        (
            v("x-v: \"2\"", "{ revision: rb, percent: 100 }", &rb),
            Box::new(|g, _, _, _| g.body == "b"),
        ),
        // 7. rc added and given everything.
        (
            v(
                "x-v: \"3\"",
                "{ revision: rb, percent: 0 }, { revision: rc, percent: 100 }",
                &format!("{rb}{rc}"),
            ),
            Box::new(|g, _, _, c| {
                g.body == "c" && c.headers_at("/h").get("x-v").is_some_and(|v| v == "3")
            }),
        ),
        // 8. rc gets a concurrency limit.
        (
            v(
                "x-v: \"3\"",
                "{ revision: rc, percent: 100 }",
                &rev("rc", &c).replace("name: rc,", "name: rc, container_concurrency: 2,"),
            ),
            Box::new(|g, _, _, _| g.body == "c"),
        ),
        // 9. Split 20/80 between rb and rc.
        (
            v(
                "x-v: \"4\"",
                "{ revision: rb, percent: 20 }, { revision: rc, percent: 80 }",
                &format!("{rb}{rc}"),
            ),
            Box::new(|g, _, _, _| g.body == "b" || g.body == "c"),
        ),
        // 10. Back to rb alone.
        (
            v("x-v: \"5\"", "{ revision: rb, percent: 100 }", &rb),
            Box::new(|g, _, b, _| {
                g.body == "b" && b.headers_at("/h").get("x-v").is_some_and(|v| v == "5")
            }),
        ),
    ];
    let mut a = Some(a);
    for (i, (yaml, check)) in steps.iter().enumerate() {
        change(&gw, &path, yaml, "ok").await;
        // Served as soon as the reload is reported: the very next request shows it.
        let got = probe("/h").await;
        let a_ref = a.as_ref().unwrap_or(&c);
        assert!(check(&got, a_ref, &b, &c), "step {}: {got:?}", i + 1);
        if i == 5 {
            // Removed revision's backend goes away; nothing may be routed to it any more.
            tokio::time::sleep(Duration::from_millis(50)).await;
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
    let good = config(&format!(
        "    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{}\"] }}\n",
        a.addr
    ));
    let path = write_config("invalid-reload", &good);
    let gw = gateway(&good).await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    change(
        &gw,
        &path,
        &good.replace("percent: 100", "percent: 90"),
        "invalid",
    )
    .await;
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
    let with = |revs: &str, t: &str| config(&format!("    traffic: [{t}]\n    revisions:\n{revs}"));
    let ra = format!("      - {{ name: ra, endpoints: [\"{}\"] }}\n", a.addr);
    let rb = format!("      - {{ name: rb, endpoints: [\"{}\"] }}\n", b.addr);
    let first = with(&ra, "{ revision: ra, percent: 100 }");
    let path = write_config("removed", &first);
    let gw = gateway(&first).await;
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    change(
        &gw,
        &path,
        &with(&rb, "{ revision: rb, percent: 100 }"),
        "ok",
    )
    .await;
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
        format!(
            "listen: \"{listen}\"\nwatch_interval: 0s\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{}\"] }}\n",
            be.addr
        )
    };
    let path = write_config("sighup", &cfg(&a));
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let c = h1_client();
    assert_eq!(get(&c, listen, "x", "/", &[]).await.body, "a");
    std::fs::write(&path, cfg(&b)).unwrap();
    // watch_interval 0: nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&c, listen, "x", "/", &[]).await.body, "a");
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let mut switched = false;
    for _ in 0..100 {
        if get(&c, listen, "x", "/", &[]).await.body == "b" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(switched, "SIGHUP did not reload the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_moves_between_static_and_scaled_endpoints() {
    let a = Backend::start("static").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/backend.py");
    let fixed = config(&format!(
        "    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{}\"] }}\n",
        a.addr
    ));
    let scaled = config(&format!(
        "    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - name: r\n        scale:\n          process: {{ command: [\"python3\", \"{script}\"], env: {{ REVISION: proc }}, stop_grace: 1s }}\n"
    ));
    let path = write_config("static-scaled", &fixed);
    let gw = gateway(&fixed).await;
    let watcher = tokio::spawn(gw.reloader(&path).watch(Duration::from_millis(50)));
    let c = h1_client();
    assert_eq!(get(&c, gw.addr(), "x", "/", &[]).await.body, "static");
    change(&gw, &path, &scaled, "ok").await;
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(
        got.body.starts_with("proc "),
        "served by a started process: {}",
        got.body
    );
    let pid = got.header("x-pid").to_owned();
    change(&gw, &path, &fixed, "ok").await;
    for _ in 0..20 {
        let got = get(&c, gw.addr(), "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert_eq!(got.body, "static");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process is stopped once it is no longer needed.
    let mut gone = false;
    for _ in 0..60 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "process {pid} still running");
    watcher.abort();
}
