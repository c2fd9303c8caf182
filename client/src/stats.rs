//! What a viewer received, for `--stats` (JSON).

use std::collections::BTreeMap;

use serde::Serialize;

/// Messages and bytes of one message type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TypeStats {
    /// Messages received.
    pub messages: u64,
    /// Bytes received, headers included.
    pub bytes: u64,
}

/// Everything a viewer received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Bytes received in all, headers included.
    pub bytes: u64,
    /// Per message type (PROTOCOL.md names: `Raw`, `SFill`, ...).
    pub by_type: BTreeMap<String, TypeStats>,
    /// Display commands applied (RAW, COPY, SFILL, BITMAP, PFILL, VIDEO).
    pub updates: u64,
    /// Full states completed (`StateComplete` received).
    pub full_states: u64,
}

impl Stats {
    pub(crate) fn count(&mut self, name: &str, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.bytes = self.bytes.saturating_add(bytes);
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
