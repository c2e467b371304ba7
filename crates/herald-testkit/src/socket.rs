//! A minimal Pusher protocol 7 client for tests.

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connected Pusher client.
pub struct PusherSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `socket_id` from `pusher:connection_established`.
    pub socket_id: String,
}

/// How long a test waits for one frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

impl PusherSocket {
    /// Connect to `ws://127.0.0.1:{port}/app/{key}?protocol=7` and wait for
    /// `pusher:connection_established`.
    pub async fn connect(port: u16, key: &str) -> anyhow::Result<Self> {
        let url =
            format!("ws://127.0.0.1:{port}/app/{key}?protocol=7&client=herald-testkit&version=0.1");
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut socket = Self {
            ws,
            socket_id: String::new(),
        };
        let frame = socket.next_frame().await?;
        if frame["event"] != "pusher:connection_established" {
            bail!("expected connection_established, got {frame}");
        }
        let data: Value =
            serde_json::from_str(frame["data"].as_str().context("data is a string")?)?;
        socket.socket_id = data["socket_id"].as_str().context("socket_id")?.to_owned();
        Ok(socket)
    }

    /// Connect to an arbitrary URL and return the raw socket (for bad paths).
    pub async fn connect_raw(
        url: &str,
    ) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
        Ok(tokio_tungstenite::connect_async(url).await?.0)
    }

    /// Send a raw text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Send `{"event": event, "data": data}`.
    pub async fn send_event(&mut self, event: &str, data: Value) -> anyhow::Result<()> {
        self.send_text(json!({ "event": event, "data": data }).to_string())
            .await
    }

    /// Subscribe to a public channel and wait for success.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        self.send_event("pusher:subscribe", json!({ "channel": channel }))
            .await?;
        let frame = self
            .next_event_of(&[
                "pusher_internal:subscription_succeeded",
                "pusher:subscription_error",
            ])
            .await?;
        if frame["event"] != "pusher_internal:subscription_succeeded" {
            bail!("subscription failed: {frame}");
        }
        Ok(())
    }

    /// The next text frame as JSON (pings answered transparently).
    pub async fn next_frame(&mut self) -> anyhow::Result<Value> {
        self.next_frame_within(FRAME_TIMEOUT).await
    }

    /// The next text frame within `timeout`.
    pub async fn next_frame_within(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?
                .ok_or_else(|| anyhow!("socket closed"))??;
            match msg {
                Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Skip frames until one whose event is in `events`.
    pub async fn next_event_of(&mut self, events: &[&str]) -> anyhow::Result<Value> {
        loop {
            let frame = self.next_frame().await?;
            if events.iter().any(|e| frame["event"] == *e) {
                return Ok(frame);
            }
        }
    }

    /// Wait for the server to close the socket; returns the close code.
    pub async fn closed(&mut self) -> anyhow::Result<Option<u16>> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("socket not closed within {FRAME_TIMEOUT:?}"))?;
            match msg {
                None => return Ok(None),
                Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Access the underlying stream.
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}
