//! `herald-ceiling-ws`: a minimal WebSocket broadcast server, written only to
//! measure the ceiling of WebSocket fan-out on this machine with the same
//! load generator (`herald-loadgen fanout`) that measures Herald.
//!
//! It speaks just enough of the Pusher protocol for that:
//! `pusher:connection_established`, `pusher:subscribe` →
//! `pusher_internal:subscription_succeeded`, `pusher:ping` → `pusher:pong`,
//! and `POST /apps/{id}/events` (signature not checked) which serializes
//! `{"event","channel","data"}` once per channel and queues the same bytes to
//! every subscriber. No persistence, no NATS, no auth. Like the gateway, each
//! connection has a bounded queue drained by a writer task that batches
//! whatever is queued into one flush; a subscriber whose queue is full is
//! dropped from its channels (and counted). Binds loopback only.

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use herald_ceilings::loopback_ip;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Minimal Pusher-protocol WebSocket broadcast server (fan-out ceiling).
#[derive(Debug, Parser)]
#[command(name = "herald-ceiling-ws", version, about)]
struct Cli {
    /// Address to bind: loopback only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 6101)]
    port: u16,
    /// Frames queued per connection before it counts as a slow consumer
    /// (the Herald gateway's default is 512).
    #[arg(long, default_value_t = 512)]
    queue: usize,
    /// Bytes of queued frames tungstenite coalesces into one write (0: one
    /// send() per frame, as the Herald gateway is configured today). The
    /// writer flushes whenever its queue is empty, so this only batches
    /// frames that are already waiting.
    #[arg(long, default_value_t = 16 * 1024)]
    write_buffer: usize,
    /// Leave Nagle's algorithm on (no TCP_NODELAY), as axum::serve does by
    /// default: shows the ~40 ms delayed-ACK stalls it causes.
    #[arg(long)]
    nagle: bool,
}

type Tx = mpsc::Sender<Utf8Bytes>;

#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, HashMap<u64, Tx>>>,
    next_id: AtomicU64,
    slow_consumers: AtomicU64,
    deliveries: AtomicU64,
}

impl Hub {
    fn broadcast(&self, channel: &str, frame: &Utf8Bytes) {
        let mut channels = self.channels.lock().expect("hub lock");
        let Some(subs) = channels.get_mut(channel) else {
            return;
        };
        let mut slow = Vec::new();
        for (id, tx) in subs.iter() {
            if tx.try_send(frame.clone()).is_err() {
                slow.push(*id);
            }
        }
        self.deliveries
            .fetch_add((subs.len() - slow.len()) as u64, Ordering::Relaxed);
        for id in slow {
            subs.remove(&id);
            let n = self.slow_consumers.fetch_add(1, Ordering::Relaxed) + 1;
            eprintln!("slow consumer {id} dropped from {channel} ({n} so far)");
        }
    }
}

fn ws_config(write_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(write_buffer)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// A server→client frame with `data` encoded as a JSON string, as Pusher does.
fn frame(event: &str, channel: Option<&str>, data: &Value) -> String {
    let data = match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match channel {
        Some(c) => json!({ "event": event, "channel": c, "data": data }).to_string(),
        None => json!({ "event": event, "data": data }).to_string(),
    }
}

// The handshake callback's error type is tungstenite's HTTP response.
#[allow(clippy::result_large_err)]
async fn websocket(stream: TcpStream, hub: Arc<Hub>, opts: Opts) -> anyhow::Result<()> {
    let callback = |req: &Request, resp: Response| {
        if req.uri().path().starts_with("/app/") {
            Ok(resp)
        } else {
            let mut not_found =
                tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(None);
            *not_found.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let socket = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(opts.write_buffer)),
    )
    .await?;
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(opts.queue.max(8));
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let established = frame(
        "pusher:connection_established",
        None,
        &json!({ "socket_id": format!("{}.{}", 1000 + id, id), "activity_timeout": 120 }),
    );
    tx.send(established.into()).await.ok();
    let mut subscribed: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = stream.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let event = v.get("event").and_then(Value::as_str).unwrap_or_default();
        let data = match v.get("data") {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
            Some(other) => other.clone(),
            None => Value::Null,
        };
        let channel = data.get("channel").and_then(Value::as_str);
        match (event, channel) {
            ("pusher:subscribe", Some(channel)) => {
                // Queue the confirmation before registering, so it precedes
                // the channel's first event.
                let ok = frame(
                    "pusher_internal:subscription_succeeded",
                    Some(channel),
                    &json!({}),
                );
                if tx.send(ok.into()).await.is_err() {
                    break;
                }
                hub.channels
                    .lock()
                    .expect("hub lock")
                    .entry(channel.to_owned())
                    .or_default()
                    .insert(id, tx.clone());
                subscribed.push(channel.to_owned());
            }
            ("pusher:unsubscribe", Some(channel)) => {
                if let Some(subs) = hub.channels.lock().expect("hub lock").get_mut(channel) {
                    subs.remove(&id);
                }
                subscribed.retain(|c| c != channel);
            }
            ("pusher:ping", _) => {
                let pong = frame("pusher:pong", None, &json!({}));
                if tx.send(pong.into()).await.is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    {
        let mut channels = hub.channels.lock().expect("hub lock");
        for c in &subscribed {
            if let Some(subs) = channels.get_mut(c) {
                subs.remove(&id);
                if subs.is_empty() {
                    channels.remove(c);
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Handle keep-alive HTTP/1.1 requests: only `POST /apps/{id}/events`.
async fn http(stream: TcpStream, hub: Arc<Hub>) -> anyhow::Result<()> {
    const MAX_BODY: usize = 1024 * 1024;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts
            .next()
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut content_length = 0usize;
        let mut close = false;
        let mut header_bytes = 0usize;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).await?;
            header_bytes += n;
            anyhow::ensure!(n > 0 && header_bytes < 64 * 1024, "bad request head");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().context("content-length")?;
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        anyhow::ensure!(content_length <= MAX_BODY, "body too large");
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body).await?;
        let is_events = path.starts_with("/apps/") && path.ends_with("/events");
        let (status, answer) = if method == "POST" && is_events {
            match publish(&hub, &body) {
                Ok(()) => ("200 OK", "{}".to_owned()),
                Err(e) => (
                    "400 Bad Request",
                    json!({ "error": e.to_string() }).to_string(),
                ),
            }
        } else {
            ("404 Not Found", r#"{"error":"not found"}"#.to_owned())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{answer}",
            answer.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

fn publish(hub: &Hub, body: &[u8]) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(body)?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .context("missing name")?;
    let data = v.get("data").context("missing data")?;
    let channels: Vec<&str> = match (v.get("channels"), v.get("channel")) {
        (Some(Value::Array(list)), _) => list.iter().filter_map(Value::as_str).collect(),
        (_, Some(Value::String(one))) => vec![one.as_str()],
        _ => anyhow::bail!("missing channels"),
    };
    for channel in channels {
        // Serialized once per channel; every subscriber gets the same bytes.
        let bytes: Utf8Bytes = frame(name, Some(channel), data).into();
        hub.broadcast(channel, &bytes);
    }
    Ok(())
}

/// Per-connection settings from the command line.
#[derive(Debug, Clone, Copy)]
struct Opts {
    queue: usize,
    write_buffer: usize,
    nagle: bool,
}

async fn connection(stream: TcpStream, hub: Arc<Hub>, opts: Opts) -> anyhow::Result<()> {
    stream.set_nodelay(!opts.nagle)?;
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(());
    }
    if first[0] == b'G' {
        websocket(stream, hub, opts).await
    } else {
        http(stream, hub).await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ip = loopback_ip(&cli.host)?;
    let listener = TcpListener::bind(SocketAddr::new(ip, cli.port)).await?;
    let hub = Arc::new(Hub::default());
    println!("herald-ceiling-ws listening on {}", listener.local_addr()?);
    {
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!(
                "herald-ceiling-ws: {} deliveries queued, {} slow consumers",
                hub.deliveries.load(Ordering::Relaxed),
                hub.slow_consumers.load(Ordering::Relaxed)
            );
            std::process::exit(0);
        });
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, typically: back off briefly.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let hub = hub.clone();
        let opts = Opts {
            queue: cli.queue,
            write_buffer: cli.write_buffer,
            nagle: cli.nagle,
        };
        tokio::spawn(async move {
            let _ = connection(stream, hub, opts).await;
        });
    }
}
