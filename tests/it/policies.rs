//! Traffic policies users ask scale-to-zero proxies for: sticky splits (by cookie or by a
//! header's hash).

use crate::support::*;
use http::StatusCode;
use std::collections::HashMap;

/// Requests per new-client batch: with an 80/20 split, ±3 points is 4.7 standard deviations.
const NEW_CLIENTS: usize = 4000;

/// `n` requests with `headers`, 8 at a time; the bodies (each backend answers its name) and
/// the `Set-Cookie` each response carried.
async fn requests(
    addr: std::net::SocketAddr,
    n: usize,
    headers: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let c = h1_client();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, headers) = (c.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(8) {
                let mut h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let user = format!("user-{i}");
                if h.iter().any(|(k, _)| *k == "x-user") {
                    h.retain(|(k, _)| *k != "x-user");
                    h.push(("x-user", &user));
                }
                let got = get(&c, addr, "shop.test", "/", &h).await;
                assert_eq!(got.status, StatusCode::OK, "{}", got.body);
                let cookie = got
                    .headers
                    .get("set-cookie")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                out.push((got.body, cookie));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn shares(got: &[(String, String)]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (body, _) in got {
        *m.entry(body.clone()).or_default() += 1;
    }
    m
}

/// Asserts that `count` of `n` is within 3 points of `percent`.
fn within_3_points(count: usize, n: usize, percent: f64) {
    let got = count as f64 * 100.0 / n as f64;
    assert!(
        (got - percent).abs() <= 3.0,
        "{got:.1} % where {percent} % was asked"
    );
}

async fn shop(a: &Backend, b: &Backend, sticky: impl Fn(Svc) -> Svc) -> Gateway {
    Cfg::new()
        .admin()
        .service(sticky(
            Svc::new("shop")
                .host("shop.test")
                .traffic(Target::new("stable", 80))
                .traffic(Target::new("canary", 20).tag("canary"))
                .revision(Rev::new("stable").endpoint(a.addr))
                .revision(Rev::new("canary").endpoint(b.addr)),
        ))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_pins_keep_clients_on_their_revision_while_new_clients_split_by_percent() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = shop(&a, &b, |s| s.sticky_cookie("rouse-shop", Some("1h"))).await;
    // New clients: split 80/20, each told its pin.
    let fresh = requests(gw.addr(), NEW_CLIENTS, Vec::new()).await;
    let s = shares(&fresh);
    within_3_points(s["a"], NEW_CLIENTS, 80.0);
    within_3_points(s["b"], NEW_CLIENTS, 20.0);
    let pin_of = |rev: &str| -> String {
        let cookie = &fresh.iter().find(|(body, _)| body == rev).unwrap().1;
        let (pair, attrs) = cookie.split_once(';').unwrap();
        assert_eq!(attrs, " Path=/; HttpOnly; SameSite=Lax; Max-Age=3600");
        assert!(pair.starts_with("rouse-shop="), "{cookie}");
        pair.to_owned()
    };
    assert!(
        fresh.iter().all(|(_, c)| !c.is_empty()),
        "every new client is pinned"
    );
    // Pinned clients stay, 1,000 requests each, and are not told again.
    for (rev, pin) in [("a", pin_of("a")), ("b", pin_of("b"))] {
        let got = requests(
            gw.addr(),
            1000,
            vec![("cookie".into(), format!("x=1; {pin}"))],
        )
        .await;
        assert_eq!(shares(&got), HashMap::from([(rev.to_owned(), 1000)]));
        assert!(got.iter().all(|(_, c)| c.is_empty()));
    }
    // A tag is an explicit ask: it wins over the pin.
    let c = h1_client();
    let tagged = get(
        &c,
        gw.addr(),
        "shop.test",
        "/",
        &[("cookie", &pin_of("a")), ("rouse-tag", "canary")],
    )
    .await;
    assert_eq!(tagged.body, "b");
    let text = metrics(&gw).await;
    let count = |outcome: &str| {
        metric(
            &text,
            &format!("rouse_sticky_requests_total{{service=\"shop\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("new"), NEW_CLIENTS as f64);
    assert_eq!(count("pinned"), 2000.0);
    assert_eq!(count("replaced"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_to_a_revision_that_left_the_split_is_replaced() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = shop(&a, &b, |s| s.sticky_cookie("pin", None)).await;
    let c = h1_client();
    // Find a canary client's pin.
    let mut canary_pin = None;
    for _ in 0..200 {
        let got = get(&c, gw.addr(), "shop.test", "/", &[]).await;
        if got.body == "b" {
            canary_pin = Some(
                got.header("set-cookie")
                    .split(';')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
            break;
        }
    }
    let pin = canary_pin.expect("the canary got a client");
    assert_eq!(
        get(&c, gw.addr(), "shop.test", "/", &[("cookie", &pin)])
            .await
            .body,
        "b"
    );
    // The canary leaves the split (0 %, reachable by tag only).
    let next = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .sticky_cookie("pin", None)
                .traffic(Target::new("stable", 100))
                .traffic(Target::new("canary", 0).tag("canary"))
                .revision(Rev::new("stable").endpoint(a.addr))
                .revision(Rev::new("canary").endpoint(b.addr)),
        )
        .parse();
    gw.apply(&next).await.unwrap();
    let moved = get(&c, gw.addr(), "shop.test", "/", &[("cookie", &pin)]).await;
    assert_eq!(moved.body, "a");
    let repinned = moved.header("set-cookie");
    assert!(
        repinned.starts_with("pin=") && !repinned.starts_with(&pin),
        "{repinned}"
    );
    // The new pin holds.
    let new_pin = repinned.split(';').next().unwrap();
    let again = get(&c, gw.addr(), "shop.test", "/", &[("cookie", new_pin)]).await;
    assert_eq!((again.body.as_str(), again.header("set-cookie")), ("a", ""));
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_sticky_requests_total{service=\"shop\",outcome=\"replaced\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_pins_each_value_to_one_revision_and_values_split_by_percent() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = shop(&a, &b, |s| s.sticky_header("x-user")).await;
    // Many users, one request each: the split's shares.
    let users = requests(
        gw.addr(),
        NEW_CLIENTS,
        vec![("x-user".into(), String::new())],
    )
    .await;
    let s = shares(&users);
    within_3_points(s["a"], NEW_CLIENTS, 80.0);
    within_3_points(s["b"], NEW_CLIENTS, 20.0);
    assert!(
        users.iter().all(|(_, c)| c.is_empty()),
        "a header pin sets no cookie"
    );
    // A few users, 200 requests each: each always on one revision.
    let c = h1_client();
    for u in 0..10 {
        let user = format!("person-{u}");
        let first = get(&c, gw.addr(), "shop.test", "/", &[("x-user", &user)])
            .await
            .body;
        for _ in 0..200 {
            let got = get(&c, gw.addr(), "shop.test", "/", &[("x-user", &user)]).await;
            assert_eq!(got.body, first, "{user} moved");
        }
    }
    // Requests without the header are split by percent, as today.
    let anon = requests(gw.addr(), 400, Vec::new()).await;
    assert!(shares(&anon).len() == 2, "{:?}", shares(&anon));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_neither_wake_a_revision_nor_keep_it_up() {
    let pid_file = temp_dir("no-wake").join("backend.pid");
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("svc")
                .host("*")
                .no_wake(&["/healthz"], &["kube-probe"])
                .only(
                    Rev::new("r").scale(
                        Scale::new(app_process("r").env("PID_FILE", pid_file.to_str().unwrap()))
                            .min(0)
                            .idle_grace("1s")
                            .tick("100ms"),
                    ),
                ),
        )
        .start()
        .await;
    let rev = gw.proxy().table().revisions()[0].clone();
    let c = h1_client();
    // 1,000 health checks on a revision at zero: each answered at once, none wakes it.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, addr) = (c.clone(), gw.addr());
        tasks.push(tokio::spawn(async move {
            for _ in (w..1000).step_by(8) {
                let got = get(&c, addr, "x", "/healthz", &[]).await;
                assert_eq!(
                    (got.status, got.body.as_str()),
                    (StatusCode::SERVICE_UNAVAILABLE, "asleep\n")
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let probe = get(
        &c,
        gw.addr(),
        "x",
        "/",
        &[("user-agent", "kube-probe/1.30")],
    )
    .await;
    assert_eq!(probe.status, StatusCode::SERVICE_UNAVAILABLE);
    // Give the autoscaler three of its ticks to act on any demand it saw: there was none.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rev.phase().as_str(), "cold");
    assert_eq!(rev.desired(), 0);
    assert!(!pid_file.exists(), "a backend was started");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_no_wake_requests_total{service=\"svc\",outcome=\"answered\"}"
        ),
        1001.0
    );
    assert_eq!(
        metric(
            &text,
            "rouse_scale_events_total{service=\"svc\",revision=\"r\",direction=\"up\"}"
        ),
        0.0
    );
    // A real request wakes it.
    let real = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(real.status, StatusCode::OK);
    assert!(pid_file.exists());
    // Health checks every 20 ms: passed to the warm backend, yet it scales to zero after
    // idle_grace as if they were not there.
    let mut passed = 0;
    let mut scaled_down = false;
    for _ in 0..500 {
        let got = get(&c, gw.addr(), "x", "/healthz", &[]).await;
        if got.status == StatusCode::OK {
            passed += 1;
        }
        if rev.phase().as_str() == "cold" {
            scaled_down = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(scaled_down, "health checks kept the revision up");
    assert!(passed > 0, "health checks reached the warm backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_start_shows_clients_how_long_it_has_been_starting() {
    let gw = Cfg::new()
        .service(
            Svc::new("model").host("*").only(
                Rev::new("llm")
                    .placeholder(Placeholder::new(503, "loading\n"))
                    .waiting_page(true)
                    .scale(
                        Scale::new(
                            app_process("llm")
                                .env("BOOT_DELAY_MS", "2500")
                                .boot_timeout("1m"),
                        )
                        .min(0),
                    ),
            ),
        )
        .start()
        .await;
    let c = h1_client();
    let mut progress = Vec::new();
    let body = loop {
        let got = get(&c, gw.addr(), "x", "/", &[]).await;
        if got.status == StatusCode::OK {
            assert_eq!(
                got.header("rouse-starting-for"),
                "",
                "not starting any more"
            );
            break got.body;
        }
        assert_eq!(
            (got.status, got.body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "loading\n")
        );
        let s = got.header("rouse-starting-for");
        if !s.is_empty() {
            progress.push(s.parse::<u64>().unwrap());
        }
        assert!(progress.len() < 100, "never started: {progress:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(body.starts_with("llm "), "{body}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(
        progress.last().is_some_and(|s| *s >= 2),
        "the 2.5 s boot shows: {progress:?}"
    );
}

/// The default route's split and rollout, as `/api/status` shows them.
async fn rollout_status(gw: &Gateway) -> serde_json::Value {
    let got = get(
        &h1_client(),
        gw.admin_addr().unwrap(),
        "admin",
        "/api/status",
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    doc["services"][0]["default"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_warms_the_new_revision_then_moves_shares_with_nothing_lost() {
    let stable = Backend::start("stable").await;
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .split(&[("v1", 100), ("v2", 0)])
                .rollout("v2", "2s", 4)
                .revision(Rev::new("v1").endpoint(stable.addr))
                .revision(
                    Rev::new("v2")
                        .scale(Scale::new(app_process("v2").env("BOOT_DELAY_MS", "500")).min(0)),
                ),
        )
        .start()
        .await;
    // Clients go on all along: every answer is kept, in order, with its cold-start mark and
    // the rollout step it was sent and answered in (when those agree).
    use std::sync::atomic::{AtomicU64, Ordering};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let step = std::sync::Arc::new(AtomicU64::new(u64::MAX));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (tx, done, step, addr) = (tx.clone(), done.clone(), step.clone(), gw.addr());
        workers.push(tokio::spawn(async move {
            let c = h1_client();
            while !done.load(Ordering::SeqCst) {
                let before = step.load(Ordering::SeqCst);
                let got = get(&c, addr, "shop.test", "/", &[]).await;
                let after = step.load(Ordering::SeqCst);
                let cold = got.header("rouse-cold-start").to_owned();
                let at = (before == after && before != u64::MAX).then_some(before);
                let _ = tx.send((got.status, got.body, cold, at));
            }
        }));
    }
    drop(tx);
    let mut state = String::new();
    for _ in 0..1000 {
        let view = rollout_status(&gw).await;
        state = view["rollout"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        step.store(
            view["rollout"]["step"].as_u64().unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        if state == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state, "done");
    let view = rollout_status(&gw).await;
    assert_eq!(
        (&view["arms"][0]["percent"], &view["arms"][1]["percent"]),
        (&0.into(), &100.into())
    );
    assert_eq!(view["rollout"]["step"], 4);
    // A little more traffic on the finished split, then the tally.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let mut answers = Vec::new();
    while let Some(a) = rx.recv().await {
        answers.push(a);
    }
    assert!(answers.len() > 100, "{} answers", answers.len());
    assert!(
        answers.iter().all(|(s, _, _, _)| *s == StatusCode::OK),
        "a request failed"
    );
    let to_v2: Vec<bool> = answers
        .iter()
        .map(|(_, body, _, _)| body.starts_with("v2 "))
        .collect();
    assert!(
        answers
            .iter()
            .all(|(_, body, cold, _)| !body.starts_with("v2 ") || cold.is_empty()),
        "v2 got a share before it was warm"
    );
    // None at first, all at the end.
    assert!(!to_v2[0], "the first answer came from v2");
    assert!(
        to_v2[to_v2.len() - 10..].iter().all(|v| *v),
        "the last answers are v2's"
    );
    // In each step, v2's share is the step's (0 while warming, then 25, 50, 75, 100 %), within
    // five standard deviations of its sample (an answer near a step change may be counted in
    // the step before or after it, hence a floor of 0.1).
    let mut checked = Vec::new();
    for k in 0..=4u64 {
        let in_step: Vec<bool> = answers
            .iter()
            .filter(|a| a.3 == Some(k))
            .map(|a| a.1.starts_with("v2 "))
            .collect();
        let n = in_step.len();
        if n < 20 {
            continue;
        }
        let share = in_step.iter().filter(|v| **v).count() as f64 / n as f64;
        let want = k as f64 / 4.0;
        let tolerance = (5.0 * (want * (1.0 - want) / n as f64).sqrt()).max(0.1);
        assert!(
            (share - want).abs() <= tolerance,
            "step {k}: v2 share {share:.2} of {n}, want {want} ± {tolerance:.2}"
        );
        checked.push((k, n));
    }
    assert!(checked.len() >= 4, "too few answers per step: {checked:?}");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_rollout_share{service=\"shop\",revision=\"v2\"}"
        ),
        100.0
    );
    assert_eq!(
        metric(
            &text,
            "rouse_rollout_state{service=\"shop\",revision=\"v2\",state=\"done\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_can_be_stopped_where_it_is() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .split(&[("v1", 100), ("v2", 0)])
                .rollout("v2", "10s", 10)
                .revision(Rev::new("v1").endpoint(a.addr))
                .revision(Rev::new("v2").endpoint(b.addr)),
        )
        .start()
        .await;
    let admin = gw.admin_addr().unwrap();
    let c = h1_client();
    let post = |path: &str| {
        http::Request::post(format!("http://{admin}{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    wait_until_async(|| async { rollout_status(&gw).await["rollout"]["step"].as_u64() >= Some(2) })
        .await;
    let stopped = send(&c, post("/api/rollouts/shop/stop")).await;
    assert_eq!(
        (stopped.status, stopped.body.as_str()),
        (StatusCode::OK, "rollout of shop stopped\n")
    );
    let view = rollout_status(&gw).await;
    assert_eq!(view["rollout"]["state"], "stopped");
    let frozen = view["arms"][1]["percent"].clone();
    // Two more step lengths: nothing moves.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let later = rollout_status(&gw).await;
    assert_eq!(
        (&later["arms"][1]["percent"], &later["rollout"]["state"]),
        (&frozen, &"stopped".into())
    );
    // Unknown services and other methods are told what is wrong.
    let none = send(&c, post("/api/rollouts/nope/stop")).await;
    assert_eq!(
        (none.status, none.body.as_str()),
        (
            StatusCode::NOT_FOUND,
            "service nope has no rollout going on\n"
        )
    );
    let got = get(&c, admin, "admin", "/api/rollouts/shop/stop", &[]).await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Waits (up to 10 s) until an async condition holds.
async fn wait_until_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if cond().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("condition not met within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_holds_across_the_services_routes() {
    let (a, b, api) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("api").await,
    );
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .sticky_cookie("pin", None)
                .split(&[("stable", 50), ("canary", 50)])
                .route(Route::new("/api").to("backend"))
                .revision(Rev::new("stable").endpoint(a.addr))
                .revision(Rev::new("canary").endpoint(b.addr))
                .revision(Rev::new("backend").endpoint(api.addr)),
        )
        .start()
        .await;
    let c = h1_client();
    let first = get(&c, gw.addr(), "shop.test", "/", &[]).await;
    let pin = first
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The API route has no share for the pinned revision: it answers, and leaves the pin.
    let api_call = get(&c, gw.addr(), "shop.test", "/api/x", &[("cookie", &pin)]).await;
    assert_eq!(
        (api_call.body.as_str(), api_call.header("set-cookie")),
        ("api", "")
    );
    for _ in 0..50 {
        let again = get(&c, gw.addr(), "shop.test", "/", &[("cookie", &pin)]).await;
        assert_eq!(
            (again.body.as_str(), again.header("set-cookie")),
            (first.body.as_str(), "")
        );
    }
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_sticky_requests_total{service=\"shop\",outcome=\"replaced\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_reach_one_process_through_one_cold_start() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("model").host("*").only(
                Rev::new("m").grpc_port(0).scale(
                    Scale::new(
                        Process::new(&[&two_port_backend(), "--grpc", "{grpc_port}"])
                            .ready_http_get("/"),
                    )
                    .min(0),
                ),
            ),
        )
        .start()
        .await;
    // A gRPC call first: it wakes the revision and waits for it, over h2c to its gRPC port.
    let call = grpc_call(gw.addr(), "model.local", "hello").await;
    assert_eq!(call.status, StatusCode::OK);
    assert_eq!(
        call.headers
            .get("rouse-cold-start")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "{:?}",
        call.headers
    );
    assert_eq!(call.grpc_status, "0");
    let grpc_pid = call
        .reply
        .strip_prefix("grpc ")
        .and_then(|r| r.strip_suffix(":hello"))
        .unwrap_or_else(|| panic!("{}", call.reply))
        .to_owned();
    // REST goes to the same process's HTTP port.
    let rest = get(&h1_client(), gw.addr(), "x", "/v2/models/m", &[]).await;
    assert_eq!(rest.status, StatusCode::OK);
    assert_eq!(
        rest.body,
        format!("rest {grpc_pid}"),
        "one process serves both"
    );
    // And one process was started.
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "rouse_scale_events_total{service=\"model\",revision=\"m\",direction=\"up\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "rouse_revision_endpoints{service=\"model\",revision=\"m\"}"
        ),
        1.0
    );
}
