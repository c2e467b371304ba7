//! `connections`: open N idle connections at a given ramp and hold them;
//! report the connect rate achieved, failures, and the server's resident
//! memory per connection (`VmRSS` of `--server-pid` before and after).

use super::{cpu_line, Ctx, Pacer};
use crate::report::Report;
use crate::stats::{latency_json, latency_line, Latencies};
use crate::util::{secs, vm_rss_kib, wait_until, Clock, FirstError};
use crate::ws;
use clap::Args;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// `connections` flags.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections started per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 1000.0)]
    pub ramp: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds the whole ramp may take.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,
    /// Seconds to wait after the last connection before reading VmRSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Extra seconds to hold the connections open after the measurement.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Also subscribe each connection to one of this many channels (0: stay
    /// unsubscribed, i.e. truly idle).
    #[arg(long, default_value_t = 0)]
    pub subscribe_channels: usize,
}

struct Shared {
    clock: Clock,
    opened: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    last_open_us: AtomicU64,
    latencies: Latencies,
    first_error: FirstError,
}

/// Run `connections`.
pub async fn run(ctx: Ctx, args: ConnectionsArgs) -> anyhow::Result<Report> {
    let target = ctx.target.clone();
    anyhow::ensure!(args.connections > 0, "need at least one connection");
    let run_id = crate::util::run_id();
    let rss_before = ctx.server_pid.and_then(vm_rss_kib);
    if let Some(pid) = ctx.server_pid {
        anyhow::ensure!(rss_before.is_some(), "cannot read /proc/{pid}/status");
    }
    let self_before = vm_rss_kib(std::process::id());
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        opened: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        last_open_us: AtomicU64::new(0),
        latencies: Latencies::new(16),
        first_error: FirstError::default(),
    });
    let stop = CancellationToken::new();
    eprintln!(
        "connections: opening {} at {} /s…",
        args.connections,
        if args.ramp > 0.0 {
            args.ramp.to_string()
        } else {
            "max".into()
        }
    );
    let started = Instant::now();
    let cpu = ctx.cpu_meter();
    let setup_deadline = started + secs(args.setup_timeout);
    let mut pacer = Pacer::new(args.ramp, args.connect_concurrency);
    let mut handles = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        if Instant::now() >= setup_deadline {
            break;
        }
        let permit = pacer.next().await;
        let shared = shared.clone();
        let target = target.clone();
        let stop = stop.clone();
        let timeout = secs(args.connect_timeout);
        let channel = (args.subscribe_channels > 0)
            .then(|| format!("loadgen-{run_id:08x}-idle-{}", i % args.subscribe_channels));
        handles.push(tokio::spawn(async move {
            let t0 = shared.clock.now_us();
            let setup = async {
                let (mut socket, _) = ws::connect(&target, timeout).await?;
                if let Some(channel) = &channel {
                    ws::subscribe(&mut socket, channel, timeout).await?;
                }
                anyhow::Ok(socket)
            }
            .await;
            drop(permit);
            let mut socket = match setup {
                Ok(s) => s,
                Err(e) => {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    shared.first_error.set(format!("{e:#}"));
                    return;
                }
            };
            let now = shared.clock.now_us();
            shared.latencies.recorder(i).record(now.saturating_sub(t0));
            shared.last_open_us.fetch_max(now, Ordering::SeqCst);
            shared.opened.fetch_add(1, Ordering::SeqCst);
            // Idle: answer pings until told to stop.
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    msg = socket.next() => msg,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let ping = ws::parse(t.as_str()).is_some_and(|f| f.event == "pusher:ping");
                        if ping && ws::pong(&mut socket).await.is_err() {
                            shared.dropped.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        shared.dropped.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Some(Ok(_)) => {}
                }
            }
            ws::close(socket, secs(2.0)).await;
        }));
    }
    let spawned = handles.len() as u64;
    let left = setup_deadline.saturating_duration_since(Instant::now());
    wait_until(left, || {
        shared.opened.load(Ordering::SeqCst) + shared.failed.load(Ordering::SeqCst) >= spawned
    })
    .await;
    let opened = shared.opened.load(Ordering::SeqCst);
    let failed = shared.failed.load(Ordering::SeqCst);
    let ramp_secs = shared.last_open_us.load(Ordering::SeqCst) as f64 / 1e6;
    let cpu = cpu.finish();
    eprintln!("connections: {opened} open, {failed} failed, in {ramp_secs:.1} s; settling…");
    tokio::time::sleep(secs(args.settle)).await;
    let rss_after = ctx.server_pid.and_then(vm_rss_kib);
    let self_after = vm_rss_kib(std::process::id());
    let still_open = opened - shared.dropped.load(Ordering::SeqCst);
    if args.hold > 0.0 {
        eprintln!("connections: holding for {} s…", args.hold);
        tokio::time::sleep(secs(args.hold)).await;
    }
    let dropped = shared.dropped.load(Ordering::SeqCst);
    stop.cancel();
    // Closing is best effort and bounded by each task's close timeout.
    let _ = tokio::time::timeout(secs(10.0), futures::future::join_all(handles)).await;

    let mut report = Report::new(
        "connections",
        format!(
            "connections: {} idle connections, ramp {} /s{}",
            args.connections,
            args.ramp,
            if args.subscribe_channels > 0 {
                format!(
                    ", each subscribed to 1 of {} channels",
                    args.subscribe_channels
                )
            } else {
                String::new()
            }
        ),
    );
    report.json("target", target.addr.to_string());
    report.count("requested", args.connections as u64);
    report.count("opened", opened);
    report.count("failures", failed);
    report.count("dropped", dropped);
    report.num("ramp_secs", ramp_secs, 2, "s");
    report.num("target_ramp", args.ramp, 1, "connects/s (0 = max)");
    report.num(
        "connects_per_sec",
        opened as f64 / ramp_secs.max(1e-9),
        1,
        "/s",
    );
    let latency = shared.latencies.merged();
    report.add(
        "connect_latency",
        latency_line(&latency),
        latency_json(&latency),
    );
    report.add("cpu_during_ramp", cpu_line(&cpu), cpu);
    match (ctx.server_pid, rss_before, rss_after) {
        (Some(pid), Some(before), Some(after)) => {
            report.count("server_pid", u64::from(pid));
            report.add("server_rss_before", format!("{before} KiB"), before);
            report.add("server_rss_after", format!("{after} KiB"), after);
            let per = (after as f64 - before as f64) * 1024.0 / still_open.max(1) as f64;
            report.num("server_bytes_per_connection", per, 0, "B");
            report.num("server_kib_per_connection", per / 1024.0, 2, "KiB");
        }
        _ => report.add(
            "server_bytes_per_connection",
            "unknown (no --server-pid)",
            serde_json::Value::Null,
        ),
    }
    if let (Some(before), Some(after)) = (self_before, self_after) {
        let per = (after as f64 - before as f64) * 1024.0 / still_open.max(1) as f64;
        report.num("loadgen_bytes_per_connection", per, 0, "B");
    }
    if let Some(e) = shared.first_error.get() {
        report.add("first_error", e.clone(), e);
    }
    let ok = failed == 0 && dropped == 0 && opened == args.connections as u64;
    report.add("ok", ok.to_string(), ok);
    Ok(report)
}
