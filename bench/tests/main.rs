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

/// The `mobidesk-sessiond` binary, built (or found up to date) by cargo in
/// this test's target directory and profile: `cargo test -p mobidesk-bench`
/// does not build other packages' binaries.
fn sessiond_binary() -> std::path::PathBuf {
    built_binary("mobidesk-sessiond", &[], "mobidesk-sessiond")
}

/// Binary `bin` of `package` (with `features`), built or found up to date by
/// cargo in this test's target directory and profile.
fn built_binary(package: &str, features: &[&str], bin: &str) -> std::path::PathBuf {
    // This test runs as <target>/<profile>/deps/bench-<hash>.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "-p", package]);
    if !features.is_empty() {
        cargo.arg("--features").arg(features.join(","));
    }
    cargo
        .args(["--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo build");
    assert!(status.success(), "cargo build -p {package} failed");
    let binary = profile_dir.join(bin);
    assert!(binary.is_file(), "{} not built", binary.display());
    binary
}

#[test]
fn the_sessiond_benchmarks_run_in_smoke_mode_with_sane_results() {
    use mobidesk_bench::sessiond::{self, SessiondOptions, Where, METRICS};
    require_root();
    let o = SessiondOptions {
        sessiond: sessiond_binary(),
        syscall_bench: env!("CARGO_BIN_EXE_mobidesk-syscall-bench").into(),
        // The display crate is not built by this test; the idle desktops
        // run without their display server here.
        display_server: None,
        ..SessiondOptions::all(true).unwrap()
    };
    let started = Instant::now();
    let report = sessiond::run(&o).unwrap();
    let table = report.table();
    println!("{table}\n(sessiond smoke run took {:?})", started.elapsed());
    assert!(report.settings.smoke);
    // Every metric measured in the session; all but the idle desktop's
    // also on the bare server, with a ratio.
    for m in METRICS {
        let row = report
            .get(m.name, Where::Session)
            .unwrap_or_else(|| panic!("no session row for {}", m.name));
        assert_eq!(row.status, Status::Measured);
        assert_eq!(row.unit, m.unit);
        let v = row.value.unwrap();
        // An idle desktop may use no CPU at all in the window.
        let zero_ok = m.name == "idle_desktop.cpu";
        assert!(
            v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)),
            "{} = {v}",
            m.name
        );
        if m.name.starts_with("idle_desktop.") {
            assert!(report.get(m.name, Where::BareServer).is_none());
        } else {
            let bare = report.get(m.name, Where::BareServer).unwrap();
            assert_eq!(bare.role, Role::Baseline);
            let b = bare.value.unwrap();
            assert!(b.is_finite() && b > 0.0, "{} bare = {b}", m.name);
            let ratio = row.ratio_vs_baseline.unwrap();
            assert!((ratio - v / b).abs() < 1e-9, "{} ratio {ratio}", m.name);
            // The diagnostic sides too, each with its ratio.
            for w in [
                Where::SessionNoCgroups,
                Where::NamespacesOnly,
                Where::SeccompFloor,
            ] {
                let row = report.get(m.name, w).unwrap();
                assert_eq!(row.role, Role::Candidate);
                assert!(row.value.unwrap() > 0.0, "{} {w}", m.name);
                assert!(row.ratio_vs_baseline.unwrap() > 0.0, "{} {w}", m.name);
            }
        }
    }
    // Plausible magnitudes (not timings): a system call is more than a
    // nanosecond and less than a millisecond; fork+sh costs more than fork.
    let v = |name: &str, w| report.get(name, w).unwrap().value.unwrap();
    for w in Where::ALL {
        assert!((1.0..1e6).contains(&v("table2.getpid", w)));
        assert!(v("table2.fork_sh", w) > v("table2.getpid", w));
    }
    // An idle desktop (Xvfb + openbox + xterm) takes megabytes, not bytes
    // or gigabytes.
    let pss = v("idle_desktop.memory_pss", Where::Session);
    assert!((1.0..4096.0).contains(&pss), "PSS {pss} MiB");
    assert!(table.contains("session / baseline"), "{table}");
    assert!(report.notes.iter().any(|n| n.contains("sessions per core")));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["paths"][0]["path"], "bare-server");
    assert_eq!(json["paths"][1]["path"], "session");
    assert_eq!(json["paths"].as_array().unwrap().len(), Where::ALL.len());
    // Nothing left behind: no session cgroup or layer of this run.
    let me = format!("bench-{}-", std::process::id());
    for dir in [
        "/sys/fs/cgroup/memory/mobidesk",
        "/sys/fs/cgroup/pids/mobidesk",
        "/run/mobidesk/sessions",
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                assert!(!name.starts_with(&me), "{dir}/{name} left behind");
            }
        }
    }
    assert!(
        !std::path::Path::new(&format!("/var/tmp/mobidesk-bench-{}", std::process::id())).exists()
    );
}

/// The `mobidesk-display` binary (with its `server` feature), built or found
/// up to date by cargo in this test's target directory and profile.
/// The `seccomp-floor` side really runs under one seccomp filter, and a
/// missing command is a clear error.
#[test]
fn the_seccomp_floor_runs_its_command_under_one_filter() {
    let bench = env!("CARGO_BIN_EXE_mobidesk-syscall-bench");
    let out = std::process::Command::new(bench)
        .args([
            "--under-seccomp-floor",
            "grep",
            "Seccomp",
            "/proc/self/status",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("Seccomp_filters:\t1"), "{text}");
    let out = std::process::Command::new(bench)
        .arg("--under-seccomp-floor")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a command"),
        "{out:?}"
    );
}

fn display_server_binary() -> std::path::PathBuf {
    built_binary("mobidesk-display", &["server"], "mobidesk-display")
}

#[test]
fn the_display_benchmark_runs_in_smoke_mode_with_sane_results() {
    use mobidesk_bench::display::{self, DisplayOptions, System, Workload};
    require_root();
    let o = DisplayOptions {
        display_server: display_server_binary(),
        ..DisplayOptions::all(true)
    };
    let orphans_before = mobidesk_bench::shm::orphans();
    let started = Instant::now();
    let report = display::run(&o).unwrap();
    // No shared memory segment left behind (x11vnc's MIT-SHM ones, 34 a
    // run, are gone with it).
    let left: Vec<i32> = mobidesk_bench::shm::orphans()
        .difference(&orphans_before)
        .copied()
        .collect();
    assert!(
        left.is_empty(),
        "shared memory segments left behind: {left:?}"
    );
    let table = report.table();
    println!("{table}\n(display smoke run took {:?})", started.elapsed());
    assert!(report.smoke);
    assert_eq!(report.links, ["lan", "wan"]);
    // Every workload's figures on every system and link, sane, with both
    // ratios on the mobidesk rows (no timing is asserted).
    for link in ["lan", "wan"] {
        for w in Workload::ALL {
            let mut metrics = vec!["bytes", "to_exact"];
            if w == Workload::Video {
                metrics.extend(["on_time", "quality"]);
            }
            for m in metrics {
                let name = format!("{link}.{}.{m}", w.name());
                for s in System::ALL {
                    let row = report
                        .get(&name, s)
                        .unwrap_or_else(|| panic!("no row {name} for {s}"));
                    assert!(row.value.is_finite() && row.value >= 0.0, "{name} {s}");
                    // A change may be exact at the viewer as soon as the X
                    // server has drawn it (0 ms); bytes are never 0.
                    if m == "bytes" {
                        assert!(row.value > 0.0, "{name} {s} = {}", row.value);
                    }
                    assert!(!row.detail.is_empty());
                }
                let mobidesk = report.get(&name, System::Mobidesk).unwrap();
                if m == "bytes" {
                    assert!(mobidesk.ratio_vs_tigervnc.unwrap() > 0.0, "{name}");
                    assert!(mobidesk.ratio_vs_x11vnc.unwrap() > 0.0, "{name}");
                }
                // Every target became pixel-exact (none timed out).
                if m == "to_exact" {
                    for s in System::ALL {
                        let row = report.get(&name, s).unwrap();
                        assert!(!row.detail.contains("NEVER"), "{name} {s}: {}", row.detail);
                    }
                }
            }
        }
    }
    // A graphics page is megabytes on every system, a text page far less.
    for s in System::ALL {
        let v = |n: &str| report.get(n, s).unwrap().value;
        assert!(
            v("lan.graphics_pages.bytes") > 10.0 * v("lan.text_pages.bytes"),
            "{s}"
        );
    }
    assert!(table.contains("mobidesk/tigervnc"), "{table}");
    assert!(report.notes.iter().any(|n| n.starts_with("goal")));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["systems"][0], "mobidesk");
    // The lab is down.
    assert!(
        namespaces_of(&report.lab).unwrap().is_empty(),
        "lab {} left behind",
        report.lab
    );
    assert!(!live_labs().contains(&report.lab));
}
