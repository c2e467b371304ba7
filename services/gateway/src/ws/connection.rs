//! One client connection: the Pusher protocol state machine.
//!
//! A writer task, on the [delivery runtime](crate::delivery), drains the
//! connection's bounded queue into the socket (batching whatever is queued
//! into one flush); the reader loop handles
//! client frames, control-plane requests, the activity timer and shutdown,
//! all under one `select!`.

use crate::hub::{ConnHandle, Control, Outbound};
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use herald_config::AppConfig;
use herald_proto::pusher::{self, codes, ClientFrame};
use herald_proto::ChannelName;
use herald_proto::{ServerFrame, SocketId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Check the `protocol` query parameter the way Pusher does.
fn check_protocol(protocol: Option<&str>) -> Result<(), (u16, &'static str)> {
    let Some(raw) = protocol else {
        return Err((codes::NO_PROTOCOL_VERSION, "No protocol version supplied"));
    };
    let Ok(version) = raw.parse::<u32>() else {
        return Err((
            codes::INVALID_VERSION_FORMAT,
            "Invalid version string format",
        ));
    };
    if !(pusher::MIN_PROTOCOL_VERSION..=pusher::PROTOCOL_VERSION).contains(&version) {
        return Err((codes::UNSUPPORTED_PROTOCOL, "Unsupported protocol version"));
    }
    Ok(())
}

async fn refuse(mut socket: WebSocket, code: u16, message: &str) {
    let _ = socket
        .send(Message::text(
            ServerFrame::Error {
                code: Some(code),
                message,
            }
            .to_json(),
        ))
        .await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(message.to_owned()),
        })))
        .await;
}

/// Counts a connection against its app's limit for as long as it lives.
struct AppSlot {
    state: AppState,
    app: String,
}

impl AppSlot {
    fn acquire(state: &AppState, app: &AppConfig) -> Option<Self> {
        let mut counts = state.app_connections.lock().expect("app count lock");
        let count = counts.entry(app.id.to_string()).or_default();
        if app.limits.max_connections > 0 && *count >= app.limits.max_connections {
            return None;
        }
        *count += 1;
        Some(Self {
            state: state.clone(),
            app: app.id.to_string(),
        })
    }
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        let mut counts = self.state.app_connections.lock().expect("app count lock");
        if let Some(count) = counts.get_mut(&self.app) {
            *count = count.saturating_sub(1);
        }
    }
}

/// Drive one upgraded socket until it closes.
pub(super) async fn run(
    socket: WebSocket,
    state: AppState,
    key: String,
    app: Option<Arc<AppConfig>>,
    protocol: Option<String>,
) {
    if let Err((code, message)) = check_protocol(protocol.as_deref()) {
        return refuse(socket, code, message).await;
    }
    let Some(app) = app else {
        let message = format!("App key {key} does not exist");
        return refuse(socket, codes::APP_NOT_FOUND, &message).await;
    };
    let Ok(_permit) = state.connection_permits.clone().try_acquire_owned() else {
        return refuse(socket, codes::OVER_CAPACITY, "Over capacity").await;
    };
    let Some(_slot) = AppSlot::acquire(&state, &app) else {
        return refuse(
            socket,
            codes::OVER_CONNECTION_QUOTA,
            "Application is over connection quota",
        )
        .await;
    };
    let socket_id = SocketId::random();
    let span = tracing::info_span!("connection", app = %app.id, socket_id = %socket_id);
    tracing::Instrument::instrument(serve(socket, state, app, socket_id), span).await;
}

async fn serve(socket: WebSocket, state: AppState, app: Arc<AppConfig>, socket_id: SocketId) {
    let (tx, rx) = mpsc::channel(state.config.outbound_queue);
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let handle = ConnHandle {
        id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        socket_id: socket_id.as_arc().clone(),
        tx,
        ctl: ctl_tx,
        slow: CancellationToken::new(),
    };
    tracing::debug!("connected");
    metrics::gauge!("herald_gateway_connections").increment(1.0);

    let (sink, stream) = socket.split();
    let established = ServerFrame::ConnectionEstablished {
        socket_id: socket_id.as_str(),
        activity_timeout_secs: state.config.activity_timeout.as_secs(),
    };
    handle.deliver(established.to_json().into());

    let mut conn = Connection {
        state: state.clone(),
        app,
        handle,
        channels: HashMap::new(),
        user: None,
        limiter: None,
        publish_limiter: None,
        receipts: HashMap::new(),
    };
    let writer = state.delivery.spawn(write_loop(sink, rx));
    let close = conn.read_loop(stream, ctl_rx).await;
    conn.leave_all().await;
    let _ = conn.handle.tx.send(Outbound::Close(close.0, close.1)).await;
    drop(conn);
    let _ = writer.await;
    tracing::debug!(code = close.0, "disconnected");
    metrics::gauge!("herald_gateway_connections").decrement(1.0);
}

/// Send queued frames, batching everything already queued into one flush.
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let result = match out {
                Outbound::Frame(frame) => sink.feed(Message::Text(frame)).await,
                Outbound::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        })))
                        .await;
                    return;
                }
            };
            if result.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// A presence channel membership of this socket.
pub(super) struct PresenceMembership {
    pub user_id: UserId,
    /// The KV key announcing it, deleted when the socket leaves.
    pub key: String,
}

/// The signed-in user of this socket (`pusher:signin`).
pub(super) struct SignedIn {
    pub id: UserId,
    pub user_data: serde_json::Value,
    /// The KV key announcing the connection, deleted on close.
    pub key: String,
}

pub(super) struct Connection {
    pub state: AppState,
    pub app: Arc<AppConfig>,
    pub handle: ConnHandle,
    /// Subscribed channels; `Some` for presence memberships.
    pub channels: HashMap<ChannelName, Option<PresenceMembership>>,
    pub user: Option<SignedIn>,
    /// Client-event rate limiter, created on the first client event.
    pub limiter: Option<governor::DefaultDirectRateLimiter>,
    /// `herald:publish` and receipt rate limiter, created on first use.
    pub publish_limiter: Option<governor::DefaultDirectRateLimiter>,
    /// The highest receipt seq this socket stored, per channel and kind.
    pub receipts: HashMap<(ChannelName, herald_proto::EventKind), u64>,
}

/// Why the reader stopped: the close code and reason to send.
pub(super) type CloseReason = (u16, &'static str);

impl Connection {
    async fn read_loop(
        &mut self,
        mut stream: futures::stream::SplitStream<WebSocket>,
        mut ctl: mpsc::Receiver<Control>,
    ) -> CloseReason {
        let activity = self.state.config.activity_timeout;
        let pong_timeout = self.state.config.pong_timeout;
        let mut deadline = Instant::now() + activity;
        let mut awaiting_pong = false;
        let shutdown = self.state.shutdown.clone();
        let slow = self.handle.slow.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return (codes::GENERIC_RECONNECT, "Server shutting down"),
                _ = slow.cancelled() => return (codes::GENERIC_RECONNECT, "Slow consumer: reconnect and resume"),
                _ = tokio::time::sleep_until(deadline) => {
                    if awaiting_pong {
                        return (codes::PONG_NOT_RECEIVED, "Pong reply not received");
                    }
                    awaiting_pong = true;
                    self.send(ServerFrame::Ping).await;
                    deadline = Instant::now() + pong_timeout;
                }
                Some(request) = ctl.recv() => {
                    if let Some(close) = self.on_control(request).await {
                        return close;
                    }
                }
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else {
                        // Closed by the client, or a protocol error such as a
                        // frame over the hard size limit (tungstenite answers 1009).
                        return (1000, "");
                    };
                    awaiting_pong = false;
                    deadline = Instant::now() + activity;
                    let outcome = match msg {
                        Message::Text(text) => self.on_text(text.as_str()).await,
                        Message::Binary(_) => {
                            self.send(ServerFrame::Error { code: None, message: "Binary frames are not supported" }).await;
                            None
                        }
                        Message::Close(_) => return (1000, ""),
                        Message::Ping(_) | Message::Pong(_) => None,
                    };
                    if let Some(close) = outcome {
                        return close;
                    }
                }
            }
        }
    }

    /// Queue a direct reply. Replies wait for queue space (backpressure on
    /// this client's own reads) rather than counting as a slow consumer.
    /// Queue an already rendered frame, waiting for queue space: used for
    /// what a subscriber must get before its live frames (a replay), which
    /// is bounded and paced by the client's own reading.
    pub(super) async fn send_frame(&self, frame: Utf8Bytes) {
        let _ = self.handle.tx.send(Outbound::Frame(frame)).await;
    }

    pub(super) async fn send(&self, frame: ServerFrame<'_>) {
        let frame = frame.to_json().into();
        let _ = self.handle.tx.send(Outbound::Frame(frame)).await;
    }

    async fn on_control(&mut self, request: Control) -> Option<CloseReason> {
        match request {
            Control::Terminate => {
                self.send(ServerFrame::Error {
                    code: Some(codes::UNAUTHORIZED),
                    message: "Connection terminated by the server",
                })
                .await;
                return Some((codes::UNAUTHORIZED, "Connection terminated by the server"));
            }
            Control::Subscribe(channel) => self.subscribe_on_server_authority(channel).await,
            Control::Unsubscribe(channel) => {
                if self.leave(&channel).await {
                    self.send(ServerFrame::Unsubscribed {
                        channel: channel.as_str(),
                    })
                    .await;
                }
            }
        }
        None
    }

    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        let limit = self.app.limits.max_message_bytes;
        if text.len() > limit {
            let message = format!(
                "Message of {} bytes exceeds the limit of {limit} bytes",
                text.len()
            );
            // A publisher waits for the answer to its client_id: tell it.
            if let Ok(frame) = serde_json::from_str::<ClientFrame>(text) {
                if frame.event == "herald:publish" {
                    self.refuse_publish(&frame, herald_proto::frame::nack::TOO_LARGE, &message)
                        .await;
                    return None;
                }
            }
            self.send(ServerFrame::Error {
                code: None,
                message: &message,
            })
            .await;
            return None;
        }
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(_) => {
                self.send(ServerFrame::Error {
                    code: None,
                    message: "Invalid message: expected a JSON object with an \"event\" string",
                })
                .await;
                return None;
            }
        };
        match frame.event.as_str() {
            "pusher:ping" => self.send(ServerFrame::Pong).await,
            "pusher:pong" => {}
            "pusher:subscribe" => self.on_subscribe(&frame).await,
            "pusher:unsubscribe" => self.on_unsubscribe(&frame).await,
            "pusher:signin" => return self.on_signin(&frame).await,
            "herald:publish" => self.on_publish(&frame).await,
            "herald:delivered" => {
                self.on_receipt(&frame, herald_proto::EventKind::Delivered)
                    .await
            }
            "herald:read" => self.on_receipt(&frame, herald_proto::EventKind::Read).await,
            event if event.starts_with("client-") => self.on_client_event(&frame).await,
            other => {
                let message = format!("Unsupported event {other:?}");
                self.send(ServerFrame::Error {
                    code: None,
                    message: &message,
                })
                .await
            }
        }
        None
    }

    /// Leave every channel and sign out, on close.
    async fn leave_all(&mut self) {
        let channels: Vec<ChannelName> = self.channels.keys().cloned().collect();
        for channel in channels {
            self.leave(&channel).await;
        }
        if let Some(user) = self.user.take() {
            self.state
                .hub
                .remove_user(&self.app.id, &user.id, self.handle.id);
            self.state.presence.forget(&user.key).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions_are_checked_like_pusher() {
        assert_eq!(check_protocol(None).unwrap_err().0, 4008);
        assert_eq!(check_protocol(Some("seven")).unwrap_err().0, 4006);
        assert_eq!(check_protocol(Some("99")).unwrap_err().0, 4007);
        assert_eq!(check_protocol(Some("4")).unwrap_err().0, 4007);
        assert!(check_protocol(Some("7")).is_ok());
    }
}
