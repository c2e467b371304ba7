//! The scenarios, one module each, and the connection-setup flags and
//! helpers they share.

pub mod churn;
pub mod connections;
pub mod durable;
pub mod pubsub;
pub mod resume;

use crate::target::Target;
use crate::util::{secs, CpuMeter};
use clap::Args;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What every scenario gets: the target and the server processes to watch.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The (loopback) server under test.
    pub target: Target,
    /// The server's pid (CPU use; VmRSS in `connections`).
    pub server_pid: Option<u32>,
    /// Other server pids (CPU use only).
    pub extra_pids: Vec<u32>,
}

impl Ctx {
    /// Start measuring CPU use of the loadgen, the servers and the machine.
    pub fn cpu_meter(&self) -> CpuMeter {
        let pids: Vec<u32> = self
            .server_pid
            .iter()
            .chain(&self.extra_pids)
            .copied()
            .collect();
        CpuMeter::start(&pids)
    }
}

/// One-line human form of [`CpuMeter::finish`].
pub fn cpu_line(v: &serde_json::Value) -> String {
    let servers = v["server_cores"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(pid, c)| format!("pid {pid} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "loadgen {} cores; servers: {}; machine {}% busy ({}% softirq) over {} s",
        v["loadgen_cores"],
        if servers.is_empty() {
            "-".into()
        } else {
            servers
        },
        v["machine_busy_pct"],
        v["machine_softirq_pct"],
        v["secs"]
    )
}

/// How fast connections are opened.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Connections started per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connection handshakes (connect + subscribe) in flight at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds one connection (or one subscribe) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds the whole set-up (all connections) may take.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,
}

impl ConnectArgs {
    /// The per-connection timeout.
    pub fn timeout(&self) -> Duration {
        secs(self.connect_timeout)
    }
}

/// Paces connection starts: at most `rate` per second (0 = unpaced) and at
/// most `concurrency` in flight.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    rate: f64,
    permits: Arc<Semaphore>,
    concurrency: usize,
    started: u64,
}

impl Pacer {
    /// A pacer starting now.
    pub fn new(rate: f64, concurrency: usize) -> Self {
        Self {
            start: Instant::now(),
            rate,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            started: 0,
        }
    }

    /// When the next start is due (`None` when unpaced).
    pub fn next_due(&self) -> Option<Instant> {
        (self.rate > 0.0).then(|| self.start + secs(self.started as f64 / self.rate))
    }

    /// Wait for the next slot; the permit is held while the handshake runs.
    pub async fn next(&mut self) -> OwnedSemaphorePermit {
        if let Some(due) = self.next_due() {
            tokio::time::sleep_until(due.into()).await;
        }
        self.started += 1;
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("pacer semaphore is never closed")
    }

    /// Wait until every permit is back (all handshakes done), at most `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.permits.acquire_many(self.concurrency as u32))
            .await
            .is_ok()
    }
}
