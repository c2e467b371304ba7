//! `durable`: clients publishing over their WebSocket with Herald's
//! `herald:publish {channel, event, data, client_id}` extension and waiting
//! for `herald:ack {client_id, channel, id, seq, ts}` (or `herald:nack
//! {client_id, code, message}`): acknowledged publishes/s and ack latency.
//!
//! Herald stores client publishes on private and presence channels only, and
//! only from a socket subscribed to the channel. So each client connects,
//! subscribes to its own private channel `private-loadgen-<run>-d<i>` with
//! the `auth` an app's auth endpoint would give it (the HMAC of
//! `socket_id:channel` with the app secret of the target flags), then keeps
//! `--window` publishes in flight. Every answer is matched to its publish by
//! `client_id`. A nack, a malformed ack, two publishes acknowledged with the
//! same `seq`, a `pusher:error`, a lost connection or a missing answer makes
//! the run fail (exit 1), with the nack codes and the first message of each
//! kind in the report.
//!
//! A probe publish comes first. A server that answers it with `pusher:error`,
//! closes the connection, or stays silent past `--probe-timeout` does not
//! support durable publishes: the run reports "unsupported by this server"
//! and exits 0. A probe that is nacked is an answer (the server supports the
//! extension and refuses the publish): the run goes on and fails on its nacks.

use super::{cpu_line, Ctx};
use crate::report::Report;
use crate::stats::{latency_json, latency_line, Latencies};
use crate::target::Target;
use crate::util::{secs, Clock, FirstError, Payload};
use crate::ws::{self, Ws};
use clap::{Args, ValueEnum};
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Which kind of channel the clients publish on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelType {
    /// `private-…`, subscribed with a signed `auth` (what Herald accepts).
    Private,
    /// A public channel: Herald nacks every publish on it (`not_allowed`).
    /// For checking that a run with nacks fails.
    Public,
}

impl ChannelType {
    /// The channel name for `suffix`.
    pub fn channel(self, suffix: &str) -> String {
        match self {
            ChannelType::Private => format!("private-{suffix}"),
            ChannelType::Public => suffix.to_owned(),
        }
    }
}

/// `durable` flags.
#[derive(Debug, Clone, Args)]
pub struct DurableArgs {
    /// Publishing clients (connections), each on its own channel.
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
    /// Channel kind to publish on.
    #[arg(long, value_enum, default_value = "private")]
    pub channel_type: ChannelType,
    /// Seconds to wait for the answer to the probe publish.
    #[arg(long, default_value_t = 3.0)]
    pub probe_timeout: f64,
    /// Seconds to wait for one ack before giving up on a client.
    #[arg(long, default_value_t = 10.0)]
    pub ack_timeout: f64,
    /// Seconds one connection (or one subscribe) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Do not subscribe to the channel before publishing to it (Herald
    /// nacks every publish with `not_subscribed`).
    #[arg(long)]
    pub no_subscribe: bool,
    /// Event name of the published messages.
    #[arg(long, default_value = "loadgen")]
    pub event: String,
}

/// The answer to one `herald:publish`.
#[derive(Debug)]
pub(crate) enum Answer {
    Ack {
        client_id: String,
        /// The channel named in `data`.
        channel: String,
        seq: Option<u64>,
        /// `id` is a string and `ts` a number.
        well_formed: bool,
    },
    Nack {
        client_id: String,
        code: String,
        message: String,
    },
    /// `pusher:error`: the server does not know the event (or refused it).
    Error(String),
    Other,
}

/// `data` of a well-formed `herald:ack`, read without building a JSON tree
/// (the load generator reads one per publish).
#[derive(serde::Deserialize)]
struct WellFormedAck<'a> {
    #[serde(borrow)]
    client_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow, rename = "id")]
    _id: std::borrow::Cow<'a, str>,
    seq: u64,
    #[serde(rename = "ts")]
    _ts: f64,
}

pub(crate) fn classify(text: &str) -> Answer {
    let Some(frame) = ws::parse(text) else {
        return Answer::Other;
    };
    if frame.event == "herald:ack" {
        if let Some(Ok(ack)) = frame
            .data
            .as_deref()
            .map(serde_json::from_str::<WellFormedAck<'_>>)
        {
            return Answer::Ack {
                client_id: ack.client_id.into_owned(),
                channel: ack.channel.into_owned(),
                seq: Some(ack.seq),
                well_formed: true,
            };
        }
    }
    let event = frame.event.to_string();
    match event.as_str() {
        "herald:ack" | "herald:nack" | "pusher:error" => {}
        _ => return Answer::Other,
    }
    let data = ws::data_value(text);
    let field = |name: &str| {
        data.get(name)
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    match event.as_str() {
        "herald:ack" => Answer::Ack {
            client_id: field("client_id"),
            channel: field("channel"),
            seq: data.get("seq").and_then(|s| s.as_u64()),
            well_formed: data.get("id").is_some_and(|s| s.is_string())
                && data.get("ts").is_some_and(|s| s.is_number()),
        },
        "herald:nack" => Answer::Nack {
            client_id: field("client_id"),
            code: data
                .get("code")
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                .unwrap_or_else(|| "(none)".into()),
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

/// A `herald:publish` frame.
pub(crate) fn publish_frame(channel: &str, event: &str, data: &str, client_id: &str) -> String {
    #[derive(serde::Serialize)]
    struct Publish<'a> {
        event: &'static str,
        data: Fields<'a>,
    }
    #[derive(serde::Serialize)]
    struct Fields<'a> {
        channel: &'a str,
        event: &'a str,
        data: &'a str,
        client_id: &'a str,
    }
    // Sized up front: serde_json's `to_string` starts small and grows.
    let mut out =
        Vec::with_capacity(96 + channel.len() + event.len() + data.len() + client_id.len());
    serde_json::to_writer(
        &mut out,
        &Publish {
            event: "herald:publish",
            data: Fields {
                channel,
                event,
                data,
                client_id,
            },
        },
    )
    .expect("strings serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Connect and (unless `subscribe` is false) subscribe to `channel`, signed
/// when it is private.
pub(crate) async fn open(
    target: &Target,
    channel: &str,
    subscribe: bool,
    timeout: Duration,
) -> anyhow::Result<Ws> {
    let config = ws::ws_config().write_buffer_size(WRITE_BUFFER);
    let (mut socket, socket_id) = ws::connect_with(target, timeout, config).await?;
    if subscribe {
        ws::subscribe_signed(&mut socket, target, &socket_id, channel, timeout).await?;
    }
    Ok(socket)
}

/// What the probe publish got.
#[derive(Debug)]
pub(crate) enum Probe {
    /// `herald:ack`.
    Acked,
    /// `herald:nack`: supported, but refused (the message).
    Nacked(String),
    /// No durable publishes on this server (why).
    Unsupported(String),
}

/// Publish one probe on `channel` (already subscribed on `socket`).
pub(crate) async fn probe_on(
    socket: &mut Ws,
    channel: &str,
    event: &str,
    client_id: &str,
    wait: Duration,
) -> Probe {
    let frame = publish_frame(channel, event, "probe", client_id);
    if let Err(e) = socket.send(Message::text(frame)).await {
        return Probe::Unsupported(format!("the server closed the connection: {e}"));
    }
    tokio::time::timeout(wait, async {
        loop {
            let text = match ws::next_text(socket).await {
                Ok(t) => t,
                Err(e) => {
                    return Probe::Unsupported(format!("the server closed the connection: {e:#}"))
                }
            };
            match classify(&text) {
                Answer::Ack { client_id: c, .. } if c == client_id => return Probe::Acked,
                Answer::Nack {
                    client_id: c,
                    message,
                    ..
                } if c == client_id => return Probe::Nacked(message),
                Answer::Error(message) => {
                    return Probe::Unsupported(format!(
                        "the server answered pusher:error: {message}"
                    ))
                }
                Answer::Other if ws::parse(&text).is_some_and(|f| f.event == "pusher:ping") => {
                    let _ = ws::pong(socket).await;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Probe::Unsupported(format!(
            "no herald:ack or herald:nack within {} s",
            wait.as_secs_f64()
        ))
    })
}

async fn probe(target: &Target, run: u32, args: &DurableArgs) -> anyhow::Result<Probe> {
    let channel = args
        .channel_type
        .channel(&format!("loadgen-{run:08x}-probe"));
    let mut socket = open(
        target,
        &channel,
        !args.no_subscribe,
        secs(args.connect_timeout),
    )
    .await?;
    let client_id = format!("{run:08x}-probe");
    let answer = probe_on(
        &mut socket,
        &channel,
        &args.event,
        &client_id,
        secs(args.probe_timeout),
    )
    .await;
    ws::close(socket, secs(1.0)).await;
    Ok(answer)
}

struct Shared {
    clock: Clock,
    run: u32,
    tickets: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    timeouts: AtomicU64,
    malformed: AtomicU64,
    duplicate_seqs: AtomicU64,
    unexpected: AtomicU64,
    failed_clients: AtomicU64,
    last_ack_us: AtomicU64,
    latencies: Latencies,
    nack_codes: Mutex<BTreeMap<String, u64>>,
    first_nack: FirstError,
    first_malformed: FirstError,
    first_error: FirstError,
}

/// Run `durable`.
pub async fn run(ctx: Ctx, args: DurableArgs) -> anyhow::Result<Report> {
    let target = ctx.target.clone();
    anyhow::ensure!(args.clients > 0, "need at least one client");
    let run = crate::util::run_id();
    let window = args.window.max(1);
    let mut report = Report::new(
        "durable",
        format!(
            "durable: {} client(s), window {}, {} B messages, {:?} channels",
            args.clients, window, args.size, args.channel_type
        ),
    );
    report.json("target", target.addr.to_string());
    let probe = probe(&target, run, &args).await?;
    if let Probe::Unsupported(reason) = probe {
        eprintln!("durable: herald:publish is unsupported by this server ({reason})");
        report.add("supported", "no: unsupported by this server", false);
        report.add("reason", reason.clone(), reason);
        report.add("ok", "true (nothing to measure)", true);
        return Ok(report);
    }
    report.add("supported", "yes", true);
    if let Probe::Nacked(message) = &probe {
        eprintln!("durable: the probe publish was nacked: {message}");
        report.add("probe_nack", message.clone(), message.clone());
    }

    let shared = Arc::new(Shared {
        clock: Clock::new(),
        run,
        tickets: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        nacked: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        duplicate_seqs: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        failed_clients: AtomicU64::new(0),
        last_ack_us: AtomicU64::new(0),
        latencies: Latencies::new(8),
        nack_codes: Mutex::new(BTreeMap::new()),
        first_nack: FirstError::default(),
        first_malformed: FirstError::default(),
        first_error: FirstError::default(),
    });
    let opened = futures::future::join_all((0..args.clients).map(|i| {
        let target = target.clone();
        let channel = args
            .channel_type
            .channel(&format!("loadgen-{run:08x}-d{i}"));
        let subscribe = !args.no_subscribe;
        let timeout = secs(args.connect_timeout);
        async move {
            let socket = open(&target, &channel, subscribe, timeout).await;
            (i, channel, socket)
        }
    }))
    .await;
    let mut sockets = Vec::with_capacity(args.clients);
    for (i, channel, socket) in opened {
        match socket {
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

    let sent = shared.sent.load(Ordering::SeqCst);
    let acked = shared.acked.load(Ordering::SeqCst);
    let nacked = shared.nacked.load(Ordering::SeqCst);
    let timeouts = shared.timeouts.load(Ordering::SeqCst);
    let malformed = shared.malformed.load(Ordering::SeqCst);
    let duplicate_seqs = shared.duplicate_seqs.load(Ordering::SeqCst);
    let unexpected = shared.unexpected.load(Ordering::SeqCst);
    let failed = shared.failed_clients.load(Ordering::SeqCst);
    let elapsed = shared
        .last_ack_us
        .load(Ordering::SeqCst)
        .saturating_sub(started_us) as f64
        / 1e6;
    report.add(
        "channel_type",
        format!("{:?}", args.channel_type).to_lowercase(),
        format!("{:?}", args.channel_type).to_lowercase(),
    );
    report.count("clients", args.clients as u64);
    report.count("client_failures", failed);
    report.count("window", window as u64);
    report.count("in_flight", (args.clients * window) as u64);
    report.count("sent", sent);
    report.count("acked", acked);
    report.count("nacked", nacked);
    let codes = shared.nack_codes.lock().expect("nack codes").clone();
    report.add(
        "nack_codes",
        if codes.is_empty() {
            "-".to_string()
        } else {
            codes
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        serde_json::to_value(&codes).unwrap_or_default(),
    );
    report.count("ack_timeouts", timeouts);
    report.count("malformed_acks", malformed);
    report.count("duplicate_seqs", duplicate_seqs);
    report.count("unexpected_answers", unexpected);
    report.num("elapsed_secs", elapsed, 2, "s");
    report.num("acked_per_sec", acked as f64 / elapsed.max(1e-9), 1, "/s");
    let latency = shared.latencies.merged();
    report.add(
        "ack_latency",
        latency_line(&latency),
        latency_json(&latency),
    );
    report.add("cpu", cpu_line(&cpu), cpu);
    for (key, first) in [
        ("first_nack", &shared.first_nack),
        ("first_malformed", &shared.first_malformed),
        ("first_error", &shared.first_error),
    ] {
        if let Some(e) = first.get() {
            report.add(key, e.clone(), e);
        }
    }
    let ok = failed == 0
        && nacked == 0
        && timeouts == 0
        && malformed == 0
        && duplicate_seqs == 0
        && unexpected == 0
        && acked > 0
        && acked == sent;
    report.add("ok", ok.to_string(), ok);
    Ok(report)
}

/// Bytes a durable client buffers before writing: a whole window of
/// publishes goes out in one write, as a pipelining client (and the
/// JetStream ceiling's NATS client) sends them.
const WRITE_BUFFER: usize = 16 * 1024;

/// What one publishing client keeps while it runs.
struct Client<'a> {
    index: usize,
    channel: String,
    shared: &'a Shared,
    recorder: crate::stats::Recorder<'a>,
    /// client_id → send time (µs on the run clock).
    in_flight: HashMap<String, u64>,
    /// The seqs this client's publishes were stored at: two publishes
    /// acknowledged with one seq mean one of them was not stored.
    seqs: HashSet<u64>,
    last_progress: Instant,
}

/// Whether a client goes on after a message.
enum Flow {
    Go,
    /// The connection is gone: the publishes in flight are lost.
    Lost,
}

impl Client<'_> {
    /// Handle one message from the server.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        socket: &mut Ws,
    ) -> Flow {
        let shared = self.shared;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                shared
                    .timeouts
                    .fetch_add(self.in_flight.len() as u64, Ordering::SeqCst);
                shared
                    .first_error
                    .set("connection closed with publishes in flight");
                shared.failed_clients.fetch_add(1, Ordering::SeqCst);
                return Flow::Lost;
            }
            Some(Ok(_)) => return Flow::Go,
        };
        match classify(text.as_str()) {
            Answer::Ack {
                client_id,
                channel: acked_channel,
                seq,
                well_formed,
            } => match self.in_flight.remove(&client_id) {
                Some(t_us) => {
                    let now = shared.clock.now_us();
                    self.recorder.record(now.saturating_sub(t_us));
                    shared.acked.fetch_add(1, Ordering::SeqCst);
                    shared.last_ack_us.fetch_max(now, Ordering::SeqCst);
                    match seq {
                        Some(seq) if well_formed && acked_channel == self.channel => {
                            if !self.seqs.insert(seq) {
                                shared.duplicate_seqs.fetch_add(1, Ordering::SeqCst);
                                shared.first_error.set(format!(
                                    "two publishes of {} acknowledged with seq {seq}",
                                    self.channel
                                ));
                            }
                        }
                        _ => {
                            shared.malformed.fetch_add(1, Ordering::SeqCst);
                            shared.first_malformed.set(text.as_str().to_owned());
                        }
                    }
                    self.last_progress = Instant::now();
                }
                None => {
                    shared.unexpected.fetch_add(1, Ordering::SeqCst);
                    shared.first_error.set(format!(
                        "an ack for no publish in flight: {}",
                        text.as_str()
                    ));
                }
            },
            Answer::Nack {
                client_id,
                code,
                message,
            } => {
                if self.in_flight.remove(&client_id).is_some() {
                    shared.nacked.fetch_add(1, Ordering::SeqCst);
                    *shared
                        .nack_codes
                        .lock()
                        .expect("nack codes")
                        .entry(code)
                        .or_default() += 1;
                    shared.first_nack.set(message);
                    self.last_progress = Instant::now();
                } else {
                    shared.unexpected.fetch_add(1, Ordering::SeqCst);
                    shared
                        .first_error
                        .set(format!("a nack for no publish in flight: {message}"));
                }
            }
            Answer::Error(message) => {
                shared.unexpected.fetch_add(1, Ordering::SeqCst);
                shared.first_error.set(format!("pusher:error: {message}"));
            }
            Answer::Other => {
                if ws::parse(text.as_str()).is_some_and(|f| f.event == "pusher:ping") {
                    let _ = ws::pong(socket).await;
                }
            }
        }
        Flow::Go
    }
}

async fn client(
    index: usize,
    channel: String,
    mut socket: Ws,
    shared: Arc<Shared>,
    args: DurableArgs,
    end: Instant,
) {
    let mut client = Client {
        index,
        channel,
        recorder: shared.latencies.recorder(index),
        shared: &shared,
        in_flight: HashMap::new(),
        seqs: HashSet::new(),
        last_progress: Instant::now(),
    };
    let mut n = 0u64;
    let ack_timeout = secs(args.ack_timeout);
    let window = args.window.max(1);
    loop {
        // Fill the window while there is time and messages left, then send
        // all of it in one write.
        let mut fed = false;
        while client.in_flight.len() < window && Instant::now() < end {
            let shared = client.shared;
            if shared.tickets.fetch_add(1, Ordering::SeqCst) >= args.messages {
                break;
            }
            let t_us = shared.clock.now_us();
            let data = Payload {
                run: shared.run,
                chan: client.index as u32,
                seq: n,
                t_us,
            }
            .encode(args.size);
            let client_id = format!("{:08x}-{}-{n}", shared.run, client.index);
            n += 1;
            let frame = publish_frame(&client.channel, &args.event, &data, &client_id);
            if let Err(e) = socket.feed(Message::text(frame)).await {
                client.lose_connection(format!("send: {e}"));
                return;
            }
            shared.sent.fetch_add(1, Ordering::SeqCst);
            client.in_flight.insert(client_id, t_us);
            fed = true;
        }
        if fed {
            if let Err(e) = socket.flush().await {
                client.lose_connection(format!("send: {e}"));
                return;
            }
        }
        if client.in_flight.is_empty() {
            break;
        }
        let wait = ack_timeout.saturating_sub(client.last_progress.elapsed());
        let msg =
            match tokio::time::timeout(wait.max(Duration::from_millis(1)), socket.next()).await {
                Err(_) => {
                    client
                        .shared
                        .timeouts
                        .fetch_add(client.in_flight.len() as u64, Ordering::SeqCst);
                    client.shared.first_error.set(format!(
                        "no herald:ack or herald:nack within {} s",
                        ack_timeout.as_secs_f64()
                    ));
                    break;
                }
                Ok(msg) => msg,
            };
        if let Flow::Lost = client.on_message(msg, &mut socket).await {
            return;
        }
        // Every answer already received, before the window is refilled.
        while let Some(msg) = socket.next().now_or_never() {
            if let Flow::Lost = client.on_message(msg, &mut socket).await {
                return;
            }
        }
    }
    client.recorder.flush();
    drop(client);
    ws::close(socket, secs(1.0)).await;
}

impl Client<'_> {
    /// A send failed: the client stops, its publishes in flight unanswered.
    fn lose_connection(&self, error: String) {
        self.shared.first_error.set(error);
        self.shared.failed_clients.fetch_add(1, Ordering::SeqCst);
        self.shared
            .timeouts
            .fetch_add(self.in_flight.len() as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_acks_nacks_and_errors() {
        // Herald's shapes (herald-proto's ServerFrame::Ack / Nack).
        let ack = r#"{"event":"herald:ack","channel":"private-c","data":"{\"channel\":\"private-c\",\"client_id\":\"c1\",\"id\":\"x\",\"seq\":4,\"ts\":1700000000000}"}"#;
        assert!(matches!(
            classify(ack),
            Answer::Ack { ref client_id, ref channel, seq: Some(4), well_formed: true }
                if client_id == "c1" && channel == "private-c"
        ));
        let ack_obj = r#"{"event":"herald:ack","data":{"client_id":"c2","id":"x"}}"#;
        assert!(matches!(
            classify(ack_obj),
            Answer::Ack {
                seq: None,
                well_formed: false,
                ..
            }
        ));
        // An id that is not a string is malformed, even with a good seq.
        let bad_id = r#"{"event":"herald:ack","data":"{\"channel\":\"private-c\",\"client_id\":\"c4\",\"id\":5,\"seq\":4,\"ts\":1}"}"#;
        assert!(matches!(
            classify(bad_id),
            Answer::Ack { ref client_id, seq: Some(4), well_formed: false, .. } if client_id == "c4"
        ));
        let nack = r#"{"event":"herald:nack","data":"{\"client_id\":\"c3\",\"code\":\"not_allowed\",\"message\":\"no\"}"}"#;
        assert!(matches!(
            classify(nack),
            Answer::Nack { ref client_id, ref code, .. } if client_id == "c3" && code == "not_allowed"
        ));
        let err = r#"{"event":"pusher:error","data":{"code":null,"message":"Unsupported event \"herald:publish\""}}"#;
        assert!(matches!(classify(err), Answer::Error(ref m) if m.contains("Unsupported")));
        assert!(matches!(classify(r#"{"event":"x"}"#), Answer::Other));
    }

    #[test]
    fn publish_frames_carry_the_four_fields() {
        let frame: serde_json::Value =
            serde_json::from_str(&publish_frame("private-c", "e", "d\"1", "id-1")).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({
                "event": "herald:publish",
                "data": {"channel": "private-c", "event": "e", "data": "d\"1", "client_id": "id-1"},
            })
        );
    }

    #[test]
    fn channel_types_name_channels() {
        assert_eq!(ChannelType::Private.channel("lg-1"), "private-lg-1");
        assert_eq!(ChannelType::Public.channel("lg-1"), "lg-1");
    }
}
