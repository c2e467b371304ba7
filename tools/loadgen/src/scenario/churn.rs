//! `churn`: clients connecting, subscribing and leaving continuously at a
//! given rate: cycles/s achieved, failures by stage, connect and
//! connect+subscribe latency.

use super::{cpu_line, Ctx, Pacer};
use crate::report::Report;
use crate::stats::{latency_json, latency_line, new_histogram};
use crate::util::{secs, Clock, FirstError};
use crate::ws;
use clap::Args;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// `churn` flags.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Cycles (connect, subscribe, close) started per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds during which cycles are started.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Most cycles (default: rate × duration).
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Channels the clients subscribe to (round-robin).
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Seconds one connect (or one subscribe) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
}

#[derive(Default)]
struct Counts {
    completed: AtomicU64,
    connect_failures: AtomicU64,
    subscribe_failures: AtomicU64,
    last_done_us: AtomicU64,
}

struct Hists {
    connect: Histogram<u64>,
    subscribed: Histogram<u64>,
    cycle: Histogram<u64>,
}

/// Run `churn`.
pub async fn run(ctx: Ctx, args: ChurnArgs) -> anyhow::Result<Report> {
    let target = ctx.target.clone();
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.channels > 0, "need at least one channel");
    let run_id = crate::util::run_id();
    let limit = args
        .cycles
        .unwrap_or((args.rate * args.duration).ceil() as u64);
    let clock = Clock::new();
    let counts = Arc::new(Counts::default());
    let hists = Arc::new(Mutex::new(Hists {
        connect: new_histogram(),
        subscribed: new_histogram(),
        cycle: new_histogram(),
    }));
    let first_error = FirstError::default();
    let timeout = secs(args.connect_timeout);
    eprintln!(
        "churn: {} cycles/s for {} s (at most {limit} cycles)…",
        args.rate, args.duration
    );
    let started = Instant::now();
    let cpu = ctx.cpu_meter();
    let end = started + secs(args.duration);
    let mut pacer = Pacer::new(args.rate, args.concurrency);
    let mut launched = 0u64;
    let mut late = 0u64;
    while launched < limit {
        if pacer.next_due().is_some_and(|due| due >= end) || Instant::now() >= end {
            break;
        }
        let permit = pacer.next().await;
        if let Some(due) = pacer.next_due() {
            // `next_due` is now the slot after ours: we are late if it has passed.
            if Instant::now() > due {
                late += 1;
            }
        }
        let channel = format!(
            "loadgen-{run_id:08x}-churn-{}",
            launched % args.channels as u64
        );
        launched += 1;
        let target = target.clone();
        let counts = counts.clone();
        let hists = hists.clone();
        let first_error = first_error.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let t0 = clock.now_us();
            let mut socket = match ws::connect(&target, timeout).await {
                Ok((s, _)) => s,
                Err(e) => {
                    counts.connect_failures.fetch_add(1, Ordering::SeqCst);
                    first_error.set(format!("connect: {e:#}"));
                    return;
                }
            };
            let t1 = clock.now_us();
            if let Err(e) = ws::subscribe(&mut socket, &channel, timeout).await {
                counts.subscribe_failures.fetch_add(1, Ordering::SeqCst);
                first_error.set(format!("subscribe: {e:#}"));
                return;
            }
            let t2 = clock.now_us();
            ws::close(socket, secs(2.0)).await;
            let t3 = clock.now_us();
            {
                let mut h = hists.lock().expect("histograms");
                h.connect.saturating_record((t1 - t0).max(1));
                h.subscribed.saturating_record((t2 - t0).max(1));
                h.cycle.saturating_record((t3 - t0).max(1));
            }
            counts.last_done_us.fetch_max(t3, Ordering::SeqCst);
            counts.completed.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Every cycle is bounded by its timeouts (2 × connect timeout + 2 s).
    pacer.drain(secs(2.0 * args.connect_timeout + 3.0)).await;
    let completed = counts.completed.load(Ordering::SeqCst);
    let connect_failures = counts.connect_failures.load(Ordering::SeqCst);
    let subscribe_failures = counts.subscribe_failures.load(Ordering::SeqCst);
    let elapsed = counts.last_done_us.load(Ordering::SeqCst) as f64 / 1e6;
    let cpu = cpu.finish();
    let hists = hists.lock().expect("histograms");

    let mut report = Report::new(
        "churn",
        format!(
            "churn: connect, subscribe, leave at {} /s for {} s over {} channels",
            args.rate, args.duration, args.channels
        ),
    );
    report.json("target", target.addr.to_string());
    report.num("target_rate", args.rate, 1, "cycles/s");
    report.count("launched", launched);
    report.count("started_late", late);
    report.count("completed", completed);
    report.count("connect_failures", connect_failures);
    report.count("subscribe_failures", subscribe_failures);
    report.count(
        "unfinished",
        launched - completed - connect_failures - subscribe_failures,
    );
    report.num("elapsed_secs", elapsed, 2, "s");
    report.num(
        "cycles_per_sec",
        completed as f64 / elapsed.max(1e-9),
        1,
        "/s",
    );
    report.add(
        "connect_latency",
        latency_line(&hists.connect),
        latency_json(&hists.connect),
    );
    report.add(
        "connect_subscribe_latency",
        latency_line(&hists.subscribed),
        latency_json(&hists.subscribed),
    );
    report.add(
        "cycle_latency",
        latency_line(&hists.cycle),
        latency_json(&hists.cycle),
    );
    report.add("cpu", cpu_line(&cpu), cpu);
    if let Some(e) = first_error.get() {
        report.add("first_error", e.clone(), e);
    }
    let ok = completed == launched && launched > 0;
    report.add("ok", ok.to_string(), ok);
    Ok(report)
}
