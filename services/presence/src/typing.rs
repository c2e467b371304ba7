//! Typing indicators: `herald:typing_stopped` when a typist goes quiet.
//!
//! Gateways publish client events on the ephemeral subjects
//! (`<prefix>.eph.<app>.<channel>`) as JSON
//! `{"event", "channel", "data", "socket_id", "user_id", "signed_in_user"}`.
//! This task listens to all of them and tracks every sender of
//! `client-typing` — by user when the gateway knows one (the presence
//! member, else the signed-in user), by `socket_id` otherwise —
//! per channel (messages are `herald_proto::control::EphemeralEvent`):
//!
//! * each `client-typing` (re)starts the sender's timer;
//! * a `client-typing` whose data says `{"typing": false}` ends it at once;
//! * when the timer runs out (the typing timeout, 3 s by default) or is ended,
//!   the service publishes, on the same subject,
//!   `{"event": "herald:typing_stopped", "channel", "data": {"user_id"},
//!   "socket_id": null, "user_id"}` (with `data.socket_id` too when there is
//!   no user id), which gateways deliver to every subscriber, the typist's
//!   own other devices included.
//!
//! Only `client-typing` keeps the state alive: other client events from the
//! same sender neither start nor extend it. A `{"typing": false}` from a
//! sender who was not typing publishes nothing (their own event already
//! reached everyone).

use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use herald_proto::control::EphemeralEvent;
use herald_proto::Subjects;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The event that starts or extends typing.
pub const TYPING_EVENT: &str = "client-typing";
/// The event this service publishes when typing stops.
pub const TYPING_STOPPED_EVENT: &str = "herald:typing_stopped";

/// Who is typing, per subject (app and channel).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Typist {
    subject: String,
    channel: String,
    user_id: Option<String>,
    socket_id: Option<String>,
}

/// Whether `data` says typing stopped: `{"typing": false}`, also when the
/// client sent it as a JSON string.
fn says_stopped(data: &Value) -> bool {
    let stopped = |v: &Value| v.get("typing") == Some(&Value::Bool(false));
    match data {
        Value::String(s) => serde_json::from_str::<Value>(s).is_ok_and(|v| stopped(&v)),
        other => stopped(other),
    }
}

/// The typing-timeout task.
pub struct Typing {
    pub client: Client,
    pub subjects: Subjects,
    pub subscription: Subscriber,
    pub timeout: Duration,
}

impl Typing {
    /// Track typists until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) -> anyhow::Result<()> {
        // Current deadline per typist, and the same ordered by deadline (the
        // counter makes entries unique and orders equal deadlines).
        let mut deadlines: HashMap<Typist, (Instant, u64)> = HashMap::new();
        let mut queue: BTreeMap<(Instant, u64), Typist> = BTreeMap::new();
        let mut counter = 0u64;
        loop {
            let next = queue.first_key_value().map(|(k, _)| k.0);
            tokio::select! {
                _ = token.cancelled() => break,
                msg = self.subscription.next() => {
                    let Some(msg) = msg else { break };
                    let Some((typist, stop)) = self.typist(&msg.subject, &msg.payload) else {
                        continue;
                    };
                    if let Some(old) = deadlines.remove(&typist) {
                        queue.remove(&old);
                        if stop {
                            self.stopped(&typist).await;
                            continue;
                        }
                    } else if stop {
                        continue;
                    }
                    counter += 1;
                    let at = (Instant::now() + self.timeout, counter);
                    deadlines.insert(typist.clone(), at);
                    queue.insert(at, typist);
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(entry) = queue.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let typist = entry.remove();
                        deadlines.remove(&typist);
                        self.stopped(&typist).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// The typist a message is about and whether it says "stopped"; `None`
    /// for anything that is not a `client-typing` from an identifiable sender.
    fn typist(&self, subject: &Subject, payload: &Bytes) -> Option<(Typist, bool)> {
        let message: EphemeralEvent = serde_json::from_slice(payload).ok()?;
        if message.event != TYPING_EVENT {
            return None;
        }
        // Only subjects of the layout, never a reply to a foreign publisher.
        self.subjects.parse_channel_subject(subject).ok()?;
        // The presence member, else the signed-in user (a private channel
        // such as a direct message), else only the socket.
        let user = message.user_id.or(message.signed_in_user);
        let (user_id, socket_id) = match (user, message.socket_id) {
            (Some(user), _) => (Some(user), None),
            (None, Some(socket)) => (None, Some(socket)),
            (None, None) => return None,
        };
        let stop = says_stopped(&message.data);
        Some((
            Typist {
                subject: subject.to_string(),
                channel: message.channel,
                user_id,
                socket_id,
            },
            stop,
        ))
    }

    async fn stopped(&self, typist: &Typist) {
        let mut data = serde_json::json!({ "user_id": typist.user_id });
        if let Some(socket) = &typist.socket_id {
            data["socket_id"] = Value::String(socket.clone());
        }
        let message = EphemeralEvent {
            event: TYPING_STOPPED_EVENT.to_owned(),
            channel: typist.channel.clone(),
            data,
            socket_id: None,
            user_id: typist.user_id.clone(),
            signed_in_user: None,
        };
        let payload = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
        match self.client.publish(typist.subject.clone(), payload).await {
            Ok(()) => metrics::counter!("herald_presence_typing_stopped_total").increment(1),
            Err(err) => tracing::warn!(%err, "cannot publish typing_stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typing_false_means_stopped_as_an_object_or_a_json_string() {
        assert!(says_stopped(&json!({"typing": false})));
        assert!(says_stopped(&json!("{\"typing\":false}")));
        assert!(!says_stopped(&json!({"typing": true})));
        assert!(!says_stopped(&json!({})));
        assert!(!says_stopped(&json!("hello")));
    }
}
