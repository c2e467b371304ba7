//! `resume`: sockets catching up on a channel with Herald's
//! `pusher:subscribe {channel, auth, resume_from}`: replayed events/s, to
//! one socket or to many resuming at once, and a check that each socket got
//! every event once, in order.
//!
//! Timeline of a run:
//!
//! 1. **Preload.** One socket subscribes to a fresh private channel and
//!    stores an anchor event and then `--events` (K) events with
//!    `herald:publish`, `--window` in flight, remembering the `seq` of every
//!    ack. A `rate_limited` nack is retried with the same `client_id` (the
//!    gateway stores a retry once); any other nack ends the run.
//! 2. **Connect.** `--sockets` (N) sockets connect; nothing is subscribed yet.
//! 3. **Resume.** All N send `pusher:subscribe` with `resume_from` = the
//!    anchor's seq at the same instant, and read until they have K events.
//!    The clock runs from that instant to each socket's last event.
//!
//! Each socket checks what it received: the K acknowledged seqs exactly, in
//! strictly increasing order, each event's `prev_seq` naming the one before
//! it (the first's naming the anchor), and the `data` of the i-th event
//! being the i-th published payload. Then it listens `--linger` seconds
//! more: nothing else may arrive (no live publishing is going on, so any
//! further event is a duplicate). `herald:resume_failed`, a subscription
//! error, a closed connection or a missing event fails the run.
//!
//! Servers without `herald:publish` (the probe gets `pusher:error`, a close
//! or silence) are reported as unsupported, exit 0, as in `durable`.

use super::durable::{classify, open, probe_on, publish_frame, Answer, Probe};
use super::{cpu_line, Ctx};
use crate::report::Report;
use crate::stats::{latency_json, latency_line, new_histogram};
use crate::target::Target;
use crate::util::{secs, Clock, FirstError, Payload};
use crate::ws::{self, Ws};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Barrier, Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// `resume` flags.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// Sockets resuming at once.
    #[arg(long, default_value_t = 1)]
    pub sockets: usize,
    /// Events stored after the resume position (K): each socket replays
    /// all of them. Herald replays at most HERALD_RESUME_MAX_EVENTS
    /// (10,000 by default) in one resume.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Publishes in flight while preloading.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Bytes of `data` per event.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds the preload may take.
    #[arg(long, default_value_t = 120.0)]
    pub preload_timeout: f64,
    /// Seconds every socket has to receive its K events.
    #[arg(long, default_value_t = 120.0)]
    pub replay_timeout: f64,
    /// Seconds each socket keeps listening after its last expected event
    /// (anything arriving then is an extra event: a failure).
    #[arg(long, default_value_t = 0.5)]
    pub linger: f64,
    /// Connections opened at once before the resume.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// Seconds one connection (or one subscribe) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait for the answer to the probe publish.
    #[arg(long, default_value_t = 3.0)]
    pub probe_timeout: f64,
    /// Event name of the published messages.
    #[arg(long, default_value = "loadgen")]
    pub event: String,
}

/// What the preload stored.
struct Preloaded {
    /// The anchor's seq: the position every socket resumes from.
    anchor: u64,
    /// The K events' seqs, in the order they were published.
    seqs: Vec<u64>,
    /// Seconds from the first publish to the last ack.
    secs: f64,
    /// `rate_limited` nacks retried.
    retries: u64,
}

/// Store the anchor and K events on `channel` through `socket`.
async fn preload(
    socket: &mut Ws,
    channel: &str,
    run: u32,
    args: &ResumeArgs,
) -> anyhow::Result<Preloaded> {
    let started = Instant::now();
    let total = args.events + 1; // the anchor is publish 0
    let client_id = |n: u64| format!("{run:08x}-r{n}");
    let mut by_id: HashMap<String, u64> = HashMap::new();
    let mut seqs: Vec<Option<u64>> = vec![None; total as usize];
    let mut in_flight = 0usize;
    let mut next = 0u64;
    let mut acked = 0u64;
    let mut retries = 0u64;
    // Retries wait their turn: (due, publish number).
    let mut retry_queue: Vec<(Instant, u64)> = Vec::new();
    let timeout = secs(args.preload_timeout);
    let window = args.window.max(1);
    let payload = |n: u64| {
        Payload {
            run,
            chan: 0,
            seq: n,
            t_us: 0,
        }
        .encode(args.size)
    };
    while acked < total {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "preload: {acked} of {total} publishes acknowledged after {} s",
            timeout.as_secs_f64()
        );
        // The anchor goes alone, so that it is stored before every event.
        let limit = if acked == 0 { 1 } else { window };
        let now = Instant::now();
        while in_flight < limit {
            let n = if let Some(pos) = retry_queue.iter().position(|(due, _)| *due <= now) {
                retry_queue.swap_remove(pos).1
            } else if next < total {
                next += 1;
                next - 1
            } else {
                break;
            };
            let id = client_id(n);
            let frame = publish_frame(channel, &args.event, &payload(n), &id);
            socket.send(Message::text(frame)).await?;
            by_id.insert(id, n);
            in_flight += 1;
        }
        let wait = if in_flight == 0 {
            // Only retries are left, none due yet.
            Duration::from_millis(20)
        } else {
            Duration::from_secs(10)
        };
        let text = match tokio::time::timeout(wait, ws::next_text(socket)).await {
            Ok(text) => text?,
            Err(_) if in_flight == 0 => continue,
            Err(_) => anyhow::bail!("preload: no answer within {wait:?} ({in_flight} in flight)"),
        };
        match classify(&text) {
            Answer::Ack { client_id, seq, .. } => {
                let n = by_id
                    .remove(&client_id)
                    .ok_or_else(|| anyhow::anyhow!("preload: an ack for nothing sent: {text}"))?;
                let seq =
                    seq.ok_or_else(|| anyhow::anyhow!("preload: an ack without seq: {text}"))?;
                seqs[n as usize] = Some(seq);
                in_flight -= 1;
                acked += 1;
            }
            Answer::Nack {
                client_id,
                code,
                message,
            } => {
                let n = by_id
                    .remove(&client_id)
                    .ok_or_else(|| anyhow::anyhow!("preload: a nack for nothing sent: {text}"))?;
                in_flight -= 1;
                anyhow::ensure!(code == "rate_limited", "preload: publish nacked: {message}");
                retries += 1;
                retry_queue.push((Instant::now() + Duration::from_millis(50), n));
            }
            Answer::Error(message) => anyhow::bail!("preload: pusher:error: {message}"),
            Answer::Other => {
                if ws::parse(&text).is_some_and(|f| f.event == "pusher:ping") {
                    ws::pong(socket).await?;
                }
            }
        }
    }
    let secs_taken = started.elapsed().as_secs_f64();
    let seqs: Vec<u64> = seqs
        .into_iter()
        .map(|s| s.expect("every publish acked"))
        .collect();
    let anchor = seqs[0];
    let events = seqs[1..].to_vec();
    // Stored one after the other on one connection: the stream sequence
    // must grow with the publish order (the check below relies on it).
    anyhow::ensure!(
        events.first().is_none_or(|first| *first > anchor)
            && events.windows(2).all(|w| w[0] < w[1]),
        "preload: the acknowledged seqs are not increasing in publish order"
    );
    Ok(Preloaded {
        anchor,
        seqs: events,
        secs: secs_taken,
        retries,
    })
}

/// A stored event frame: the fields the check needs.
#[derive(Debug, Deserialize)]
struct StoredFrame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    /// A string `data` (Pusher's shape), without copying it.
    #[serde(borrow, default, deserialize_with = "ws::string_or_none")]
    data: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev_seq: Option<u64>,
}

/// What one socket saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Events of the channel received (including wrong ones).
    received: u64,
    /// Events received in the right place: the expected seq, prev_seq and data.
    in_order: u64,
    /// Microseconds from the resume to subscription_succeeded, the first
    /// and the last expected event.
    succeeded_us: Option<u64>,
    first_us: Option<u64>,
    last_us: Option<u64>,
    /// Events after the K expected ones.
    extra: u64,
    /// The first thing that went wrong: its kind and what it was.
    problem: Option<(String, String)>,
}

/// The checker of one socket's replay.
struct Check<'a> {
    anchor: u64,
    expected: &'a [u64],
    run: u32,
    position: usize,
    prev: u64,
}

impl<'a> Check<'a> {
    fn new(anchor: u64, expected: &'a [u64], run: u32) -> Self {
        Self {
            anchor,
            expected,
            run,
            position: 0,
            prev: anchor,
        }
    }

    fn done(&self) -> bool {
        self.position == self.expected.len()
    }

    /// Check the next event; `Err` says what is wrong with it.
    fn event(&mut self, seq: Option<u64>, prev_seq: Option<u64>, data: &str) -> Result<(), String> {
        let Some(&want) = self.expected.get(self.position) else {
            return Err(format!(
                "an event after the last expected one (seq {seq:?})"
            ));
        };
        let seq = seq.ok_or("an event without seq")?;
        if seq <= self.prev {
            return Err(format!(
                "seq {seq} after {}: not strictly increasing (a duplicate or out of order)",
                self.prev
            ));
        }
        if seq != want {
            return Err(format!(
                "seq {seq} where {want} was expected: {} event(s) missing",
                self.expected[self.position..]
                    .iter()
                    .take_while(|s| **s < seq)
                    .count()
            ));
        }
        if prev_seq != Some(self.prev) {
            return Err(format!(
                "seq {seq} has prev_seq {prev_seq:?}, not {} (the event before it{})",
                self.prev,
                if self.prev == self.anchor {
                    ", the resume position"
                } else {
                    ""
                }
            ));
        }
        match Payload::decode(data) {
            Some(p) if p.run == self.run && p.seq == self.position as u64 + 1 => {}
            _ => {
                return Err(format!(
                    "seq {seq}: data is not event {} of this run",
                    self.position + 1
                ))
            }
        }
        self.position += 1;
        self.prev = seq;
        Ok(())
    }
}

/// Shared by the resuming sockets.
struct Shared {
    clock: Clock,
    run: u32,
    channel: String,
    anchor: u64,
    expected: Vec<u64>,
    /// Set just before the subscribes go out (µs on the run clock).
    resumed_at_us: AtomicU64,
    /// Sockets done replaying (complete or failed), before their linger:
    /// the CPU reading stops when all are.
    finished: AtomicU64,
    all_finished: Notify,
    sockets: u64,
    first_error: FirstError,
}

impl Shared {
    fn finish_one(&self) {
        if self.finished.fetch_add(1, Ordering::SeqCst) + 1 == self.sockets {
            self.all_finished.notify_one();
        }
    }
}

async fn resume_one(
    socket: Ws,
    socket_id: String,
    target: Target,
    shared: Arc<Shared>,
    barrier: Arc<Barrier>,
    args: ResumeArgs,
) -> Outcome {
    let mut finished = false;
    let out = replay_one(
        socket,
        socket_id,
        target,
        &shared,
        barrier,
        args,
        &mut finished,
    )
    .await;
    if !finished {
        shared.finish_one();
    }
    out
}

/// One socket's resume; sets `finished` (and tells `shared`) once it has
/// every expected event, before lingering.
async fn replay_one(
    mut socket: Ws,
    socket_id: String,
    target: Target,
    shared: &Shared,
    barrier: Arc<Barrier>,
    args: ResumeArgs,
    finished: &mut bool,
) -> Outcome {
    let mut out = Outcome::default();
    let auth = ws::channel_auth(&target, &socket_id, &shared.channel);
    let frame = ws::subscribe_frame(&shared.channel, auth.as_deref(), Some(shared.anchor));
    barrier.wait().await;
    let t0 = shared.resumed_at_us.load(Ordering::SeqCst);
    let mut check = Check::new(shared.anchor, &shared.expected, shared.run);
    let fail = |out: &mut Outcome, kind: &str, problem: String| {
        shared.first_error.set(problem.clone());
        out.problem.get_or_insert((kind.to_owned(), problem));
    };
    if let Err(e) = socket.send(Message::text(frame)).await {
        fail(&mut out, "send", format!("subscribe: {e}"));
        return out;
    }
    let deadline = Instant::now() + secs(args.replay_timeout);
    let mut linger_until: Option<Instant> = None;
    loop {
        let until = linger_until.unwrap_or(deadline);
        let msg = match tokio::time::timeout_at(until.into(), socket.next()).await {
            Err(_) if linger_until.is_some() => break,
            Err(_) => {
                fail(
                    &mut out,
                    "timeout",
                    format!(
                        "{} of {} events within {} s",
                        check.position,
                        shared.expected.len(),
                        args.replay_timeout
                    ),
                );
                break;
            }
            Ok(msg) => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                fail(&mut out, "closed", format!("closed by the server: {c:?}"));
                break;
            }
            Some(Err(e)) => {
                fail(&mut out, "closed", format!("connection error: {e}"));
                break;
            }
            None => {
                fail(&mut out, "closed", "connection closed".into());
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now = shared.clock.now_us().saturating_sub(t0);
        let Ok(frame) = serde_json::from_str::<StoredFrame<'_>>(text.as_str()) else {
            continue;
        };
        if frame.channel.as_deref() != Some(shared.channel.as_str()) {
            if frame.event == "pusher:ping" {
                let _ = ws::pong(&mut socket).await;
            } else if frame.event == "pusher:error" {
                fail(
                    &mut out,
                    "pusher_error",
                    format!("pusher:error: {}", text.as_str()),
                );
                break;
            }
            continue;
        }
        match frame.event.as_ref() {
            "pusher_internal:subscription_succeeded" => {
                out.succeeded_us.get_or_insert(now);
            }
            "pusher:subscription_error" => {
                fail(
                    &mut out,
                    "subscription_error",
                    format!("subscription error: {}", text.as_str()),
                );
                break;
            }
            "herald:resume_failed" => {
                let data = ws::data_value(text.as_str());
                let reason = data["reason"].as_str().unwrap_or("?").to_owned();
                fail(
                    &mut out,
                    &format!("resume_failed:{reason}"),
                    format!("herald:resume_failed: {data}"),
                );
                break;
            }
            _ if frame.seq.is_some() || frame.event == args.event => {
                out.received += 1;
                out.first_us.get_or_insert(now);
                if check.done() {
                    out.extra += 1;
                    fail(
                        &mut out,
                        "extra",
                        format!(
                            "an extra event after the last expected one: {}",
                            text.as_str()
                        ),
                    );
                    continue;
                }
                let data = frame.data.as_deref().unwrap_or_default();
                match check.event(frame.seq, frame.prev_seq, data) {
                    Ok(()) => {
                        out.in_order += 1;
                        if check.done() {
                            out.last_us = Some(now);
                            shared.finish_one();
                            *finished = true;
                            linger_until = Some(Instant::now() + secs(args.linger));
                        }
                    }
                    Err(problem) => {
                        fail(&mut out, "order", problem);
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    ws::close(socket, secs(1.0)).await;
    out
}

/// Run `resume`.
pub async fn run(ctx: Ctx, args: ResumeArgs) -> anyhow::Result<Report> {
    let target = ctx.target.clone();
    anyhow::ensure!(args.sockets > 0, "need at least one socket");
    anyhow::ensure!(args.events > 0, "need at least one event");
    let run = crate::util::run_id();
    let mut report = Report::new(
        "resume",
        format!(
            "resume: {} socket(s) replaying {} events of {} B",
            args.sockets, args.events, args.size
        ),
    );
    report.json("target", target.addr.to_string());
    let channel = format!("private-loadgen-{run:08x}-resume");
    let timeout = secs(args.connect_timeout);

    // --- preload ----------------------------------------------------------------
    let mut publisher = open(&target, &channel, true, timeout).await?;
    match probe_on(
        &mut publisher,
        &channel,
        &args.event,
        &format!("{run:08x}-probe"),
        secs(args.probe_timeout),
    )
    .await
    {
        Probe::Unsupported(reason) => {
            eprintln!("resume: herald:publish is unsupported by this server ({reason})");
            ws::close(publisher, secs(1.0)).await;
            report.add("supported", "no: unsupported by this server", false);
            report.add("reason", reason.clone(), reason);
            report.add("ok", "true (nothing to measure)", true);
            return Ok(report);
        }
        Probe::Nacked(message) => anyhow::bail!("the probe publish was nacked: {message}"),
        Probe::Acked => {}
    }
    report.add("supported", "yes", true);
    eprintln!("resume: storing {} events on {channel}…", args.events + 1);
    let preloaded = preload(&mut publisher, &channel, run, &args).await?;
    ws::close(publisher, secs(1.0)).await;
    report.add("channel", channel.clone(), channel.clone());
    report.count("resume_from", preloaded.anchor);
    report.count("events", args.events);
    report.num(
        "preload_acked_per_sec",
        (args.events + 1) as f64 / preloaded.secs.max(1e-9),
        1,
        "/s",
    );
    report.count("preload_rate_limited_retries", preloaded.retries);

    // --- connect ----------------------------------------------------------------
    eprintln!("resume: connecting {} socket(s)…", args.sockets);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connected = futures::future::join_all((0..args.sockets).map(|_| {
        let target = target.clone();
        let permits = permits.clone();
        async move {
            let _permit = permits.acquire().await.expect("semaphore");
            ws::connect(&target, timeout).await
        }
    }))
    .await;
    let mut sockets = Vec::with_capacity(args.sockets);
    let mut connect_failures = 0u64;
    let mut first_connect_error = None;
    for c in connected {
        match c {
            Ok(s) => sockets.push(s),
            Err(e) => {
                connect_failures += 1;
                first_connect_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    report.count("sockets", args.sockets as u64);
    report.count("connect_failures", connect_failures);

    // --- resume -----------------------------------------------------------------
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        run,
        channel,
        anchor: preloaded.anchor,
        expected: preloaded.seqs,
        resumed_at_us: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        all_finished: Notify::new(),
        sockets: sockets.len() as u64,
        first_error: FirstError::default(),
    });
    if let Some(e) = first_connect_error {
        shared.first_error.set(e);
    }
    eprintln!(
        "resume: {} socket(s) resuming from seq {} at once…",
        sockets.len(),
        shared.anchor
    );
    let barrier = Arc::new(Barrier::new(sockets.len() + 1));
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|(socket, socket_id)| {
            tokio::spawn(resume_one(
                socket,
                socket_id,
                target.clone(),
                shared.clone(),
                barrier.clone(),
                args.clone(),
            ))
        })
        .collect();
    let cpu = ctx.cpu_meter();
    shared
        .resumed_at_us
        .store(shared.clock.now_us(), Ordering::SeqCst);
    barrier.wait().await;
    if !handles.is_empty() {
        // The CPU of the replay itself, not of the sockets' linger.
        let wait = secs(args.replay_timeout + 5.0);
        let _ = tokio::time::timeout(wait, shared.all_finished.notified()).await;
    }
    let cpu = cpu.finish();
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                shared.first_error.set(format!("a socket task failed: {e}"));
                outcomes.push(Outcome {
                    problem: Some(("task".into(), e.to_string())),
                    ..Outcome::default()
                });
            }
        }
    }

    let k = args.events;
    let complete = outcomes
        .iter()
        .filter(|o| o.problem.is_none() && o.in_order == k)
        .count() as u64;
    let received: u64 = outcomes.iter().map(|o| o.received).sum();
    let in_order: u64 = outcomes.iter().map(|o| o.in_order).sum();
    let extra: u64 = outcomes.iter().map(|o| o.extra).sum();
    let mut problems: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        if let Some((kind, _)) = &o.problem {
            *problems.entry(kind.clone()).or_default() += 1;
        }
    }
    // Throughput: all events to all sockets, from the resume to the last
    // socket's last event; and each socket's own rate.
    let last_us = outcomes.iter().filter_map(|o| o.last_us).max();
    let mut per_socket: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.last_us)
        .map(|us| k as f64 / (us.max(1) as f64 / 1e6))
        .collect();
    per_socket.sort_by(f64::total_cmp);
    let mut first_event = new_histogram();
    let mut succeeded = new_histogram();
    let mut finished = new_histogram();
    for o in &outcomes {
        if let Some(us) = o.first_us {
            first_event.saturating_record(us.max(1));
        }
        if let Some(us) = o.succeeded_us {
            succeeded.saturating_record(us.max(1));
        }
        if let Some(us) = o.last_us {
            finished.saturating_record(us.max(1));
        }
    }
    report.count("complete_sockets", complete);
    report.count("events_received", received);
    report.count("events_in_order", in_order);
    report.count("extra_events", extra);
    match last_us {
        Some(us) => {
            let secs_taken = us as f64 / 1e6;
            report.num("replay_secs", secs_taken, 3, "s");
            report.num(
                "replayed_events_per_sec",
                in_order as f64 / secs_taken.max(1e-9),
                1,
                "/s (all sockets)",
            );
        }
        None => report.json("replay_secs", serde_json::Value::Null),
    }
    if !per_socket.is_empty() {
        let median = per_socket[per_socket.len() / 2];
        report.num("per_socket_events_per_sec_median", median, 1, "/s");
        report.num("per_socket_events_per_sec_min", per_socket[0], 1, "/s");
    }
    report.add(
        "subscription_succeeded_after",
        latency_line(&succeeded),
        latency_json(&succeeded),
    );
    report.add(
        "first_event_after",
        latency_line(&first_event),
        latency_json(&first_event),
    );
    report.add(
        "last_event_after",
        latency_line(&finished),
        latency_json(&finished),
    );
    report.add("cpu", cpu_line(&cpu), cpu);
    report.add(
        "problems",
        if problems.is_empty() {
            "-".to_string()
        } else {
            problems
                .iter()
                .map(|(p, n)| format!("{n}× {p}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
        serde_json::to_value(&problems).unwrap_or_default(),
    );
    if let Some(e) = shared.first_error.get() {
        report.add("first_error", e.clone(), e);
    }
    let ok = connect_failures == 0 && complete == args.sockets as u64 && extra == 0;
    report.add("ok", ok.to_string(), ok);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(run: u32, n: u64) -> String {
        Payload {
            run,
            chan: 0,
            seq: n,
            t_us: 0,
        }
        .encode(32)
    }

    #[test]
    fn a_complete_replay_passes() {
        let expected = [12, 15, 16, 30];
        let mut check = Check::new(10, &expected, 7);
        let mut prev = 10;
        for (i, seq) in expected.iter().enumerate() {
            check
                .event(Some(*seq), Some(prev), &data(7, i as u64 + 1))
                .expect("in order");
            prev = *seq;
        }
        assert!(check.done());
        assert!(check.event(Some(31), Some(30), &data(7, 5)).is_err());
    }

    #[test]
    fn gaps_duplicates_broken_chains_and_foreign_data_fail() {
        let expected = [12, 15, 16];
        // A missing event.
        let mut check = Check::new(10, &expected, 7);
        check.event(Some(12), Some(10), &data(7, 1)).unwrap();
        let e = check.event(Some(16), Some(15), &data(7, 3)).unwrap_err();
        assert!(e.contains("1 event(s) missing"), "{e}");
        // A duplicate.
        let mut check = Check::new(10, &expected, 7);
        check.event(Some(12), Some(10), &data(7, 1)).unwrap();
        let e = check.event(Some(12), Some(10), &data(7, 1)).unwrap_err();
        assert!(e.contains("not strictly increasing"), "{e}");
        // prev_seq not chaining (the first must name the resume position).
        let mut check = Check::new(10, &expected, 7);
        let e = check.event(Some(12), Some(11), &data(7, 1)).unwrap_err();
        assert!(e.contains("prev_seq"), "{e}");
        let mut check = Check::new(10, &expected, 7);
        check.event(Some(12), Some(10), &data(7, 1)).unwrap();
        assert!(check.event(Some(15), None, &data(7, 2)).is_err());
        // Another run's data, or the events' data swapped.
        let mut check = Check::new(10, &expected, 7);
        assert!(check.event(Some(12), Some(10), &data(8, 1)).is_err());
        let mut check = Check::new(10, &expected, 7);
        assert!(check.event(Some(12), Some(10), &data(7, 2)).is_err());
        // No seq at all.
        let mut check = Check::new(10, &expected, 7);
        assert!(check.event(None, Some(10), &data(7, 1)).is_err());
    }

    #[test]
    fn reads_herald_stored_frames() {
        let text = r#"{"event":"loadgen","channel":"private-c","data":"hl|1|0|1|0|x","id":"e1","seq":42,"prev_seq":40,"ts":1}"#;
        let f: StoredFrame<'_> = serde_json::from_str(text).unwrap();
        assert_eq!((f.seq, f.prev_seq), (Some(42), Some(40)));
        assert_eq!(f.channel.as_deref(), Some("private-c"));
        assert!(matches!(f.data, Some(Cow::Borrowed(_))));
        // Frames whose data has escapes still parse (resume_failed, errors).
        let failed = r#"{"event":"herald:resume_failed","channel":"private-c","data":"{\"reason\":\"retention\"}"}"#;
        let f: StoredFrame<'_> = serde_json::from_str(failed).unwrap();
        assert_eq!(f.event, "herald:resume_failed");
        assert_eq!(ws::data_value(failed)["reason"], "retention");
    }
}
