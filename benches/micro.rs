//! Micro-benchmarks of the hot data structures: `cargo bench --bench micro`.
//!
//! Each measures one step of the request path in isolation, so a regression shows up here
//! before it is lost in end-to-end noise.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use rouse::config::Config;
use rouse::metrics::Metrics;
use rouse::proxy::router::RouteTable;
use rouse::proxy::split::Split;
use rouse::revision::stats::ConcurrencyStats;
use std::hint::black_box;
use std::sync::Arc;
use tokio::time::Instant;

fn table(hosts: usize) -> RouteTable {
    let mut yaml = String::from("listen: 127.0.0.1:0\nservices:\n");
    for i in 0..hosts {
        yaml += &format!(
            "  - name: s{i}\n    hosts: [\"host{i}.example.com\"]\n    routes:\n      - {{ path: /api, traffic: [{{ revision: r, percent: 100 }}] }}\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions: [{{ name: r, endpoints: [\"127.0.0.1:1\"] }}]\n"
        );
    }
    let cfg = Config::parse(&yaml).unwrap();
    RouteTable::build(&cfg, &Arc::new(Metrics::new()), None).unwrap()
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [1usize, 100, 10_000] {
        let t = table(n);
        let host = format!("host{}.example.com", n / 2);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let svc = t.service(black_box(&host), false).unwrap();
                let route = svc.route(black_box("/api/items"), &headers).unwrap();
                black_box(&route.pick(&headers).revision);
            })
        });
    }
    g.finish();
}

fn split_pick(c: &mut Criterion) {
    let s = Split::new([1, 2, 4, 8, 16, 32, 37, 0, 0, 0]);
    c.bench_function("split_pick_10_arms", |b| b.iter(|| black_box(s.pick())));
}

fn revision(endpoints: usize, cc: u32) -> Arc<rouse::revision::Revision> {
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - name: r\n        container_concurrency: {cc}\n        endpoints: ["
    );
    let addrs: Vec<String> = (0..endpoints)
        .map(|i| format!("\"127.0.0.1:{}\"", 10000 + i))
        .collect();
    yaml += &addrs.join(", ");
    yaml += "]\n";
    let t = RouteTable::build(
        &Config::parse(&yaml).unwrap(),
        &Arc::new(Metrics::new()),
        None,
    )
    .unwrap();
    t.revisions()[0].clone()
}

fn acquire_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("acquire_release");
    for n in [1usize, 10, 100] {
        for cc in [0u32, 4] {
            let r = revision(n, cc);
            g.bench_function(format!("{n}_endpoints_cc{cc}"), |b| {
                b.iter(|| black_box(r.try_acquire().unwrap()))
            });
        }
    }
    g.finish();
    // With the endpoints half busy, so the two random candidates often differ in load.
    let r = revision(10, 0);
    let held: Vec<_> = (0..5).map(|_| r.try_acquire().unwrap()).collect();
    c.bench_function("acquire_release_10_endpoints_loaded", |b| {
        b.iter(|| black_box(r.try_acquire().unwrap()))
    });
    drop(held);
}

fn stats_and_metrics(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let s = ConcurrencyStats::default();
    c.bench_function("stats_arrive_depart", |b| {
        b.iter(|| {
            let now = Instant::now();
            s.arrive(now);
            s.depart(now);
        })
    });
    let m = Metrics::new().revision("s", "r");
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| m.record(black_box(200), black_box(0.00042)))
    });
}

criterion_group!(
    benches,
    route_lookup,
    split_pick,
    acquire_release,
    stats_and_metrics
);
criterion_main!(benches);
