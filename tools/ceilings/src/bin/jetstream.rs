//! `herald-ceiling-jetstream`: the raw JetStream publish rate of this machine
//! with async-nats, in two modes:
//!
//! * `sync` — each publish's ack awaited before the next one;
//! * `pipelined` — up to `--window` publishes in flight, acks awaited in order.
//!
//! and with two stream configurations: `herald`, Herald's own `CHANNELS`
//! stream (`herald_stream::channels_stream_config`, with the settings of the
//! same `HERALD_STREAM_*` flags the services read: a duplicate window with a
//! `Nats-Msg-Id` on every publish, `RePublish` to a live subject, retention
//! limits), and `plain`, the same stream without any of that (file storage,
//! the same subjects). Each combination runs `--runs` times on a fresh stream; the
//! median msgs/s is reported. It starts its own `nats-server -js` on a free
//! loopback port with a temporary store, unless `--nats-url` names a
//! (loopback) one.

use anyhow::Context;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use herald_ceilings::{loopback_ip, median, NatsServer};
use herald_proto::{AppId, ChannelName, Subjects};
use herald_stream::{channels_stream_config, StreamArgs, StreamSettings};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sync,
    Pipelined,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StreamKind {
    Plain,
    Herald,
    Both,
}

/// Raw JetStream publish ceiling (msgs/s), sync and pipelined.
#[derive(Debug, Parser)]
#[command(name = "herald-ceiling-jetstream", version, about)]
struct Cli {
    /// Which publish modes to measure.
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,
    /// Which stream configurations to measure.
    #[arg(long, value_enum, default_value = "both")]
    stream: StreamKind,
    /// Payload bytes per message (the load generator's default `data` size).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Most messages per run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Most seconds per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Publishes in flight in pipelined mode.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Channel subjects published on, round robin (Herald's durable
    /// benchmark publishes on one channel per client).
    #[arg(long, default_value_t = 1)]
    subjects: usize,
    /// Also subscribe to the `herald` stream's live (republished) subjects
    /// on a second connection, as every gateway does, and count that every
    /// republished message arrived.
    #[arg(long)]
    live_subscriber: bool,
    /// Pipelined mode: flush the connection after every N publishes (and
    /// wait for the write), so that NATS reads them in batches of at most
    /// N, as from a gateway publishing for many sockets' small bursts.
    /// 0: let the client batch as it will.
    #[arg(long, default_value_t = 0)]
    flush_every: u64,
    /// Runs per combination (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Use this NATS server (loopback only) instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
    /// The `herald` stream's settings, as the services take them.
    #[command(flatten)]
    stream_args: StreamArgs,
}

/// Herald's channel stream for `subjects`, or (`plain`) the same stream with
/// none of what Herald adds: no duplicate window, republish, direct get or
/// retention limits.
fn stream_config(
    kind: StreamKind,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> stream::Config {
    let herald = channels_stream_config(subjects, settings);
    match kind {
        StreamKind::Herald => herald,
        _ => stream::Config {
            name: herald.name,
            subjects: herald.subjects,
            storage: herald.storage,
            retention: herald.retention,
            ..Default::default()
        },
    }
}

/// One run: returns (messages acked, seconds).
async fn one_run(
    js: &jetstream::Context,
    live: Option<&async_nats::Client>,
    kind: StreamKind,
    mode: Mode,
    cli: &Cli,
    run: usize,
) -> anyhow::Result<(u64, f64)> {
    // A prefix of its own per run, so every run starts on a fresh stream.
    let subjects = Subjects::new(&format!("ceil{run}"))?;
    let name = subjects.channels_stream();
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream_config(kind, &subjects, &cli.stream_args.settings()))
        .await
        .context("create stream")?;
    let app = AppId::parse("ceil")?;
    let channels = (0..cli.subjects.max(1))
        .map(|i| ChannelName::parse(&format!("c{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let targets: Vec<String> = channels.iter().map(|c| subjects.channel(&app, c)).collect();
    // The live subscriber counts on its own task what reaches it.
    let live = match (live, kind) {
        (Some(client), StreamKind::Herald) => {
            let mut subs = Vec::with_capacity(channels.len());
            for c in &channels {
                subs.push(client.subscribe(subjects.live(&app, c)).await?);
            }
            client.flush().await?;
            let mut all = futures::stream::select_all(subs);
            let count = Arc::new(AtomicU64::new(0));
            let counted = count.clone();
            let task = tokio::spawn(async move {
                while all.next().await.is_some() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
            Some((count, task))
        }
        _ => None,
    };
    let payload = Bytes::from(vec![b'x'; cli.size]);
    let limit = cli.messages;
    let window = if mode == Mode::Sync {
        1
    } else {
        cli.window.max(1)
    };
    let end = Instant::now() + Duration::from_secs_f64(cli.duration);
    let started = Instant::now();
    let mut pending: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
    let mut acked = 0u64;
    let mut sent = 0u64;
    while sent < limit && Instant::now() < end {
        let mut publish = PublishMessage::build().payload(payload.clone());
        if kind == StreamKind::Herald {
            publish = publish.message_id(format!("{run}-{sent}"));
        }
        let subject = targets[(sent % targets.len() as u64) as usize].clone();
        pending.push_back(js.send_publish(subject, publish).await?);
        sent += 1;
        if cli.flush_every > 0 && sent % cli.flush_every == 0 {
            js.client().flush().await?;
        }
        if pending.len() >= window {
            if let Some(ack) = pending.pop_front() {
                ack.await?;
                acked += 1;
            }
        }
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
        acked += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some((count, task)) = live {
        // Every stored message is republished; wait (bounded) for the last.
        let deadline = Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let got = count.load(Ordering::Relaxed);
        anyhow::ensure!(
            got >= acked,
            "the live subscriber got {got} of {acked} republished messages"
        );
    }
    js.delete_stream(&name).await.ok();
    Ok((acked, secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _server;
    let url = match &cli.nats_url {
        Some(url) => {
            let host = url
                .trim_start_matches("nats://")
                .rsplit_once(':')
                .map_or(url.as_str(), |(h, _)| h);
            loopback_ip(host)?;
            url.clone()
        }
        None => {
            let server = NatsServer::start()?;
            let url = server.url();
            eprintln!(
                "started nats-server (pid {}) at {url} with a temporary store",
                server.pid()
            );
            _server = server;
            url
        }
    };
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    let live = if cli.live_subscriber {
        Some(async_nats::connect(&url).await?)
    } else {
        None
    };
    let kinds = match cli.stream {
        StreamKind::Both => vec![StreamKind::Plain, StreamKind::Herald],
        k => vec![k],
    };
    let modes = match cli.mode {
        Mode::Both => vec![Mode::Sync, Mode::Pipelined],
        m => vec![m],
    };
    println!(
        "== JetStream publish ceiling: {} B payload, file storage, window {} when pipelined, {} runs ==",
        cli.size, cli.window, cli.runs
    );
    let mut results = serde_json::Map::new();
    let mut run_no = 0;
    for &kind in &kinds {
        for &mode in &modes {
            let mut rates = Vec::with_capacity(cli.runs);
            for _ in 0..cli.runs.max(1) {
                run_no += 1;
                let (acked, secs) = one_run(&js, live.as_ref(), kind, mode, &cli, run_no).await?;
                rates.push(acked as f64 / secs.max(1e-9));
            }
            let med = median(&rates);
            let label = format!(
                "{}_{}",
                match kind {
                    StreamKind::Plain => "plain",
                    _ => "herald",
                },
                match mode {
                    Mode::Sync => "sync",
                    _ => "pipelined",
                }
            );
            println!(
                "  {label:<18} median {med:>10.0} msg/s   runs: {}",
                rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            results.insert(
                label,
                json!({ "median_msgs_per_sec": med.round(), "runs": rates.iter().map(|r| r.round()).collect::<Vec<_>>() }),
            );
        }
    }
    results.insert("scenario".into(), json!("ceiling-jetstream"));
    results.insert("size".into(), json!(cli.size));
    results.insert("window".into(), json!(cli.window));
    println!("RESULT {}", serde_json::Value::Object(results));
    Ok(())
}
