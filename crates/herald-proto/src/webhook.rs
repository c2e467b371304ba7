//! The webhook contract: Pusher's webhook events and body, the names of the
//! webhook streams, subjects and consumers, and the headers a receiver sees.
//!
//! Producers (the presence service for occupancy, members and online
//! status; gateways for client events and cache misses) store each event as
//! one [`WebhookEvent`] (JSON) on [`Subjects::webhook_channel`] or
//! [`Subjects::webhook_user`] in the stream [`Subjects::webhooks_stream`],
//! with `Nats-Msg-Id` set to the event's id, so a producer's retry is
//! stored once. The dispatcher reads each app's events with one durable
//! consumer ([`Subjects::webhook_durable`]) and POSTs them in Pusher's body
//! ([`WebhookBody`]) signed with [`crate::pusher::webhook_signature`].
//! Events that could not be delivered within the retry window go to
//! [`Subjects::webhook_dead`] (stream [`Subjects::webhook_dead_stream`]),
//! with the target URL in [`DEAD_URL_HEADER`], for an operator to inspect
//! and replay.

use crate::channel::{AppId, ChannelName};
use crate::subject::Subjects;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// HTTP header naming the app's key (Pusher's).
pub const KEY_HEADER: &str = "X-Pusher-Key";
/// HTTP header with the hex HMAC-SHA256 of the body (Pusher's).
pub const SIGNATURE_HEADER: &str = "X-Pusher-Signature";
/// HTTP header listing the ids of the batch's events, comma-separated, in
/// body order (each event also carries its `id`).
pub const EVENT_IDS_HEADER: &str = "X-Herald-Webhook-Ids";
/// NATS header of a stored webhook event: its id.
pub const EVENT_ID_HEADER: &str = "Herald-Webhook-Id";
/// NATS header of a dead-lettered event: the URL it could not reach.
pub const DEAD_URL_HEADER: &str = "Herald-Webhook-Url";
/// NATS header of a dead-lettered event: the last error.
pub const DEAD_ERROR_HEADER: &str = "Herald-Webhook-Error";
/// NATS header of a dead-lettered event: the subject it was stored on, where
/// a replay publishes it again.
pub const DEAD_SUBJECT_HEADER: &str = "Herald-Webhook-Subject";

/// Every webhook event type: Pusher's six and Herald's two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    /// A channel got its first subscriber on any gateway.
    ChannelOccupied,
    /// A channel's last subscriber anywhere left.
    ChannelVacated,
    /// A user's first connection joined a presence channel.
    MemberAdded,
    /// A user's last connection left a presence channel.
    MemberRemoved,
    /// A client sent a `client-*` event.
    ClientEvent,
    /// A cache channel was subscribed to with nothing cached.
    CacheMiss,
    /// A user's first signed-in connection appeared (Herald's, opt-in).
    UserOnline,
    /// A user's last connection went (Herald's, opt-in).
    UserOffline,
}

impl WebhookKind {
    /// Every kind.
    pub const ALL: [WebhookKind; 8] = [
        WebhookKind::ChannelOccupied,
        WebhookKind::ChannelVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientEvent,
        WebhookKind::CacheMiss,
        WebhookKind::UserOnline,
        WebhookKind::UserOffline,
    ];

    /// The `name` in Pusher's body (and in `event_types`).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::ChannelOccupied => "channel_occupied",
            WebhookKind::ChannelVacated => "channel_vacated",
            WebhookKind::MemberAdded => "member_added",
            WebhookKind::MemberRemoved => "member_removed",
            WebhookKind::ClientEvent => "client_event",
            WebhookKind::CacheMiss => "cache_miss",
            WebhookKind::UserOnline => "user_online",
            WebhookKind::UserOffline => "user_offline",
        }
    }

    /// Parse a name written by [`WebhookKind::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the event is about a channel (and so filtered by channel
    /// name); user events have none.
    pub fn has_channel(self) -> bool {
        !matches!(self, WebhookKind::UserOnline | WebhookKind::UserOffline)
    }
}

/// One webhook event, as stored and as sent in Pusher's `events` array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The event type.
    pub name: WebhookKind,
    /// The channel (every kind but the user ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// member events, client events on presence channels, user events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// client events: the event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// client events: the data, as the client sent it (a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// client events: the sender's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    /// Herald: the event's stable id; a receiver de-duplicates by it.
    pub id: String,
}

impl WebhookEvent {
    /// An event of `kind` with only its name and id.
    pub fn new(kind: WebhookKind, id: String) -> Self {
        Self {
            name: kind,
            channel: None,
            user_id: None,
            event: None,
            data: None,
            socket_id: None,
            id,
        }
    }

    /// A channel event.
    pub fn on_channel(kind: WebhookKind, id: String, channel: &ChannelName) -> Self {
        Self {
            channel: Some(channel.to_string()),
            ..Self::new(kind, id)
        }
    }

    /// The subject this event is stored on.
    pub fn subject(&self, subjects: &Subjects, app: &AppId) -> String {
        match self
            .channel
            .as_deref()
            .and_then(|c| ChannelName::parse(c).ok())
        {
            Some(channel) => subjects.webhook_channel(app, &channel),
            None => subjects.webhook_user(app),
        }
    }
}

/// A stable event id derived from what identifies the fact (app, kind,
/// channel or user, the producer's sequence): the same fact produced twice
/// (a producer retrying) gets the same id, so JetStream's duplicate window
/// stores it once and a receiver can tell a redelivery.
pub fn event_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// Pusher's webhook body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// When the request was made, ms since the epoch.
    pub time_ms: i64,
    /// The batch's events, in stream order.
    pub events: Vec<WebhookEvent>,
}

impl Subjects {
    /// The stream holding every webhook event until it is delivered.
    pub fn webhooks_stream(&self) -> String {
        format!("{}_WEBHOOKS", self.prefix().to_ascii_uppercase())
    }

    /// Every webhook subject (the stream's subjects).
    pub fn webhooks_filter(&self) -> String {
        format!("{}.hooks.>", self.prefix())
    }

    /// One app's webhook subjects (its dispatcher consumer's filter).
    pub fn app_webhooks_filter(&self, app: &AppId) -> String {
        format!("{}.hooks.{app}.>", self.prefix())
    }

    /// Where a channel's webhook events are stored.
    pub fn webhook_channel(&self, app: &AppId, channel: &ChannelName) -> String {
        format!("{}.hooks.{app}.c.{}", self.prefix(), channel.to_token())
    }

    /// Where an app's user events (online / offline) are stored.
    pub fn webhook_user(&self, app: &AppId) -> String {
        format!("{}.hooks.{app}.u", self.prefix())
    }

    /// The durable consumer delivering one app's webhooks.
    pub fn webhook_durable(&self, app: &AppId) -> String {
        self.durable(&format!("webhooks_{app}"))
    }

    /// The stream of events that could not be delivered.
    pub fn webhook_dead_stream(&self) -> String {
        format!("{}_WEBHOOKS_DEAD", self.prefix().to_ascii_uppercase())
    }

    /// Every dead-letter subject (the dead-letter stream's subjects).
    pub fn webhook_dead_filter(&self) -> String {
        format!("{}.hooksdead.>", self.prefix())
    }

    /// Where one app's undeliverable events are dead-lettered.
    pub fn webhook_dead(&self, app: &AppId) -> String {
        format!("{}.hooksdead.{app}", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in WebhookKind::ALL {
            assert_eq!(WebhookKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
        assert_eq!(WebhookKind::parse("channel_existence"), None);
    }

    #[test]
    fn events_serialize_as_pusher_does_plus_an_id() {
        let channel = ChannelName::parse("presence-a").unwrap();
        let mut event = WebhookEvent::on_channel(WebhookKind::MemberAdded, "x".into(), &channel);
        event.user_id = Some("u1".into());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "member_added", "channel": "presence-a", "user_id": "u1", "id": "x"})
        );
        assert_eq!(serde_json::from_value::<WebhookEvent>(json).unwrap(), event);
    }

    #[test]
    fn ids_are_stable_and_unambiguous() {
        assert_eq!(event_id(&["a", "b"]), event_id(&["a", "b"]));
        assert_ne!(event_id(&["ab", ""]), event_id(&["a", "b"]));
        assert_eq!(event_id(&["a"]).len(), 32);
    }

    #[test]
    fn subjects_are_per_app_and_channel_and_apart_from_dead_letters() {
        let s = Subjects::new("t").unwrap();
        let app = AppId::parse("app").unwrap();
        let channel = ChannelName::parse("private-a.b").unwrap();
        assert_eq!(
            s.webhook_channel(&app, &channel),
            "t.hooks.app.c.private-a~b"
        );
        assert_eq!(s.webhook_user(&app), "t.hooks.app.u");
        assert_eq!(s.app_webhooks_filter(&app), "t.hooks.app.>");
        assert!(!s.webhook_dead(&app).starts_with("t.hooks."));
        assert_eq!(s.webhook_durable(&app), "t_webhooks_app");
    }
}
