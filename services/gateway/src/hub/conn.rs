//! How the hub and the control plane reach one connection: its bounded
//! outbound queue, its control channel, and the slow-consumer verdict.

use axum::extract::ws::Utf8Bytes;
use herald_proto::ChannelName;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a connection's writer task is asked to send.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A text frame, already serialized (shared between connections).
    Frame(Utf8Bytes),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// What the control plane asks of a connection.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Close the connection (`terminate_connections`).
    Terminate,
    /// Subscribe on the server's authority.
    Subscribe(ChannelName),
    /// Unsubscribe on the server's authority.
    Unsubscribe(ChannelName),
}

/// How the hub reaches one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub id: u64,
    pub socket_id: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    pub ctl: mpsc::Sender<Control>,
    /// Cancelled by the hub when the connection cannot keep up.
    pub slow: CancellationToken,
}

impl ConnHandle {
    /// Queue a frame without waiting; a full queue marks the consumer slow.
    pub fn deliver(&self, frame: Utf8Bytes) {
        if self.tx.try_send(Outbound::Frame(frame)).is_err() && !self.slow.is_cancelled() {
            metrics::counter!("herald_gateway_slow_consumers_total").increment(1);
            self.slow.cancel();
        }
    }
}
