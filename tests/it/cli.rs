//! The `rouse` command as an operator types it: `validate` and `routes` on a file or a running
//! rouse, `run --listen/--admin` when the config's ports are taken, an address in use named by
//! its key, and JSON log lines.

use crate::support::*;
use http::StatusCode;
use std::process::{Command, Stdio};

const SHOP: &str = r#"
listen: "127.0.0.1:0"
services:
  - name: shop
    hosts: ["shop.test"]
    routes:
      - path: /api
        traffic: [{ revision: v2, percent: 100 }]
    traffic:
      - { revision: v1, percent: 90, tag: stable }
      - { revision: v2, percent: 10 }
    revisions:
      - { name: v1, endpoints: ["127.0.0.1:9"] }
      - { name: v2, endpoints: ["127.0.0.1:9"] }
"#;

const SHOP_ROUTES: &str = "shop  hosts: shop.test
  /api                     -> v2 100%
  (default)                -> v1 90% (tag stable), v2 10%
";

fn rouse(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_takes_the_file_bare_or_by_flag_and_counts_in_words() {
    let path = write_config("cli-validate", SHOP);
    let p = path.to_str().unwrap();
    for args in [vec!["validate", p], vec!["validate", "--config", p]] {
        let (code, out, err) = rouse(&args);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out, format!("{p}: valid (1 service, 2 revisions)\n"));
    }
    let (code, _, err) = rouse(&["validate"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("give the config file to check: rouse validate FILE"),
        "{err}"
    );
}

#[test]
fn routes_prints_a_files_route_table() {
    let path = write_config("cli-routes", SHOP);
    let (code, out, err) = rouse(&["routes", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, SHOP_ROUTES);
    let (code, _, err) = rouse(&["routes"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("rouse routes --admin 127.0.0.1:9901"), "{err}");
    let bad = write_config("cli-routes-bad", "listen: nowhere\n");
    let (code, out, err) = rouse(&["routes", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert!(err.contains("listen"), "the bad key is named: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_asks_a_running_rouse_and_says_when_nothing_answers() {
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("shop")
                .host("shop.test")
                .split(&[("v1", 90), ("v2", 10)])
                .route(Route::new("/api").to("v2"))
                .revision(Rev::new("v1").endpoint("127.0.0.1:9"))
                .revision(Rev::new("v2").endpoint("127.0.0.1:9")),
        )
        .start()
        .await;
    let admin = gw.admin_addr().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || rouse(&["routes", "--admin", &admin]))
        .await
        .unwrap();
    assert_eq!(out.0, Some(0), "{}", out.2);
    assert_eq!(out.1, SHOP_ROUTES.replace(" (tag stable)", ""));
    let nobody = dead_addr().await.to_string();
    let (code, _, err) = rouse(&["routes", "--admin", &nobody]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot ask the rouse at {nobody}"))
            && err.contains("`admin` address"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_listens_where_the_flags_say_and_names_an_address_in_use() {
    let b = Backend::start("b").await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let taken_too = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_admin = taken_too.local_addr().unwrap();
    let cfg = Cfg::new()
        .listen(taken_addr)
        .admin_at(taken_admin)
        .service(Svc::single(Rev::new("r").endpoint(b.addr)))
        .write("cli-run");
    let c = cfg.to_str().unwrap().to_owned();
    // The config's own address is taken: the error names it and its key.
    let (code, _, err) = rouse(&["run", &c]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot listen on {taken_addr} (`listen`): "))
            && err.contains("another process listens there"),
        "{err}"
    );
    // --listen moves the data listener; the admin address is still taken, and named.
    let listen = dead_addr().await;
    let (code, _, err) = rouse(&["run", &c, "--listen", &listen.to_string()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot listen on {taken_admin} (`admin`)")),
        "{err}"
    );
    // Both moved: it serves there, with JSON log lines.
    let admin = dead_addr().await;
    let log = cfg.with_file_name("rouse.log");
    let _p = Proc(
        Command::new(bin())
            .args(["--log-format", "json", "run", &c])
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(listen).await;
    wait_ready(admin).await;
    let got = get(&h1_client(), listen, "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "b");
    // A reload keeps the command line's addresses: the file still says the taken ones, and
    // the reload neither moves the listener nor warns about it.
    let b2 = Backend::start("b2").await;
    std::fs::write(
        &cfg,
        Cfg::new()
            .listen(taken_addr)
            .admin_at(taken_admin)
            .service(Svc::single(Rev::new("r").endpoint(b2.addr)))
            .yaml(),
    )
    .unwrap();
    signal(_p.0.id(), "-HUP");
    let client = h1_client();
    let mut body = String::new();
    for _ in 0..200 {
        body = get(&client, listen, "x", "/", &[]).await.body;
        if body == "b2" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(body, "b2", "the reload applied, on the --listen address");
    // The log line comes after the new table is in place: it is waited for, not assumed.
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("config reloaded") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(text.contains("config reloaded"), "{text}");
    assert!(!text.contains("change only on restart"), "{text}");
    let first = text.lines().next().expect("a log line");
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(line["level"], "INFO");
    assert!(line["message"].is_string(), "{line}");
    assert!(!text.contains('\u{1b}'), "no colour codes in a file");
    // A bad address is refused by clap with how to write it.
    let (code, _, err) = rouse(&["run", &c, "--listen", "8081"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("write it as ip:port"), "{err}");
}

/// A rouse process stopped with SIGTERM (so that it stops the backends it started) when the
/// test ends, passed or failed.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0.id(), "-TERM");
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's demo, on ports of the test's own, answers the README's curl lines as the
/// README says: the first request is held through a cold start, a tag picks v2, and the admin
/// port serves metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_answers_its_curl_lines() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme.find("The demo (`config/demo.yaml`)").unwrap()..];
    let block = &after[after.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let curls: Vec<&str> = block.lines().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 3, "{block}");
    let (listen, admin) = (dead_addr().await, dead_addr().await);
    let _demo = Stopped(
        Command::new(bin())
            .args([
                "run",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(listen).await;
    wait_ready(admin).await;
    let mut outputs = Vec::new();
    for line in curls {
        let cmd = line
            .split(" #")
            .next()
            .unwrap()
            .replace("127.0.0.1:8080", &listen.to_string())
            .replace("127.0.0.1:9901", &admin.to_string());
        // A hang guard: rouse answers in well under it.
        let cmd = cmd.replacen("curl ", "curl --max-time 60 ", 1);
        let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let first = outputs[0].to_ascii_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(
        first.contains("rouse-cold-start: true"),
        "held through a cold start: {first}"
    );
    assert!(first.contains("hello from hello-v"), "{first}");
    assert!(
        outputs[1].starts_with("hello from hello-v2 "),
        "{}",
        outputs[1]
    );
    assert!(
        outputs[2].contains("rouse_revision_endpoints{service=\"hello\",revision=\"hello-v2\"} 1")
            && outputs[2].trim_end().ends_with("# EOF"),
        "{}",
        outputs[2]
    );
    // The status page the README points a browser at.
    let page = get(&h1_client(), admin, "x", "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type").starts_with("text/html"),
        "{:?}",
        page.headers
    );
}
