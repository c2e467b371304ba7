//! The per-channel fan-out task: the channel's core-NATS subscriptions
//! (stored events' live subject, client events, presence member events),
//! each message rendered once into a [`ServerFrame`] and the same bytes
//! offered to every subscriber.
//!
//! The live path is core NATS, which may drop messages (a NATS reconnect, a
//! subscription buffer overflow). Stored events carry the channel's previous
//! sequence (`Nats-Last-Sequence`), so the task knows the last sequence it
//! delivered and notices a gap: it reads the missing events from the stream
//! and delivers them first, in order. After a NATS reconnect it compares the
//! channel's newest stored sequence with its own and repairs likewise.

use super::dedupe::Dedupe;
use super::ChannelEntry;
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use herald_proto::control::EphemeralEvent;
use herald_proto::presence::PresenceEvent;
use herald_proto::AppId;
use herald_proto::{ChannelName, Envelope, ServerFrame, UserId};
use herald_stream::replay::{self, RangeReader};
use herald_stream::LiveEvent;
use std::sync::{Arc, Weak};
use tokio_util::sync::CancellationToken;

/// The subscriptions one channel's fan-out task reads.
pub(super) struct ChannelSubscriptions {
    /// Stored events, republished by the stream (every channel).
    pub live: async_nats::Subscriber,
    /// Client events (private and presence channels).
    pub ephemeral: Option<async_nats::Subscriber>,
    /// Member events from the presence service (presence channels).
    pub presence: Option<async_nats::Subscriber>,
}

/// What the task needs to read missed events back from the stream.
pub(super) struct Repairer {
    pub js: async_nats::jetstream::Context,
    pub subjects: herald_proto::Subjects,
    pub app: AppId,
    /// Counts NATS (re)connections; a change means core messages may be lost.
    pub reconnects: tokio::sync::watch::Receiver<u64>,
    /// The channel's newest stored sequence when the subscriptions went live
    /// (`None` when it could not be read: the first live event then sets it).
    pub last_seq: Option<u64>,
    /// Presence channels: where to re-read the member list after a reconnect.
    pub presence: Option<Arc<crate::presence::PresenceClient>>,
}

/// A durable event about to be offered, from the live path or the stream.
struct Durable<'a> {
    seq: u64,
    prev_seq: Option<u64>,
    exclude_socket: Option<&'a str>,
    dedupe_group: Option<&'a str>,
    body: Body<'a>,
}

/// A durable event's envelope: decoded already (read from the stream), or
/// as it came on the live subject, decoded only once a subscriber here is
/// to get it (a publisher's own event, excluded from its socket, often has
/// no one else on its gateway).
#[derive(Clone, Copy)]
enum Body<'a> {
    Decoded(&'a Envelope),
    Encoded(&'a [u8]),
}

#[derive(Clone, Copy)]
enum Source {
    Live,
    Ephemeral,
    Presence,
}

/// Run the fan-out of one channel until `stop` is cancelled, the entry is
/// gone, or the live subscription ends. Dropping the subscriptions at the
/// end unsubscribes from NATS.
pub(super) async fn run(
    mut subs: ChannelSubscriptions,
    entry: Weak<ChannelEntry>,
    channel: ChannelName,
    dedupe: Arc<Dedupe>,
    mut repairer: Repairer,
    stop: CancellationToken,
) {
    repairer.reconnects.borrow_and_update();
    // Made once: a wait made per message registers and drops itself each time.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let (msg, source) = tokio::select! {
            _ = &mut stopped => break,
            Ok(()) = repairer.reconnects.changed() => {
                let Some(entry) = entry.upgrade() else { break };
                repairer.after_reconnect(&entry, &channel, &dedupe).await;
                continue;
            }
            msg = subs.live.next() => (msg, Source::Live),
            Some(msg) = next_opt(&mut subs.ephemeral) => (Some(msg), Source::Ephemeral),
            Some(msg) = next_opt(&mut subs.presence) => (Some(msg), Source::Presence),
        };
        let Some(msg) = msg else { break };
        let Some(entry) = entry.upgrade() else { break };
        match source {
            Source::Live => match LiveEvent::from_message(&msg) {
                Ok(event) => repairer.live(&entry, &channel, &event, &dedupe).await,
                Err(err) => {
                    tracing::warn!(%err, subject = %msg.subject, "dropping unreadable live event")
                }
            },
            Source::Ephemeral => match serde_json::from_slice::<EphemeralEvent>(&msg.payload) {
                Ok(event) => ephemeral(&entry, &channel, &event),
                Err(err) => tracing::warn!(%err, "dropping unreadable ephemeral event"),
            },
            Source::Presence => match serde_json::from_slice::<PresenceEvent>(&msg.payload) {
                Ok(event) => presence_event(&entry, &channel, &event, false),
                Err(err) => tracing::warn!(%err, "dropping unreadable presence event"),
            },
        }
    }
}

async fn next_opt(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

impl Repairer {
    /// A live stored event: deliver what was missed before it, then it.
    async fn live(
        &mut self,
        entry: &ChannelEntry,
        channel: &ChannelName,
        event: &LiveEvent<'_>,
        dedupe: &Dedupe,
    ) {
        if let Some(last) = self.last_seq {
            if event.seq <= last {
                // Already delivered (repaired from the stream before it came).
                return;
            }
            if event.last_seq > last {
                self.repair(entry, channel, dedupe, event.last_seq).await;
            }
        }
        stored(
            entry,
            channel,
            &Durable {
                seq: event.seq,
                prev_seq: Some(event.last_seq),
                exclude_socket: event.exclude_socket,
                dedupe_group: event.dedupe_group,
                body: Body::Encoded(event.payload),
            },
            dedupe,
        );
        self.last_seq = Some(self.last_seq.map_or(event.seq, |l| l.max(event.seq)));
    }

    /// After a NATS reconnect: deliver whatever was stored while away, and
    /// on a presence channel the member changes missed meanwhile.
    async fn after_reconnect(
        &mut self,
        entry: &ChannelEntry,
        channel: &ChannelName,
        dedupe: &Dedupe,
    ) {
        self.repair_stored(entry, channel, dedupe).await;
        self.repair_members(entry, channel).await;
    }

    /// Re-read the member list and send subscribers the differences to what
    /// they were told, as `member_added` / `member_removed`.
    async fn repair_members(&self, entry: &ChannelEntry, channel: &ChannelName) {
        let Some(presence) = &self.presence else {
            return;
        };
        // The presence service reconnects too: give it a few tries.
        let mut reply = None;
        for attempt in 0..10u32 {
            match presence.members(&self.app, channel, 0, None).await {
                Ok(r) => {
                    reply = Some(r);
                    break;
                }
                Err(err) => {
                    tracing::debug!(%err, %channel, attempt, "member list not available yet");
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
            }
        }
        let Some(reply) = reply else {
            tracing::warn!(%channel, "cannot re-read the member list after a NATS reconnect");
            return;
        };
        let (added, removed) = {
            let mut view = entry.members.lock().expect("members lock");
            if reply.revision <= view.revision {
                return;
            }
            let added: Vec<(String, serde_json::Value)> = reply
                .members
                .iter()
                .filter(|(user, _)| !view.members.contains_key(*user))
                .map(|(user, info)| (user.clone(), info.clone()))
                .collect();
            let removed: Vec<String> = view
                .members
                .keys()
                .filter(|user| !reply.members.contains_key(*user))
                .cloned()
                .collect();
            view.started = true;
            view.revision = reply.revision;
            view.repaired_up_to = reply.revision;
            view.members = reply.members.clone();
            (added, removed)
        };
        metrics::counter!("herald_gateway_member_changes_repaired_total")
            .increment((added.len() + removed.len()) as u64);
        for user_id in removed {
            let event = PresenceEvent::MemberRemoved {
                user_id,
                revision: reply.revision,
            };
            presence_event(entry, channel, &event, true);
        }
        for (user_id, user_info) in added {
            let event = PresenceEvent::MemberAdded {
                user_id,
                user_info,
                revision: reply.revision,
            };
            presence_event(entry, channel, &event, true);
        }
    }

    /// Deliver whatever was stored while NATS was away.
    async fn repair_stored(
        &mut self,
        entry: &ChannelEntry,
        channel: &ChannelName,
        dedupe: &Dedupe,
    ) {
        match replay::last_seq(&self.js, &self.subjects, &self.app, channel).await {
            Ok(newest) if self.last_seq.is_some_and(|last| newest > last) => {
                self.repair(entry, channel, dedupe, newest).await;
            }
            Ok(newest) => {
                self.last_seq.get_or_insert(newest);
            }
            Err(err) => {
                tracing::warn!(%err, %channel, "cannot check a channel after a NATS reconnect")
            }
        }
    }

    /// Read and deliver the stored events after the last delivered one up to
    /// `until`, in order.
    async fn repair(
        &mut self,
        entry: &ChannelEntry,
        channel: &ChannelName,
        dedupe: &Dedupe,
        until: u64,
    ) {
        let Some(last) = self.last_seq else { return };
        let reader =
            RangeReader::open(&self.js, &self.subjects, &self.app, channel, last, until).await;
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(err) => {
                tracing::warn!(%err, %channel, last, until, "cannot repair a gap on the live path");
                return;
            }
        };
        metrics::counter!("herald_gateway_gaps_repaired_total").increment(1);
        loop {
            match reader.next().await {
                Ok(Some(event)) => {
                    metrics::counter!("herald_gateway_events_repaired_total").increment(1);
                    stored(
                        entry,
                        channel,
                        &Durable {
                            seq: event.seq,
                            prev_seq: Some(event.prev_seq),
                            exclude_socket: event.exclude_socket.as_deref(),
                            dedupe_group: event.dedupe_group.as_deref(),
                            body: Body::Decoded(&event.envelope),
                        },
                        dedupe,
                    );
                    self.last_seq = Some(event.seq);
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(%err, %channel, "gap repair stopped early");
                    break;
                }
            }
        }
        self.last_seq = Some(self.last_seq.unwrap_or(0).max(until));
    }
}

/// The frame of a stored event, as every subscriber gets it.
pub(crate) fn stored_frame(channel: &ChannelName, event: &replay::StoredEvent) -> Utf8Bytes {
    render(channel, event.seq, Some(event.prev_seq), &event.envelope)
}

fn render(channel: &ChannelName, seq: u64, prev_seq: Option<u64>, env: &Envelope) -> Utf8Bytes {
    Utf8Bytes::from(
        ServerFrame::Stored {
            event: &env.event,
            channel: channel.as_str(),
            data: &env.data,
            id: &env.id,
            seq,
            prev_seq,
            ts: env.at,
            user_id: env.author.as_deref(),
        }
        .to_json(),
    )
}

/// The frame of `event`, decoding its envelope if need be (`None`, logged,
/// for an envelope that cannot be read).
fn render_durable(channel: &ChannelName, event: &Durable<'_>) -> Option<Utf8Bytes> {
    let decoded;
    let env = match event.body {
        Body::Decoded(env) => env,
        Body::Encoded(payload) => match Envelope::decode(payload) {
            Ok(env) => {
                decoded = env;
                &decoded
            }
            Err(err) => {
                tracing::warn!(%err, %channel, seq = event.seq, "dropping unreadable live event");
                return None;
            }
        },
    };
    Some(render(channel, event.seq, event.prev_seq, env))
}

fn stored(entry: &ChannelEntry, channel: &ChannelName, event: &Durable<'_>, dedupe: &Dedupe) {
    // Rendered once per channel, when the first subscriber to get it is
    // found; every connection shares these bytes.
    let mut frame: Option<Utf8Bytes> = None;
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    let mut delivered = 0u64;
    for sub in subs.values_mut() {
        if event.exclude_socket == Some(&*sub.conn.socket_id) {
            continue;
        }
        if let Some(group) = event.dedupe_group {
            if !dedupe.first_time(group, sub.conn.id) {
                continue;
            }
        }
        let frame = match &frame {
            Some(frame) => frame,
            None => match render_durable(channel, event) {
                Some(rendered) => frame.insert(rendered),
                None => return,
            },
        };
        sub.offer(None, Some(event.seq), None, frame);
        delivered += 1;
    }
    metrics::counter!("herald_gateway_deliveries_total").increment(delivered);
}

fn ephemeral(entry: &ChannelEntry, channel: &ChannelName, event: &EphemeralEvent) {
    let frame = Utf8Bytes::from(
        ServerFrame::Client {
            event: &event.event,
            channel: channel.as_str(),
            data: &event.data,
            user_id: event.user_id.as_deref(),
        }
        .to_json(),
    );
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    for sub in subs.values_mut() {
        if event.socket_id.as_deref() == Some(&*sub.conn.socket_id) {
            continue;
        }
        sub.offer(None, None, None, &frame);
    }
}

/// Offer a member event; `repaired` ones were already applied to the view.
fn presence_event(
    entry: &ChannelEntry,
    channel: &ChannelName,
    event: &PresenceEvent,
    repaired: bool,
) {
    let (frame, user, revision) = match event {
        PresenceEvent::MemberAdded {
            user_id,
            user_info,
            revision,
        } => (
            ServerFrame::MemberAdded {
                channel: channel.as_str(),
                user_id,
                user_info,
            },
            user_id,
            *revision,
        ),
        PresenceEvent::MemberRemoved { user_id, revision } => (
            ServerFrame::MemberRemoved {
                channel: channel.as_str(),
                user_id,
            },
            user_id,
            *revision,
        ),
    };
    let Ok(user) = UserId::parse(user) else {
        tracing::warn!("dropping a presence event with an invalid user id");
        return;
    };
    if !repaired {
        // An event from before a post-reconnect re-read whose differences
        // were sent is stale: not sent again. Others keep the view current.
        let mut view = entry.members.lock().expect("members lock");
        if revision <= view.repaired_up_to {
            return;
        }
        if revision > view.revision {
            view.revision = revision;
            match event {
                PresenceEvent::MemberAdded { user_info, .. } => {
                    view.members
                        .insert(user.as_str().to_owned(), user_info.clone());
                }
                PresenceEvent::MemberRemoved { .. } => {
                    view.members.remove(user.as_str());
                }
            }
        }
    }
    let frame = Utf8Bytes::from(frame.to_json());
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    for sub in subs.values_mut() {
        sub.offer(Some(revision), None, Some(&user), &frame);
    }
}
