//! A private Xvfb per test, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `Xvfb :N -screen 0 640x480x24 -nolisten tcp -noreset -fbdir DIR`
/// (`-noreset`: the readiness probe is the first client, and a server that
/// resets when it leaves would refuse the next one for a moment).
pub(crate) struct Xvfb {
    child: Child,
    number: u32,
    fbdir: PathBuf,
}

impl Xvfb {
    /// Starts on the first free display number from a per-process base, and
    /// waits for its socket (no fixed sleeps). Panics when Xvfb is missing.
    pub(crate) fn start() -> Xvfb {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = 200 + (std::process::id() % 400) * 4;
        for _ in 0..200 {
            let number = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
            let lock = PathBuf::from(format!("/tmp/.X{number}-lock"));
            if socket.exists() || lock.exists() {
                continue;
            }
            let fbdir =
                std::env::temp_dir().join(format!("mobidesk-xvfb-{}-{number}", std::process::id()));
            std::fs::create_dir_all(&fbdir).unwrap();
            let child = Command::new("Xvfb")
                .arg(format!(":{number}"))
                .args([
                    "-screen",
                    "0",
                    "640x480x24",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                    "-fbdir",
                ])
                .arg(&fbdir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => {
                    panic!("cannot run Xvfb (install it: scripts/setup installs package xvfb): {e}")
                }
            };
            let mut xvfb = Xvfb {
                child,
                number,
                fbdir,
            };
            if xvfb.wait_ready(&socket) {
                return xvfb;
            }
            // Lost a race for the number: try the next one (Drop cleans up).
        }
        panic!("no free X display number");
    }

    fn wait_ready(&mut self, socket: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let screen = self.fbdir.join("Xvfb_screen0");
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if socket.exists() && screen.exists() {
                // The socket exists before Xvfb accepts; a connection proves it.
                if x11rb::rust_connection::RustConnection::connect(Some(&self.display())).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("Xvfb :{} did not come up", self.number);
    }

    pub(crate) fn display(&self) -> String {
        format!(":{}", self.number)
    }

    pub(crate) fn fbdir(&self) -> &Path {
        &self.fbdir
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.fbdir);
    }
}
