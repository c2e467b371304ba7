//! `fanout` and `channels`: subscribers on one or many channels, a publisher
//! on the HTTP API, and per-subscriber accounting of every sequence number.
//!
//! Timeline of a run: open and subscribe every client (paced), publish for
//! `--duration` seconds or `--messages` messages (at `--rate`, or as fast as
//! acknowledged with `--concurrency` requests in flight), then drain: wait
//! until every subscriber has every acknowledged message or `--drain`
//! seconds pass, and only then count what is missing.

use super::{cpu_line, ConnectArgs, Ctx, Pacer};
use crate::publish::Publisher;
use crate::report::Report;
use crate::stats::{latency_json, latency_line, new_histogram, Latencies, SeqSet, SeqTracker};
use crate::target::Target;
use crate::util::{secs, wait_until, Clock, FirstError, Payload};
use crate::ws;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How the publisher behaves.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Messages published per second (0: as fast as acknowledged, with
    /// --concurrency requests in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// HTTP publishes in flight at once (1: each publish awaited before the next).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Flow control by delivery (0: off): publish message k only once every
    /// subscriber has received every message before k - N + 1, i.e. at most
    /// N messages on their way to subscribers at any time. This measures
    /// the throughput a server sustains with bounded queues, the same way
    /// for any server; without it, "as fast as acked" can outrun delivery.
    #[arg(long, default_value_t = 0)]
    pub window: u64,
    /// Most messages to publish (default: rate × duration, or 10,000,000
    /// when unpaced; the duration bounds the run either way).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of `data` per message (the payload is padded to this size).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds to wait after the last publish for deliveries to arrive before
    /// counting losses (ends early once everything has arrived).
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds one HTTP publish may take.
    #[arg(long, default_value_t = 10.0)]
    pub publish_timeout: f64,
    /// Event name of the published messages.
    #[arg(long, default_value = "loadgen")]
    pub event: String,
}

impl PublishArgs {
    fn message_limit(&self) -> u64 {
        self.messages.unwrap_or_else(|| {
            if self.rate > 0.0 {
                (self.rate * self.duration).ceil() as u64
            } else {
                10_000_000
            }
        })
    }
}

/// `fanout` flags.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers, all on one channel.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `channels` flags.
#[derive(Debug, Clone, Args)]
pub struct ChannelsArgs {
    /// Clients, spread round-robin over the channels (one channel each).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Channels; the publisher goes round-robin over them.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Run `fanout`.
pub async fn fanout(ctx: Ctx, args: FanoutArgs) -> anyhow::Result<Report> {
    run(
        ctx,
        "fanout",
        args.subscribers,
        1,
        args.publish,
        args.connect,
    )
    .await
}

/// Run `channels`.
pub async fn channels(ctx: Ctx, args: ChannelsArgs) -> anyhow::Result<Report> {
    run(
        ctx,
        "channels",
        args.clients,
        args.channels,
        args.publish,
        args.connect,
    )
    .await
}

/// State shared by the subscribers of a run.
struct Shared {
    clock: Clock,
    run: u32,
    event: String,
    latencies: Latencies,
    /// First-time deliveries, all subscribers together (for the early end of
    /// the drain).
    unique: AtomicU64,
    /// The publisher, waiting for `unique` to reach `wake_at` (--window).
    delivered: tokio::sync::Notify,
    wake_at: AtomicU64,
    last_delivery_us: AtomicU64,
    ready: AtomicU64,
    failed: AtomicU64,
    /// Subscribed clients per channel.
    ready_per_channel: Vec<AtomicU64>,
    /// Set when publishing starts: a client still setting up then gives up.
    publishing: AtomicBool,
    first_error: FirstError,
}

/// What one subscriber saw.
struct SubResult {
    chan: usize,
    tracker: SeqTracker,
    foreign: u64,
    disconnected: bool,
}

async fn run(
    ctx: Ctx,
    scenario: &str,
    clients: usize,
    channels: usize,
    publish: PublishArgs,
    connect: ConnectArgs,
) -> anyhow::Result<Report> {
    let target = ctx.target.clone();
    anyhow::ensure!(clients > 0, "need at least one client");
    anyhow::ensure!(channels > 0, "need at least one channel");
    anyhow::ensure!(publish.duration > 0.0, "--duration must be positive");
    let run_id = crate::util::run_id();
    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| format!("loadgen-{run_id:08x}-{c}"))
            .collect(),
    );
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        run: run_id,
        event: publish.event.clone(),
        latencies: Latencies::new(16),
        unique: AtomicU64::new(0),
        delivered: tokio::sync::Notify::new(),
        wake_at: AtomicU64::new(u64::MAX),
        last_delivery_us: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ready_per_channel: (0..channels).map(|_| AtomicU64::new(0)).collect(),
        publishing: AtomicBool::new(false),
        first_error: FirstError::default(),
    });
    let stop = CancellationToken::new();

    // --- set-up: connect and subscribe every client ---------------------------
    eprintln!("{scenario}: opening {clients} clients on {channels} channel(s)…");
    let setup_started = Instant::now();
    let mut pacer = Pacer::new(connect.connect_rate, connect.connect_concurrency);
    let mut handles = Vec::with_capacity(clients);
    let setup_deadline = setup_started + secs(connect.setup_timeout);
    for i in 0..clients {
        if Instant::now() >= setup_deadline {
            break;
        }
        let permit = pacer.next().await;
        let chan = i % channels;
        handles.push(tokio::spawn(subscriber(
            i,
            chan,
            names[chan].clone(),
            target.clone(),
            shared.clone(),
            stop.clone(),
            permit,
            connect.timeout(),
        )));
    }
    let started = handles.len() as u64;
    let left = setup_deadline.saturating_duration_since(Instant::now());
    wait_until(left, || {
        shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) >= started
    })
    .await;
    shared.publishing.store(true, Ordering::SeqCst);
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let ready = shared.ready.load(Ordering::SeqCst);
    let ready_per_channel: Vec<u64> = shared
        .ready_per_channel
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    eprintln!(
        "{scenario}: {ready}/{clients} subscribed in {setup_secs:.1} s; publishing for up to {} s…",
        publish.duration
    );

    // --- publish ---------------------------------------------------------------
    // The publisher runs on its own thread and runtime, so that its requests
    // are not queued behind thousands of busy receiving tasks.
    let acked: Arc<Vec<Mutex<SeqSet>>> = Arc::new(
        (0..channels)
            .map(|_| Mutex::new(SeqSet::default()))
            .collect(),
    );
    let publish_latency = Arc::new(Mutex::new(new_histogram()));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let publish_error = FirstError::default();
    let concurrency = publish.concurrency.max(1);
    let first_publish_us = shared.clock.now_us();
    let cpu = ctx.cpu_meter();
    let plan = PublishPlan {
        target: target.clone(),
        publish: publish.clone(),
        names: names.clone(),
        shared: shared.clone(),
        acked: acked.clone(),
        latency: publish_latency.clone(),
        errors: publish_errors.clone(),
        first_error: publish_error.clone(),
        enabled: ready > 0,
        ready_per_channel: ready_per_channel.clone(),
    };
    let thread = std::thread::Builder::new().name("publisher".into()).spawn(
        move || -> anyhow::Result<(u64, f64, bool)> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(publish_loop(plan))
        },
    )?;
    let (sent, publish_secs, window_stalled) = tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??;
    let acked_total: u64 = acked.iter().map(|a| a.lock().expect("acked").len()).sum();
    let errors = publish_errors.load(Ordering::SeqCst);

    // --- drain -----------------------------------------------------------------
    let expected: u64 = acked
        .iter()
        .zip(&ready_per_channel)
        .map(|(a, n)| a.lock().expect("acked").len() * n)
        .sum();
    eprintln!(
        "{scenario}: published {acked_total}/{sent} in {publish_secs:.1} s; draining (up to {} s)…",
        publish.drain
    );
    let drain_started = Instant::now();
    wait_until(secs(publish.drain), || {
        // With failed publishes, some deliveries may be of unacknowledged
        // messages, so the count cannot tell when we are done: wait it out.
        errors == 0 && shared.unique.load(Ordering::Relaxed) >= expected
    })
    .await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    stop.cancel();

    // --- count -----------------------------------------------------------------
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(Some(r)) = h.await {
            results.push(r);
        }
    }
    let acked_sets: Vec<SeqSet> = acked
        .iter()
        .map(|a| a.lock().expect("acked").clone())
        .collect();
    let mut deliveries = 0u64;
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    let mut unacked_received = 0u64;
    let mut foreign = 0u64;
    let mut disconnected = 0u64;
    let mut subs_with_loss = 0u64;
    let mut subs_with_dups = 0u64;
    let mut max_lost = 0u64;
    let mut max_dups = 0u64;
    for r in &results {
        let acked = &acked_sets[r.chan];
        let l = r.tracker.lost(acked);
        deliveries += r.tracker.deliveries;
        lost += l;
        duplicated += r.tracker.duplicates;
        unacked_received += r.tracker.unacked_received(acked);
        foreign += r.foreign;
        disconnected += u64::from(r.disconnected);
        subs_with_loss += u64::from(l > 0);
        subs_with_dups += u64::from(r.tracker.duplicates > 0);
        max_lost = max_lost.max(l);
        max_dups = max_dups.max(r.tracker.duplicates);
    }
    let last_us = shared.last_delivery_us.load(Ordering::SeqCst);
    let delivery_secs = last_us.saturating_sub(first_publish_us) as f64 / 1e6;
    let deliveries_per_sec = if delivery_secs > 0.0 {
        deliveries as f64 / delivery_secs
    } else {
        0.0
    };
    let failed = shared.failed.load(Ordering::SeqCst);
    let latency = shared.latencies.merged();
    let publish_latency = publish_latency.lock().expect("histogram").clone();

    let title = format!(
        "{scenario}: {clients} clients on {channels} channel(s), {} B messages, {}",
        publish.size,
        if publish.rate > 0.0 {
            format!("{} msg/s target", publish.rate)
        } else {
            format!("as fast as acked, {concurrency} in flight")
        } + &if publish.window > 0 {
            format!(", window {} (flow control by delivery)", publish.window)
        } else {
            String::new()
        }
    );
    let mut report = Report::new(scenario, title);
    report.json("run_id", format!("{run_id:08x}"));
    report.json("target", target.addr.to_string());
    report.count("clients", clients as u64);
    report.count("channels", channels as u64);
    report.count("subscribed", ready);
    report.count("connect_failures", failed);
    report.num("setup_secs", setup_secs, 2, "s");
    report.count("message_size", publish.size as u64);
    report.num(
        "target_rate",
        publish.rate,
        1,
        "msg/s (0 = as fast as acked)",
    );
    report.count("concurrency", concurrency as u64);
    report.count("window", publish.window);
    report.add("window_stalled", window_stalled.to_string(), window_stalled);
    report.count("published", sent);
    report.count("acked", acked_total);
    report.count("publish_errors", errors);
    report.num("publish_secs", publish_secs, 2, "s");
    report.num(
        "publish_rate",
        acked_total as f64 / publish_secs.max(1e-9),
        1,
        "msg/s",
    );
    report.add(
        "publish_latency",
        latency_line(&publish_latency),
        latency_json(&publish_latency),
    );
    report.count("expected_deliveries", expected);
    report.count("deliveries", deliveries);
    report.num("deliveries_per_sec", deliveries_per_sec, 1, "/s");
    report.add("latency", latency_line(&latency), latency_json(&latency));
    report.count("lost", lost);
    report.count("duplicated", duplicated);
    report.count("subscribers_with_loss", subs_with_loss);
    report.count("subscribers_with_duplicates", subs_with_dups);
    report.count("max_lost_per_subscriber", max_lost);
    report.count("max_duplicated_per_subscriber", max_dups);
    report.count("received_without_ack", unacked_received);
    report.count("foreign_messages", foreign);
    report.count("disconnected_subscribers", disconnected);
    report.num("drain_secs", drain_secs, 2, "s");
    report.add("cpu", cpu_line(&cpu), cpu);
    if let Some(e) = shared.first_error.get() {
        report.add("first_connect_error", e.clone(), e);
    }
    if let Some(e) = publish_error.get() {
        report.add("first_publish_error", e.clone(), e);
    }
    let ok = ready > 0
        && failed == 0
        && ready == clients as u64
        && errors == 0
        && lost == 0
        && duplicated == 0
        && disconnected == 0
        && !window_stalled
        && acked_total > 0;
    report.add("ok", ok.to_string(), ok);
    Ok(report)
}

/// Everything the publisher thread needs.
struct PublishPlan {
    target: Target,
    publish: PublishArgs,
    names: Arc<Vec<String>>,
    shared: Arc<Shared>,
    acked: Arc<Vec<Mutex<SeqSet>>>,
    latency: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    first_error: FirstError,
    /// False when no subscriber is ready: publish nothing.
    enabled: bool,
    /// Subscribers per channel, for the deliveries a message owes (--window).
    ready_per_channel: Vec<u64>,
}

/// Wait until `shared.unique` reaches `need`, at most `timeout`; false if
/// it did not (a publish failed or a subscriber went away).
async fn wait_delivered(shared: &Shared, need: u64, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = shared.delivered.notified();
        // Publish the target before checking, so that a subscriber either
        // sees it or its delivery is seen here (both SeqCst).
        shared.wake_at.store(need, Ordering::SeqCst);
        if shared.unique.load(Ordering::SeqCst) >= need {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return shared.unique.load(Ordering::SeqCst) >= need;
        }
    }
}

/// Publish round-robin over the channels at the target rate (or as fast as
/// acknowledged), at most `concurrency` requests in flight, until the count
/// or the duration is reached; then wait for the requests in flight.
/// With `--window`, also wait for earlier messages to be delivered.
/// Returns (messages sent, seconds, whether the window stalled).
async fn publish_loop(plan: PublishPlan) -> anyhow::Result<(u64, f64, bool)> {
    let publish = &plan.publish;
    let channels = plan.names.len();
    let publisher = Publisher::new(
        &plan.target,
        publish.concurrency,
        secs(publish.publish_timeout),
    )?;
    let concurrency = publish.concurrency.max(1);
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let limit = publish.message_limit();
    let mut next_seq = vec![0u64; channels];
    let mut sent = 0u64;
    // Deliveries owed by messages 0..=i, for the last `window` messages.
    let mut owed = std::collections::VecDeque::new();
    let mut owed_total = 0u64;
    let mut stalled = false;
    let started = Instant::now();
    let end = started + secs(publish.duration);
    while plan.enabled && sent < limit && Instant::now() < end {
        if publish.window > 0 {
            if owed.len() as u64 >= publish.window {
                let need = owed.pop_front().expect("window is not empty");
                if !wait_delivered(&plan.shared, need, secs(publish.publish_timeout)).await {
                    stalled = true;
                    break;
                }
            }
            owed_total += plan.ready_per_channel[(sent % channels as u64) as usize];
            owed.push_back(owed_total);
        }
        if publish.rate > 0.0 {
            let due = started + secs(sent as f64 / publish.rate);
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("publish semaphore is never closed");
        let chan = (sent % channels as u64) as usize;
        let seq = next_seq[chan];
        next_seq[chan] += 1;
        sent += 1;
        let publisher = publisher.clone();
        let names = plan.names.clone();
        let acked = plan.acked.clone();
        let shared = plan.shared.clone();
        let latency = plan.latency.clone();
        let errors = plan.errors.clone();
        let first = plan.first_error.clone();
        let event = publish.event.clone();
        let size = publish.size;
        tokio::spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            let t_us = shared.clock.now_us();
            let data = Payload {
                run: shared.run,
                chan: chan as u32,
                seq,
                t_us,
            }
            .encode(size);
            match publisher.trigger(&names[chan], &event, &data).await {
                Ok(()) => {
                    let took = shared.clock.now_us().saturating_sub(t_us);
                    latency
                        .lock()
                        .expect("histogram lock")
                        .saturating_record(took.max(1));
                    acked[chan].lock().expect("acked lock").insert(seq);
                }
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first.set(e.to_string());
                }
            }
        });
    }
    // Every publish has a timeout, so this wait is bounded.
    let _ = tokio::time::timeout(
        secs(publish.publish_timeout + 1.0),
        in_flight.acquire_many(concurrency as u32),
    )
    .await;
    Ok((sent, started.elapsed().as_secs_f64(), stalled))
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    index: usize,
    chan: usize,
    channel: String,
    target: Target,
    shared: Arc<Shared>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
    timeout: std::time::Duration,
) -> Option<SubResult> {
    let setup = async {
        let (mut socket, _) = ws::connect(&target, timeout).await?;
        ws::subscribe(&mut socket, &channel, timeout).await?;
        anyhow::Ok(socket)
    }
    .await;
    drop(permit);
    let mut socket = match setup {
        Ok(s) if !shared.publishing.load(Ordering::SeqCst) => s,
        Ok(s) => {
            // Too late: publishing started without us; not counted anywhere.
            ws::close(s, secs(1.0)).await;
            return None;
        }
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::SeqCst);
            shared.first_error.set(format!("{e:#}"));
            return None;
        }
    };
    shared.ready_per_channel[chan].fetch_add(1, Ordering::SeqCst);
    shared.ready.fetch_add(1, Ordering::SeqCst);

    let mut tracker = SeqTracker::default();
    let mut recorder = shared.latencies.recorder(index);
    let mut foreign = 0u64;
    let mut disconnected = false;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            msg = socket.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                disconnected = true;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let Some(frame) = ws::parse(text.as_str()) else {
            continue;
        };
        if frame.event == shared.event.as_str() {
            let payload = frame.data.as_deref().and_then(Payload::decode);
            match payload {
                Some(p) if p.run == shared.run && p.chan as usize == chan => {
                    let now = shared.clock.now_us();
                    if tracker.record(p.seq) {
                        let n = shared.unique.fetch_add(1, Ordering::SeqCst) + 1;
                        if n >= shared.wake_at.load(Ordering::SeqCst) {
                            shared.delivered.notify_one();
                        }
                    }
                    recorder.record(now.saturating_sub(p.t_us));
                    shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                }
                _ => foreign += 1,
            }
        } else if frame.event == "pusher:ping" && ws::pong(&mut socket).await.is_err() {
            disconnected = true;
            break;
        }
    }
    recorder.flush();
    drop(recorder);
    if !disconnected {
        ws::close(socket, secs(1.0)).await;
    }
    Some(SubResult {
        chan,
        tracker,
        foreign,
        disconnected,
    })
}
