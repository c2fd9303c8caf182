//! What a viewer received, for `--stats` (JSON).

use std::collections::BTreeMap;

use serde::Serialize;

/// Messages and bytes of one message type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TypeStats {
    /// Messages received.
    pub messages: u64,
    /// Bytes received, headers included; for messages that came inside a
    /// `Compressed` (PROTOCOL.md §2.1), their size decoded.
    pub bytes: u64,
}

/// Everything a viewer received.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Bytes received in all, headers included, as on the wire (a
    /// `Compressed` message counts with its compressed size).
    pub bytes: u64,
    /// Per message type (PROTOCOL.md names: `Raw`, `Copy`, `SFill`,
    /// `Bitmap`, `PFill`, ... — every display command has its own entry).
    /// `Compressed` holds the wire bytes of the zstd stream; the messages
    /// that came inside it count under their own types, decoded, and not
    /// again in `bytes`.
    pub by_type: BTreeMap<String, TypeStats>,
    /// Display commands applied (RAW, COPY, SFILL, BITMAP, PFILL, VIDEO).
    pub updates: u64,
    /// Full states completed (`StateComplete` received).
    pub full_states: u64,
    /// Input events whose effect was timed: for each, the time from sending
    /// it to the first display command received after it.
    pub input: InputLatency,
}

/// Input-to-first-update latency (`--type`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InputLatency {
    /// Input events timed.
    pub events: u64,
    /// Of those, events after which no update came in time.
    pub unanswered: u64,
    /// Milliseconds from each answered event to the first update after it,
    /// in order.
    pub samples_ms: Vec<f64>,
    /// The smallest sample (0 when there is none).
    pub min_ms: f64,
    /// The median sample.
    pub median_ms: f64,
    /// The largest sample.
    pub max_ms: f64,
}

impl InputLatency {
    pub(crate) fn record(&mut self, ms: Option<f64>) {
        self.events += 1;
        let Some(ms) = ms else {
            self.unanswered += 1;
            return;
        };
        self.samples_ms.push(ms);
        let mut sorted = self.samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        self.min_ms = sorted.first().copied().unwrap_or(0.0);
        self.max_ms = sorted.last().copied().unwrap_or(0.0);
        self.median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    }
}

impl Stats {
    pub(crate) fn count(&mut self, name: &str, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.bytes = self.bytes.saturating_add(bytes);
        let entry = self.by_type.entry(name.to_owned()).or_default();
        entry.messages += 1;
        entry.bytes = entry.bytes.saturating_add(bytes);
    }

    /// A message that came inside a `Compressed`: its type's entry only.
    pub(crate) fn count_inner(&mut self, name: &str, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let entry = self.by_type.entry(name.to_owned()).or_default();
        entry.messages += 1;
        entry.bytes = entry.bytes.saturating_add(bytes);
    }

    /// The stats of a message type (zero when none was received).
    pub fn of(&self, name: &str) -> TypeStats {
        self.by_type.get(name).copied().unwrap_or_default()
    }

    /// As pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn latency_summary() {
        let mut l = InputLatency::default();
        for ms in [Some(3.0), None, Some(1.0), Some(2.0)] {
            l.record(ms);
        }
        assert_eq!((l.events, l.unanswered), (4, 1));
        assert_eq!((l.min_ms, l.median_ms, l.max_ms), (1.0, 2.0, 3.0));
        assert_eq!(l.samples_ms, [3.0, 1.0, 2.0]);
        let json = Stats::default().to_json();
        assert!(json.contains("\"input\""), "{json}");
    }
}
