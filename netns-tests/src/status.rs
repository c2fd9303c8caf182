//! What a lab is made of right now, read back from the kernel (not from what
//! the lab believes it built): namespaces, their interfaces with addresses,
//! and their routes.

use serde::Serialize;

use crate::lab::namespaces_of;
use crate::netns::{self, Netns, NETNS_PREFIX};
use crate::Result;

/// One lab and its namespaces.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub lab: String,
    pub namespaces: Vec<NamespaceStatus>,
}

/// One namespace of a lab.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceStatus {
    /// The full namespace name (`mdlab-<lab>-<part>`).
    pub netns: String,
    /// `fabric`, `proxy`, `server`, `outside`, `client` or `session`.
    pub role: String,
    /// The host's or session's name (empty for `fabric` and `proxy`).
    pub name: String,
    pub interfaces: Vec<Interface>,
    /// Routes in `ip route` words, e.g. `default via 10.1.0.1 dev eth0`.
    pub routes: Vec<String>,
    /// Processes running inside.
    pub processes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    pub name: String,
    pub state: String,
    pub mac: String,
    /// IPv4 addresses with prefix length.
    pub addresses: Vec<String>,
    /// The bridge this interface is a port of, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// The names of the labs that have namespaces on this machine.
pub fn labs() -> Result<Vec<String>> {
    let mut labs: Vec<String> = netns::list()?
        .into_iter()
        .filter_map(|n| Some(n.strip_prefix(NETNS_PREFIX)?.split('-').next()?.to_string()))
        .collect();
    labs.sort();
    labs.dedup();
    Ok(labs)
}

/// The status of lab `lab`.
pub fn collect(lab: &str) -> Result<LabStatus> {
    let mut namespaces = Vec::new();
    let prefix = format!("{NETNS_PREFIX}{lab}-");
    for name in namespaces_of(lab)? {
        let part = name.strip_prefix(&prefix).unwrap_or(&name);
        let (role, host) = match part.split_once('-') {
            Some((role, host)) => (role.to_string(), host.to_string()),
            None => (part.to_string(), String::new()),
        };
        let ns = Netns::existing(&name);
        namespaces.push(NamespaceStatus {
            interfaces: interfaces(&ns)?,
            routes: routes(&ns)?,
            processes: ns.pids()?.len(),
            netns: name,
            role,
            name: host,
        });
    }
    let order = |r: &str| match r {
        "proxy" => 0,
        "server" => 1,
        "session" => 2,
        "outside" => 3,
        "client" => 4,
        _ => 5,
    };
    namespaces.sort_by(|a, b| (order(&a.role), &a.name).cmp(&(order(&b.role), &b.name)));
    Ok(LabStatus {
        lab: lab.to_string(),
        namespaces,
    })
}

fn interfaces(ns: &Netns) -> Result<Vec<Interface>> {
    let json = ns.ip_json(&["addr", "show"])?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] != "lo")
        .map(|l| Interface {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            state: l["operstate"].as_str().unwrap_or_default().to_string(),
            mac: l["address"].as_str().unwrap_or_default().to_string(),
            addresses: l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
                .collect(),
            master: l["master"].as_str().map(str::to_string),
        })
        .collect())
}

fn routes(ns: &Netns) -> Result<Vec<String>> {
    let json = ns.ip_json(&["-4", "route", "show"])?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut words = vec![r["dst"].as_str().unwrap_or("?").to_string()];
            if let Some(gw) = r["gateway"].as_str() {
                words.push(format!("via {gw}"));
            }
            if let Some(dev) = r["dev"].as_str() {
                words.push(format!("dev {dev}"));
            }
            words.join(" ")
        })
        .collect())
}

impl LabStatus {
    /// A human-readable table: one block per namespace.
    pub fn render(&self) -> String {
        let mut out = format!("lab {}\n", self.lab);
        for ns in &self.namespaces {
            let title = if ns.name.is_empty() {
                ns.role.clone()
            } else {
                format!("{} {}", ns.role, ns.name)
            };
            out += &format!(
                "  {title:<20} netns {}  ({} processes)\n",
                ns.netns, ns.processes
            );
            for i in &ns.interfaces {
                let master = i.master.as_deref().map(|m| format!(" [port of {m}]"));
                out += &format!(
                    "    {:<10} {:<8} {:<18} {}{}\n",
                    i.name,
                    i.state,
                    i.mac,
                    i.addresses.join(" "),
                    master.unwrap_or_default()
                );
            }
            for r in &ns.routes {
                out += &format!("    route {r}\n");
            }
        }
        out
    }
}
