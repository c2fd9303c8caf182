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

/// A session server's steering: nftables marks what the dataplane must see
/// (SYNs both ways; everything of labelled sessions), policy routing sends
/// marked packets into the two TUN devices.
#[derive(Debug)]
pub struct ServerSteering {
    config: ServerSteeringConfig,
    installed: bool,
}

/// Names and numbers of a server's steering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSteeringConfig {
    /// TUN device for packets from the sessions.
    pub session_tun: String,
    /// TUN device for packets from the uplink.
    pub uplink_tun: String,
    /// The server's interface on its subnet.
    pub uplink: String,
    /// Session veths, as an nftables interface pattern (e.g. `ses-*`).
    pub session_links: String,
    /// Routing tables (and rule priorities and marks) for the two directions.
    pub session_table: u32,
    pub uplink_table: u32,
    /// The kernel fast path (`io::fastpath`) is on: it takes the labelled
    /// sessions' packets from the uplink's egress (so nftables must not
    /// steer them away before), and marks what it handled on the uplink's
    /// ingress with this mark (so nftables must not steer that either).
    pub fast_path_mark: Option<u32>,
}

/// The nftables table the server dataplane owns.
pub const NFT_TABLE: &str = "mobidesk_dataplane";

fn nft(script: &str) -> io::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl ServerSteering {
    pub fn install(config: &ServerSteeringConfig) -> io::Result<ServerSteering> {
        let c = config;
        let mut s = ServerSteering {
            config: c.clone(),
            installed: true,
        };
        s.remove_all();
        let (ms, mu) = (c.session_table, c.uplink_table);
        let (from_labelled, not_done) = match c.fast_path_mark {
            None => (
                format!(
                    "iifname \"{}\" ip saddr @labelled_virtual meta mark set {ms}",
                    c.session_links
                ),
                String::new(),
            ),
            Some(mark) => (String::new(), format!("meta mark != {mark} ")),
        };
        nft(&format!(
            r#"table ip {NFT_TABLE} {{
  set labelled_virtual {{ type ipv4_addr; }}
  set labelled_physical {{ type ipv4_addr; }}
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "{links}" tcp flags & syn == syn meta mark set {ms}
    {from_labelled}
    iifname "{uplink}" fib daddr type != local tcp flags & syn == syn meta mark set {mu}
    iifname "{uplink}" ip daddr @labelled_physical {not_done}meta mark set {mu}
  }}
}}
"#,
            links = c.session_links,
            uplink = c.uplink,
        ))?;
        for (tun, table) in [(&c.session_tun, ms), (&c.uplink_tun, mu)] {
            let t = table.to_string();
            ip(&["link", "set", tun, "up"])?;
            ip(&["route", "replace", "default", "dev", tun, "table", &t])?;
            ip(&["rule", "add", "fwmark", &t, "lookup", &t, "pref", &t])?;
        }
        Ok(s)
    }

    /// Steers every packet of a labelled session through the dataplane.
    pub fn add(
        &self,
        virtual_addr: std::net::Ipv4Addr,
        physical: std::net::Ipv4Addr,
    ) -> io::Result<()> {
        nft(&format!(
            "add element ip {NFT_TABLE} labelled_virtual {{ {virtual_addr} }}\nadd element ip {NFT_TABLE} labelled_physical {{ {physical} }}\n"
        ))
    }

    pub fn remove(
        &self,
        virtual_addr: std::net::Ipv4Addr,
        physical: std::net::Ipv4Addr,
    ) -> io::Result<()> {
        nft(&format!(
            "delete element ip {NFT_TABLE} labelled_virtual {{ {virtual_addr} }}\ndelete element ip {NFT_TABLE} labelled_physical {{ {physical} }}\n"
        ))
    }

    fn remove_all(&mut self) {
        let _ = nft(&format!("delete table ip {NFT_TABLE}\n"));
        for table in [self.config.session_table, self.config.uplink_table] {
            let t = table.to_string();
            while ip(&["rule", "del", "fwmark", &t, "lookup", &t]).is_ok() {}
            let _ = ip(&["route", "flush", "table", &t]);
        }
    }
}

impl Drop for ServerSteering {
    fn drop(&mut self) {
        if self.installed {
            self.remove_all();
        }
    }
}
