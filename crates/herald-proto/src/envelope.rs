//! The versioned event envelope: the payload of every message in the channel
//! stream.
//!
//! Writers always produce [`CURRENT_VERSION`]. Readers go through
//! [`Envelope::decode`], which accepts every version ever written and upcasts
//! it to today's [`Envelope`], so that replaying an old stream rebuilds
//! today's read models. When the shape changes, keep the old struct, bump the
//! version and add an upcast arm; never edit a released version in place.

use crate::error::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// The version this build writes.
pub const CURRENT_VERSION: u32 = 1;

/// JetStream's de-duplication header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// A `Nats-Msg-Id` derived from `parts` (what makes a publish "the same
/// one": app, channel, author, a client's key ...): hex SHA-256 of the parts,
/// each ended by a NUL byte so that no two different lists collide.
pub fn derived_msg_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    // Into a buffer rather than by `hex::encode`, which builds the string
    // one `char` at a time: this runs for every client publish.
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits, which are always ASCII.
    hex::encode_to_slice(hash.finalize(), &mut hex).unwrap_or_default();
    String::from_utf8_lossy(&hex).into_owned()
}

/// Set by JetStream on republished messages: the stream sequence.
pub const HEADER_SEQUENCE: &str = "Nats-Sequence";
/// Set by JetStream on republished messages: previous sequence on the subject.
pub const HEADER_LAST_SEQUENCE: &str = "Nats-Last-Sequence";

/// What kind of state change an envelope records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An event triggered by the app server through the Pusher HTTP API.
    Trigger,
    /// A message a client published with `herald:publish`.
    Message,
    /// A delivery receipt: a user has every event of the channel up to a seq.
    Delivered,
    /// A read receipt: a user has read the channel up to a seq.
    Read,
    /// A message's content was replaced by its author; `data` is a
    /// [`MessageEdit`].
    Edited,
    /// A message was deleted by its author or the app; `data` is a
    /// [`MessageRef`]. Read models keep a tombstone (the seq, no content).
    Deleted,
    /// A user became a member of the channel (a room or DM); `data` is a
    /// [`Membership`].
    MemberJoined,
    /// A user stopped being a member; `data` is a [`Membership`].
    MemberLeft,
    /// The channel was destroyed (a room): every earlier event of it was
    /// purged from the stream and read models forget it. `data` is `{}`.
    ChannelPurged,
    /// A kind written by a newer Herald: carried through, never dropped.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The wire name, as in the envelope's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Trigger => "trigger",
            EventKind::Message => "message",
            EventKind::Delivered => "delivered",
            EventKind::Read => "read",
            EventKind::Edited => "edited",
            EventKind::Deleted => "deleted",
            EventKind::MemberJoined => "member_joined",
            EventKind::MemberLeft => "member_left",
            EventKind::ChannelPurged => "channel_purged",
            EventKind::Unknown => "unknown",
        }
    }
}

/// Pusher event names of Herald's own kinds, as subscribers receive them
/// (the receipts are also what clients send to make them).
pub mod event_names {
    /// [`super::EventKind::Delivered`]: a client's `herald:delivered`.
    pub const DELIVERED: &str = "herald:delivered";
    /// [`super::EventKind::Read`]: a client's `herald:read`.
    pub const READ: &str = "herald:read";
    /// [`super::EventKind::Edited`].
    pub const MESSAGE_EDITED: &str = "herald:message_edited";
    /// [`super::EventKind::Deleted`].
    pub const MESSAGE_DELETED: &str = "herald:message_deleted";
    /// [`super::EventKind::MemberJoined`].
    pub const MEMBER_JOINED: &str = "herald:member_joined";
    /// [`super::EventKind::MemberLeft`].
    pub const MEMBER_LEFT: &str = "herald:member_left";
    /// [`super::EventKind::ChannelPurged`].
    pub const CHANNEL_PURGED: &str = "herald:channel_purged";
}

/// The `data` of an edit: which message, and its new content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdit {
    /// The edited message's id.
    pub id: String,
    /// Its new `data`.
    pub data: String,
}

/// The `data` of a delete: which message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The deleted message's id.
    pub id: String,
}

/// Serialize a struct of strings as an envelope's `data`.
pub fn to_data<T: Serialize>(value: &T) -> String {
    // Structs of strings always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

/// Longest `client_id` (a publisher's idempotency key), in characters:
/// the same for `herald:publish` and the history REST API's send.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// The `Nats-Msg-Id` of a message a user (or the app, `None`) publishes
/// with a `client_id`: the same key from the same author on the same channel
/// is one message, whichever connection or API call retries it.
pub fn publish_msg_id(app: &str, channel: &str, author: Option<&str>, client_id: &str) -> String {
    derived_msg_id(&["publish", app, channel, author.unwrap_or(""), client_id])
}

/// The `Nats-Msg-Id` of a receipt: one per user, channel, kind and seq.
pub fn receipt_msg_id(app: &str, channel: &str, user: &str, kind: EventKind, seq: u64) -> String {
    derived_msg_id(&[kind.as_str(), app, channel, user, &seq.to_string()])
}

/// The `data` of a receipt event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Who has delivered or read.
    pub user_id: String,
    /// Everything of the channel up to this seq.
    pub seq: u64,
}

/// The `data` of a membership event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The user who joined or left.
    pub user_id: String,
    /// The room, when the channel is a room's (absent on DMs and on
    /// channels the app manages itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
}

impl Membership {
    /// As an envelope's `data` string.
    pub fn to_data(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One durable channel event (version 1 of the envelope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version; always [`CURRENT_VERSION`] when written by this build.
    pub v: u32,
    /// Unique event id (a UUIDv7, time-ordered).
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The app the channel belongs to.
    pub app: String,
    /// The channel name as clients know it (not the subject token).
    pub channel: String,
    /// The Pusher event name delivered to clients.
    pub event: String,
    /// Who caused it: a user id, or `None` for the app server.
    #[serde(default)]
    pub author: Option<String>,
    /// When Herald accepted it, in milliseconds since the Unix epoch.
    pub at: i64,
    /// The payload exactly as given: Pusher's `data` is an opaque string.
    pub data: String,
    /// The publisher's idempotency key, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Envelope {
    /// A new current-version envelope with a fresh id and timestamp.
    pub fn new(
        kind: EventKind,
        app: &str,
        channel: &str,
        event: &str,
        data: String,
        author: Option<String>,
    ) -> Self {
        Self {
            v: CURRENT_VERSION,
            // Encoded directly, not through `Display`'s formatter.
            id: uuid::Uuid::now_v7()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            kind,
            app: app.to_owned(),
            channel: channel.to_owned(),
            event: event.to_owned(),
            author,
            at: crate::now_ms(),
            data,
            client_id: None,
        }
    }

    /// Serialize for storage.
    pub fn encode(&self) -> Vec<u8> {
        // The fixed fields and names take ~150 bytes besides the strings.
        let strings = self.id.len()
            + self.app.len()
            + self.channel.len()
            + self.event.len()
            + self.data.len()
            + self.author.as_ref().map_or(0, String::len)
            + self.client_id.as_ref().map_or(0, String::len);
        let mut out = Vec::with_capacity(strings + strings / 8 + 160);
        // Written field by field rather than through the derived
        // `Serialize` (one envelope per publish; see `push_json_str`). The
        // bytes are the derived ones: the same fields, in declaration
        // order, `author` as `null` when absent, `client_id` left out when
        // absent (a test compares the two).
        use crate::{push_json_int, push_json_str};
        out.extend_from_slice(b"{\"v\":");
        push_json_int(&mut out, self.v);
        out.extend_from_slice(b",\"id\":");
        push_json_str(&mut out, &self.id);
        out.extend_from_slice(b",\"kind\":");
        push_json_str(&mut out, self.kind.as_str());
        out.extend_from_slice(b",\"app\":");
        push_json_str(&mut out, &self.app);
        out.extend_from_slice(b",\"channel\":");
        push_json_str(&mut out, &self.channel);
        out.extend_from_slice(b",\"event\":");
        push_json_str(&mut out, &self.event);
        out.extend_from_slice(b",\"author\":");
        match &self.author {
            Some(author) => push_json_str(&mut out, author),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"at\":");
        push_json_int(&mut out, self.at);
        out.extend_from_slice(b",\"data\":");
        push_json_str(&mut out, &self.data);
        if let Some(client_id) = &self.client_id {
            out.extend_from_slice(b",\"client_id\":");
            push_json_str(&mut out, client_id);
        }
        out.push(b'}');
        out
    }

    /// Decode any stored version and upcast it to the current shape.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                ErrorKind::InvalidEnvelope,
                format!("envelope has no version: {e}"),
            )
        })?;
        match version.v {
            1 => serde_json::from_slice(bytes).map_err(|e| {
                Error::new(ErrorKind::InvalidEnvelope, format!("bad v1 envelope: {e}"))
            }),
            other => Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!("envelope version {other} is newer than this build understands"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_FIXTURE: &str = include_str!("../tests/fixtures/envelope_v1.json");

    #[test]
    fn an_envelope_encodes_to_the_bytes_of_its_derived_serialization() {
        let kinds = [
            EventKind::Trigger,
            EventKind::Message,
            EventKind::Delivered,
            EventKind::Read,
            EventKind::Edited,
            EventKind::Deleted,
            EventKind::MemberJoined,
            EventKind::MemberLeft,
            EventKind::ChannelPurged,
            EventKind::Unknown,
        ];
        let strings = crate::tests::awkward_strings();
        for (i, s) in strings.iter().enumerate() {
            let mut env = Envelope::new(kinds[i % kinds.len()], s, s, s, s.clone(), None);
            env.at = -(i as i64) * 1_000_000_007;
            env.id = s.clone();
            for (author, client_id) in [
                (None, None),
                (Some(s.clone()), None),
                (None, Some(s.clone())),
                (Some("u1".to_owned()), Some("c1".to_owned())),
            ] {
                env.author = author;
                env.client_id = client_id;
                assert_eq!(
                    String::from_utf8(env.encode()).unwrap(),
                    serde_json::to_string(&env).unwrap(),
                    "for {env:?}"
                );
                assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
            }
        }
    }

    #[test]
    fn a_stored_v1_envelope_decodes() {
        let env = Envelope::decode(V1_FIXTURE.as_bytes()).unwrap();
        assert_eq!(env.v, 1);
        assert_eq!(env.id, "0190f1c2-7a3b-7c4d-8e5f-1a2b3c4d5e6f");
        assert_eq!(env.kind, EventKind::Trigger);
        assert_eq!(env.app, "app-id");
        assert_eq!(env.channel, "my-channel");
        assert_eq!(env.event, "my-event");
        assert_eq!(env.author, None);
        assert_eq!(env.at, 1_721_000_000_000);
        assert_eq!(env.data, "{\"message\":\"hello world\"}");
        assert_eq!(env.client_id, None);
    }

    /// One stored v1 envelope of every kind, frozen: each must decode (and
    /// its data parse as its kind says) in every later build.
    const KIND_FIXTURES: [(&str, EventKind); 8] = [
        (
            include_str!("../tests/fixtures/envelope_v1_message.json"),
            EventKind::Message,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_delivered.json"),
            EventKind::Delivered,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_read.json"),
            EventKind::Read,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_edited.json"),
            EventKind::Edited,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_deleted.json"),
            EventKind::Deleted,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_member_joined.json"),
            EventKind::MemberJoined,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_member_left.json"),
            EventKind::MemberLeft,
        ),
        (
            include_str!("../tests/fixtures/envelope_v1_channel_purged.json"),
            EventKind::ChannelPurged,
        ),
    ];

    #[test]
    fn a_stored_v1_envelope_of_every_kind_decodes_with_its_data() {
        for (json, kind) in KIND_FIXTURES {
            let env = Envelope::decode(json.as_bytes()).unwrap();
            assert_eq!(env.kind, kind);
            let data_ok = match kind {
                EventKind::Edited => serde_json::from_str::<MessageEdit>(&env.data).is_ok(),
                EventKind::Deleted => serde_json::from_str::<MessageRef>(&env.data).is_ok(),
                EventKind::Read | EventKind::Delivered => {
                    serde_json::from_str::<Receipt>(&env.data).is_ok()
                }
                EventKind::MemberJoined | EventKind::MemberLeft => {
                    serde_json::from_str::<Membership>(&env.data).is_ok()
                }
                _ => true,
            };
            assert!(data_ok, "{kind:?}: {}", env.data);
        }
    }

    #[test]
    fn an_envelope_round_trips() {
        let mut env = Envelope::new(
            EventKind::Message,
            "a",
            "c",
            "e",
            "d".into(),
            Some("u".into()),
        );
        env.client_id = Some("k".into());
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
    }

    #[test]
    fn a_message_key_is_the_hex_sha256_of_its_parts_so_it_survives_upgrades() {
        // A retry that reaches a newer gateway inside the duplicate window
        // must carry the key the first attempt was stored with.
        assert_eq!(
            publish_msg_id("app-1", "private-room", Some("u1"), "c-7"),
            "f5afcaa358b1ad512a9b9718c850a2d6efc4fefe75df9c8773a1d1fed3b9310f"
        );
    }

    #[test]
    fn a_retry_of_the_same_message_has_the_same_key_and_anything_else_another() {
        let key = publish_msg_id("a", "private-c", Some("u1"), "m1");
        assert_eq!(key, publish_msg_id("a", "private-c", Some("u1"), "m1"));
        for other in [
            publish_msg_id("b", "private-c", Some("u1"), "m1"),
            publish_msg_id("a", "private-d", Some("u1"), "m1"),
            publish_msg_id("a", "private-c", Some("u2"), "m1"),
            publish_msg_id("a", "private-c", None, "m1"),
            publish_msg_id("a", "private-c", Some("u1"), "m2"),
            // No ambiguity from joining the parts.
            publish_msg_id("a", "private-c", Some("u1m"), "1"),
        ] {
            assert_ne!(key, other);
        }
        assert_ne!(
            receipt_msg_id("a", "c", "u", EventKind::Read, 5),
            receipt_msg_id("a", "c", "u", EventKind::Delivered, 5)
        );
    }

    #[test]
    fn membership_kinds_have_stable_wire_names() {
        for (kind, name) in [
            (EventKind::MemberJoined, "member_joined"),
            (EventKind::MemberLeft, "member_left"),
            (EventKind::ChannelPurged, "channel_purged"),
            (EventKind::Edited, "edited"),
            (EventKind::Deleted, "deleted"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
        }
        let m = Membership {
            user_id: "u".into(),
            room_id: Some("r".into()),
        };
        assert_eq!(serde_json::from_str::<Membership>(&m.to_data()).unwrap(), m);
    }

    #[test]
    fn unknown_kinds_from_newer_writers_are_kept_as_unknown() {
        let json = V1_FIXTURE.replace("\"trigger\"", "\"reaction_added\"");
        assert_eq!(
            Envelope::decode(json.as_bytes()).unwrap().kind,
            EventKind::Unknown
        );
    }

    #[test]
    fn future_versions_and_garbage_are_rejected_with_matchable_kinds() {
        let future = V1_FIXTURE.replace("\"v\": 1", "\"v\": 99");
        assert_eq!(
            Envelope::decode(future.as_bytes()).unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(
            Envelope::decode(b"not json").unwrap_err().kind(),
            ErrorKind::InvalidEnvelope
        );
        assert_eq!(
            Envelope::decode(br#"{"v":1,"id":"x"}"#).unwrap_err().kind(),
            ErrorKind::InvalidEnvelope
        );
    }
}
