//! Steering: the kernel routes the packets the dataplane must see into its
//! TUN device (policy routing), and routes what the dataplane writes back as
//! usual. Done with iproute2, undone on drop.

use std::io;
use std::process::Command;

/// Policy-routing rules that send everything arriving on `from` interfaces
/// (except what is for this host itself: the `local` table comes first)
/// into `tun`.
#[derive(Debug)]
pub struct Steering {
    table: u32,
    from: Vec<String>,
    installed: bool,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Steering {
    /// Installs the rules (replacing stale ones from a killed run).
    pub fn install(tun: &str, from: &[String], table: u32) -> io::Result<Steering> {
        let mut s = Steering {
            table,
            from: from.to_vec(),
            installed: true,
        };
        let t = table.to_string();
        s.remove_rules();
        ip(&["link", "set", tun, "up"])?;
        ip(&["route", "replace", "default", "dev", tun, "table", &t])?;
        for iface in from {
            ip(&["rule", "add", "iif", iface, "lookup", &t, "pref", &t])?;
        }
        s.installed = true;
        Ok(s)
    }

    fn remove_rules(&mut self) {
        let t = self.table.to_string();
        for iface in &self.from {
            // Several from a killed run are possible: remove until none.
            while ip(&["rule", "del", "iif", iface, "lookup", &t]).is_ok() {}
        }
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if self.installed {
            self.remove_rules();
            let _ = ip(&["route", "flush", "table", &self.table.to_string()]);
        }
    }
}
