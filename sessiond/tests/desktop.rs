//! The desktop of a session end to end (issue 5, acceptance): a session
//! started from a profile with `[desktop]` runs Xvfb, openbox, xterm and
//! mobidesk-display; the headless viewer `mobidesk-client`, run in the peer
//! namespace on the server's subnet, connects to the session's address and
//! its framebuffer equals the X server's pixel for pixel (Xvfb's `-fbdir`
//! file, read on the host through the session's writable layer).
//!
//! The two binaries belong to other packages (`CARGO_BIN_EXE_*` names only
//! this package's): [`binaries`] builds them once per test process with the
//! cargo that runs the tests, into the same target directory, so they are
//! never stale.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use mobidesk_sessiond::desktop::{
    desktop_spec, framebuffer_file, wait_listening, DesktopProfile, DisplayTls,
};
use mobidesk_sessiond::environment::{SessionSpec, SessionStdio};
use mobidesk_sessiond::ipam::Ipam;
use mobidesk_sessiond::network::{etc_hosts, ServerNetwork};

use crate::network::{start_attached, Lan};
use crate::support::{unique, Fixture, TempDir, DEADLINE};

/// `mobidesk-display` (feature `server`) and `mobidesk-client`, built by
/// `cargo build` into this test binary's own target directory and profile.
pub(crate) fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        // <target>/<profile>/deps/session-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let target = profile_dir.parent().unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace)
            .env("CARGO_TARGET_DIR", target)
            .args(["build", "--quiet", "-p", "mobidesk-display"])
            .args(["--features", "mobidesk-display/server"])
            .args(["--bin", "mobidesk-display", "-p", "mobidesk-client"])
            .args(["--bin", "mobidesk-client"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            profile_dir.join("mobidesk-display"),
            profile_dir.join("mobidesk-client"),
        )
    })
}

/// An XWD framebuffer file (depth 24, 32 bpp, LSB first, as Xvfb writes
/// it) as `0x00RRGGBB` pixels.
fn read_xwd(path: &Path) -> (u32, u32, Vec<u32>) {
    let b = std::fs::read(path).unwrap();
    let word = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    let (header, width, height) = (word(0) as usize, word(4), word(5));
    assert_eq!(
        (word(3), word(7), word(11)),
        (24, 0, 32),
        "depth, byte order, bpp"
    );
    let (bpl, ncolors) = (word(12) as usize, word(19) as usize);
    let start = header + ncolors * 12;
    let mut px = Vec::with_capacity(width as usize * height as usize);
    for y in 0..height as usize {
        let row = &b[start + y * bpl..start + y * bpl + width as usize * 4];
        px.extend(
            row.chunks_exact(4)
                .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0])),
        );
    }
    (width, height, px)
}

/// The viewer's PNG (RGB) as `0x00RRGGBB` pixels.
fn read_png(path: &Path) -> (u32, u32, Vec<u32>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = buf[..info.buffer_size()]
        .chunks_exact(3)
        .map(|p| u32::from_be_bytes([0, p[0], p[1], p[2]]))
        .collect();
    (info.width, info.height, px)
}

/// (host pid, command name) of every process in the pid namespace of the
/// session whose PID 1 is `init_pid` (none once it has ended).
fn session_members(init_pid: u32) -> Vec<(nix::unistd::Pid, String)> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(want) = ns(&init_pid.to_string()) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        let Ok(n) = pid.parse::<i32>() else { continue };
        if ns(&pid).as_ref() == Some(&want) {
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                v.push((nix::unistd::Pid::from_raw(n), c.trim().to_string()));
            }
        }
    }
    v
}

/// The command names of every process of the session, sorted.
pub(crate) fn session_processes(init_pid: u32) -> Vec<String> {
    let mut names: Vec<String> = session_members(init_pid)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    names.sort();
    names
}

/// The host pids of the session's processes named `name`.
fn session_pids(init_pid: u32, name: &str) -> Vec<nix::unistd::Pid> {
    session_members(init_pid)
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(p, _)| p)
        .collect()
}

/// The xterm (white, 484x316 by default) and some other colour are on the
/// screen.
fn drawn(px: &[u32]) -> bool {
    let white = px.iter().filter(|p| **p == 0x00ff_ffff).count();
    white > 100_000 && px.iter().any(|p| *p != 0x00ff_ffff && *p != px[0])
}

/// Runs the headless viewer in the peer namespace until its picture equals
/// the screen (Xvfb's framebuffer file `fb`) with the xterm drawn: the
/// desktop settles as windows map and openbox decorates them. Returns the
/// number of viewer runs, both pictures and the viewer's statistics.
/// `tls`: the CA file and server name the viewer checks (TLS 1.3); `None`:
/// plain TCP. `context` adds the session's state to a failure.
#[allow(clippy::type_complexity)]
pub(crate) fn viewer_sees_the_desktop(
    lan: &Lan,
    client: &Path,
    (address, port): (Ipv4Addr, u16),
    fb: &Path,
    out: &Path,
    tls: Option<(&Path, &str)>,
    context: &dyn Fn() -> String,
) -> (u32, (u32, u32, Vec<u32>), (u32, u32, Vec<u32>), String) {
    let (png, stats) = (out.join("out.png"), out.join("stats.json"));
    let deadline = Instant::now() + DEADLINE;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut cmd = Lan::run_in(&lan.peer, client.to_str().unwrap());
        match tls {
            Some((ca, name)) => cmd.arg("--ca").arg(ca).args(["--server-name", name]),
            None => cmd.arg("--insecure-plaintext"),
        };
        let st = cmd
            .args(["--headless", "--connect", &format!("{address}:{port}")])
            .arg("--png")
            .arg(&png)
            .arg("--stats")
            .arg(&stats)
            .args(["--idle-ms", "300", "--timeout", "60"])
            .output()
            .unwrap();
        assert!(st.status.success(), "viewer: {st:?}; {}", context());
        let viewer = read_png(&png);
        let screen = read_xwd(fb);
        if viewer == screen && drawn(&screen.2) {
            let stats = std::fs::read_to_string(&stats).unwrap();
            return (rounds, viewer, screen, stats);
        }
        if Instant::now() >= deadline {
            let w = viewer.0 as usize;
            let at = viewer
                .2
                .iter()
                .zip(&screen.2)
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let white = screen.2.iter().filter(|p| **p == 0x00ff_ffff).count();
            panic!(
                "the viewer's framebuffer never equalled a drawn screen ({rounds} rounds): \
                 equal {}, sizes {:?} / {:?}, first difference at ({}, {}), {white} white \
                 pixels, first pixel {:#08x}; {}",
                viewer == screen,
                (viewer.0, viewer.1),
                (screen.0, screen.1),
                at % w.max(1),
                at / w.max(1),
                screen.2.first().copied().unwrap_or(0),
                context()
            );
        }
    }
}

#[test]
fn a_desktop_session_is_seen_pixel_exact_by_the_headless_viewer_from_the_subnet() {
    let lan = Lan::new();
    let net = lan.network();
    let mut ipam = net.config().ipam();
    // With the user namespace and without.
    for fx in Fixture::both() {
        desktop_seen_pixel_exact(&fx, &lan, &net, &mut ipam);
    }
}

/// The spec of a desktop session (id `prefix`…) whose `display_server`
/// listens on the address `ipam` gives it; its id, address, port and spec.
/// The session resolves its own host name from its own /etc/hosts.
fn subnet_desktop(
    fx: &Fixture,
    display_server: PathBuf,
    prefix: &str,
    ipam: &mut Ipam,
) -> (String, Ipv4Addr, u16, SessionSpec) {
    let desktop = DesktopProfile {
        display_server: Some(display_server),
        ..DesktopProfile::default()
    };
    let port = desktop.port;
    let mut profile = fx.profile();
    profile.desktop = Some(desktop);
    let id = unique(prefix);
    let address = ipam.allocate(&id).unwrap();
    let hosts = fx.dir.path().join(format!("{id}.hosts"));
    std::fs::write(&hosts, etc_hosts(&profile.hostname, Some(address))).unwrap();
    let spec = desktop_spec(
        &id,
        &profile,
        None,
        Some(address),
        Some(hosts),
        &DisplayTls::InsecurePlaintext,
    )
    .unwrap();
    (id, address, port, spec)
}

fn desktop_seen_pixel_exact(fx: &Fixture, lan: &Lan, net: &ServerNetwork, ipam: &mut Ipam) {
    let (display_server, client) = binaries().clone();
    let (id, address, port, spec) = subnet_desktop(fx, display_server, "d-", ipam);
    let started = Instant::now();
    let mut s = start_attached(fx, net, &spec, address);
    assert_eq!(s.held.line(), "mobidesk-desktop: started");
    let pid = s.held.session.init_pid().unwrap();
    if let Err(e) = wait_listening(&id, pid, port, DEADLINE) {
        panic!("{e}; the session's stderr:\n{}", s.stderr());
    }
    let up = started.elapsed();

    let out = TempDir::new();
    let fb = framebuffer_file(&s.held.session.layer());
    let (rounds, viewer, screen, stats) = viewer_sees_the_desktop(
        lan,
        &client,
        (address, port),
        &fb,
        out.path(),
        None,
        &|| {
            format!(
                "processes {:?}; the session's stderr:\n{}",
                session_processes(pid),
                s.stderr()
            )
        },
    );
    // Every program of the desktop is a process of the session (checked
    // once the xterm is on the screen: a program forked by the script is
    // named "sh" until its exec).
    let procs = session_processes(pid);
    for p in [
        "Xvfb",
        "openbox",
        "xterm",
        "mobidesk-displa",
        "mobidesk-init",
    ] {
        assert!(
            procs.iter().any(|n| n == p),
            "{p} in the session: {procs:?}"
        );
    }

    let (w, h, px) = &viewer;
    assert_eq!((*w, *h), (1024, 768));
    assert_eq!(viewer, screen);
    // Not an empty screen: the xterm (white, black text) and openbox's
    // decoration are on it.
    let mut colours: Vec<u32> = px.clone();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() >= 3, "{} colours", colours.len());
    eprintln!(
        "userns {}: desktop up in {up:?}; pixel-exact after {rounds} viewer run(s); {} colours; viewer stats: {stats}",
        fx.userns,
        colours.len()
    );

    // The session lives as long as its X server.
    let xvfb = session_pids(pid, "Xvfb");
    assert_eq!(xvfb.len(), 1, "{xvfb:?}");
    nix::sys::signal::kill(xvfb[0], nix::sys::signal::Signal::SIGTERM).unwrap();
    let code = s.held.finish();
    eprintln!("the session ended with status {code} after its Xvfb was stopped");
    assert!(
        session_processes(pid).is_empty(),
        "nothing left of the session"
    );
    net.detach(&s.attachment).unwrap();
    assert_eq!(ipam.release_session(&id), Some(address));
}

const CRIU: &str = "/opt/mobidesk/bin/criu";

/// A session CRIU restored (not our child), killed on Drop.
struct Restored(u32);

impl Drop for Restored {
    fn drop(&mut self) {
        if let Ok(p) = i32::try_from(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = mobidesk_sessiond::environment::wait_for_exit(self.0, DEADLINE);
    }
}

/// Runs CRIU (in network namespace `netns` when given); on failure shows
/// the errors of its log.
fn criu(netns: Option<&str>, args: &[String], log: &Path) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Lan::run_in(ns, CRIU);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(CRIU);
            c.args(args);
            c
        }
    };
    let out = cmd.output().unwrap();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{errors:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a migration will do, on one server: the desktop session with its
/// network is dumped, restored in the server's network namespace with its
/// veth recreated under the same name, the server's end plumbed again
/// (`plumb_server`), and the viewer sees the desktop pixel-exact again.
///
/// Without the user namespace only: with it, CRIU 4.2.1 on kernel 6.18
/// cannot recreate the veth (`net: couldn't restore veth interface eth0 via
/// usernsd`, netlink `-95`), see sessiond/README.md.
#[test]
fn a_desktop_session_is_checkpointed_and_restored_with_its_network() {
    assert!(
        Path::new(CRIU).exists(),
        "{CRIU} missing: run scripts/setup"
    );
    let (display_server, client) = binaries().clone();
    let lan = Lan::new();
    let net = lan.network();
    let mut ipam = net.config().ipam();
    let fx = Fixture::with_userns(false);
    let launcher = fx.launcher.clone().keep_layer(true);

    let (id, address, port, spec) = subnet_desktop(&fx, display_server, "c-", &mut ipam);
    // The session's own /dev/null as stdio: CRIU refuses descriptors from
    // outside its mount tree.
    let mut attachment = None;
    let mut session = launcher
        .start_with_network(&spec, SessionStdio::default(), |pid| {
            attachment = Some(net.attach(&id, pid, address).map_err(|e| e.to_string())?);
            Ok(())
        })
        .unwrap();
    let attachment = attachment.unwrap();
    let pid = session.init_pid().unwrap();
    wait_listening(&id, pid, port, DEADLINE).unwrap();
    let out = TempDir::new();
    let layer = session.layer();
    let fb = framebuffer_file(&layer);
    let context = || format!("processes {:?}", session_processes(pid));
    let (_, before, _, _) = viewer_sees_the_desktop(
        &lan,
        &client,
        (address, port),
        &fb,
        out.path(),
        None,
        &context,
    );

    let images = TempDir::new();
    let dir = images.path().display().to_string();
    let mut dump: Vec<String> = ["dump", "-t", &pid.to_string(), "-D", &dir, "-o", "dump.log"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    dump.extend(["--tcp-established", "--network-lock", "nftables"].map(String::from));
    for m in session.external_mounts() {
        dump.push("--external".into());
        dump.push(m.criu_dump_arg());
    }
    let t = Instant::now();
    criu(None, &dump, &images.path().join("dump.log"));
    let dumped = t.elapsed();
    assert!(session.wait_timeout(DEADLINE).unwrap().is_some());
    // The session's namespace (and the veth with it) goes away in the
    // kernel's own time: the link is removed now, as CRIU needs its name
    // free.
    net.detach(&attachment).unwrap();
    assert!(!net.is_attached(&attachment).unwrap());

    let pidfile = images.path().join("restored.pid");
    let mut restore: Vec<String> = ["restore", "-D", &dir, "-o", "restore.log", "--root"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    restore.push(layer.display().to_string());
    restore.extend(["--restore-detached", "--tcp-established", "--pidfile"].map(String::from));
    restore.push(pidfile.display().to_string());
    restore.push("--external".into());
    restore.push(format!("veth[eth0]:{}", attachment.link));
    for m in session.external_mounts() {
        restore.push("--external".into());
        restore.push(m.criu_restore_arg());
    }
    let t = Instant::now();
    criu(
        Some(&lan.server),
        &restore,
        &images.path().join("restore.log"),
    );
    let restored_in = t.elapsed();
    let new_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _restored = Restored(new_pid);
    assert!(net.is_attached(&attachment).unwrap(), "CRIU made the veth");
    net.plumb_server(&attachment).unwrap();

    let context = || format!("processes {:?}", session_processes(new_pid));
    let (rounds, after, _, _) = viewer_sees_the_desktop(
        &lan,
        &client,
        (address, port),
        &fb,
        out.path(),
        None,
        &context,
    );
    assert_eq!(after, before, "the same desktop");
    let procs = session_processes(new_pid);
    for p in [
        "Xvfb",
        "openbox",
        "xterm",
        "mobidesk-displa",
        "mobidesk-init",
    ] {
        assert!(procs.iter().any(|n| n == p), "{p} restored: {procs:?}");
    }
    let image_bytes: u64 = std::fs::read_dir(images.path())
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "criu: dump {dumped:?}, restore {restored_in:?}, images {} KiB; pixel-exact after {rounds} viewer run(s) after the restore",
        image_bytes / 1024
    );
}
