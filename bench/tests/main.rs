//! Every benchmark, in smoke mode, on every path: so that none of them rots.
//! Needs root (each path builds a lab of network namespaces): without it the
//! test fails rather than skips, since a skipped test looks like a pass.

// A test may unwrap: a panic is a failed test with a location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use mobidesk_bench::{live_labs, Benchmark, Options, Path, Role, Settings, Status};
use mobidesk_lab::lab::namespaces_of;

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark smoke test builds network namespaces: run it as root (scripts/test)"
    );
}

#[test]
fn every_benchmark_runs_in_smoke_mode_with_sane_results() {
    require_root();
    let started = Instant::now();
    let report = mobidesk_bench::run(&Options::all(true)).unwrap();
    let elapsed = started.elapsed();
    let table = report.table();
    println!("{table}\n(smoke run took {elapsed:?})");
    assert!(report.settings.smoke);
    assert!(report.settings.endpoints_cpu.is_some(), "pinned by default");
    assert_eq!(
        report.settings.daemons_cpu, report.settings.endpoints_cpu,
        "daemons with the endpoints by default"
    );

    // Every metric of every benchmark has one row per path.
    let metrics: Vec<_> = Benchmark::ALL.iter().flat_map(|b| b.metrics()).collect();
    assert_eq!(metrics.len(), 5);
    assert_eq!(report.results.len(), metrics.len() * Path::ALL.len());

    for m in &metrics {
        let base = report
            .get(m.name, Path::BASELINE)
            .unwrap_or_else(|| panic!("no baseline row for {}", m.name));
        assert_eq!(base.role, Role::Baseline);
        assert_eq!(base.status, Status::Measured, "{}", m.name);
        assert_eq!(base.unit, m.unit);
        let v = base.value.unwrap();
        assert!(v.is_finite() && v > 0.0, "{} = {v}", m.name);
        assert_eq!(base.ratio_vs_baseline, None);
        assert!(!base.detail.is_empty());
    }
    let value = |name: &str| report.get(name, Path::BASELINE).unwrap().value.unwrap();

    // Units and plausible ranges: veth forwarding on any machine this runs
    // on is well above 0.1 Gbit/s and well below a terabit.
    for name in ["throughput.session_to_web", "throughput.web_to_session"] {
        assert_eq!(report.get(name, Path::BASELINE).unwrap().unit, "Gbit/s");
        assert!(
            (0.1..1000.0).contains(&value(name)),
            "{name} = {}",
            value(name)
        );
    }
    // Half round trips over two kernel routers: microseconds, not seconds.
    assert_eq!(
        report.get("latency.p50", Path::BASELINE).unwrap().unit,
        "us"
    );
    assert!((0.5..100_000.0).contains(&value("latency.p50")));
    assert!(value("latency.p50") <= value("latency.p99"));
    let rate = "connect_rate.session_to_web";
    assert_eq!(report.get(rate, Path::BASELINE).unwrap().unit, "conn/s");
    assert!(value(rate) > 50.0, "{rate} = {}", value(rate));

    // The candidate is not implemented yet: the report says so, with no
    // figure and no ratio, rather than pretending.
    let candidate = report
        .paths
        .iter()
        .find(|p| p.path == Path::Dataplane)
        .unwrap();
    assert_eq!(candidate.role, Role::Candidate);
    if candidate.status == Status::NotImplemented {
        assert!(candidate.reason.is_some());
        for m in &metrics {
            let row = report.get(m.name, Path::Dataplane).unwrap();
            assert_eq!(row.status, Status::NotImplemented);
            assert_eq!((row.value, row.ratio_vs_baseline), (None, None));
        }
        assert!(table.contains("NOT IMPLEMENTED"), "{table}");
    } else {
        // Once it is: figures as sane as the baseline's, and a ratio.
        for m in &metrics {
            let row = report.get(m.name, Path::Dataplane).unwrap();
            let v = row.value.unwrap();
            assert!(v.is_finite() && v > 0.0, "{} = {v}", m.name);
            assert!(row.ratio_vs_baseline.unwrap() > 0.0);
        }
    }

    // Machine-readable results carry name, path, value, unit, ratio.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let rows = json["results"].as_array().unwrap();
    assert_eq!(rows.len(), report.results.len());
    for row in rows {
        for key in ["name", "path", "value", "unit", "ratio_vs_baseline"] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
    }
    assert_eq!(rows[0]["path"], "kernel-forwarding");

    // Nothing left behind: the labs are down and unregistered.
    for lab in report.paths.iter().filter_map(|p| p.lab.as_deref()) {
        assert!(
            namespaces_of(lab).unwrap().is_empty(),
            "lab {lab} left behind"
        );
        assert!(!live_labs().iter().any(|l| l == lab));
    }
    // How long it took is reported, not asserted (machines are noisy).
    eprintln!("smoke run of every path took {elapsed:?}");
}

#[test]
fn a_failing_benchmark_leaves_no_lab_behind() {
    require_root();
    // The sockperf server port taken first: the latency benchmark must fail
    // with a clear error, and its lab must still go down.
    let testbed = match Path::KernelForwarding.setup().unwrap() {
        mobidesk_bench::PathSetup::Ready(t) => t,
        mobidesk_bench::PathSetup::NotImplemented { .. } => unreachable!(),
    };
    let lab = testbed.lab_name().to_string();
    let to = std::net::SocketAddr::from((testbed.server_addr, 11111));
    let squatter = testbed
        .server
        .run(|| std::net::TcpListener::bind(to))
        .unwrap()
        .unwrap();
    let err = Benchmark::Latency
        .run(&testbed, &Settings::new(true))
        .unwrap_err();
    let msg = format!("{err:#}");
    println!("{msg}");
    assert!(msg.contains("sockperf server"), "{msg}");
    drop(squatter);
    drop(testbed);
    assert!(
        namespaces_of(&lab).unwrap().is_empty(),
        "lab {lab} left behind"
    );
    assert!(!live_labs().contains(&lab));
}
