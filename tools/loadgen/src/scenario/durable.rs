//! `durable`: clients publishing over their WebSocket with Herald's
//! `herald:publish` extension and waiting for `herald:ack {client_id, id,
//! seq}` (or `herald:nack`): acked messages/s and ack latency.
//!
//! A probe publish comes first. A server that answers it with `pusher:error`,
//! closes the connection, or stays silent past `--probe-timeout` does not
//! support durable publishes: the run reports "unsupported by this server"
//! and exits 0.

use super::{cpu_line, Ctx};
use crate::report::Report;
use crate::stats::{latency_json, latency_line, Latencies};
use crate::target::Target;
use crate::util::{secs, Clock, FirstError, Payload};
use crate::ws::{self, Ws};
use clap::Args;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// `durable` flags.
#[derive(Debug, Clone, Args)]
pub struct DurableArgs {
    /// Publishing clients, each on its own channel.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Publishes in flight per client (1: each ack awaited before the next).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Most messages, all clients together.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Bytes of `data` per message.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds to wait for the answer to the probe publish.
    #[arg(long, default_value_t = 3.0)]
    pub probe_timeout: f64,
    /// Seconds to wait for one ack before giving up on a client.
    #[arg(long, default_value_t = 10.0)]
    pub ack_timeout: f64,
    /// Seconds one connection (or one subscribe) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Do not subscribe to the channel before publishing to it.
    #[arg(long)]
    pub no_subscribe: bool,
    /// Event name of the published messages.
    #[arg(long, default_value = "loadgen")]
    pub event: String,
}

/// The answer to one `herald:publish`.
#[derive(Debug)]
enum Answer {
    Ack {
        client_id: String,
        well_formed: bool,
    },
    Nack {
        client_id: String,
        message: String,
    },
    /// `pusher:error`: the server does not know the event (or refused it).
    Error(String),
    Other,
}

fn classify(text: &str) -> Answer {
    let Some(frame) = ws::parse(text) else {
        return Answer::Other;
    };
    let event = frame.event.to_string();
    match event.as_str() {
        "herald:ack" | "herald:nack" | "pusher:error" => {}
        _ => return Answer::Other,
    }
    let data = ws::data_value(text);
    let client_id = data
        .get("client_id")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_owned();
    match event.as_str() {
        "herald:ack" => Answer::Ack {
            client_id,
            well_formed: data.get("seq").is_some_and(|s| s.is_u64())
                && data.get("id").is_some_and(|s| s.is_string()),
        },
        "herald:nack" => Answer::Nack {
            client_id,
            message: data.to_string(),
        },
        _ => Answer::Error(
            data.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| data.to_string()),
        ),
    }
}

fn publish_frame(channel: &str, event: &str, data: &str, client_id: &str) -> String {
    serde_json::json!({
        "event": "herald:publish",
        "data": { "channel": channel, "event": event, "data": data, "client_id": client_id },
    })
    .to_string()
}

async fn open(target: &Target, channel: &str, args: &DurableArgs) -> anyhow::Result<Ws> {
    let timeout = secs(args.connect_timeout);
    let (mut socket, _) = ws::connect(target, timeout).await?;
    if !args.no_subscribe {
        ws::subscribe(&mut socket, channel, timeout).await?;
    }
    Ok(socket)
}

/// The probe: `Ok(None)` when supported, `Ok(Some(reason))` when not.
async fn probe(target: &Target, run: u32, args: &DurableArgs) -> anyhow::Result<Option<String>> {
    let channel = format!("loadgen-{run:08x}-probe");
    let mut socket = open(target, &channel, args).await?;
    let client_id = format!("{run:08x}-probe");
    let frame = publish_frame(&channel, &args.event, "probe", &client_id);
    socket.send(Message::text(frame)).await?;
    let wait = secs(args.probe_timeout);
    let answer = tokio::time::timeout(wait, async {
        loop {
            let text = match ws::next_text(&mut socket).await {
                Ok(t) => t,
                Err(e) => return Some(format!("the server closed the connection: {e:#}")),
            };
            match classify(&text) {
                Answer::Ack { client_id: c, .. } | Answer::Nack { client_id: c, .. }
                    if c == client_id =>
                {
                    return None
                }
                Answer::Error(message) => {
                    return Some(format!("the server answered pusher:error: {message}"))
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Some(format!(
            "no herald:ack or herald:nack within {} s",
            wait.as_secs_f64()
        ))
    });
    ws::close(socket, secs(1.0)).await;
    Ok(answer)
}

struct Shared {
    clock: Clock,
    run: u32,
    tickets: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    timeouts: AtomicU64,
    malformed: AtomicU64,
    unexpected: AtomicU64,
    failed_clients: AtomicU64,
    last_ack_us: AtomicU64,
    latencies: Latencies,
    first_nack: FirstError,
    first_error: FirstError,
}

/// Run `durable`.
pub async fn run(ctx: Ctx, args: DurableArgs) -> anyhow::Result<Report> {
    let target = ctx.target.clone();
    anyhow::ensure!(args.clients > 0, "need at least one client");
    let run = crate::util::run_id();
    let mut report = Report::new(
        "durable",
        format!(
            "durable: {} client(s), window {}, {} B messages",
            args.clients, args.window, args.size
        ),
    );
    report.json("target", target.addr.to_string());
    if let Some(reason) = probe(&target, run, &args).await? {
        eprintln!("durable: herald:publish is unsupported by this server ({reason})");
        report.add("supported", "no: unsupported by this server", false);
        report.add("reason", reason.clone(), reason);
        report.add("ok", "true (nothing to measure)", true);
        return Ok(report);
    }
    report.add("supported", "yes", true);

    let shared = Arc::new(Shared {
        clock: Clock::new(),
        run,
        tickets: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        nacked: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        failed_clients: AtomicU64::new(0),
        last_ack_us: AtomicU64::new(0),
        latencies: Latencies::new(8),
        first_nack: FirstError::default(),
        first_error: FirstError::default(),
    });
    let mut sockets = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let channel = format!("loadgen-{run:08x}-d{i}");
        match open(&target, &channel, &args).await {
            Ok(s) => sockets.push((i, channel, s)),
            Err(e) => {
                shared.failed_clients.fetch_add(1, Ordering::SeqCst);
                shared.first_error.set(format!("{e:#}"));
            }
        }
    }
    eprintln!(
        "durable: {} client(s) connected; publishing for up to {} s…",
        sockets.len(),
        args.duration
    );
    let end = Instant::now() + secs(args.duration);
    let started_us = shared.clock.now_us();
    let cpu = ctx.cpu_meter();
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|(i, channel, socket)| {
            tokio::spawn(client(
                i,
                channel,
                socket,
                shared.clone(),
                args.clone(),
                end,
            ))
        })
        .collect();
    futures::future::join_all(handles).await;
    let cpu = cpu.finish();

    let acked = shared.acked.load(Ordering::SeqCst);
    let nacked = shared.nacked.load(Ordering::SeqCst);
    let timeouts = shared.timeouts.load(Ordering::SeqCst);
    let malformed = shared.malformed.load(Ordering::SeqCst);
    let failed = shared.failed_clients.load(Ordering::SeqCst);
    let elapsed = shared
        .last_ack_us
        .load(Ordering::SeqCst)
        .saturating_sub(started_us) as f64
        / 1e6;
    let sent = shared.tickets.load(Ordering::SeqCst).min(args.messages);
    report.count("clients", args.clients as u64);
    report.count("client_failures", failed);
    report.count("window", args.window as u64);
    report.count("sent", sent);
    report.count("acked", acked);
    report.count("nacked", nacked);
    report.count("ack_timeouts", timeouts);
    report.count("malformed_acks", malformed);
    report.count(
        "unexpected_answers",
        shared.unexpected.load(Ordering::SeqCst),
    );
    report.num("elapsed_secs", elapsed, 2, "s");
    report.num("acked_per_sec", acked as f64 / elapsed.max(1e-9), 1, "/s");
    let latency = shared.latencies.merged();
    report.add(
        "ack_latency",
        latency_line(&latency),
        latency_json(&latency),
    );
    report.add("cpu", cpu_line(&cpu), cpu);
    if let Some(e) = shared.first_nack.get() {
        report.add("first_nack", e.clone(), e);
    }
    if let Some(e) = shared.first_error.get() {
        report.add("first_error", e.clone(), e);
    }
    let ok = failed == 0 && nacked == 0 && timeouts == 0 && malformed == 0 && acked > 0;
    report.add("ok", ok.to_string(), ok);
    Ok(report)
}

async fn client(
    index: usize,
    channel: String,
    mut socket: Ws,
    shared: Arc<Shared>,
    args: DurableArgs,
    end: Instant,
) {
    let mut recorder = shared.latencies.recorder(index);
    // client_id → send time (µs on the run clock).
    let mut in_flight: HashMap<String, u64> = HashMap::new();
    let mut n = 0u64;
    let ack_timeout = secs(args.ack_timeout);
    let mut last_progress = Instant::now();
    loop {
        // Fill the window while there is time and messages left.
        while in_flight.len() < args.window.max(1) && Instant::now() < end {
            if shared.tickets.fetch_add(1, Ordering::SeqCst) >= args.messages {
                break;
            }
            let t_us = shared.clock.now_us();
            let data = Payload {
                run: shared.run,
                chan: index as u32,
                seq: n,
                t_us,
            }
            .encode(args.size);
            let client_id = format!("{:08x}-{index}-{n}", shared.run);
            n += 1;
            let frame = publish_frame(&channel, &args.event, &data, &client_id);
            if let Err(e) = socket.send(Message::text(frame)).await {
                shared.first_error.set(format!("send: {e}"));
                shared.failed_clients.fetch_add(1, Ordering::SeqCst);
                return;
            }
            in_flight.insert(client_id, t_us);
        }
        if in_flight.is_empty() {
            break;
        }
        let wait = ack_timeout.saturating_sub(last_progress.elapsed());
        let msg =
            match tokio::time::timeout(wait.max(Duration::from_millis(1)), socket.next()).await {
                Err(_) => {
                    shared
                        .timeouts
                        .fetch_add(in_flight.len() as u64, Ordering::SeqCst);
                    break;
                }
                Ok(msg) => msg,
            };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                shared
                    .timeouts
                    .fetch_add(in_flight.len() as u64, Ordering::SeqCst);
                shared
                    .first_error
                    .set("connection closed with publishes in flight");
                shared.failed_clients.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Some(Ok(_)) => continue,
        };
        match classify(text.as_str()) {
            Answer::Ack {
                client_id,
                well_formed,
            } => match in_flight.remove(&client_id) {
                Some(t_us) => {
                    let now = shared.clock.now_us();
                    recorder.record(now.saturating_sub(t_us));
                    shared.acked.fetch_add(1, Ordering::SeqCst);
                    shared.last_ack_us.fetch_max(now, Ordering::SeqCst);
                    if !well_formed {
                        shared.malformed.fetch_add(1, Ordering::SeqCst);
                    }
                    last_progress = Instant::now();
                }
                None => {
                    shared.unexpected.fetch_add(1, Ordering::SeqCst);
                }
            },
            Answer::Nack { client_id, message } => {
                if in_flight.remove(&client_id).is_some() {
                    shared.nacked.fetch_add(1, Ordering::SeqCst);
                    shared.first_nack.set(message);
                    last_progress = Instant::now();
                } else {
                    shared.unexpected.fetch_add(1, Ordering::SeqCst);
                }
            }
            Answer::Error(message) => {
                shared.unexpected.fetch_add(1, Ordering::SeqCst);
                shared.first_error.set(format!("pusher:error: {message}"));
            }
            Answer::Other => {
                if ws::parse(text.as_str()).is_some_and(|f| f.event == "pusher:ping") {
                    let _ = ws::pong(&mut socket).await;
                }
            }
        }
    }
    recorder.flush();
    drop(recorder);
    ws::close(socket, secs(1.0)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_acks_nacks_and_errors() {
        let ack =
            r#"{"event":"herald:ack","data":"{\"client_id\":\"c1\",\"id\":\"x\",\"seq\":4}"}"#;
        assert!(
            matches!(classify(ack), Answer::Ack { ref client_id, well_formed: true } if client_id == "c1")
        );
        let ack_obj = r#"{"event":"herald:ack","data":{"client_id":"c2","id":"x"}}"#;
        assert!(matches!(
            classify(ack_obj),
            Answer::Ack {
                well_formed: false,
                ..
            }
        ));
        let nack =
            r#"{"event":"herald:nack","data":{"client_id":"c3","code":4000,"message":"no"}}"#;
        assert!(matches!(classify(nack), Answer::Nack { ref client_id, .. } if client_id == "c3"));
        let err = r#"{"event":"pusher:error","data":{"code":null,"message":"Unsupported event \"herald:publish\""}}"#;
        assert!(matches!(classify(err), Answer::Error(ref m) if m.contains("Unsupported")));
        assert!(matches!(classify(r#"{"event":"x"}"#), Answer::Other));
    }
}
