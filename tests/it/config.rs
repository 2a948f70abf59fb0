//! Config validation: a file with mistakes is rejected at load, by the parser, `rouse validate`
//! and `rouse run` alike, with the key path of each problem. The YAML text here is the input
//! under test, so it is written out literally rather than built.

use crate::support::*;

const GOOD: &str = r#"
listen: "127.0.0.1:8080"
admin: "127.0.0.1:9901"
services:
  - name: hello
    hosts: ["hello.example.com", "hello"]
    routes:
      - path: /api
        headers: { x-canary: "yes" }
        set_headers: { x-route: api }
        traffic:
          - { revision: hello-v2, percent: 100 }
    traffic:
      - { revision: hello-v1, percent: 90 }
      - { revision: hello-v2, percent: 10, tag: canary, set_headers: { x-rev: v2 } }
      - { revision: hello-v3, percent: 0, tag: next }
    revisions:
      - name: hello-v1
        protocol: http1
        container_concurrency: 0
        endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
      - name: hello-v2
        container_concurrency: 4
        endpoints: ["127.0.0.1:9003"]
      - name: hello-v3
        endpoints: ["127.0.0.1:9004"]
"#;

fn issues(yaml: &str) -> Vec<String> {
    match Config::parse(yaml) {
        Ok(_) => vec![],
        Err(e) => e.issues().iter().map(ToString::to_string).collect(),
    }
}

fn assert_rejected(yaml: &str, expected: &str) {
    let got = issues(yaml);
    assert!(
        got.iter().any(|i| i.contains(expected)),
        "expected an issue containing {expected:?}, got {got:#?}"
    );
}

#[test]
fn the_documented_example_is_valid() {
    let cfg = Config::parse(GOOD).unwrap();
    assert_eq!(cfg.services[0].revisions[1].container_concurrency, 4);
    assert_eq!(cfg.services[0].revisions[0].queue.max_requests, 1000);
    // Every example shipped in config/ must load.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}

#[test]
fn each_mistake_names_its_key_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "percent: 90",
            "percent: 85",
            "services[0].traffic: percents sum to 95, must be 100",
        ),
        (
            "revision: hello-v3, percent: 0",
            "revision: hello-v9, percent: 0",
            "services[0].traffic[2].revision: \"hello-v9\" is not a revision of this service (known: hello-v1, hello-v2, hello-v3)",
        ),
        (
            "tag: next",
            "tag: canary",
            "services[0].traffic[2].tag: \"canary\" is already the tag",
        ),
        (
            "path: /api",
            "path: api",
            "services[0].routes[0].path: \"api\" must start with \"/\"",
        ),
        (
            "x-canary: \"yes\"",
            "\"bad header\": \"yes\"",
            "services[0].routes[0].headers.bad header: \"bad header\" is not a valid header name",
        ),
        (
            "x-route: api",
            "connection: close",
            "services[0].routes[0].set_headers.connection: \"connection\" is a hop-by-hop header",
        ),
        (
            "- name: hello-v3",
            "- name: hello-v1",
            "services[0].revisions[2].name: \"hello-v1\" is already the name of revisions[0]",
        ),
        (
            "\"127.0.0.1:9003\"",
            "\"not-an-address\"",
            "services[0].revisions[1].endpoints[0]: \"not-an-address\" is not an address",
        ),
        (
            "\"127.0.0.1:9004\"",
            "\"127.0.0.1:9001\", \"127.0.0.1:9001\"",
            "services[0].revisions[2].endpoints[1]: 127.0.0.1:9001 is listed twice",
        ),
        (
            "protocol: http1",
            "protocol: http3",
            "services[0].revisions[0].protocol: expected one of http1, h2c or auto, got \"http3\"",
        ),
        (
            "protocol: http1",
            "protocol: auto\n        tls: { ca: ca.pem }",
            "services[0].revisions[0].protocol: auto cannot be combined with tls",
        ),
        (
            "container_concurrency: 4",
            "container_concurrency: -1",
            "services[0].revisions[1].container_concurrency",
        ),
        (
            "container_concurrency: 0",
            "container_concurency: 0",
            "services[0].revisions[0].container_concurency: unknown key \"container_concurency\"; did you mean \"container_concurrency\"? The keys here are name, protocol, container_concurrency,",
        ),
        (
            "listen: \"127.0.0.1:8080\"",
            "listen: \"nowhere\"",
            "listen: \"nowhere\" is not an address",
        ),
        (
            "\"hello.example.com\", ",
            "\"hello.example.com:80\", ",
            "services[0].hosts[0]: \"hello.example.com:80\" has a port",
        ),
        (
            "hosts: [\"hello.example.com\", \"hello\"]",
            "hosts: []",
            "services[0].hosts: empty",
        ),
        (
            "{ revision: hello-v2, percent: 100 }",
            "{ revision: hello-v2, percent: 150 }",
            "services[0].routes[0].traffic[0].percent: 150 is over 100",
        ),
        (
            "endpoints: [\"127.0.0.1:9004\"]",
            "endpoints: []",
            "services[0].revisions[2].endpoints: empty",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(
            GOOD.contains(from),
            "case {from:?} does not apply to the example"
        );
        assert_rejected(&GOOD.replacen(from, to, 1), expected);
    }
}

#[test]
fn every_problem_is_reported_at_once_and_units_are_checked() {
    let yaml =
        GOOD.replacen("percent: 90", "percent: 80", 1)
            .replacen("path: /api", "path: api", 1);
    assert_eq!(issues(&yaml).len(), 2, "{:#?}", issues(&yaml));
    let timeouts = GOOD.replacen(
        "    routes:",
        "    timeouts: { request: soon }\n    routes:",
        1,
    );
    assert_rejected(
        &timeouts,
        "services[0].timeouts.request: invalid duration \"soon\"",
    );
    let queue = GOOD.replacen(
        "        endpoints: [\"127.0.0.1:9004\"]",
        "        endpoints: [\"127.0.0.1:9004\"]\n        queue: { max_bytes: 12 parsecs }",
        1,
    );
    assert_rejected(
        &queue,
        "services[0].revisions[2].queue.max_bytes: unknown size unit",
    );
    assert_rejected(
        "listen: [",
        "listen: expected an address like 127.0.0.1:8080, got a list",
    );
    assert_rejected("services: []\nlisten: 127.0.0.1:1", "services: no services");
    assert_rejected(
        "listen: 127.0.0.1:1",
        "services: no services; add at least one service",
    );
    let dup_host = format!(
        "{GOOD}  - name: two\n    hosts: [\"HELLO\"]\n    traffic: [{{ revision: a, percent: 100 }}]\n    revisions: [{{ name: a, endpoints: [\"127.0.0.1:1\"] }}]\n"
    );
    assert_rejected(
        &dup_host,
        "services[1].hosts[0]: \"HELLO\" is already a host of services[0]",
    );
}

#[test]
fn validate_command_exits_nonzero_with_key_paths() {
    let good = write_config("valid", GOOD);
    let out = std::process::Command::new(bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 service, 3 revisions)"));
    let bad = write_config("invalid", &GOOD.replacen("percent: 90", "percent: 85", 1));
    let out = std::process::Command::new(bin())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services[0].traffic: percents sum to 95, must be 100"),
        "{err}"
    );
    // `gateway` (and `run`, its older name) refuses to start on the same file, before binding
    // anything.
    for verb in ["gateway", "run"] {
        let out = std::process::Command::new(bin())
            .args([verb, "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{verb}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("percents sum to 95"),
            "{verb}"
        );
    }
    let out = std::process::Command::new(bin())
        .args(["validate", "--config", "/nonexistent/rouse.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn scale_section_mistakes_name_their_key_paths() {
    let base = |scale: &str| {
        format!(
            "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - name: r\n        scale:\n{scale}"
        )
    };
    let proc_ =
        "          process: { command: [\"python3\", \"-m\", \"http.server\", \"{port}\"] }\n";
    assert!(
        issues(&base(proc_)).is_empty(),
        "{:#?}",
        issues(&base(proc_))
    );
    let cases: &[(String, &str)] = &[
        (
            base("          max: 2\n"),
            "services[0].revisions[0].scale.process: missing",
        ),
        (
            base(&format!("          min: 3\n          max: 2\n{proc_}")),
            "services[0].revisions[0].scale.min: 3 is above max 2",
        ),
        (
            base(&format!("          max: 0\n{proc_}")),
            "services[0].revisions[0].scale.max: must be at least 1",
        ),
        (
            base(&format!("          target: 0\n{proc_}")),
            "services[0].revisions[0].scale.target: must be a number above 0",
        ),
        (
            base(&format!("          idle_grace: 0s\n{proc_}")),
            "services[0].revisions[0].scale.idle_grace: must be greater than 0",
        ),
        (
            base(&format!(
                "          panic_threshold_percentage: 50\n{proc_}"
            )),
            "scale.panic_threshold_percentage: must be above 100",
        ),
        (
            base("          process: { command: [] }\n"),
            "services[0].revisions[0].scale.process.command: empty",
        ),
        (
            base("          process: { command: [x], ready: udp }\n"),
            "services[0].revisions[0].scale.process.ready: unknown check \"udp\"",
        ),
        (
            base("          process: { command: [x], ready: { http_get: health } }\n"),
            "scale.process.ready.http_get: \"health\" must start with \"/\"",
        ),
        (
            base("          process: { command: [x], boot_timeout: never }\n"),
            "scale.process.boot_timeout: invalid duration \"never\"",
        ),
        (
            base(&proc_.replace("process:", "procss:")),
            "services[0].revisions[0].scale.procss: unknown key \"procss\"; did you mean \"process\"?",
        ),
        (
            base(proc_).replace(
                "      - name: r\n",
                "      - name: r\n        endpoints: [\"127.0.0.1:9\"]\n",
            ),
            "services[0].revisions[0].endpoints: must be empty when scale.process starts the endpoints",
        ),
        (
            base(proc_).replace(
                "      - name: r\n",
                "      - name: r\n        cold_start: { placeholder: { status: 42 } }\n",
            ),
            "services[0].revisions[0].cold_start.placeholder.status: 42 is not a final HTTP status",
        ),
    ];
    for (yaml, expected) in cases {
        assert_rejected(yaml, expected);
    }
}

/// Hostile or odd input files: a byte-order mark is ignored, a huge value is named without
/// being echoed, and a file too large or nested too deep is refused before it is parsed.
#[test]
fn odd_and_hostile_files_get_short_clear_answers() {
    let with_bom = format!("\u{feff}{GOOD}");
    assert!(Config::parse(&with_bom).is_ok(), "{:?}", issues(&with_bom));
    // A value of 100,000 characters: quoted in part, and the answer stays short.
    let huge = GOOD.replacen(
        "listen: \"127.0.0.1:8080\"",
        &format!("listen: \"{}\"", "9".repeat(100_000)),
        1,
    );
    assert_ne!(huge, GOOD);
    let got = issues(&huge);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("listen: "), "{}", got[0]);
    assert!(got[0].contains("(100000 characters)"), "{}", got[0]);
    assert!(got[0].len() < 300, "{} characters", got[0].len());
    // Over the size limit: refused by its size, whatever it holds.
    let big = format!("{GOOD}\n# {}\n", "x".repeat(5 << 20));
    assert_rejected(&big, "over the limit of 4194304");
    let file = write_config("big", &big);
    let e = Config::load(&file).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
    // Nested 100,000 deep.
    let deep = format!(
        "{GOOD}\nx: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_rejected(&deep, "nests deeper than 64 levels");
}

/// `rouse validate --config path`: its exit code, the problems it lists (trimmed, one per
/// line after `invalid config:`), and all it wrote to stderr.
fn validate(path: &std::path::Path) -> (Option<i32>, Vec<String>, String) {
    let out = std::process::Command::new(bin())
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let problems = err
        .lines()
        .skip_while(|l| !l.ends_with("invalid config:"))
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    (out.status.code(), problems, err)
}

/// The fenced blocks of a Markdown text: (language, body).
fn fenced_blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The worked examples of docs/config.md are what `rouse validate` prints for them: each
/// `$ rouse validate --config X.yaml` block is checked against the YAML block before it, so
/// the doc cannot drift from the program.
#[test]
fn the_worked_examples_in_config_md_are_what_rouse_validate_prints() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let blocks = fenced_blocks(&doc);
    let mut checked = Vec::new();
    for (i, (lang, body)) in blocks.iter().enumerate() {
        let Some(first) = body.lines().next() else {
            continue;
        };
        let Some(file) = first.strip_prefix("$ rouse validate --config ") else {
            continue;
        };
        if lang != "text" {
            continue;
        }
        // Examples whose file the doc does not show.
        if file == "typo.yaml" || file == "shop.yaml" {
            continue;
        }
        if file == "k8s.yaml" && !cfg!(feature = "kubernetes") {
            continue;
        }
        let yaml = &blocks[..i]
            .iter()
            .rev()
            .find(|(l, _)| l == "yaml")
            .expect("a YAML block before the output")
            .1;
        // A fragment of one service's revisions goes into a service.
        let yaml = if yaml.starts_with("    revisions:") {
            format!(
                "listen: 127.0.0.1:8080\nservices:\n  - name: hello\n    hosts: ['*']\n    traffic: [{{ revision: v1, percent: 100 }}]\n{yaml}"
            )
        } else {
            yaml.clone()
        };
        let path = temp_dir("doc-example").join(file);
        std::fs::write(&path, yaml).unwrap();
        let (code, got, _) = validate(&path);
        assert_eq!(code, Some(1), "{file}");
        let want: Vec<String> = body
            .lines()
            .skip(2)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(got, want, "docs/config.md's {file} example");
        checked.push(file.to_owned());
    }
    let mut want = vec!["bad.yaml", "scale.yaml", "tls.yaml"];
    if cfg!(feature = "kubernetes") {
        want.push("k8s.yaml");
    }
    assert_eq!(checked, want);
}

/// The annotated example at the top of docs/config.md is a working config: with its TLS files
/// in place it passes `rouse validate`, but for the Kubernetes revision in a build without
/// the `kubernetes` feature, which is refused by name, as the doc says.
#[test]
fn the_annotated_example_in_config_md_validates() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let example = fenced_blocks(&doc)
        .into_iter()
        .find(|(l, b)| l == "yaml" && b.starts_with("# Data listener"))
        .expect("the annotated example")
        .1;
    let dir = temp_dir("doc-annotated");
    let mut p = rcgen::CertificateParams::new(vec!["hello.example.com".to_owned()]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(dir.join("hello.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("hello.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("internal-ca.pem"), cert.pem()).unwrap();
    let yaml = example.replace("/etc/rouse/tls/", &format!("{}/", dir.display()));
    let path = dir.join("rouse.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, problems, err) = validate(&path);
    if cfg!(feature = "kubernetes") {
        assert_eq!(code, Some(0), "{err}");
    } else {
        assert_eq!(problems.len(), 1, "{err}");
        assert!(
            problems[0].contains(".kubernetes: this rouse was built without Kubernetes support"),
            "{err}"
        );
    }
}
