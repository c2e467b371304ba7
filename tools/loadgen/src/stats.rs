//! Counting what happened: sequence-number sets for loss and duplicates, and
//! latency histograms shared by many connections with little contention.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::Mutex;

/// A growable set of sequence numbers (`0..`), one bit each.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Add `seq`; returns `false` if it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & bit == 0;
        if fresh {
            self.words[word] |= bit;
            self.len += 1;
        }
        fresh
    }

    /// Whether `seq` is in the set.
    #[cfg(test)]
    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// Number of members.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// How many members of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.words.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }
}

/// What one subscriber received, counted from the sequence numbers in the
/// payloads: never assumed from counts alone.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    seen: SeqSet,
    /// Deliveries whose sequence number had already been received.
    pub duplicates: u64,
    /// All deliveries, duplicates included.
    pub deliveries: u64,
}

impl SeqTracker {
    /// Record a delivery of `seq`; returns `true` the first time.
    pub fn record(&mut self, seq: u64) -> bool {
        self.deliveries += 1;
        let fresh = self.seen.insert(seq);
        if !fresh {
            self.duplicates += 1;
        }
        fresh
    }

    /// Distinct sequence numbers received.
    #[cfg(test)]
    pub fn unique(&self) -> u64 {
        self.seen.len()
    }

    /// Published-and-acknowledged messages this subscriber never received.
    pub fn lost(&self, acked: &SeqSet) -> u64 {
        acked.count_missing_from(&self.seen)
    }

    /// Messages received whose publish was never acknowledged (e.g. the HTTP
    /// request timed out after the server had stored the event). Not a loss.
    pub fn unacked_received(&self, acked: &SeqSet) -> u64 {
        self.seen.count_missing_from(acked)
    }
}

/// A latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Latency histograms sharded by connection, fed in small batches, so that a
/// thousand receivers do not each carry their own histogram nor fight over one.
#[derive(Debug)]
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    /// `shards` histograms (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// A recorder for connection number `index`.
    pub fn recorder(&self, index: usize) -> Recorder<'_> {
        Recorder {
            shard: &self.shards[index % self.shards.len()],
            batch: Vec::new(),
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().expect("histogram lock");
            all.add(&*h).expect("same bounds");
        }
        all
    }
}

/// Buffers up to 64 samples, then records them under the shard's lock.
#[derive(Debug)]
pub struct Recorder<'a> {
    shard: &'a Mutex<Histogram<u64>>,
    batch: Vec<u64>,
}

impl Recorder<'_> {
    const BATCH: usize = 64;

    /// Record one sample in microseconds.
    pub fn record(&mut self, micros: u64) {
        if self.batch.capacity() == 0 {
            self.batch.reserve_exact(Self::BATCH);
        }
        self.batch.push(micros);
        if self.batch.len() >= Self::BATCH {
            self.flush();
        }
    }

    /// Record everything buffered.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut h = self.shard.lock().expect("histogram lock");
        for &v in &self.batch {
            h.saturating_record(v.max(1));
        }
        self.batch.clear();
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles of a microsecond histogram, in milliseconds, as JSON.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    // Whole microseconds: three decimals of a millisecond.
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean().round() / 1000.0,
    })
}

/// One-line human form of [`latency_json`].
pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_and_duplicates_from_sequence_numbers() {
        let mut acked = SeqSet::default();
        for seq in 0..200 {
            acked.insert(seq);
        }
        let mut sub = SeqTracker::default();
        // Receive everything but 7 and 150, with 3 delivered twice and 190
        // delivered three times, out of order.
        for seq in (0..200).rev() {
            if seq != 7 && seq != 150 {
                sub.record(seq);
            }
        }
        assert!(!sub.record(3));
        sub.record(190);
        sub.record(190);
        assert_eq!(sub.deliveries, 198 + 3);
        assert_eq!(sub.unique(), 198);
        assert_eq!(sub.duplicates, 3);
        assert_eq!(sub.lost(&acked), 2);
        assert_eq!(sub.unacked_received(&acked), 0);
    }

    #[test]
    fn messages_without_an_ack_are_not_loss() {
        let mut acked = SeqSet::default();
        acked.insert(0);
        acked.insert(2);
        let mut sub = SeqTracker::default();
        sub.record(0);
        sub.record(1); // delivered, but its publish was never acknowledged
        assert_eq!(sub.lost(&acked), 1); // 2
        assert_eq!(sub.unacked_received(&acked), 1); // 1
        assert!(acked.contains(2) && !acked.contains(1));
    }

    #[test]
    fn sharded_latencies_merge() {
        let lat = Latencies::new(4);
        for i in 0..10 {
            let mut r = lat.recorder(i);
            for v in 1..=100 {
                r.record(v * 1000);
            }
        }
        let h = lat.merged();
        assert_eq!(h.len(), 1000);
        assert!((h.value_at_quantile(0.5) as i64 - 50_000).abs() < 100);
    }
}
