//! One client connection: the Pusher protocol state machine.
//!
//! A writer task, on the [delivery runtime](crate::delivery), drains the
//! connection's queue ([`Outbox`], bounded by bytes) into the socket,
//! batching whatever is queued into one flush; the reader loop handles
//! client frames, control-plane requests, the activity timer and shutdown,
//! all under one `select!`.
//!
//! The reader never waits for the client to read: its replies are queued
//! like every other frame, and a queue over its bound makes the connection a
//! slow consumer (closed with 4200). Only the writer waits on the socket,
//! and never longer than the write timeout for one write: a client that
//! stops reading is dropped then, and closing never needs room in the queue
//! ([`Outbox::close`]), so a stuck client can always be let go of. Whatever
//! ends the connection, the reader then releases what it held (channels,
//! presence keys, the signed-in user, its connection permits).

use super::admission::IpSlot;
use super::publish::{InFlight, MAX_IN_FLIGHT};
use crate::hub::{ConnHandle, Control, Next, Outbox};
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use herald_config::AppConfig;
use herald_proto::pusher::{self, codes, ClientFrame, RawClientFrame};
use herald_proto::ChannelName;
use herald_proto::{ServerFrame, SocketId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tungstenite::error::{Error as WsError, ProtocolError};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Control requests a connection may have waiting. Each is one whole API
/// request (a server-side subscribe carries all its channels), so a
/// connection that has this many waiting is not keeping up.
const CONTROL_QUEUE: usize = 16;

/// RFC 6455 close codes for what the WebSocket layer refuses.
mod ws_close {
    /// A protocol error (bad framing, an unmasked frame, a reserved opcode).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

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

/// Why a connection is refused before it is served: a Pusher error code
/// and its message, sent as `pusher:error` and then as the close frame.
#[derive(Debug)]
pub(super) struct Refusal {
    pub code: u16,
    pub message: String,
}

/// Tell the client why it is refused and close, within `timeout` (a client
/// that does not read is simply dropped).
async fn refuse(mut socket: WebSocket, refusal: Refusal, timeout: Duration) {
    let Refusal { code, message } = refusal;
    let frame = ServerFrame::Error {
        code: Some(code),
        message: &message,
    }
    .to_json();
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(message),
    }));
    let _ = tokio::time::timeout(timeout, async {
        socket.feed(Message::text(frame)).await?;
        socket.send(close).await
    })
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

/// What the upgrade decided about a connection before it was upgraded.
pub(super) struct Admission {
    /// The app the key names, if any.
    pub app: Option<Arc<AppConfig>>,
    /// The `protocol` query parameter.
    pub protocol: Option<String>,
    /// Refused at the upgrade (origin, connections per address).
    pub refused: Option<Refusal>,
    /// Counts the connection against its client address's limit.
    pub ip_slot: Option<IpSlot>,
    /// A session token from the URL (`?token=`).
    pub token: Option<String>,
}

/// Drive one upgraded socket until it closes.
pub(super) async fn run(socket: WebSocket, state: AppState, key: String, admission: Admission) {
    let timeout = state.config.write_timeout;
    if let Err((code, message)) = check_protocol(admission.protocol.as_deref()) {
        let message = message.to_owned();
        return refuse(socket, Refusal { code, message }, timeout).await;
    }
    let Some(app) = admission.app else {
        let message = format!("App key {key} does not exist");
        let code = codes::APP_NOT_FOUND;
        return refuse(socket, Refusal { code, message }, timeout).await;
    };
    if let Some(refusal) = admission.refused {
        return refuse(socket, refusal, timeout).await;
    }
    let _ip_slot = admission.ip_slot;
    let Ok(_permit) = state.connection_permits.clone().try_acquire_owned() else {
        let refusal = Refusal {
            code: codes::OVER_CAPACITY,
            message: "Over capacity".into(),
        };
        return refuse(socket, refusal, timeout).await;
    };
    let Some(_slot) = AppSlot::acquire(&state, &app) else {
        let refusal = Refusal {
            code: codes::OVER_CONNECTION_QUOTA,
            message: "Application is over connection quota".into(),
        };
        return refuse(socket, refusal, timeout).await;
    };
    let socket_id = SocketId::random();
    let span = tracing::info_span!("connection", app = %app.id, socket_id = %socket_id);
    let token = admission.token;
    tracing::Instrument::instrument(serve(socket, state, app, socket_id, token), span).await;
}

async fn serve(
    socket: WebSocket,
    state: AppState,
    app: Arc<AppConfig>,
    socket_id: SocketId,
    token: Option<String>,
) {
    let outbox = Outbox::new(state.config.outbound_queue_bytes);
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let handle = ConnHandle {
        id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        socket_id: socket_id.as_arc().clone(),
        outbox: outbox.clone(),
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

    let writer_gone = CancellationToken::new();
    let writer = state.delivery.spawn(write_loop(
        sink,
        handle.clone(),
        state.config.write_timeout,
        writer_gone.clone(),
    ));
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
    let refused = match token {
        // Boxed like the subscribe: awaited once, and large.
        Some(token) => Box::pin(conn.sign_in_with_token(&token)).await,
        None => None,
    };
    let close = match refused {
        Some(close) => close,
        None => conn.read_loop(stream, ctl_rx, writer_gone).await,
    };
    // The writer sends what is queued, then the close frame; it needs no
    // room in the queue for that, and gives up after the write timeout.
    outbox.close(close.0, close.1);
    conn.leave_all().await;
    drop(conn);
    let _ = writer.await;
    tracing::debug!(code = close.0, "disconnected");
    metrics::gauge!("herald_gateway_connections").decrement(1.0);
}

/// Why the writer stopped before the connection ended.
enum WriteFailed {
    /// The socket did not take a write within the write timeout.
    Stuck,
    /// The socket is broken (the client is gone).
    Broken,
}

/// Send queued frames, batching everything already queued into one flush,
/// until the close (sent after every frame queued before it) or until the
/// socket fails. Every write has `timeout`; once the close is asked for,
/// everything left, the close frame included, has `timeout` from then.
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    conn: ConnHandle,
    timeout: Duration,
    gone: CancellationToken,
) {
    let _gone = gone.drop_guard();
    let outbox = &conn.outbox;
    let deadline = || {
        let fresh = Instant::now() + timeout;
        match outbox.closing() {
            Some(closing) => fresh.min(closing.since + timeout),
            None => fresh,
        }
    };
    let result: Result<(), WriteFailed> = async {
        loop {
            let mut next = Some(outbox.next().await);
            while let Some(item) = next.take() {
                match item {
                    Next::Frame(frame) => {
                        bounded(deadline(), sink.feed(Message::Text(frame))).await?;
                        next = outbox.try_next();
                        if next.is_none() {
                            bounded(deadline(), sink.flush()).await?;
                        }
                    }
                    Next::Close(closing) => {
                        let close = Message::Close(Some(CloseFrame {
                            code: closing.code,
                            reason: Utf8Bytes::from_static(closing.reason),
                        }));
                        return bounded(deadline(), sink.send(close)).await;
                    }
                }
            }
        }
    }
    .await;
    if let Err(WriteFailed::Stuck) = result {
        // The client stopped reading; if the connection was not already
        // closing, this is the slow-consumer verdict that ends it.
        metrics::counter!("herald_gateway_write_timeouts_total").increment(1);
        if outbox.closing().is_none() {
            conn.mark_slow("write_timeout");
        }
    }
}

/// One socket operation, given up at `deadline`.
async fn bounded<F>(deadline: Instant, op: F) -> Result<(), WriteFailed>
where
    F: std::future::Future<Output = Result<(), axum::Error>>,
{
    match tokio::time::timeout_at(deadline, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteFailed::Broken),
        Err(_) => Err(WriteFailed::Stuck),
    }
}

/// The close code for a frame the WebSocket layer refused, as RFC 6455
/// says (1007 not UTF-8, 1009 too big, 1002 a protocol error), or a plain
/// 1000 when the client is simply gone. The reason stays empty: the code
/// says it, and a refused frame gets no `pusher:error`.
fn close_for_read_error(err: axum::Error) -> CloseReason {
    let inner = err.into_inner();
    let code = match inner.downcast_ref::<WsError>() {
        Some(WsError::Utf8(_)) => ws_close::INVALID_PAYLOAD,
        Some(WsError::Capacity(_)) => ws_close::MESSAGE_TOO_BIG,
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => 1000,
        Some(WsError::Protocol(_)) => ws_close::PROTOCOL_ERROR,
        _ => 1000,
    };
    tracing::debug!(err = %inner, code, "read failed");
    (code, "")
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
    /// Signed in by a session token: presence memberships must then be
    /// this user's own.
    pub by_token: bool,
    /// The users this connection watches (`watchlist` in its user data).
    pub watchlist: Vec<String>,
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
    pub receipts: HashMap<(ChannelName, herald_proto::EventKind), super::publish::ReceiptState>,
}

/// Why the reader stopped: the close code and reason to send.
pub(super) type CloseReason = (u16, &'static str);

impl Connection {
    /// Handle client frames, control requests and timers until something
    /// ends the connection. Nothing in here waits for the client to read,
    /// and the ending conditions are polled first, so a client that keeps
    /// sending cannot keep a closed connection alive.
    async fn read_loop(
        &mut self,
        mut stream: futures::stream::SplitStream<WebSocket>,
        mut ctl: mpsc::Receiver<Control>,
        writer_gone: CancellationToken,
    ) -> CloseReason {
        let activity = self.state.config.activity_timeout;
        let pong_timeout = self.state.config.pong_timeout;
        let mut awaiting_pong = false;
        let shutdown = self.state.shutdown.clone();
        let slow = self.handle.slow.clone();
        // The waits below are made once, not per turn of the loop: each
        // turn would otherwise register and drop three cancellation waits
        // and a timer, on every frame of a busy socket. The activity timer
        // is moved lazily: a frame only notes the time, and when the timer
        // fires early it is set again from the last frame's time.
        let mut last_activity = Instant::now();
        let timer = tokio::time::sleep_until(last_activity + activity);
        tokio::pin!(timer);
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        let too_slow = slow.cancelled();
        tokio::pin!(too_slow);
        let writer_stopped = writer_gone.cancelled();
        tokio::pin!(writer_stopped);
        // Publishes and receipts sent to JetStream, awaiting its answer. A
        // local, not a field: the futures are `Send` but not `Sync`, and
        // handlers hold `&self` across awaits.
        let mut in_flight = InFlight::default();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutting_down => return (codes::GENERIC_RECONNECT, "Server shutting down"),
                _ = &mut too_slow => return (codes::GENERIC_RECONNECT, "Slow consumer: reconnect and resume"),
                // The socket broke under the writer: the client is gone.
                _ = &mut writer_stopped => return (1000, ""),
                _ = &mut timer => {
                    if awaiting_pong {
                        return (codes::PONG_NOT_RECEIVED, "Pong reply not received");
                    }
                    let idle_until = last_activity + activity;
                    if idle_until > Instant::now() {
                        // A frame came since the timer was set.
                        timer.as_mut().reset(idle_until);
                        continue;
                    }
                    awaiting_pong = true;
                    self.send(ServerFrame::Ping).await;
                    timer.as_mut().reset(Instant::now() + pong_timeout);
                }
                Some(request) = ctl.recv() => {
                    if let Some(close) = self.on_control(request).await {
                        return close;
                    }
                }
                // Answers to this socket's publishes, in the order it sent them.
                Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                    self.on_settled(settled, &mut in_flight).await;
                }
                // With too many publishes in flight, stop reading until one
                // is answered: the client's own sends then back up.
                msg = stream.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        Some(Err(err)) => return close_for_read_error(err),
                        None => return (1000, ""),
                    };
                    awaiting_pong = false;
                    last_activity = Instant::now();
                    let outcome = match msg {
                        Message::Text(text) => self.on_text(text.as_str(), &mut in_flight).await,
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

    /// Queue an already rendered frame, waiting for room: used for what a
    /// subscriber must get before its live frames (a replay of up to
    /// `HERALD_RESUME_MAX_EVENTS` events), paced by the client's own
    /// reading. The wait is bounded like a socket write: no room within the
    /// write timeout (the client stopped reading) and the connection is a
    /// slow consumer; once it is, nothing more waits.
    pub(super) async fn send_frame(&self, frame: Utf8Bytes) {
        self.handle
            .deliver_paced(frame, self.state.config.write_timeout)
            .await;
    }

    /// Queue a direct reply. It never waits: a reply that does not fit in
    /// the queue makes the connection a slow consumer, like any frame (a
    /// client that sends without reading would otherwise stop its own
    /// reader, and with it every timer and the close). `async` only so that
    /// every handler sends the same way.
    pub(super) async fn send(&self, frame: ServerFrame<'_>) {
        self.handle.deliver(frame.to_json().into());
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
            Control::Subscribe(channels) => {
                for channel in channels {
                    self.subscribe_on_server_authority(channel).await;
                }
            }
            Control::Unsubscribe(channels) => {
                for channel in channels {
                    if self.leave(&channel).await {
                        self.send(ServerFrame::Unsubscribed {
                            channel: channel.as_str(),
                        })
                        .await;
                    }
                }
            }
        }
        None
    }

    async fn on_text(&mut self, text: &str, in_flight: &mut InFlight) -> Option<CloseReason> {
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
        // Read without a tree of `data` first: a publish (the frame that
        // comes by the thousand) is read from it directly.
        let frame = match RawClientFrame::parse(text) {
            Ok(raw) => {
                if raw.event == "herald:publish" {
                    if let Some(fields) = raw.publish_fields() {
                        self.on_publish_fields(fields, in_flight).await;
                        return None;
                    }
                }
                raw.into_frame()
            }
            Err(e) => Err(e),
        };
        let Ok(frame) = frame else {
            self.send(ServerFrame::Error {
                code: None,
                message: "Invalid message: expected a JSON object with an \"event\" string",
            })
            .await;
            return None;
        };
        match frame.event.as_str() {
            "pusher:ping" => self.send(ServerFrame::Pong).await,
            "pusher:pong" => {}
            "pusher:subscribe" => self.on_subscribe(&frame).await,
            "pusher:unsubscribe" => self.on_unsubscribe(&frame).await,
            // Boxed like the subscribe (a rare, large future).
            "pusher:signin" => return Box::pin(self.on_signin(&frame)).await,
            "herald:publish" => self.on_publish(&frame, in_flight).await,
            herald_proto::envelope::event_names::DELIVERED => {
                self.on_receipt(&frame, herald_proto::EventKind::Delivered, in_flight)
                    .await
            }
            herald_proto::envelope::event_names::READ => {
                self.on_receipt(&frame, herald_proto::EventKind::Read, in_flight)
                    .await
            }
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
            self.state
                .hub
                .watchlists
                .unwatch(&self.app.id, &user.watchlist, self.handle.id);
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

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, R>(_f: impl FnOnce(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connections_task_stays_small_because_rare_large_futures_are_boxed() {
        // Every connection's task is this one future, as big as the largest
        // state any of its awaits reaches, for the connection's whole life:
        // with the subscribe inlined it was 12,552 bytes and an idle
        // connection cost 20 KB instead of 12 (BENCHMARKS.md, 2026-12-03).
        let size = future_size(serve);
        assert!(
            size <= 4 * 1024,
            "a connection's task is {size} bytes: box the large futures it awaits rarely"
        );
    }
}
