//! System V shared memory segments a baseline leaves behind.
//!
//! x11vnc shares its framebuffer and tile rows with the X server through
//! MIT-SHM segments (about 34 per run, 3.5 MB) and removes them when it
//! exits cleanly; killed, it cannot, and once the X server is gone nothing
//! is attached to them. The kernel keeps them until they are removed (4096
//! segments at most by default, then every `shmget` fails with ENOSPC), so
//! the benchmark removes the segments its processes created.

use std::collections::BTreeSet;

/// One line of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub id: i32,
    /// The process that created it.
    pub creator: i32,
    /// Processes attached to it now.
    pub attached: u64,
}

/// Parses `/proc/sysvipc/shm` (header line, then `key shmid perms size cpid
/// lpid nattch ...`); lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Segment> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Segment {
                id: f.get(1)?.parse().ok()?,
                creator: f.get(4)?.parse().ok()?,
                attached: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// The segments now (none when `/proc/sysvipc/shm` cannot be read).
pub fn segments() -> Vec<Segment> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Segments nothing is attached to whose creator is gone: nobody will
/// remove them.
pub fn orphans() -> BTreeSet<i32> {
    segments()
        .into_iter()
        .filter(|s| {
            s.attached == 0 && !std::path::Path::new(&format!("/proc/{}", s.creator)).exists()
        })
        .map(|s| s.id)
        .collect()
}

/// Removes the segments `creator` made that nothing is attached to;
/// returns how many.
pub fn remove_created_by(creator: i32) -> usize {
    segments()
        .into_iter()
        .filter(|s| s.creator == creator && s.attached == 0)
        .filter(|s| remove(s.id))
        .count()
}

fn remove(id: i32) -> bool {
    // SAFETY: IPC_RMID ignores the buffer argument, which may be null.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    rc == 0
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_proc_sysvipc_shm() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                    \x20        0  308969472   600                  4096  7896  7894      0     0     0     0     0 1795713927 1795713933 1795713927                  4096                     0\n\
                    garbage\n\
                    \x20        0         17   600               3145728  4242  4243      2     0     0     0     0 0 0 0 0 0\n";
        assert_eq!(
            parse(text),
            [
                Segment {
                    id: 308_969_472,
                    creator: 7896,
                    attached: 0
                },
                Segment {
                    id: 17,
                    creator: 4242,
                    attached: 2
                }
            ]
        );
    }

    #[test]
    fn removes_what_a_process_created() {
        // A segment of ours, not attached: removed by creator.
        // SAFETY: shmget with IPC_PRIVATE takes no pointers.
        #[allow(unsafe_code)]
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(segments().iter().any(|s| s.id == id && s.creator == me));
        assert!(remove_created_by(me) >= 1);
        assert!(!segments().iter().any(|s| s.id == id));
    }
}
