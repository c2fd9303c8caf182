//! The proxy box's user-space dataplane in the lab: real TUN device, real
//! kernels on both ends, bytes compared by checksum.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mobidesk_dataplane::control::{self, ProxyRequest, ProxyStats};
use mobidesk_dataplane::daemon::{run_proxy, DaemonError, ProxyBoxConfig};
use mobidesk_lab::Lab;

use crate::support::{connect, listen, require_root, transfer};

/// The proxy box's dataplane running on a thread inside the lab's proxy
/// namespace; stopped (steering removed) when dropped.
pub(crate) struct ProxyDataplane {
    control: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl ProxyDataplane {
    pub(crate) fn start(lab: &Lab) -> Self {
        // RUST_LOG=debug shows the dataplane's log in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let control = lab.run_dir().unwrap().join("dataplane-proxy.sock");
        let config = ProxyBoxConfig::new(vec!["sub1".into(), "sub2".into()], control.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = lab
            .proxy()
            .spawn_thread(move || {
                run_proxy(config, async {
                    let _ = stopped.await;
                })
            })
            .unwrap();
        let mut dp = ProxyDataplane {
            control,
            stop: Some(stop),
            thread: Some(thread),
        };
        // Up when its control socket answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while control::request(&dp.control, &ProxyRequest::Stats {}).is_err() {
            if dp.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = dp.thread.take().unwrap().join().unwrap();
                panic!("dataplane stopped at start: {r:?}");
            }
            assert!(Instant::now() < deadline, "dataplane did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        dp
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        let r = control::request(&self.control, &ProxyRequest::Stats {}).unwrap();
        assert!(r.ok, "{:?}", r.error);
        r.stats.unwrap()
    }

    /// Waits until `f` holds for the stats (they change as packets flow).
    pub(crate) fn wait_stats(&self, what: &str, f: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stats();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyDataplane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let result = t.join();
            if !std::thread::panicking() {
                assert!(
                    matches!(result, Ok(Ok(()))),
                    "dataplane ended with {result:?}"
                );
            }
        }
    }
}

#[test]
fn tcp_from_a_session_is_terminated_and_relayed_by_the_proxy_box() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = ProxyDataplane::start(&lab);
    let web = lab.host("web").unwrap();

    let listener = listen(&web, "198.18.0.20:7500");
    let mut at_session = connect(&s1.netns(), "198.18.0.20:7500".parse().unwrap());
    let (mut at_web, peer) = listener.accept().unwrap();
    // Relayed at L7: the outside host sees the proxy box, not the session.
    assert_eq!(peer.ip(), IpAddr::from([198, 18, 0, 1]));
    assert_eq!(dp.stats().vnics, 1);

    transfer(&mut at_session, &mut at_web, 32 << 20, 30);
    transfer(&mut at_web, &mut at_session, 32 << 20, 31);
    let s = dp.stats();
    assert!(s.bytes_in > 32 << 20, "{s:?}");
    assert_eq!(s.vnics_created, 1);
    assert_eq!(s.labels_in_use, 0, "no migration, no labels");

    // Both close: the VNIC is reclaimed.
    drop(at_session);
    drop(at_web);
    dp.wait_stats("the vnic to be reclaimed", |s| s.vnics == 0);
}

#[test]
fn a_refused_destination_refuses_the_session_too() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = ProxyDataplane::start(&lab);
    let to: SocketAddr = "198.18.0.20:7501".parse().unwrap();
    let err = s1
        .netns()
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    dp.wait_stats("the refused vnic to be reclaimed", |s| {
        s.vnics == 0 && s.vnics_reclaimed == 1
    });
}
