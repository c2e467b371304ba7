//! Small helpers: a run clock, the payload format, process memory from
//! `/proc`, the open-files limit, and a run id.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Microseconds since the start of the run, from a monotonic clock. The
/// publisher and the receivers live in the same process, so timestamps taken
/// at publish and at receipt are directly comparable.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// What a published message carries in its `data`: the run id, the channel
/// index, a per-run (per-channel) sequence number and the publish timestamp,
/// padded with `x` to the requested size. Plain ASCII with no quotes or
/// backslashes, so a receiver parses it without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Run id: messages of other runs are ignored.
    pub run: u32,
    /// Channel index within the run.
    pub chan: u32,
    /// Sequence number within the channel, from 0.
    pub seq: u64,
    /// Publish time, [`Clock::now_us`].
    pub t_us: u64,
}

impl Payload {
    /// `hl|run|chan|seq|t_us|xxxx…`, at least `size` bytes long.
    pub fn encode(&self, size: usize) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(size.max(64));
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "hl|{:08x}|{}|{}|{}|",
            self.run, self.chan, self.seq, self.t_us
        );
        while s.len() < size {
            const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
            s.push_str(&PAD[..PAD.len().min(size - s.len())]);
        }
        s
    }

    /// Parse what [`Payload::encode`] made.
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split('|');
        if parts.next()? != "hl" {
            return None;
        }
        Some(Self {
            run: u32::from_str_radix(parts.next()?, 16).ok()?,
            chan: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            t_us: parts.next()?.parse().ok()?,
        })
    }
}

/// A run id: distinct between runs, so channel names never collide with the
/// history of earlier runs.
pub fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (nanos as u32) ^ (std::process::id().rotate_left(16))
}

/// `VmRSS` of a process in KiB, from `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU ticks of a process, from `/proc/<pid>/stat`.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3 of stat); utime and stime are fields 14, 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy, total and interrupt (irq + softirq) CPU ticks of the whole
/// machine, from `/proc/stat`.
pub fn machine_cpu_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some((total - idle, total, v[5] + v[6]))
}

/// CPU use during a phase of a run: this process, the server processes
/// given with `--server-pid`/`--extra-pid`, and the whole machine (so a run
/// disturbed by something else on the machine shows it).
#[derive(Debug)]
pub struct CpuMeter {
    started: Instant,
    machine: Option<(u64, u64, u64)>,
    own: Option<u64>,
    servers: Vec<(u32, Option<u64>)>,
}

impl CpuMeter {
    /// Start measuring.
    pub fn start(server_pids: &[u32]) -> Self {
        Self {
            started: Instant::now(),
            machine: machine_cpu_ticks(),
            own: process_cpu_ticks(std::process::id()),
            servers: server_pids
                .iter()
                .map(|&p| (p, process_cpu_ticks(p)))
                .collect(),
        }
    }

    /// Cores used since the start (CPU seconds per second), as JSON:
    /// `{"loadgen_cores": …, "server_cores": {pid: …}, "machine_busy_pct": …,
    /// "machine_softirq_pct": …}`. Percentages are of all cores; loopback
    /// network processing in softirq context is often charged to no process.
    pub fn finish(&self) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let cores = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) => {
                serde_json::json!(
                    ((a.saturating_sub(b)) as f64 / USER_HZ / secs * 100.0).round() / 100.0
                )
            }
            _ => serde_json::Value::Null,
        };
        let mut servers = serde_json::Map::new();
        for &(pid, before) in &self.servers {
            servers.insert(pid.to_string(), cores(before, process_cpu_ticks(pid)));
        }
        let pct = |part: u64, whole: u64| {
            serde_json::json!(((part as f64 / whole as f64) * 1000.0).round() / 10.0)
        };
        let (machine, softirq) = match (self.machine, machine_cpu_ticks()) {
            (Some((b0, t0, i0)), Some((b1, t1, i1))) if t1 > t0 => (
                pct(b1.saturating_sub(b0), t1 - t0),
                pct(i1.saturating_sub(i0), t1 - t0),
            ),
            _ => (serde_json::Value::Null, serde_json::Value::Null),
        };
        serde_json::json!({
            "secs": (secs * 100.0).round() / 100.0,
            "loadgen_cores": cores(self.own, process_cpu_ticks(std::process::id())),
            "server_cores": servers,
            "machine_busy_pct": machine,
            "machine_softirq_pct": softirq,
        })
    }
}

/// Raise this process's soft limit on open files to its hard limit.
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Seconds (possibly fractional) as a `Duration`; negative or NaN is zero.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

/// The first error message seen among many tasks.
#[derive(Debug, Default, Clone)]
pub struct FirstError(Arc<std::sync::Mutex<Option<String>>>);

impl FirstError {
    /// Keep `message` if it is the first.
    pub fn set(&self, message: impl Into<String>) {
        let mut slot = self.0.lock().expect("first error lock");
        if slot.is_none() {
            *slot = Some(message.into());
        }
    }

    /// The first message, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("first error lock").clone()
    }
}

/// Wait until `done()` or `timeout`, polling every few milliseconds.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let p = Payload {
            run: 0xdead_beef,
            chan: 3,
            seq: 12_345,
            t_us: 987_654_321,
        };
        let s = p.encode(128);
        assert_eq!(s.len(), 128);
        assert!(!s.contains('"') && !s.contains('\\'));
        assert_eq!(Payload::decode(&s), Some(p));
        assert_eq!(Payload::decode(&p.encode(0)), Some(p));
        assert_eq!(Payload::decode("other|1|2|3|4|"), None);
    }

    #[test]
    fn reads_cpu_times() {
        assert!(process_cpu_ticks(std::process::id()).is_some());
        let (busy, total, irq) = machine_cpu_ticks().expect("/proc/stat");
        assert!(busy >= irq);
        assert!(total >= busy && total > 0);
        let m = CpuMeter::start(&[std::process::id()]).finish();
        assert!(m["loadgen_cores"].is_number());
    }

    #[test]
    fn reads_our_own_rss() {
        let kib = vm_rss_kib(std::process::id()).expect("VmRSS");
        assert!(kib > 0);
    }
}
