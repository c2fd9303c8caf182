//! Bulk TCP throughput: one iperf3 stream between the session and the
//! outside host, both ways (`iperf3 -s` in `web`, `iperf3 -c ... -J` in the
//! session; `-R` for the outside host sending).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::path::Testbed;
use crate::process::{run_client, tool, Daemon};
use crate::report::{Measurement, Metric};
use crate::Settings;

pub static SESSION_TO_WEB: Metric = Metric {
    name: "throughput.session_to_web",
    unit: "Gbit/s",
    higher_is_better: true,
    description: "bulk TCP, one iperf3 stream, session -> outside host (receiver's rate)",
};

pub static WEB_TO_SESSION: Metric = Metric {
    name: "throughput.web_to_session",
    unit: "Gbit/s",
    higher_is_better: true,
    description:
        "bulk TCP, one iperf3 stream, outside host -> session (iperf3 -R, receiver's rate)",
};

pub static METRICS: &[&Metric] = &[&SESSION_TO_WEB, &WEB_TO_SESSION];

const PORT: u16 = 5201;

pub fn run(testbed: &Testbed, settings: &Settings) -> Result<Vec<Measurement>> {
    // Full runs leave out the first second (slow start) from the figure.
    let (seconds, omit) = if settings.smoke {
        (1u64, 0u64)
    } else {
        (10, 1)
    };
    let addr = testbed.server_addr.to_string();
    let mut server = Daemon::start_listening(
        &testbed.server,
        tool("iperf3", settings.endpoints_cpu).args(["-s", "-B", &addr, "-p", &PORT.to_string()]),
        PORT,
        "iperf3 server",
    )?;
    let mut measured = Vec::new();
    for (metric, reverse) in [(&SESSION_TO_WEB, false), (&WEB_TO_SESSION, true)] {
        let mut args: Vec<String> = [
            "-c",
            &addr,
            "-p",
            &PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-O",
            &omit.to_string(),
            "-J",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if reverse {
            args.push("-R".into());
        }
        let out = run_client(
            &testbed.client,
            settings.endpoints_cpu,
            "iperf3",
            &args,
            Duration::from_secs(seconds + omit + 20),
        )?;
        let result = parse_iperf3(&out.stdout).with_context(|| {
            format!(
                "iperf3 {} (exit {}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        server.check_running()?;
        let mut detail = format!(
            "iperf3, 1 stream, {:.1} s measured{}",
            result.seconds,
            if omit > 0 {
                format!(" after {omit} s omitted")
            } else {
                String::new()
            }
        );
        if let Some(r) = result.retransmits {
            detail.push_str(&format!(", {r} retransmits"));
        }
        measured.push(Measurement::new(
            metric,
            result.bits_per_second / 1e9,
            detail,
        ));
    }
    Ok(measured)
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Iperf3Result {
    /// At the receiver, whichever side that was.
    pub(crate) bits_per_second: f64,
    pub(crate) seconds: f64,
    pub(crate) retransmits: Option<u64>,
}

/// Reads `iperf3 -J` output: `end.sum_received` (the receiver's view, for
/// either direction), or the `error` iperf3 reported.
pub(crate) fn parse_iperf3(json: &[u8]) -> Result<Iperf3Result> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        anyhow!(
            "iperf3 output is not JSON ({e}): {}",
            String::from_utf8_lossy(json).trim()
        )
    })?;
    if let Some(error) = v["error"].as_str() {
        bail!("iperf3 reported: {error}");
    }
    let received = &v["end"]["sum_received"];
    let bits_per_second = received["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let seconds = received["seconds"].as_f64().unwrap_or(0.0);
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64();
    Ok(Iperf3Result {
        bits_per_second,
        seconds,
        retransmits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_receivers_rate_from_iperf3_json() {
        let json = br#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"start":0,"end":10.0,"seconds":10.0,"bytes":1,"bits_per_second":3.2e10,"retransmits":7,"sender":true},
            "sum_received":{"start":0,"end":10.0,"seconds":10.0,"bytes":1,"bits_per_second":3.1e10,"sender":true}}}"#;
        assert_eq!(
            parse_iperf3(json).unwrap(),
            Iperf3Result {
                bits_per_second: 3.1e10,
                seconds: 10.0,
                retransmits: Some(7)
            }
        );
    }

    #[test]
    fn iperf3_errors_are_reported_not_parsed_as_zero() {
        let err = parse_iperf3(br#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        assert!(parse_iperf3(b"iperf3: error").is_err());
        assert!(parse_iperf3(b"{\"end\":{}}").is_err());
    }
}
