//! `mobidesk-session-probe`: what the namespace tests (and humans) run
//! inside a session. Each subcommand makes one attempt — an escape or a
//! legitimate action — and prints one line: `ok [detail]` or
//! `errno N NAME`. It exits 0 whenever it could make the attempt, so the
//! caller decides what the answer means.
//!
//! Test tooling, not part of the session server.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

fn report<T>(r: Result<T, Errno>) {
    match r {
        Ok(_) => println!("ok"),
        Err(e) => println!("errno {} {:?}", e as i32, e),
    }
}

fn errno_of(rc: i64) -> Result<i64, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn io_report<T>(r: std::io::Result<T>) {
    match r {
        Ok(_) => println!("ok"),
        Err(e) => {
            let n = e.raw_os_error().unwrap_or(0);
            println!("errno {n} {:?}", Errno::from_raw(n));
        }
    }
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or_else(|| {
        eprintln!("missing argument {i}");
        std::process::exit(64)
    })
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| std::process::exit(64))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = arg(&args, 0);
    match what {
        // mknod-dev PATH c|b: a device node (must be refused).
        "mknod-dev" => {
            let kind = if arg(&args, 2) == "b" {
                libc::S_IFBLK
            } else {
                libc::S_IFCHR
            };
            let p = cstr(arg(&args, 1));
            // SAFETY: valid C string; plain system call.
            let rc = unsafe { libc::mknod(p.as_ptr(), kind | 0o600, libc::makedev(1, 3)) };
            report(errno_of(rc.into()));
        }
        // mknodat-dev PATH: the same through mknodat.
        "mknodat-dev" => {
            let p = cstr(arg(&args, 1));
            // SAFETY: valid C string; plain system call.
            let rc = unsafe {
                libc::mknodat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    libc::S_IFBLK | 0o600,
                    libc::makedev(8, 0),
                )
            };
            report(errno_of(rc.into()));
        }
        // mknod-fifo PATH: a FIFO (must work).
        "mknod-fifo" => {
            let p = cstr(arg(&args, 1));
            // SAFETY: valid C string; plain system call.
            let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | 0o600, 0) };
            report(errno_of(rc.into()));
        }
        // mount-tmpfs TARGET: a new file system over a path.
        "mount-tmpfs" => report(nix::mount::mount(
            Some("tmpfs"),
            arg(&args, 1),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )),
        // umount PATH: take a read-only system dir away.
        "umount" => report(nix::mount::umount2(
            arg(&args, 1),
            nix::mount::MntFlags::MNT_DETACH,
        )),
        // load-module: finit_module of an empty file and init_module of nothing.
        "load-module" => {
            let f = std::fs::File::open("/dev/null").unwrap_or_else(|_| std::process::exit(70));
            let a = nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty());
            let b = nix::kmod::init_module(&[], c"");
            match (a, b) {
                (Err(x), Err(y)) if x == y => report::<()>(Err(x)),
                (a, b) => println!("mixed finit={a:?} init={b:?}"),
            }
        }
        // reboot: LINUX_REBOOT_CMD_CAD_OFF, harmless even if it got through.
        "reboot" => report(nix::sys::reboot::set_cad_enabled(false)),
        // settime: set the clock to what it is now.
        "settime" => {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
                .unwrap_or_else(|_| std::process::exit(70));
            report(nix::time::clock_settime(
                nix::time::ClockId::CLOCK_REALTIME,
                now,
            ));
        }
        // ptrace PID: attach to a pid (a host pid has no meaning here).
        "ptrace" => {
            let pid: i32 = arg(&args, 1)
                .parse()
                .unwrap_or_else(|_| std::process::exit(64));
            report(nix::sys::ptrace::attach(nix::unistd::Pid::from_raw(pid)));
        }
        // read PATH
        "read" => io_report(std::fs::read(arg(&args, 1))),
        // open-by-handle: the "shocker" attempt with a made-up handle of `/`.
        "open-by-handle" => {
            #[repr(C)]
            struct Handle {
                bytes: u32,
                kind: i32,
                f: [u8; 8],
            }
            let mut h = Handle {
                bytes: 8,
                kind: 1,
                f: [2, 0, 0, 0, 0, 0, 0, 0],
            };
            let root = std::fs::File::open("/").unwrap_or_else(|_| std::process::exit(70));
            // SAFETY: `h` is a valid file_handle with 8 bytes of payload.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    root.as_raw_fd(),
                    &mut h as *mut Handle,
                    libc::O_RDONLY,
                )
            };
            report(errno_of(rc));
        }
        // chroot-escape: the classic break-out. Prints the errno of the
        // first chroot and whether `..` from / leads anywhere but /.
        "chroot-escape" => {
            let _ = std::fs::create_dir_all("/tmp/jail");
            let outside = std::fs::File::open("/").unwrap_or_else(|_| std::process::exit(70));
            let r = nix::unistd::chroot("/tmp/jail");
            let first = match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("errno {} {:?}", e as i32, e),
            };
            // Whatever chroot did: walk up from the saved fd and see where
            // we end.
            let _ = nix::unistd::fchdir(&outside);
            for _ in 0..64 {
                let _ = nix::unistd::chdir("..");
            }
            let second = match nix::unistd::chroot(".") {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("errno {} {:?}", e as i32, e),
            };
            let here = std::fs::metadata(".").map(|m| (m.dev(), m.ino())).ok();
            let root = std::fs::metadata("/").map(|m| (m.dev(), m.ino())).ok();
            let marker = std::path::Path::new("/.mobidesk/init").exists();
            println!(
                "first {first}; second {second}; dotdot-is-root {}; session-root {}",
                here == root,
                marker
            );
        }
        // rlimit-raise: NOFILE soft and hard above the hard limit.
        "rlimit-raise" => {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            let (_, hard) =
                getrlimit(Resource::RLIMIT_NOFILE).unwrap_or_else(|_| std::process::exit(70));
            report(setrlimit(Resource::RLIMIT_NOFILE, hard + 1, hard + 1));
        }
        // nice-raise: a priority above normal.
        "nice-raise" => {
            // SAFETY: plain system call on integers.
            let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
            report(errno_of(rc.into()));
        }
        // bind IP: a UDP socket bound to IP (another session's address).
        "bind" => {
            let ip: Ipv4Addr = arg(&args, 1)
                .parse()
                .unwrap_or_else(|_| std::process::exit(64));
            io_report(std::net::UdpSocket::bind(SocketAddrV4::new(ip, 0)));
        }
        // freebind: ask to bind any address at all.
        "freebind" => {
            let s =
                std::net::UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|_| std::process::exit(70));
            let one: libc::c_int = 1;
            // SAFETY: valid socket, option value of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_IP,
                    libc::IP_FREEBIND,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            report(errno_of(rc.into()));
        }
        // raw-socket: what spoofing needs (IPv4 raw socket, IPPROTO_RAW).
        "raw-socket" => {
            // SAFETY: plain system call on integers.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            report(errno_of(fd.into()));
        }
        // packet-socket: a link-layer socket.
        "packet-socket" => {
            // SAFETY: plain system call on integers.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0x0300) };
            report(errno_of(fd.into()));
        }
        // shm-create KEY / shm-lookup KEY: System V shared memory.
        "shm-create" | "shm-lookup" => {
            let key: i32 = arg(&args, 1)
                .parse()
                .unwrap_or_else(|_| std::process::exit(64));
            let flags = if what == "shm-create" {
                libc::IPC_CREAT | 0o600
            } else {
                0
            };
            // SAFETY: plain system call on integers.
            let id = unsafe { libc::shmget(key, 4096, flags) };
            report(errno_of(id.into()));
        }
        // kill PID 0: does the pid exist here?
        "kill0" => {
            let pid: i32 = arg(&args, 1)
                .parse()
                .unwrap_or_else(|_| std::process::exit(64));
            report(nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                None,
            ));
        }
        // listen-abstract NAME: listen on an abstract unix socket, print
        // "listening", then serve until stdin closes.
        "listen-abstract" | "listen-tcp" => {
            let name = arg(&args, 1).to_string();
            if what == "listen-abstract" {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .unwrap_or_else(|_| std::process::exit(64));
                let l = std::os::unix::net::UnixListener::bind_addr(&addr)
                    .unwrap_or_else(|_| std::process::exit(70));
                std::mem::forget(l);
            } else {
                let l = TcpListener::bind(name.as_str()).unwrap_or_else(|_| std::process::exit(70));
                std::mem::forget(l);
            }
            println!("listening");
            let _ = std::io::stdout().flush();
            let mut buf = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut buf);
        }
        "connect-abstract" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(arg(&args, 1).as_bytes())
                .unwrap_or_else(|_| std::process::exit(64));
            io_report(std::os::unix::net::UnixStream::connect_addr(&addr));
        }
        "connect-tcp" => io_report(TcpStream::connect(arg(&args, 1))),
        // fds: the open descriptors of this process.
        "fds" => {
            let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| {
                            let t = std::fs::read_link(e.path())
                                .map(|p| p.display().to_string())
                                .unwrap_or_default();
                            format!("{}={}", e.file_name().to_string_lossy(), t)
                        })
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            println!("ok {}", v.join(" "));
        }
        // forkbomb: fork children that wait until the fork fails; print the
        // count and errno, then hold everything until stdin closes.
        "forkbomb" => {
            let mut n = 0u32;
            let err = loop {
                // SAFETY: the probe is single-threaded; the child only pauses.
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => loop {
                        nix::unistd::pause();
                    },
                    Ok(nix::unistd::ForkResult::Parent { .. }) => n += 1,
                    Err(e) => break e,
                }
                if n > 100_000 {
                    break Errno::UnknownErrno;
                }
            };
            println!("forks {n} errno {} {:?}", err as i32, err);
            let _ = std::io::stdout().flush();
            let mut buf = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut buf);
        }
        // hog MIB: allocate and touch memory (expects to be OOM-killed).
        "hog" => {
            let mib: usize = arg(&args, 1)
                .parse()
                .unwrap_or_else(|_| std::process::exit(64));
            let mut v: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib {
                v.push(vec![1u8; 1 << 20]);
            }
            println!("ok survived {}", v.len());
        }
        // tiocsti: push a character into our stdin terminal.
        "tiocsti" => {
            let c: libc::c_char = b'x' as libc::c_char;
            // SAFETY: valid pointer to one char; the fd may not be a tty.
            let rc = unsafe { libc::ioctl(0, libc::TIOCSTI, &c as *const libc::c_char) };
            report(errno_of(rc.into()));
        }
        // new-userns: unshare a user namespace.
        "new-userns" => report(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)),
        // sysctl-write KEY VALUE
        "write" => io_report(std::fs::write(arg(&args, 1), arg(&args, 2))),
        other => {
            eprintln!("unknown probe {other:?}");
            std::process::exit(64);
        }
    }
}
