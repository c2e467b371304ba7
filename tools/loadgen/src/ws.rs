//! A memory-light Pusher protocol 7 client connection: connect, wait for
//! `pusher:connection_established`, subscribe and wait for
//! `pusher_internal:subscription_succeeded`, answer pings, close.
//!
//! Each connection is one `WebSocketStream` over a plain `TcpStream` with a
//! 4 KiB read buffer and no write buffer, so that ten thousand of them fit in
//! a few tens of megabytes.

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;

/// One client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Small buffers: frames here are a few hundred bytes.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// A server frame, parsed without copying when `data` is a plain string
/// (the case of every channel event the load generator sends).
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// Event name.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// Channel, for channel events.
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    /// `data` when it is a JSON string (Pusher's server-to-client shape).
    #[serde(borrow, default, deserialize_with = "string_or_none")]
    pub data: Option<Cow<'a, str>>,
}

/// Keep `data` when it is a string; ignore any other shape (e.g. the object
/// some servers put in `pusher:error`), which [`data_value`] reads instead.
pub fn string_or_none<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        Str(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Either::deserialize(d)? {
        Either::Str(s) => Some(s),
        Either::Other(_) => None,
    })
}

/// `data` of a frame as a JSON value, whether it was sent as an object or as
/// a JSON-encoded string.
pub fn data_value(text: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    match v.get("data") {
        Some(serde_json::Value::String(s)) => {
            serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone()))
        }
        Some(other) => other.clone(),
        None => serde_json::Value::Null,
    }
}

/// Parse a text frame.
pub fn parse(text: &str) -> Option<Frame<'_>> {
    serde_json::from_str(text).ok()
}

/// Open a WebSocket to the target and wait for `pusher:connection_established`.
/// Returns the socket and its `socket_id`.
pub async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<(Ws, String)> {
    connect_with(target, timeout, ws_config()).await
}

/// [`connect`] with another WebSocket configuration (e.g. a write buffer,
/// for a client that sends several frames per flush).
pub async fn connect_with(
    target: &Target,
    timeout: Duration,
    config: WebSocketConfig,
) -> anyhow::Result<(Ws, String)> {
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .context("TCP connect")?;
        tcp.set_nodelay(true)?;
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(target.ws_url(), tcp, Some(config))
                .await
                .context("WebSocket handshake")?;
        loop {
            let text = next_text(&mut ws).await?;
            let Some(frame) = parse(&text) else { continue };
            match frame.event.as_ref() {
                "pusher:connection_established" => {
                    let data = data_value(&text);
                    let socket_id = data
                        .get("socket_id")
                        .and_then(|s| s.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    return Ok((ws, socket_id));
                }
                "pusher:error" => bail!("server refused the connection: {}", data_value(&text)),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no pusher:connection_established within {timeout:?}"))?
}

/// Subscribe to a public channel and wait for its
/// `pusher_internal:subscription_succeeded`.
pub async fn subscribe(ws: &mut Ws, channel: &str, timeout: Duration) -> anyhow::Result<()> {
    ws.send(Message::text(subscribe_frame(channel, None, None)))
        .await?;
    subscribed(ws, channel, timeout).await
}

/// Subscribe to `channel` with the `auth` a private channel needs (signed
/// with the target's app secret for this socket) and wait for
/// `pusher_internal:subscription_succeeded`. Public channels get no `auth`.
pub async fn subscribe_signed(
    ws: &mut Ws,
    target: &Target,
    socket_id: &str,
    channel: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let auth = channel_auth(target, socket_id, channel);
    ws.send(Message::text(subscribe_frame(
        channel,
        auth.as_deref(),
        None,
    )))
    .await?;
    subscribed(ws, channel, timeout).await
}

/// The `auth` of a private channel for this socket, as an app's auth
/// endpoint would sign it (`key:hex(hmac_sha256(secret, "socket_id:channel"))`);
/// `None` for a public channel.
pub fn channel_auth(target: &Target, socket_id: &str, channel: &str) -> Option<String> {
    channel.starts_with("private-").then(|| {
        herald_proto::pusher::channel_auth(
            &target.app_key,
            &target.app_secret,
            socket_id,
            channel,
            None,
        )
    })
}

/// A `pusher:subscribe` frame, with `auth` and Herald's `resume_from` when given.
pub fn subscribe_frame(channel: &str, auth: Option<&str>, resume_from: Option<u64>) -> String {
    let mut data = serde_json::json!({ "channel": channel });
    if let Some(auth) = auth {
        data["auth"] = auth.into();
    }
    if let Some(seq) = resume_from {
        data["resume_from"] = seq.into();
    }
    serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string()
}

/// Wait for the `pusher_internal:subscription_succeeded` of `channel`.
async fn subscribed(ws: &mut Ws, channel: &str, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, async {
        loop {
            let text = next_text(ws).await?;
            let Some(frame) = parse(&text) else { continue };
            let same_channel = frame.channel.as_deref() == Some(channel);
            match frame.event.as_ref() {
                "pusher_internal:subscription_succeeded" if same_channel => return Ok(()),
                "pusher:subscription_error" if same_channel => {
                    bail!("subscription error: {}", data_value(&text))
                }
                "pusher:ping" => pong(ws).await?,
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no subscription_succeeded for {channel} within {timeout:?}"))?
}

/// Answer a server `pusher:ping`.
pub async fn pong(ws: &mut Ws) -> anyhow::Result<()> {
    ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#))
        .await?;
    Ok(())
}

/// The next text frame; WebSocket pings are answered by tungstenite itself.
pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Close politely, waiting at most `timeout` for the server's close frame.
pub async fn close(mut ws: Ws, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channel_events_without_copying_data() {
        let text = r#"{"event":"lg","channel":"c","data":"hl|1|0|5|99|xx","id":"x","seq":3}"#;
        let f = parse(text).expect("frame");
        assert_eq!(f.event, "lg");
        assert_eq!(f.channel.as_deref(), Some("c"));
        assert!(matches!(f.data, Some(Cow::Borrowed("hl|1|0|5|99|xx"))));
    }

    #[test]
    fn private_channels_are_signed_and_public_ones_are_not() {
        let target = Target::from_args(&crate::target::TargetArgs {
            host: "127.0.0.1".into(),
            port: 6001,
            app_id: "app-id".into(),
            app_key: "278d425bdf160c739803".into(),
            app_secret: "7ad3773142a6692b25b8".into(),
        })
        .expect("loopback");
        // Pusher's documented example (channels/server_api/authorizing-users).
        assert_eq!(
            channel_auth(&target, "1234.1234", "private-foobar").as_deref(),
            Some("278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4")
        );
        assert_eq!(channel_auth(&target, "1234.1234", "foobar"), None);
        let frame: serde_json::Value =
            serde_json::from_str(&subscribe_frame("private-c", Some("k:s"), Some(7))).unwrap();
        assert_eq!(frame["event"], "pusher:subscribe");
        assert_eq!(frame["data"]["auth"], "k:s");
        assert_eq!(frame["data"]["resume_from"], 7);
        let plain: serde_json::Value =
            serde_json::from_str(&subscribe_frame("c", None, None)).unwrap();
        assert_eq!(plain["data"], serde_json::json!({ "channel": "c" }));
    }

    #[test]
    fn object_data_is_read_through_data_value() {
        let text = r#"{"event":"pusher:error","data":{"code":null,"message":"no"}}"#;
        let f = parse(text).expect("frame");
        assert!(f.data.is_none());
        assert_eq!(data_value(text)["message"], "no");
        let text = r#"{"event":"herald:ack","data":"{\"client_id\":\"a\",\"seq\":2}"}"#;
        assert_eq!(data_value(text)["seq"], 2);
    }
}
