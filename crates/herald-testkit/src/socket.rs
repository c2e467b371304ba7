//! A minimal Pusher protocol 7 client for tests.

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use herald_proto::pusher;
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
    /// The app key it connected with (the `key:` part of channel auth).
    key: String,
}

/// How long a test waits for one frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The `data` of a server frame, parsed: Pusher sends it as a JSON string
/// holding JSON. Panics (naming the frame) if it is anything else.
pub fn data_of(frame: &Value) -> Value {
    let Some(text) = frame["data"].as_str() else {
        panic!("the data of {frame} is not a JSON string");
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the data of {frame} is not JSON: {e}"))
}

/// How a socket ended, as [`PusherSocket::close_frame`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with a code and a reason.
    Code(u16, String),
    /// A close frame without a code.
    NoCode,
}

impl PusherSocket {
    /// Connect to `ws://127.0.0.1:{port}/app/{key}?protocol=7` and wait for
    /// `pusher:connection_established`.
    pub async fn connect(port: u16, key: &str) -> anyhow::Result<Self> {
        Self::connect_with_query(port, key, "").await
    }

    /// Connect with a session token on the URL (`&token=`), and wait for
    /// `pusher:connection_established`.
    pub async fn connect_with_token(port: u16, key: &str, token: &str) -> anyhow::Result<Self> {
        Self::connect_with_query(port, key, &format!("&token={token}")).await
    }

    /// Connect with `extra` appended to the query string (starting with
    /// `&`), and wait for `pusher:connection_established`.
    pub async fn connect_with_query(port: u16, key: &str, extra: &str) -> anyhow::Result<Self> {
        let url = format!(
            "ws://127.0.0.1:{port}/app/{key}?protocol=7&client=herald-testkit&version=0.1{extra}"
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut socket = Self {
            ws,
            socket_id: String::new(),
            key: key.to_owned(),
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

    /// Send a client event (`client-*`) on `channel`.
    pub async fn send_client_event(
        &mut self,
        channel: &str,
        event: &str,
        data: Value,
    ) -> anyhow::Result<()> {
        self.send_text(json!({ "event": event, "channel": channel, "data": data }).to_string())
            .await
    }

    /// Send `pusher:subscribe` with `data` and return the answer: the
    /// `pusher_internal:subscription_succeeded` or `pusher:subscription_error`
    /// frame, whichever comes (other frames before it are skipped).
    pub async fn subscribe_with(&mut self, data: Value) -> anyhow::Result<Value> {
        self.send_event("pusher:subscribe", data).await?;
        self.next_event_of(&[
            "pusher_internal:subscription_succeeded",
            "pusher:subscription_error",
        ])
        .await
    }

    /// Subscribe to a public channel and wait for success.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        let frame = self.subscribe_with(json!({ "channel": channel })).await?;
        succeeded(&frame)
    }

    /// Subscribe to a private (or private-encrypted, or cache) channel with
    /// an `auth` signed by `secret`, and wait for success.
    pub async fn subscribe_private(&mut self, secret: &str, channel: &str) -> anyhow::Result<()> {
        let auth = pusher::channel_auth(&self.key, secret, &self.socket_id, channel, None);
        let frame = self
            .subscribe_with(json!({ "channel": channel, "auth": auth }))
            .await?;
        succeeded(&frame)
    }

    /// Subscribe to a presence channel as `user_id` with `user_info`, signed
    /// by `secret`; returns the answer frame, success or error.
    pub async fn try_join_presence(
        &mut self,
        secret: &str,
        channel: &str,
        user_id: &str,
        user_info: Value,
    ) -> anyhow::Result<Value> {
        let channel_data = json!({ "user_id": user_id, "user_info": user_info }).to_string();
        let auth = pusher::channel_auth(
            &self.key,
            secret,
            &self.socket_id,
            channel,
            Some(&channel_data),
        );
        self.subscribe_with(json!({
            "channel": channel,
            "auth": auth,
            "channel_data": channel_data,
        }))
        .await
    }

    /// Join a presence channel (see [`Self::try_join_presence`]) and wait
    /// for success; returns the `presence` object (`ids`, `hash`, `count`).
    pub async fn join_presence(
        &mut self,
        secret: &str,
        channel: &str,
        user_id: &str,
        user_info: Value,
    ) -> anyhow::Result<Value> {
        let frame = self
            .try_join_presence(secret, channel, user_id, user_info)
            .await?;
        succeeded(&frame)?;
        Ok(data_of(&frame)["presence"].clone())
    }

    /// `pusher:signin` as `user_id` with `user_info` (none when null),
    /// signed by `secret`, and wait for `pusher:signin_success`; returns the
    /// `user_data` string that was signed (the success carries it back,
    /// checked here).
    pub async fn sign_in(
        &mut self,
        secret: &str,
        user_id: &str,
        user_info: Value,
    ) -> anyhow::Result<String> {
        let mut user_data = json!({ "id": user_id });
        if !user_info.is_null() {
            user_data["user_info"] = user_info;
        }
        let user_data = user_data.to_string();
        let sig = pusher::user_signature(secret, &self.socket_id, &user_data);
        self.send_event(
            "pusher:signin",
            json!({ "user_data": user_data, "auth": format!("{}:{sig}", self.key) }),
        )
        .await?;
        let frame = self
            .next_event_of(&["pusher:signin_success", "pusher:error"])
            .await?;
        if frame["event"] != "pusher:signin_success" {
            bail!("sign-in refused: {frame}");
        }
        if data_of(&frame)["user_data"] != user_data.as_str() {
            bail!("sign-in success for other user data: {frame}");
        }
        Ok(user_data)
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

    /// Every frame before the first one `is_marker` accepts, and the marker.
    /// Fails if the socket closes (or stays silent) before the marker.
    pub async fn frames_until(
        &mut self,
        marker: &str,
        is_marker: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<(Vec<Value>, Value)> {
        let mut before = Vec::new();
        loop {
            let frame = self
                .next_frame()
                .await
                .with_context(|| format!("waiting for {marker} after {before:?}"))?;
            if is_marker(&frame) {
                return Ok((before, frame));
            }
            before.push(frame);
        }
    }

    /// The absence check: nothing arrives before the marker `is_marker`
    /// accepts, an event sent after whatever must not arrive (so a late frame
    /// cannot hide behind a timeout, and the socket is open since the marker
    /// reached it). Returns the marker.
    pub async fn quiet_until(
        &mut self,
        marker: &str,
        is_marker: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let (before, frame) = self.frames_until(marker, is_marker).await?;
        if !before.is_empty() {
            bail!("expected nothing before {marker}, got {before:?}");
        }
        Ok(frame)
    }

    /// [`Self::quiet_until`] an event named `event`.
    pub async fn quiet_until_event(&mut self, event: &str) -> anyhow::Result<Value> {
        self.quiet_until(event, |f| f["event"] == event).await
    }

    /// Ping, and the pong must be the next frame: the socket is open and
    /// nothing is queued for it. (The pong is queued after every frame the
    /// gateway had already queued for this socket, so this is a marker only
    /// for frames the gateway has seen: use it after a marker on another
    /// socket of the same gateway proved the frame would have been queued.)
    pub async fn quiet_until_pong(&mut self) -> anyhow::Result<()> {
        self.send_event("pusher:ping", json!({})).await?;
        self.quiet_until_event("pusher:pong").await.map(|_| ())
    }

    /// Wait for the server to close the socket (skipping frames before the
    /// close); the code of its close frame, `None` for a close frame without
    /// a code. An error if the connection ends any other way (reset, end of
    /// stream without a close frame) or stays open for [`FRAME_TIMEOUT`].
    pub async fn closed(&mut self) -> anyhow::Result<Option<u16>> {
        Ok(match self.close_frame().await? {
            Closed::Code(code, _) => Some(code),
            Closed::NoCode => None,
        })
    }

    /// Wait for the server's close frame (see [`Self::closed`]).
    pub async fn close_frame(&mut self) -> anyhow::Result<Closed> {
        Ok(self.frames_before_close().await?.1)
    }

    /// Wait for the server's close frame (see [`Self::closed`]); also
    /// answers the text frames that came before it.
    pub async fn frames_before_close(&mut self) -> anyhow::Result<(Vec<Value>, Closed)> {
        let mut before = Vec::new();
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("socket not closed within {FRAME_TIMEOUT:?}"))?;
            let closed = match msg {
                None => bail!("the connection ended without a close frame after {before:?}"),
                Some(Err(err)) => {
                    bail!("the connection failed instead of closing: {err} (after {before:?})")
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    Closed::Code(u16::from(frame.code), frame.reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => Closed::NoCode,
                Some(Ok(Message::Text(text))) => {
                    before.push(serde_json::from_str(text.as_str())?);
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            return Ok((before, closed));
        }
    }

    /// Access the underlying stream.
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

fn succeeded(frame: &Value) -> anyhow::Result<()> {
    if frame["event"] != "pusher_internal:subscription_succeeded" {
        bail!("subscription failed: {frame}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    /// A one-connection server that greets like Pusher, then ends the
    /// connection as `end` says.
    async fn server(end: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let hello = json!({
                "event": "pusher:connection_established",
                "data": json!({"socket_id": "1.2", "activity_timeout": 120}).to_string(),
            });
            ws.send(Message::text(hello.to_string())).await.unwrap();
            ws.send(Message::text(r#"{"event":"x"}"#)).await.unwrap();
            match end {
                "code" => {
                    let frame = CloseFrame {
                        code: CloseCode::from(4200),
                        reason: "bye".into(),
                    };
                    ws.send(Message::Close(Some(frame))).await.unwrap();
                }
                "no code" => ws.send(Message::Close(None)).await.unwrap(),
                _ => drop(ws), // the TCP connection just ends
            }
            // Let the client read what was sent before the socket goes.
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        port
    }

    #[tokio::test]
    async fn closed_tells_a_close_code_from_a_close_without_one_and_from_a_dropped_connection() {
        let mut s = PusherSocket::connect(server("code").await, "k")
            .await
            .unwrap();
        let (before, close) = s.frames_before_close().await.unwrap();
        assert_eq!(before, vec![json!({"event": "x"})]);
        assert_eq!(close, Closed::Code(4200, "bye".into()));

        let mut s = PusherSocket::connect(server("no code").await, "k")
            .await
            .unwrap();
        assert_eq!(s.closed().await.unwrap(), None);

        let mut s = PusherSocket::connect(server("drop").await, "k")
            .await
            .unwrap();
        assert!(s.closed().await.is_err());
    }
}
