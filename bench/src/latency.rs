//! Request/response latency: sockperf TCP ping-pong with 64-byte messages
//! (`sockperf server` in `web`, `sockperf ping-pong` in the session).
//!
//! The figures are **half round trips** — sockperf's default "latency",
//! the round-trip time of each ping-pong divided by two — so they compare
//! directly with published sockperf figures. Double them for the RTT.
//!
//! sockperf itself spends about 2 s before measuring (connection set-up and
//! a warm-up phase it always waits for) and discards its first 400 ms, so
//! even a 1-s smoke run takes a little over 3 s.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::path::Testbed;
use crate::process::{run_client, tool, Daemon};
use crate::report::{Measurement, Metric};
use crate::Settings;

pub static P50: Metric = Metric {
    name: "latency.p50",
    unit: "us",
    higher_is_better: false,
    description: "TCP ping-pong, 64-byte messages (sockperf), median half round trip",
};

pub static P99: Metric = Metric {
    name: "latency.p99",
    unit: "us",
    higher_is_better: false,
    description: "TCP ping-pong, 64-byte messages (sockperf), 99th percentile half round trip",
};

pub static METRICS: &[&Metric] = &[&P50, &P99];

const PORT: u16 = 11111;
const MESSAGE_SIZE: &str = "64";

pub fn run(testbed: &Testbed, settings: &Settings) -> Result<Vec<Measurement>> {
    let seconds: u64 = if settings.smoke { 1 } else { 10 };
    let addr = testbed.server_addr.to_string();
    let port = PORT.to_string();
    let mut server = Daemon::start_listening(
        &testbed.server,
        tool("sockperf", settings.endpoints_cpu)
            .args(["server", "--tcp", "-i", &addr, "-p", &port]),
        PORT,
        "sockperf server",
    )?;
    let args: Vec<String> = [
        "ping-pong",
        "--tcp",
        "-i",
        &addr,
        "-p",
        &port,
        "-m",
        MESSAGE_SIZE,
        "-t",
        &seconds.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_client(
        &testbed.client,
        settings.endpoints_cpu,
        "sockperf",
        &args,
        Duration::from_secs(seconds + 20),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let result = parse_sockperf(&text).with_context(|| {
        format!(
            "sockperf {} (exit {}): {} {}",
            args.join(" "),
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if !out.status.success() {
        bail!("sockperf exited with {}: {}", out.status, text.trim());
    }
    server.check_running()?;
    let detail = format!(
        "sockperf ping-pong --tcp -m 64, {seconds} s run, {} observations, half round trip",
        result
            .observations
            .map_or_else(|| "?".to_string(), |n| n.to_string())
    );
    Ok(vec![
        Measurement::new(&P50, result.p50_us, detail.clone()),
        Measurement::new(&P99, result.p99_us, detail),
    ])
}

/// What one sockperf ping-pong run measured (half round trips, µs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SockperfResult {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) observations: Option<u64>,
}

/// Reads sockperf's summary: `---> percentile 50.000 =    8.123` lines and
/// `Total N observations` (which carries colour escapes).
pub(crate) fn parse_sockperf(text: &str) -> Result<SockperfResult> {
    let percentile = |p: &str| -> Result<f64> {
        let key = format!("percentile {p} =");
        text.lines()
            .find_map(|l| l.split_once(&key).map(|(_, v)| v.trim().to_string()))
            .with_context(|| format!("no `{key}` line in sockperf output"))?
            .parse::<f64>()
            .with_context(|| format!("sockperf's percentile {p} is not a number"))
    };
    let observations = text.lines().find_map(|l| {
        if !l.contains(" observations") {
            return None;
        }
        let (_, rest) = l.split_once("Total ")?;
        rest.split_whitespace()
            .next()?
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse::<u64>()
            .ok()
    });
    if observations == Some(0) {
        bail!("sockperf made no observations");
    }
    Ok(SockperfResult {
        p50_us: percentile("50.000")?,
        p99_us: percentile("99.000")?,
        observations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=42724; ReceivedMessages=42724
sockperf: \x1b[2;35m====> avg-latency=6.431 (std-dev=8.184)\x1b[0m
sockperf: Summary: Latency is 6.431 usec
sockperf: \x1b[2;35mTotal 42724 observations\x1b[0m; each percentile contains 427.24 observations
sockperf: ---> <MAX> observation = 1682.971
sockperf: ---> percentile 99.999 = 1682.971
sockperf: ---> percentile 99.990 =   32.513
sockperf: ---> percentile 99.900 =   22.383
sockperf: ---> percentile 99.000 =    7.601
sockperf: ---> percentile 90.000 =    6.594
sockperf: ---> percentile 50.000 =    6.314
sockperf: ---> <MIN> observation =    5.853
";

    #[test]
    fn reads_percentiles_and_observations_from_sockperf() {
        assert_eq!(
            parse_sockperf(OUTPUT).unwrap(),
            SockperfResult {
                p50_us: 6.314,
                p99_us: 7.601,
                observations: Some(42724)
            }
        );
    }

    #[test]
    fn sockperf_output_without_figures_is_an_error() {
        assert!(parse_sockperf("sockperf: ERROR: connect failed").is_err());
        assert!(parse_sockperf(&OUTPUT.replace("42724 observations", "0 observations")).is_err());
    }
}
