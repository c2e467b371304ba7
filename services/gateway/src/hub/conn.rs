//! How the hub and the control plane reach one connection: its outbound
//! queue (bounded by bytes), its control channel, and the slow-consumer
//! verdict.
//!
//! Nothing that queues for a connection ever waits: the fan-out, the control
//! plane and the connection's own reader all push with [`ConnHandle::deliver`],
//! which either queues the frame or, when the queue holds more bytes than its
//! bound, marks the connection slow. Only the connection's writer task waits,
//! on the socket, and that wait is bounded by the write timeout.

use axum::extract::ws::Utf8Bytes;
use herald_proto::ChannelName;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the control plane asks of a connection.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Close the connection (`terminate_connections`).
    Terminate,
    /// Subscribe on the server's authority (one request, every channel of
    /// it, so that a request never needs more than one slot of the queue).
    Subscribe(Vec<ChannelName>),
    /// Unsubscribe on the server's authority.
    Unsubscribe(Vec<ChannelName>),
}

/// How a connection's writer is asked to end: after what is queued, with
/// this close code and reason.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closing {
    pub code: u16,
    pub reason: &'static str,
    /// When the close was asked for; the writer gives up on the socket one
    /// write timeout later.
    pub since: Instant,
}

/// What the writer takes next from an [`Outbox`].
#[derive(Debug)]
pub(crate) enum Next {
    /// A text frame, already serialized (shared between connections).
    Frame(Utf8Bytes),
    /// Everything queued was taken: send the close frame.
    Close(Closing),
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes of the frames in `frames`.
    bytes: usize,
    closing: Option<Closing>,
}

/// A connection's outbound queue, bounded by the bytes it holds.
///
/// Bytes, not frames: a thousand 80-byte member events are 80 KB, a handful
/// of 200 KB events are a megabyte, and what a slow client costs the server
/// is memory. A frame is always accepted into an empty queue, so that a
/// single large frame (a presence member list) never makes a client slow by
/// itself.
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the writer: a frame or the close was queued.
    ready: Notify,
    /// Wakes a paced sender ([`ConnHandle::deliver_paced`]): the writer
    /// took a frame.
    room: Notify,
    max_bytes: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// The queue is over its bound: the frame was not queued.
#[derive(Debug)]
pub(crate) struct Full;

impl Outbox {
    /// An empty queue holding at most `max_bytes` (beyond one frame).
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
            max_bytes,
        })
    }

    /// Queue a frame. Frames offered once the connection is closing are
    /// dropped (it is going away; they would not be read).
    pub fn push(&self, frame: Utf8Bytes) -> Result<(), Full> {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closing.is_some() {
            return Ok(());
        }
        if !queue.frames.is_empty() && queue.bytes + frame.len() > self.max_bytes {
            return Err(Full);
        }
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }

    /// Ask the writer to close after what is already queued. Needs no room
    /// in the queue, so a full queue can always be closed. The first reason
    /// given wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closing.is_none() {
            queue.closing = Some(Closing {
                code,
                reason,
                since: Instant::now(),
            });
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// The next frame, without waiting.
    pub fn try_next(&self) -> Option<Next> {
        let mut queue = self.queue.lock().expect("outbox lock");
        if let Some(frame) = queue.frames.pop_front() {
            queue.bytes -= frame.len();
            drop(queue);
            self.room.notify_one();
            return Some(Next::Frame(frame));
        }
        queue.closing.map(Next::Close)
    }

    /// The next frame, or the close once every queued frame was taken.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between `try_next` and here is not missed.
            self.ready.notified().await;
        }
    }

    /// When a close was asked for, if it was.
    pub fn closing(&self) -> Option<Closing> {
        self.queue.lock().expect("outbox lock").closing
    }
}

/// How the hub reaches one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub id: u64,
    pub socket_id: Arc<str>,
    pub outbox: Arc<Outbox>,
    pub ctl: mpsc::Sender<Control>,
    /// Cancelled when the connection cannot keep up: its queue is over its
    /// bound, its socket did not take a write in time, or it cannot take a
    /// control request.
    pub slow: CancellationToken,
}

impl ConnHandle {
    /// Queue a frame without waiting; a full queue marks the consumer slow.
    pub fn deliver(&self, frame: Utf8Bytes) {
        if self.outbox.push(frame).is_err() {
            self.mark_slow("queue");
        }
    }

    /// Queue a frame, waiting while the queue is over its bound for the
    /// writer to make room, but never `patience` without any: then the
    /// consumer is slow and the frame dropped, as it is once the
    /// connection is slow for any reason. For what is paced by the client's
    /// own reading (a replay); everything else uses [`Self::deliver`].
    pub async fn deliver_paced(&self, frame: Utf8Bytes, patience: Duration) {
        loop {
            if self.slow.is_cancelled() || self.outbox.push(frame.clone()).is_ok() {
                return;
            }
            tokio::select! {
                () = self.outbox.room.notified() => {}
                () = self.slow.cancelled() => return,
                () = tokio::time::sleep(patience) => {
                    self.mark_slow("paced");
                    return;
                }
            }
        }
    }

    /// Hand a control request over without waiting. A connection whose
    /// control queue is full is not keeping up: it is marked slow (it
    /// reconnects into a known state) and `false` is returned.
    pub fn control(&self, request: Control) -> bool {
        match self.ctl.try_send(request) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.mark_slow("control");
                false
            }
            // Closed: the connection is already going away.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Record the slow-consumer verdict once, with what revealed it (a full
    /// queue, a write that timed out, a full control queue).
    pub fn mark_slow(&self, cause: &'static str) {
        if !self.slow.is_cancelled() {
            tracing::debug!(cause, "slow consumer");
            metrics::counter!("herald_gateway_slow_consumers_total").increment(1);
            self.slow.cancel();
        }
    }
}

#[cfg(test)]
impl Outbox {
    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().expect("outbox lock").bytes
    }
}

#[cfg(test)]
impl ConnHandle {
    /// A handle with nothing behind it, for unit tests: frames stay in the
    /// returned queue.
    pub fn detached(id: u64, max_bytes: usize) -> (Self, Arc<Outbox>) {
        let outbox = Outbox::new(max_bytes);
        let (ctl, _) = mpsc::channel(1);
        let handle = Self {
            id,
            socket_id: format!("{id}.{id}").into(),
            outbox: outbox.clone(),
            ctl,
            slow: CancellationToken::new(),
        };
        (handle, outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Next::Frame(f)) = outbox.try_next() {
            out.push(f.as_str().to_owned());
        }
        out
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_not_frames() {
        let (conn, outbox) = ConnHandle::detached(1, 100);
        for _ in 0..10 {
            conn.deliver("x".repeat(10).into());
        }
        assert!(!conn.slow.is_cancelled(), "100 bytes fit in 100");
        assert_eq!(outbox.queued_bytes(), 100);
        conn.deliver("y".into());
        assert!(conn.slow.is_cancelled(), "the 101st byte does not");
        assert_eq!(frames(&outbox).len(), 10);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn one_frame_larger_than_the_bound_is_accepted_into_an_empty_queue() {
        let (conn, outbox) = ConnHandle::detached(1, 10);
        conn.deliver("z".repeat(1000).into());
        assert!(!conn.slow.is_cancelled());
        conn.deliver("z".into());
        assert!(conn.slow.is_cancelled());
        assert_eq!(frames(&outbox).len(), 1);
    }

    #[tokio::test]
    async fn a_paced_frame_waits_for_room_but_not_longer_than_its_patience() {
        let (conn, outbox) = ConnHandle::detached(1, 2);
        conn.deliver("a".into());
        conn.deliver("b".into());
        let paced = tokio::spawn({
            let conn = conn.clone();
            async move {
                conn.deliver_paced("c".into(), Duration::from_secs(30))
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(frames(&outbox).len(), 2, "the writer makes room");
        paced.await.unwrap();
        assert!(!conn.slow.is_cancelled());
        assert_eq!(frames(&outbox), ["c"]);

        conn.deliver("d".into());
        conn.deliver("e".into());
        conn.deliver_paced("f".into(), Duration::from_millis(50))
            .await;
        assert!(conn.slow.is_cancelled(), "no room in time: slow");
        assert_eq!(frames(&outbox), ["d", "e"]);
    }

    #[test]
    fn a_close_needs_no_room_and_comes_after_what_was_queued() {
        let (conn, outbox) = ConnHandle::detached(1, 2);
        conn.deliver("a".into());
        conn.deliver("b".into());
        conn.deliver("c".into());
        assert!(conn.slow.is_cancelled());
        outbox.close(4200, "slow");
        outbox.close(1000, "later reasons lose");
        conn.deliver("after the close".into());
        assert_eq!(frames(&outbox), ["a", "b"]);
        match outbox.try_next() {
            Some(Next::Close(closing)) => assert_eq!(closing.code, 4200),
            other => panic!("expected the close, got {other:?}"),
        }
    }
}
