//! What people see in a real browser: the status page on the admin port, and the waiting page
//! a browser gets while a revision starts. Headless Chromium (Debian's `chromium`) loads them
//! against a running rouse; the tests check the DOM it ends with, and save a screenshot of
//! the status page as a test artefact (`target/test-artefacts/status.png`).
//!
//! Without Chromium on the machine these tests say so and pass, so `cargo test` needs nothing
//! beyond Rust and Python; `.ci/run` installs Chromium and sets `ROUSE_REQUIRE_BROWSER=1`,
//! which makes a missing browser a failure.

use crate::support::*;
use http::StatusCode;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Chromium's path, or `None` (after saying so) when it is absent and not required.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("ROUSE_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("ROUSE_REQUIRE_BROWSER").is_none(),
            "ROUSE_REQUIRE_BROWSER is set but Chromium is missing: apt-get install chromium"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium to run the browser tests)");
    }
    found
}

/// Loads `url` in headless Chromium, lets its timers run for `budget` of virtual time (page
/// scripts, polling, meta refreshes), and returns the DOM it ends with; with `screenshot`,
/// also saves a phone-sized screenshot there.
async fn load(chrome: &Path, url: &str, budget: Duration, screenshot: Option<&Path>) -> String {
    let profile = temp_dir("chromium-profile");
    let mut cmd = tokio::process::Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=412,1200",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={}", budget.as_millis()))
    .kill_on_drop(true)
    .stdin(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.arg(url).output())
        .await
        .expect("Chromium finishes within 90 s")
        .expect("Chromium runs");
    assert!(out.status.success(), "Chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn backend(rev: &str) -> Process {
    app_process(rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_revisions_splits_and_a_cold_start_in_a_browser() {
    let Some(chrome) = chromium() else { return };
    let b = Backend::start("b").await;
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .split(&[("stable", 80), ("canary", 20)])
                .revision(Rev::new("stable").cc(4).endpoint(b.addr))
                .revision(Rev::new("canary").endpoint(b.addr)),
        )
        .service(
            Svc::new("lab")
                .host("lab.test")
                .only(Rev::new("model").scale(Scale::new(backend("model")).min(0))),
        )
        .service(
            Svc::new("deploy")
                .host("deploy.test")
                .split(&[("blue", 100), ("green", 0)])
                .rollout("green", "1h", 10)
                .revision(Rev::new("blue").endpoint(b.addr))
                .revision(Rev::new("green").endpoint(b.addr)),
        )
        .service(
            Svc::new("idle")
                .host("idle.test")
                .only(Rev::new("sleeper").scale(Scale::new(backend("sleeper")).min(0))),
        )
        .start()
        .await;
    let c = h1_client();
    for _ in 0..20 {
        assert_eq!(
            get(&c, gw.addr(), "shop.test", "/", &[]).await.status,
            StatusCode::OK
        );
    }
    let cold = get(&c, gw.addr(), "lab.test", "/", &[]).await;
    assert_eq!(cold.status, StatusCode::OK);
    assert_eq!(cold.header("rouse-cold-start"), "true");
    let url = format!("http://{}/", gw.admin_addr().unwrap());
    let dom = load(&chrome, &url, Duration::from_secs(3), None).await;
    // Each revision is a card with its phase, as the page's script rendered it from the JSON.
    for (rev, phase) in [
        ("shop/stable", "warm"),
        ("shop/canary", "warm"),
        ("lab/model", "warm"),
        ("idle/sleeper", "cold"),
    ] {
        let card = format!(r#"data-revision="{rev}" data-phase="{phase}""#);
        assert!(dom.contains(&card), "no {card} in the page:\n{dom}");
    }
    assert!(
        dom.contains(r#"class="split" data-service="shop""#),
        "{dom}"
    );
    assert!(
        dom.contains("stable 80%"),
        "the split's shares are shown:\n{dom}"
    );
    // A rollout shows where it is, and the split its current shares.
    assert!(
        dom.contains("rollout to green: moving, step 1 of 10"),
        "{dom}"
    );
    assert!(
        dom.contains("blue 90%") && dom.contains("green 10%"),
        "{dom}"
    );
    // The cold start is listed with its revision.
    let starts = &dom[dom
        .find(r#"id="cold-starts""#)
        .expect("a cold-start section")..];
    let starts = &starts[..starts.find("</section>").unwrap_or(starts.len())];
    assert!(starts.contains("model"), "{starts}");
    assert!(!starts.contains("none yet"), "{starts}");
    // Data arrived: the page says when, and shows no offline banner.
    assert!(
        dom.contains(r#"id="updated""#) && dom.contains("updated "),
        "{dom}"
    );
    let offline = dom.find(r#"id="offline""#).map(|i| &dom[i..i + 60]);
    assert!(offline.is_none_or(|o| o.contains("hidden")), "{offline:?}");
    // And a screenshot, phone-sized, kept for people to look at.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status.png");
    let _ = std::fs::remove_file(&shot);
    load(&chrome, &url, Duration::from_secs(3), Some(&shot)).await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_waits_on_the_waiting_page_and_lands_on_the_started_site() {
    let Some(chrome) = chromium() else { return };
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("site").host("*").only(
                Rev::new("web")
                    .waiting_page(true)
                    .scale(Scale::new(backend("web").env("BOOT_DELAY_MS", "500")).min(0)),
            ),
        )
        .start()
        .await;
    let url = format!("http://{}/", gw.addr());
    // Meta refresh every 2 s: within 12 s of virtual time the browser has reloaded onto the
    // started backend, whose answer names its revision.
    let dom = load(&chrome, &url, Duration::from_secs(12), None).await;
    assert!(
        dom.contains("web "),
        "the browser did not land on the site:\n{dom}"
    );
    assert!(!dom.contains("Starting"), "{dom}");
    // It got there through the waiting page (a 503), not by being held.
    let text = metrics(&gw).await;
    let pages = metric(
        &text,
        r#"rouse_requests_total{service="site",revision="web",code="5xx"}"#,
    );
    assert!(pages >= 1.0, "no waiting page was served:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_page_is_for_browsers_and_other_clients_still_wait() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("site").host("*").only(
                Rev::new("<web>")
                    .waiting_page(true)
                    .scale(Scale::new(backend("web").env("BOOT_DELAY_MS", "300")).min(0)),
            ),
        )
        .start()
        .await;
    let c = h1_client();
    let page = get(
        &c,
        gw.addr(),
        "x",
        "/",
        &[("accept", "text/html,*/*;q=0.8")],
    )
    .await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("retry-after"), "2");
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(page.header("rouse-cold-start"), "true");
    assert!(
        page.body
            .contains(r#"<meta http-equiv="refresh" content="2">"#)
    );
    assert!(
        page.body
            .contains("Starting <span id=\"revision\">&lt;web&gt;</span>"),
        "{}",
        page.body
    );
    // The page's request started the revision: a client that does not ask for HTML is held
    // and answered by the backend.
    let api = get(&c, gw.addr(), "x", "/", &[("accept", "application/json")]).await;
    assert_eq!(api.status, StatusCode::OK);
    assert!(api.body.starts_with("web "), "{}", api.body);
    // Once it is up, browsers get the site itself.
    let site = get(&c, gw.addr(), "x", "/", &[("accept", "text/html")]).await;
    assert_eq!(site.status, StatusCode::OK);
    assert!(site.body.starts_with("web "), "{}", site.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_start_browsers_get_the_failure_not_the_waiting_page() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("site").host("*").only(
                Rev::new("web")
                    .waiting_page(true)
                    .scale(Scale::new(backend("web").env("FAIL_BOOT", "3")).min(0)),
            ),
        )
        .start()
        .await;
    let c = h1_client();
    let html = [("accept", "text/html")];
    let first = get(&c, gw.addr(), "x", "/", &html).await;
    assert!(first.body.contains("Starting"), "{}", first.body);
    let rev = gw.proxy().table().revisions()[0].clone();
    wait_until("the start to fail", || rev.phase().as_str() == "failed").await;
    let after = get(&c, gw.addr(), "x", "/", &html).await;
    assert_eq!(after.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        after.header("rouse-error"),
        "start-failed",
        "{}",
        after.body
    );
    assert!(!after.body.contains("Starting"));
}
