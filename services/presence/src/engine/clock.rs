//! The engine's clock: milliseconds on a monotonic clock started with the
//! engine, which every time in the presence state is measured on.

use async_nats::jetstream::kv;
use herald_proto::now_ms;
use std::time::Instant;

/// Milliseconds on a monotonic clock started with the engine. KV entry
/// timestamps (wall clock) are turned into it once, as an age, so later
/// wall-clock jumps cannot make a gateway look dead.
pub(super) struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock at zero now.
    pub(super) fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Now, on this clock.
    pub(super) fn now(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// When something written at wall-clock `created_ms` happened, on this
    /// clock. An entry stamped in the future (clock skew) counts as now.
    pub(super) fn at_wall(&self, created_ms: i64) -> i64 {
        self.now() - (now_ms() - created_ms).max(0)
    }
}

/// When the server stored a KV entry, wall clock, ms since the epoch.
pub(super) fn created_ms(entry: &kv::Entry) -> i64 {
    (entry.created.unix_timestamp_nanos() / 1_000_000) as i64
}
