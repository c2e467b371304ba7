//! The per-channel fan-out task: the channel's core-NATS subscriptions
//! (stored events' live subject, client events, presence member events),
//! each message rendered once into a [`ServerFrame`] and the same bytes
//! offered to every subscriber.

use super::dedupe::Dedupe;
use super::ChannelEntry;
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use herald_proto::control::EphemeralEvent;
use herald_proto::presence::PresenceEvent;
use herald_proto::{ChannelName, ServerFrame, UserId};
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
    stop: CancellationToken,
) {
    loop {
        let (msg, source) = tokio::select! {
            _ = stop.cancelled() => break,
            msg = subs.live.next() => (msg, Source::Live),
            Some(msg) = next_opt(&mut subs.ephemeral) => (Some(msg), Source::Ephemeral),
            Some(msg) = next_opt(&mut subs.presence) => (Some(msg), Source::Presence),
        };
        let Some(msg) = msg else { break };
        let Some(entry) = entry.upgrade() else { break };
        match source {
            Source::Live => match LiveEvent::from_message(&msg) {
                Ok(event) => stored(&entry, &channel, &event, &dedupe),
                Err(err) => {
                    tracing::warn!(%err, subject = %msg.subject, "dropping unreadable live event")
                }
            },
            Source::Ephemeral => match serde_json::from_slice::<EphemeralEvent>(&msg.payload) {
                Ok(event) => ephemeral(&entry, &channel, &event),
                Err(err) => tracing::warn!(%err, "dropping unreadable ephemeral event"),
            },
            Source::Presence => match serde_json::from_slice::<PresenceEvent>(&msg.payload) {
                Ok(event) => presence(&entry, &channel, &event),
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

fn stored(entry: &ChannelEntry, channel: &ChannelName, event: &LiveEvent, dedupe: &Dedupe) {
    let env = &event.envelope;
    // Serialize once per channel; every connection shares these bytes.
    let frame = Utf8Bytes::from(
        ServerFrame::Stored {
            event: &env.event,
            channel: channel.as_str(),
            data: &env.data,
            id: &env.id,
            seq: event.seq,
            ts: env.at,
        }
        .to_json(),
    );
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    let mut delivered = 0u64;
    for sub in subs.values_mut() {
        if event.exclude_socket.as_deref() == Some(&*sub.conn.socket_id) {
            continue;
        }
        if let Some(group) = &event.dedupe_group {
            if !dedupe.first_time(group, sub.conn.id) {
                continue;
            }
        }
        sub.offer(None, Some(event.seq), None, &frame);
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

fn presence(entry: &ChannelEntry, channel: &ChannelName, event: &PresenceEvent) {
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
    let frame = Utf8Bytes::from(frame.to_json());
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    for sub in subs.values_mut() {
        sub.offer(Some(revision), None, Some(&user), &frame);
    }
}
