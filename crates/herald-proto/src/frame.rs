//! Every frame the gateway sends a client, as one typed [`ServerFrame`], and
//! the one serializer that applies Pusher's wire rules.
//!
//! Pusher's rule is that a server frame's `data` is a JSON *string* holding
//! the payload's JSON. [`ServerFrame::to_json`] applies it in this one place,
//! with the two exceptions Pusher's own server makes: `pusher:error` carries
//! its `{code, message}` as an object, and a client event's `data` is relayed
//! exactly as its sender wrote it. `pusher:cache_miss` has no `data`.

use crate::channel::prefix::SERVER_TO_USER;
use crate::presence::pusher_presence_data;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A frame from the gateway to a client.
#[derive(Debug, Clone)]
pub enum ServerFrame<'a> {
    /// `pusher:connection_established`.
    ConnectionEstablished {
        /// The socket's id.
        socket_id: &'a str,
        /// Seconds of silence after which the client should ping.
        activity_timeout_secs: u64,
    },
    /// `pusher:error`; `code` is `None` for non-fatal errors without one.
    Error {
        /// Pusher's error code, when the error has one.
        code: Option<u16>,
        /// What went wrong.
        message: &'a str,
    },
    /// `pusher:ping`, sent by the server to a quiet client.
    Ping,
    /// `pusher:pong`, the answer to a client's ping.
    Pong,
    /// `pusher_internal:subscription_succeeded` for a non-presence channel.
    SubscriptionSucceeded {
        /// The channel.
        channel: &'a str,
    },
    /// `pusher_internal:subscription_succeeded` for a presence channel, with
    /// Pusher's `{presence: {ids, hash, count}}` member list.
    PresenceSubscriptionSucceeded {
        /// The channel.
        channel: &'a str,
        /// User id → user info of every member.
        members: &'a BTreeMap<String, Value>,
    },
    /// `pusher:subscription_error` with Pusher's `{type, error, status}`.
    SubscriptionError {
        /// The channel as the client named it.
        channel: &'a str,
        /// Pusher's error type.
        kind: SubscriptionErrorKind,
        /// What went wrong.
        message: &'a str,
        /// An HTTP-like status.
        status: u16,
    },
    /// A stored channel event: Pusher's `event`, `channel`, `data` plus
    /// Herald's `id`, `seq` and `ts`, which plain Pusher clients ignore.
    Stored {
        /// Event name.
        event: &'a str,
        /// Channel.
        channel: &'a str,
        /// The payload string as published.
        data: &'a str,
        /// The envelope id.
        id: &'a str,
        /// The stream sequence.
        seq: u64,
        /// The channel's previous stored event (`Nats-Last-Sequence`), when
        /// known: sequences are not contiguous within a channel, so this is
        /// how a client verifies it has every event.
        prev_seq: Option<u64>,
        /// When it was stored, ms since the epoch.
        ts: i64,
        /// The author (a user id), when a user published it.
        user_id: Option<&'a str>,
    },
    /// `herald:resume_failed`: a `resume_from` that cannot be served from
    /// the stream; the subscription is live, the client reloads history.
    ResumeFailed {
        /// The channel.
        channel: &'a str,
        /// The oldest stored sequence of the channel (0: none).
        oldest_seq: u64,
        /// Why (`retention`, `too_far_behind`, `unknown_position`, `unavailable`).
        reason: &'a str,
    },
    /// `herald:ack`: a `herald:publish` is stored (a retry of one already
    /// stored gets the original `id` and `seq`).
    Ack {
        /// The publisher's id for the message.
        client_id: &'a str,
        /// The channel.
        channel: &'a str,
        /// The stored envelope's id.
        id: &'a str,
        /// Its stream sequence.
        seq: u64,
        /// When it was stored.
        ts: i64,
    },
    /// `herald:nack`: a `herald:publish` (or receipt) was refused.
    Nack {
        /// The publisher's id for the message (empty when it gave none).
        client_id: &'a str,
        /// A documented code (see `herald_proto::frame::nack`).
        code: &'a str,
        /// What went wrong.
        message: &'a str,
    },
    /// A client event (or a service's ephemeral event), relayed verbatim;
    /// on presence channels Pusher adds the sender's `user_id`.
    Client {
        /// Event name.
        event: &'a str,
        /// Channel.
        channel: &'a str,
        /// The payload exactly as sent.
        data: &'a Value,
        /// The sender's user id (presence channels).
        user_id: Option<&'a str>,
    },
    /// `pusher_internal:member_added`.
    MemberAdded {
        /// The presence channel.
        channel: &'a str,
        /// The member.
        user_id: &'a str,
        /// The member's info.
        user_info: &'a Value,
    },
    /// `pusher_internal:member_removed`.
    MemberRemoved {
        /// The presence channel.
        channel: &'a str,
        /// The member.
        user_id: &'a str,
    },
    /// `pusher:cache_miss`: a cache channel has no (recent) last event.
    CacheMiss {
        /// The channel.
        channel: &'a str,
    },
    /// An event to a signed-in user, on Pusher's `#server-to-user-<id>`.
    ToUser {
        /// The user.
        user_id: &'a str,
        /// Event name.
        event: &'a str,
        /// The payload string as published.
        data: &'a str,
    },
    /// `pusher:signin_success`, echoing the signed `user_data`.
    SigninSuccess {
        /// The `user_data` string the client signed in with.
        user_data: &'a str,
    },
    /// `herald:unsubscribed`: the server unsubscribed the socket (Herald's
    /// server-side subscriptions).
    Unsubscribed {
        /// The channel.
        channel: &'a str,
    },
    /// `pusher_internal:watchlist_events`: watched users who came online
    /// (`online: true`) or went offline, as pusher-js's
    /// `pusher.user.watchlist` expects: `{"events": [{"name": "online",
    /// "user_ids": [...]}]}`.
    WatchlistEvents {
        /// Online (`true`) or offline.
        online: bool,
        /// The users.
        user_ids: &'a [String],
    },
}

/// The codes of `herald:nack`, documented in the README.
pub mod nack {
    /// The socket is not subscribed to the channel.
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    /// Publishing is not allowed here (public channel, the app's setting,
    /// or no user to attribute a receipt to).
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// The frame is malformed (missing channel, event, client_id ...).
    pub const INVALID: &str = "invalid";
    /// The payload is over the app's message size limit.
    pub const TOO_LARGE: &str = "too_large";
    /// The connection publishes faster than its rate limit.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The event could not be stored; retrying with the same `client_id`
    /// is safe.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// The `type` of a `pusher:subscription_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionErrorKind {
    /// The channel name is invalid or over the app's length limit.
    InvalidChannel,
    /// A presence subscription's `channel_data` is malformed or too large.
    InvalidChannelData,
    /// The authorization is missing or does not match (Pusher's type, which
    /// `pusher-js` reports as an authorization failure).
    AuthError,
    /// A limit of the app was reached (channels per connection, members).
    LimitReached,
    /// The server could not complete the subscription; retrying may work.
    ServerError,
    /// A Herald field of the subscribe is malformed (`resume_from`).
    InvalidRequest,
}

impl SubscriptionErrorKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionErrorKind::InvalidChannel => "InvalidChannel",
            SubscriptionErrorKind::InvalidChannelData => "InvalidChannelData",
            SubscriptionErrorKind::AuthError => "AuthError",
            SubscriptionErrorKind::LimitReached => "LimitReached",
            SubscriptionErrorKind::ServerError => "ServerError",
            SubscriptionErrorKind::InvalidRequest => "InvalidRequest",
        }
    }
}

/// `data` on the wire.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    /// Already a string (a stored payload, or JSON we rendered).
    Text(std::borrow::Cow<'a, str>),
    /// Relayed as is (errors, client events).
    Verbatim(std::borrow::Cow<'a, Value>),
}

/// The frame's fields, in wire order.
#[derive(Serialize)]
struct Wire<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<i64>,
}

impl<'a> Wire<'a> {
    fn new(event: &'a str) -> Self {
        Self {
            event,
            channel: None,
            data: None,
            user_id: None,
            id: None,
            seq: None,
            prev_seq: None,
            ts: None,
        }
    }

    fn channel(mut self, channel: &'a str) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Pusher's rule: the payload's JSON, as a string.
    fn data_json(mut self, value: Value) -> Self {
        self.data = Some(Data::Text(value.to_string().into()));
        self
    }

    fn data_text(mut self, text: &'a str) -> Self {
        self.data = Some(Data::Text(text.into()));
        self
    }
}

impl ServerFrame<'_> {
    /// The frame's event name.
    pub fn event(&self) -> &str {
        match self {
            ServerFrame::ConnectionEstablished { .. } => "pusher:connection_established",
            ServerFrame::Error { .. } => "pusher:error",
            ServerFrame::Ping => "pusher:ping",
            ServerFrame::Pong => "pusher:pong",
            ServerFrame::SubscriptionSucceeded { .. }
            | ServerFrame::PresenceSubscriptionSucceeded { .. } => {
                "pusher_internal:subscription_succeeded"
            }
            ServerFrame::SubscriptionError { .. } => "pusher:subscription_error",
            ServerFrame::Stored { event, .. }
            | ServerFrame::Client { event, .. }
            | ServerFrame::ToUser { event, .. } => event,
            ServerFrame::MemberAdded { .. } => "pusher_internal:member_added",
            ServerFrame::MemberRemoved { .. } => "pusher_internal:member_removed",
            ServerFrame::CacheMiss { .. } => "pusher:cache_miss",
            ServerFrame::SigninSuccess { .. } => "pusher:signin_success",
            ServerFrame::Unsubscribed { .. } => "herald:unsubscribed",
            ServerFrame::WatchlistEvents { .. } => "pusher_internal:watchlist_events",
            ServerFrame::ResumeFailed { .. } => "herald:resume_failed",
            ServerFrame::Ack { .. } => "herald:ack",
            ServerFrame::Nack { .. } => "herald:nack",
        }
    }

    /// The frame as the JSON text sent on the socket.
    pub fn to_json(&self) -> String {
        let event = self.event();
        let wire = match *self {
            ServerFrame::ConnectionEstablished {
                socket_id,
                activity_timeout_secs,
            } => Wire::new(event).data_json(
                json!({ "socket_id": socket_id, "activity_timeout": activity_timeout_secs }),
            ),
            ServerFrame::Error { code, message } => {
                let mut wire = Wire::new(event);
                wire.data = Some(Data::Verbatim(std::borrow::Cow::Owned(
                    json!({ "code": code, "message": message }),
                )));
                wire
            }
            ServerFrame::Ping | ServerFrame::Pong => Wire::new(event).data_json(json!({})),
            ServerFrame::SubscriptionSucceeded { channel }
            | ServerFrame::Unsubscribed { channel } => {
                Wire::new(event).channel(channel).data_json(json!({}))
            }
            ServerFrame::PresenceSubscriptionSucceeded { channel, members } => Wire::new(event)
                .channel(channel)
                .data_json(pusher_presence_data(members)),
            ServerFrame::SubscriptionError {
                channel,
                kind,
                message,
                status,
            } => Wire::new(event)
                .channel(channel)
                .data_json(json!({ "type": kind.as_str(), "error": message, "status": status })),
            ServerFrame::Stored {
                channel,
                data,
                id,
                seq,
                prev_seq,
                ts,
                user_id,
                ..
            } => {
                let mut wire = Wire::new(event).channel(channel).data_text(data);
                wire.id = Some(id);
                wire.seq = Some(seq);
                wire.prev_seq = prev_seq;
                wire.ts = Some(ts);
                wire.user_id = user_id;
                wire
            }
            ServerFrame::ResumeFailed {
                channel,
                oldest_seq,
                reason,
            } => Wire::new(event).channel(channel).data_json(
                json!({ "channel": channel, "oldest_seq": oldest_seq, "reason": reason }),
            ),
            ServerFrame::Ack {
                client_id,
                channel,
                id,
                seq,
                ts,
            } => return ack_json(client_id, channel, id, seq, ts),
            ServerFrame::Nack {
                client_id,
                code,
                message,
            } => Wire::new(event)
                .data_json(json!({ "client_id": client_id, "code": code, "message": message })),
            ServerFrame::Client {
                channel,
                data,
                user_id,
                ..
            } => {
                let mut wire = Wire::new(event).channel(channel);
                wire.data = Some(Data::Verbatim(std::borrow::Cow::Borrowed(data)));
                wire.user_id = user_id;
                wire
            }
            ServerFrame::MemberAdded {
                channel,
                user_id,
                user_info,
            } => Wire::new(event)
                .channel(channel)
                .data_json(json!({ "user_id": user_id, "user_info": user_info })),
            ServerFrame::MemberRemoved { channel, user_id } => Wire::new(event)
                .channel(channel)
                .data_json(json!({ "user_id": user_id })),
            ServerFrame::CacheMiss { channel } => Wire::new(event).channel(channel),
            ServerFrame::ToUser { user_id, data, .. } => {
                let mut wire = Wire::new(event).data_text(data);
                wire.channel = Some(format!("{SERVER_TO_USER}{user_id}").into());
                wire
            }
            ServerFrame::SigninSuccess { user_data } => {
                Wire::new(event).data_json(json!({ "user_data": user_data }))
            }
            ServerFrame::WatchlistEvents { online, user_ids } => {
                let name = if online { "online" } else { "offline" };
                Wire::new(event)
                    .data_json(json!({ "events": [{ "name": name, "user_ids": user_ids }] }))
            }
        };
        let capacity = wire.event.len()
            + wire.channel.as_ref().map_or(0, |c| c.len())
            + wire.user_id.map_or(0, str::len)
            + wire.id.map_or(0, str::len)
            + match &wire.data {
                // Text is escaped: its quotes, when it is JSON, double.
                Some(Data::Text(text)) => text.len() + text.len() / 4,
                Some(Data::Verbatim(_)) => 128,
                None => 0,
            }
            + 128;
        crate::json_string(&wire, capacity)
    }
}

/// A `herald:ack` frame, written directly: there is one per client
/// publish, and through the generic path its `data` is serialized and then
/// escaped again as a string (see [`crate::push_json_str`]). Keys in the
/// order `json!` gives them: the other frames' `data` is built that way.
fn ack_json(client_id: &str, channel: &str, id: &str, seq: u64, ts: i64) -> String {
    use crate::{push_json_int, push_json_str, push_json_str_in_str};
    let mut out = Vec::with_capacity(96 + 2 * channel.len() + client_id.len() + id.len());
    out.extend_from_slice(br#"{"event":"herald:ack","channel":"#);
    push_json_str(&mut out, channel);
    out.extend_from_slice(br#","data":"{\"channel\":"#);
    push_json_str_in_str(&mut out, channel);
    out.extend_from_slice(br#",\"client_id\":"#);
    push_json_str_in_str(&mut out, client_id);
    out.extend_from_slice(br#",\"id\":"#);
    push_json_str_in_str(&mut out, id);
    out.extend_from_slice(br#",\"seq\":"#);
    push_json_int(&mut out, seq);
    out.extend_from_slice(br#",\"ts\":"#);
    push_json_int(&mut out, ts);
    out.extend_from_slice(br#"}"}"#);
    // Only ASCII punctuation was added to UTF-8 strings.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(frame: ServerFrame<'_>) -> Value {
        serde_json::from_str(&frame.to_json()).unwrap()
    }

    #[test]
    fn server_frames_carry_data_as_a_json_string() {
        let v = parse(ServerFrame::ConnectionEstablished {
            socket_id: "1.2",
            activity_timeout_secs: 120,
        });
        assert_eq!(v["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["socket_id"], "1.2");
        assert_eq!(data["activity_timeout"], 120);

        let v = parse(ServerFrame::Stored {
            event: "e",
            channel: "c",
            data: "{\"a\":1}",
            id: "id",
            seq: 7,
            prev_seq: Some(3),
            ts: 9,
            user_id: Some("u1"),
        });
        assert_eq!(v["data"], "{\"a\":1}");
        assert_eq!((v["seq"].as_u64(), v["ts"].as_i64()), (Some(7), Some(9)));
        assert_eq!(
            (v["id"].as_str(), v["prev_seq"].as_u64()),
            (Some("id"), Some(3))
        );
        assert_eq!(v["user_id"], "u1");

        let v = parse(ServerFrame::ResumeFailed {
            channel: "c",
            oldest_seq: 4,
            reason: "retention",
        });
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            (data["oldest_seq"].as_u64(), data["reason"].as_str()),
            (Some(4), Some("retention"))
        );
        let v = parse(ServerFrame::Ack {
            client_id: "m1",
            channel: "private-c",
            id: "id",
            seq: 8,
            ts: 1,
        });
        assert_eq!(v["channel"], "private-c");
        assert_eq!(
            v["data"],
            r#"{"channel":"private-c","client_id":"m1","id":"id","seq":8,"ts":1}"#
        );

        let members = BTreeMap::from([("u1".to_owned(), json!({"n": 1}))]);
        let v = parse(ServerFrame::PresenceSubscriptionSucceeded {
            channel: "presence-x",
            members: &members,
        });
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["presence"]["count"], 1);
        assert_eq!(data["presence"]["hash"]["u1"]["n"], 1);

        let v = parse(ServerFrame::MemberRemoved {
            channel: "presence-x",
            user_id: "u1",
        });
        assert_eq!(v["data"], "{\"user_id\":\"u1\"}");
    }

    #[test]
    fn an_ack_is_written_as_its_fields_serialized_would_be() {
        #[derive(Serialize)]
        struct Wire<'a> {
            event: &'a str,
            channel: &'a str,
            data: String,
        }
        #[derive(Serialize)]
        struct AckData<'a> {
            channel: &'a str,
            client_id: &'a str,
            id: &'a str,
            seq: u64,
            ts: i64,
        }
        for s in crate::tests::awkward_strings() {
            for (channel, client_id, id) in [(&*s, "m1", "id"), ("c", &*s, "id"), ("c", "m1", &*s)]
            {
                let (seq, ts) = (s.len() as u64 * 977, 1 - s.len() as i64);
                let expected = serde_json::to_string(&Wire {
                    event: "herald:ack",
                    channel,
                    data: serde_json::to_string(&AckData {
                        channel,
                        client_id,
                        id,
                        seq,
                        ts,
                    })
                    .unwrap(),
                })
                .unwrap();
                let frame = ServerFrame::Ack {
                    client_id,
                    channel,
                    id,
                    seq,
                    ts,
                };
                assert_eq!(frame.to_json(), expected);
            }
        }
    }

    #[test]
    fn errors_and_client_events_keep_their_data_as_is() {
        let v = parse(ServerFrame::Error {
            code: Some(4009),
            message: "no",
        });
        assert_eq!(v["data"]["code"], 4009);
        let v = parse(ServerFrame::Error {
            code: None,
            message: "no",
        });
        assert!(v["data"]["code"].is_null());
        let data = json!({"typing": true});
        let v = parse(ServerFrame::Client {
            event: "client-typing",
            channel: "private-x",
            data: &data,
            user_id: Some("u1"),
        });
        assert_eq!(v["data"]["typing"], true);
        assert_eq!(v["user_id"], "u1");
        let v = parse(ServerFrame::Client {
            event: "client-typing",
            channel: "private-x",
            data: &data,
            user_id: None,
        });
        assert!(v.get("user_id").is_none());
    }

    #[test]
    fn a_cache_miss_has_no_data_and_user_events_name_the_users_channel() {
        let v = parse(ServerFrame::CacheMiss { channel: "cache-x" });
        assert!(v.get("data").is_none());
        assert_eq!(v["channel"], "cache-x");
        let v = parse(ServerFrame::ToUser {
            user_id: "u 1",
            event: "e",
            data: "d",
        });
        assert_eq!(v["channel"], "#server-to-user-u 1");
        assert_eq!(v["data"], "d");
        let v = parse(ServerFrame::SigninSuccess { user_data: "{}" });
        assert_eq!(v["data"], "{\"user_data\":\"{}\"}");
    }

    #[test]
    fn watchlist_events_carry_pushers_events_list_as_a_string() {
        let ids = ["a".to_owned(), "b".to_owned()];
        let v = parse(ServerFrame::WatchlistEvents {
            online: false,
            user_ids: &ids,
        });
        assert_eq!(v["event"], "pusher_internal:watchlist_events");
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"events": [{"name": "offline", "user_ids": ["a", "b"]}]})
        );
    }
}
