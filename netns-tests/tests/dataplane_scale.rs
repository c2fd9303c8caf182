//! Ten thousand concurrent connections through the proxy box's dataplane,
//! run as its real binary so its memory can be read on its own.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mobidesk_dataplane::control::{self, ProxyRequest, ProxyStats};
use mobidesk_lab::Lab;

use crate::support::require_root;

const CONNECTIONS: usize = 10_000;

/// A binary of another workspace crate, next to this test's own directory
/// (`cargo test --workspace` builds them all before running any test).
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p mobidesk-dataplane` (or the whole workspace) first",
        path.display()
    );
    path
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= CONNECTIONS as u64 + 100,
        "RLIMIT_NOFILE hard limit {hard} is too low"
    );
}

struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_stats(
    control: &std::path::Path,
    what: &str,
    f: impl Fn(&ProxyStats) -> bool,
) -> ProxyStats {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = control::request(control, &ProxyRequest::Stats {}) {
            if let Some(s) = r.stats.filter(|s| f(s)) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ten_thousand_concurrent_connections_with_bounded_memory() {
    require_root();
    raise_fd_limit();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let run_dir = lab.run_dir().unwrap();
    let control = run_dir.join("dataplane.sock");
    let config = run_dir.join("dataplane.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "[proxy]\nsteer_from = [\"sub1\", \"sub2\"]\ncontrol = {:?}\nmax_vnics = {}\n",
        control.display().to_string(),
        CONNECTIONS + 1000
    )
    .unwrap();
    let log = std::fs::File::create(run_dir.join("dataplane.log")).unwrap();
    let mut dataplane = Reaped(
        lab.proxy()
            .spawn(
                Command::new(workspace_binary("mobidesk-dataplane"))
                    .args(["proxy", "--config"])
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .stderr(log),
            )
            .unwrap(),
    );
    wait_stats(&control, "the dataplane to come up", |_| true);
    let pid = dataplane.0.id();

    let mut hold = Reaped(
        lab.host("web")
            .unwrap()
            .spawn(
                Command::new(env!("CARGO_BIN_EXE_mobidesk-lab"))
                    .args(["serve", "hold", "198.18.0.20:8000"])
                    .stdout(Stdio::piped()),
            )
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(hold.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("listening on"), "{ready}");

    let before = rss_kib(pid);
    let to: SocketAddr = "198.18.0.20:8000".parse().unwrap();
    let streams: Vec<TcpStream> = s1
        .netns()
        .run(|| {
            (0..CONNECTIONS)
                .map(|i| {
                    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(20))
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    s.write_all(&[i as u8; 64]).unwrap();
                    s
                })
                .collect()
        })
        .unwrap();
    let s = wait_stats(&control, "every connection to be up", |s| {
        s.vnics == CONNECTIONS && s.bytes_in as usize >= CONNECTIONS * 64
    });
    let after = rss_kib(pid);
    let per_connection = (after.saturating_sub(before)) * 1024 / CONNECTIONS as u64;
    eprintln!(
        "{CONNECTIONS} connections: dataplane RSS {before} KiB -> {after} KiB, \
         {per_connection} bytes per connection"
    );
    assert_eq!(s.vnics_created as usize, CONNECTIONS);
    // 512 KiB of buffer each way is reserved per VNIC, but only what is used
    // is ever touched; an idle connection must cost a few pages at most.
    assert!(
        per_connection < 48 * 1024,
        "{per_connection} bytes per connection"
    );

    drop(streams);
    wait_stats(&control, "every VNIC to be reclaimed", |s| s.vnics == 0);
    // SIGTERM: a clean shutdown.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = dataplane.0.wait().unwrap();
    assert!(status.success(), "dataplane exited with {status}");
}
