//! De-duplicated multi-channel publishes (Herald's `"deduplicate": true`):
//! which connections already got an event of one publish.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections that already got an event of a de-duplicated multi-channel
/// publish, kept for a short while per publish.
#[derive(Default)]
pub(super) struct Dedupe {
    groups: Mutex<HashMap<String, (Instant, HashSet<u64>)>>,
}

/// How long a de-duplication group is remembered: the channels of one
/// publish arrive within milliseconds of each other.
const DEDUPE_TTL: Duration = Duration::from_secs(30);

/// Past this many groups, expired ones are swept on the next insert.
const SWEEP_ABOVE: usize = 1024;

impl Dedupe {
    /// Whether `conn` may receive an event of `group` (and remember it did).
    pub fn first_time(&self, group: &str, conn: u64) -> bool {
        let mut groups = self.groups.lock().expect("dedupe lock");
        let now = Instant::now();
        if groups.len() > SWEEP_ABOVE {
            groups.retain(|_, (at, _)| now.duration_since(*at) < DEDUPE_TTL);
        }
        groups
            .entry(group.to_owned())
            .or_insert_with(|| (now, HashSet::new()))
            .1
            .insert(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gets_one_event_per_group_and_groups_are_independent() {
        let d = Dedupe::default();
        assert!(d.first_time("g1", 1));
        assert!(!d.first_time("g1", 1));
        assert!(d.first_time("g1", 2));
        assert!(d.first_time("g2", 1));
    }
}
