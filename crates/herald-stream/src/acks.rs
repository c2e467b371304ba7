//! Publishing to JetStream with the acknowledgements routed through one
//! subscription of our own: the path of every `herald:publish` and receipt.
//!
//! async-nats' `jetstream::Context::send_publish` makes, per publish, a new
//! inbox subject (formatted), a semaphore permit, an entry in its request
//! multiplexer, a timer for the send and another for the ack, a boxed
//! future, and parses the ack as an untagged enum (which builds, then
//! discards, a serde error for every successful ack). A gateway publishes
//! for every client at once, so [`AckRouter`] does the same job with less:
//! one wildcard subscription on an inbox of its own, replies numbered
//! `<inbox>.<n>`, a map from `n` to the waiting publisher, a typed parse
//! of the ack, and one sweep every half second instead of a timer per
//! publish.
//!
//! The bound is the same as async-nats' own: a publish whose ack has not
//! come after [`ACK_TIMEOUT`] (give or take one sweep) is answered
//! [`StreamError::AckTimeout`]; it may have been stored, and a retry with
//! the same `Nats-Msg-Id` is stored once. The subscription survives NATS
//! reconnects (the client resubscribes); acks lost with a connection time
//! out like any other. When the subscription ends for good (the client was
//! closed or drained), every wait still open is answered at once, and every
//! later publish is refused: with the routing task gone nothing would ever
//! answer or expire them.

use crate::publish::{envelope_headers, settle, PublishOptions, Stored};
use crate::StreamError;
use async_nats::jetstream;
use async_nats::{Client, Message, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use herald_proto::{AppId, ChannelName, Envelope, NumberedReplies, Subjects};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a publish waits for its ack: async-nats' default for a
/// JetStream context, so both publish paths give up alike.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Most publishes waiting for their ack at once; beyond it a publish is
/// refused (its publisher answers "retry"). Half of async-nats' default
/// subscription buffer (65,536), so acks are never dropped for want of
/// room there.
pub const MAX_WAITING: usize = 32_768;

/// How often expired waits are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// What the router and its task share.
#[derive(Default)]
struct Shared {
    /// The next reply number.
    next: AtomicU64,
    waiting: Mutex<Waiting>,
}

/// The waiting publishers, by reply number. Numbers are handed out in
/// order, so the sweep expires everything below the number that was next
/// [`ACK_TIMEOUT`] ago.
#[derive(Default)]
struct Waiting {
    senders: HashMap<u64, oneshot::Sender<Message>, rustc_hash::FxBuildHasher>,
    /// `(when, the next number at that time)`, one per sweep.
    marks: VecDeque<(Instant, u64)>,
    /// The routing task has ended: nothing will answer a new wait. Kept
    /// under the same lock as `senders`, so no wait can be registered after
    /// the task's last clear-out.
    closed: bool,
}

/// Publishes to JetStream and routes their acks (see the module docs).
/// Cheap to share behind an `Arc`; its task ends when it is dropped or the
/// client closes.
pub struct AckRouter {
    client: Client,
    /// The publishes' reply subjects, numbered.
    replies: NumberedReplies,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AckRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckRouter")
            .field("replies", &self.replies)
            .finish_non_exhaustive()
    }
}

impl AckRouter {
    /// Subscribe to a fresh inbox of `client` and start routing its acks.
    /// Returns once the subscription is sent; the caller's first publish
    /// goes out on the same connection after it, so its ack cannot arrive
    /// before the server knows the subscription.
    pub async fn start(client: Client) -> Result<Self, StreamError> {
        let replies = NumberedReplies::new(&client.new_inbox());
        let subscriber = client
            .subscribe(replies.wildcard())
            .await
            .map_err(|e| StreamError::AckRoute(e.to_string()))?;
        let shared = Arc::new(Shared::default());
        tokio::spawn(route(subscriber, replies.clone(), Arc::downgrade(&shared)));
        Ok(Self {
            client,
            replies,
            shared,
        })
    }

    /// Publish `envelope` to its channel's subject, with the headers of
    /// [`PublishOptions`] and `msg_id` as `Nats-Msg-Id`, and return the wait
    /// for its ack. The publish is handed to the client here, in call order.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_envelope(
        &self,
        subjects: &Subjects,
        app: &AppId,
        channel: &ChannelName,
        envelope: &Envelope,
        msg_id: &str,
        options: &PublishOptions<'_>,
    ) -> Result<AckWait, StreamError> {
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // Registered before the publish goes out: the ack may come first.
        {
            let mut waiting = lock(&self.shared.waiting);
            if waiting.closed {
                return Err(StreamError::AckRoute(
                    "the connection to NATS is closed".to_owned(),
                ));
            }
            if waiting.senders.len() >= MAX_WAITING {
                return Err(StreamError::AckRoute(format!(
                    "{MAX_WAITING} publishes are already waiting for their ack"
                )));
            }
            waiting.senders.insert(n, tx);
        }
        let reply = self.replies.reply(n);
        let sent = self
            .client
            .publish_with_reply_and_headers(
                subjects.channel(app, channel),
                reply,
                envelope_headers(msg_id, options),
                Bytes::from(envelope.encode()),
            )
            .await;
        if let Err(e) = sent {
            lock(&self.shared.waiting).senders.remove(&n);
            return Err(StreamError::AckRoute(e.to_string()));
        }
        Ok(AckWait { rx })
    }

    /// Publishes waiting for their ack now.
    pub fn waiting(&self) -> usize {
        lock(&self.shared.waiting).senders.len()
    }
}

/// The wait for one publish's ack.
#[derive(Debug)]
pub struct AckWait {
    rx: oneshot::Receiver<Message>,
}

impl AckWait {
    /// Wait for JetStream's ack and say what was stored, as
    /// [`crate::await_stored`] does for async-nats' ack futures. Of the
    /// envelope published, only its `id` and time `at` are needed: the
    /// caller need not keep the rest of it (payload and names) for the
    /// whole round trip.
    pub async fn stored(
        self,
        js: &jetstream::Context,
        subjects: &Subjects,
        id: String,
        at: i64,
    ) -> Result<Stored, StreamError> {
        let ack = self.ack().await?;
        settle(js, subjects, id, at, ack.seq, ack.duplicate).await
    }

    async fn ack(self) -> Result<PubAck, StreamError> {
        // The sender is dropped by the sweep (expired) or with the router.
        let message = self.rx.await.map_err(|_| StreamError::AckTimeout)?;
        parse_ack(&message)
    }
}

/// What a JetStream publish ack says.
#[derive(Debug, PartialEq, Eq)]
struct PubAck {
    seq: u64,
    duplicate: bool,
}

/// `{"stream":…,"seq":…,"duplicate":…}` or `{"error":{…}}`, read into one
/// struct (no untagged enum, no tree).
fn parse_ack(message: &Message) -> Result<PubAck, StreamError> {
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default)]
        duplicate: bool,
        #[serde(default, borrow)]
        error: Option<ApiError<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError<'a> {
        #[serde(default)]
        code: u16,
        #[serde(default, borrow)]
        description: std::borrow::Cow<'a, str>,
    }
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(StreamError::AckRoute(
            "no stream stores this subject".to_owned(),
        ));
    }
    let reply: Reply<'_> = serde_json::from_slice(&message.payload)
        .map_err(|e| StreamError::AckRoute(format!("unreadable ack: {e}")))?;
    match (reply.error, reply.seq) {
        (Some(error), _) => Err(StreamError::AckRoute(format!(
            "the stream refused the publish ({}): {}",
            error.code, error.description
        ))),
        (None, Some(seq)) => Ok(PubAck {
            seq,
            duplicate: reply.duplicate,
        }),
        (None, None) => Err(StreamError::AckRoute("an ack without a seq".to_owned())),
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    // Nothing panics while holding it; a poisoned map is still consistent.
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router's task: hand each ack to its publisher, and expire the
/// waits that outlived [`ACK_TIMEOUT`]. Ends when the router is dropped or
/// the subscription ends (the client closed); the waits left are dropped,
/// which their publishers see as a timeout, and later publishes refused.
async fn route(
    mut subscriber: async_nats::Subscriber,
    replies: NumberedReplies,
    shared: Weak<Shared>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = subscriber.next() => {
                let Some(message) = message else { break };
                let Some(shared) = shared.upgrade() else { break };
                let n = replies.number(message.subject.as_str());
                let sender = n.and_then(|n| lock(&shared.waiting).senders.remove(&n));
                match sender {
                    // A publisher that stopped waiting has dropped its end.
                    Some(sender) => drop(sender.send(message)),
                    None => metrics::counter!("herald_stream_acks_unclaimed_total").increment(1),
                }
            }
            _ = sweep.tick() => {
                let Some(shared) = shared.upgrade() else { break };
                let now = Instant::now();
                let next = shared.next.load(Ordering::Relaxed);
                let mut w = lock(&shared.waiting);
                w.marks.push_back((now, next));
                let mut expire_below = None;
                while let Some(&(at, below)) = w.marks.front() {
                    if now.duration_since(at) < ACK_TIMEOUT {
                        break;
                    }
                    expire_below = Some(below);
                    w.marks.pop_front();
                }
                if let Some(below) = expire_below {
                    w.senders.retain(|n, _| *n >= below);
                }
            }
        }
    }
    if let Some(shared) = shared.upgrade() {
        let mut w = lock(&shared.waiting);
        w.closed = true;
        w.senders.clear();
    }
    subscriber.unsubscribe().await.ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ensure_channels_stream, LiveEvent, StreamSettings};
    use herald_proto::EventKind;
    use herald_testkit::NatsServer;

    struct Setup {
        nats: NatsServer,
        client: Client,
        js: jetstream::Context,
        subjects: Subjects,
        router: AckRouter,
        app: AppId,
        channel: ChannelName,
    }

    async fn setup() -> Setup {
        let nats = NatsServer::start().unwrap();
        let client = nats.client().await.unwrap();
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new("t").unwrap();
        ensure_channels_stream(&js, &subjects, &StreamSettings::default())
            .await
            .unwrap();
        let router = AckRouter::start(client.clone()).await.unwrap();
        Setup {
            nats,
            client,
            js,
            subjects,
            router,
            app: AppId::parse("a").unwrap(),
            channel: ChannelName::parse("private-room.1").unwrap(),
        }
    }

    impl Setup {
        /// Publish `env` on the setup's channel with key `key` and no
        /// options.
        async fn publish(&self, env: &Envelope, key: &str) -> Result<AckWait, StreamError> {
            self.router
                .publish_envelope(
                    &self.subjects,
                    &self.app,
                    &self.channel,
                    env,
                    key,
                    &PublishOptions::default(),
                )
                .await
        }
    }

    fn envelope(data: &str) -> Envelope {
        Envelope::new(
            EventKind::Message,
            "a",
            "private-room.1",
            "e",
            data.into(),
            Some("u1".into()),
        )
    }

    #[tokio::test]
    async fn routed_publishes_are_stored_and_a_retry_is_answered_with_the_original() {
        let s = setup().await;
        let mut live = s
            .client
            .subscribe(s.subjects.live(&s.app, &s.channel))
            .await
            .unwrap();
        let options = PublishOptions {
            exclude_socket: Some("1.2"),
            dedupe_group: None,
        };
        // Many at once, acked out of the order they are awaited in.
        let first = envelope("0");
        let mut waits = Vec::new();
        for i in 0..50 {
            let env = if i == 0 {
                first.clone()
            } else {
                envelope(&i.to_string())
            };
            let wait = s
                .router
                .publish_envelope(
                    &s.subjects,
                    &s.app,
                    &s.channel,
                    &env,
                    &format!("k{i}"),
                    &options,
                )
                .await
                .unwrap();
            waits.push((env, wait));
        }
        let mut seqs = Vec::new();
        for (env, wait) in waits.into_iter().rev() {
            let stored = wait
                .stored(&s.js, &s.subjects, env.id.clone(), env.at)
                .await
                .unwrap();
            assert_eq!(stored.id, env.id);
            seqs.push(stored.seq);
        }
        seqs.reverse();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(s.router.waiting(), 0);

        // The retry is a new envelope (new id and time) with the same key:
        // stored once, answered with the original's id and seq.
        let retry = envelope("0");
        let again = s
            .router
            .publish_envelope(&s.subjects, &s.app, &s.channel, &retry, "k0", &options)
            .await
            .unwrap()
            .stored(&s.js, &s.subjects, retry.id.clone(), retry.at)
            .await
            .unwrap();
        assert_eq!((again.id.as_str(), again.seq), (first.id.as_str(), seqs[0]));

        let message = live.next().await.unwrap();
        let event = LiveEvent::from_message(&message).unwrap();
        assert_eq!(event.seq, seqs[0]);
        assert_eq!(event.exclude_socket, Some("1.2"));
        assert_eq!(event.envelope().unwrap(), first);
    }

    #[tokio::test]
    async fn a_publish_no_stream_takes_is_an_error_at_once() {
        let s = setup().await;
        s.js.delete_stream(s.subjects.channels_stream())
            .await
            .unwrap();
        let env = envelope("x");
        let result = s
            .publish(&env, "k")
            .await
            .unwrap()
            .stored(&s.js, &s.subjects, env.id.clone(), env.at)
            .await;
        assert!(
            matches!(result, Err(StreamError::AckRoute(_))),
            "{result:?}"
        );
        assert_eq!(s.router.waiting(), 0);
    }

    #[tokio::test]
    async fn a_publish_whose_ack_never_comes_times_out_and_is_forgotten() {
        let mut s = setup().await;
        s.nats.stop();
        let env = envelope("x");
        // The client buffers the publish while it reconnects; no ack comes.
        let wait = s.publish(&env, "k").await.unwrap();
        assert_eq!(s.router.waiting(), 1);
        let result = wait
            .stored(&s.js, &s.subjects, env.id.clone(), env.at)
            .await;
        assert!(matches!(result, Err(StreamError::AckTimeout)), "{result:?}");
        assert_eq!(s.router.waiting(), 0);
    }

    #[tokio::test]
    async fn a_publish_still_waiting_when_the_client_is_drained_is_answered_not_left_hanging() {
        let s = setup().await;
        // No stream takes the subject, but a silent subscriber does: the
        // publish is delivered and nobody answers it. On the same
        // connection as the publish, so the server has the subscription
        // before the publish (`flush` on another connection only writes, it
        // does not wait for the server).
        s.js.delete_stream(s.subjects.channels_stream())
            .await
            .unwrap();
        let _silent = s
            .client
            .subscribe(s.subjects.channel(&s.app, &s.channel))
            .await
            .unwrap();
        let env = envelope("x");
        let wait = s.publish(&env, "k").await.unwrap();
        s.client.drain().await.unwrap();
        // Far beyond ACK_TIMEOUT: only a wait nobody will ever answer or
        // expire takes this long.
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            wait.stored(&s.js, &s.subjects, env.id.clone(), env.at),
        )
        .await
        .expect("the wait was left hanging");
        assert!(matches!(result, Err(StreamError::AckTimeout)), "{result:?}");
        assert_eq!(s.router.waiting(), 0);
        let later = s.publish(&env, "k2").await;
        assert!(matches!(later, Err(StreamError::AckRoute(_))), "{later:?}");
    }

    fn reply(payload: &'static str) -> Message {
        Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: Bytes::from_static(payload.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn an_ack_is_read_with_its_seq_and_duplicate_flag() {
        assert_eq!(
            parse_ack(&reply(r#"{"stream":"S","seq":7}"#)).unwrap(),
            PubAck {
                seq: 7,
                duplicate: false
            }
        );
        assert_eq!(
            parse_ack(&reply(r#"{"stream":"S","seq":7,"duplicate":true}"#)).unwrap(),
            PubAck {
                seq: 7,
                duplicate: true
            }
        );
    }

    #[test]
    fn an_error_reply_or_garbage_is_an_error_not_a_seq() {
        let refused =
            r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence"}}"#;
        for payload in [refused, "", "{}", "not json", r#"{"seq":"x"}"#] {
            assert!(
                matches!(parse_ack(&reply(payload)), Err(StreamError::AckRoute(_))),
                "{payload}"
            );
        }
    }
}
