//! The presence contract between gateways and the presence service.
//!
//! **State lives in a JetStream KV bucket** ([`Subjects::presence_bucket`]),
//! one key per fact, written by the gateway that owns it:
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `sub.<app>.<channel-hex>.<gateway>.<socket>` | [`PresenceSubscription`] | a socket is in a presence channel as a user |
//! | `conn.<app>.<user-hex>.<gateway>.<socket>` | [`UserConnection`] | a signed-in socket of a user |
//! | `gw.<gateway>` | [`GatewayHeartbeat`] | the gateway is alive (re-put every heartbeat interval) |
//! | `occ.<app>.<channel-hex>.<gateway>` | [`ChannelOccupancy`] | the gateway has at least one subscriber of the channel (any channel type) |
//!
//! An `occ.` key is written once per gateway and channel (first local
//! subscriber in, last out), not per socket, so subscribing to a channel
//! this gateway already serves costs no write.
//!
//! Channel names and user ids are hex-encoded in keys (KV keys allow only
//! `[-/_=.a-zA-Z0-9]`), socket ids have their `.` replaced by `_`.
//!
//! The presence service also owns buckets of its own, named here with the
//! rest ([`Subjects::presence_view_bucket`], [`Subjects::last_seen_bucket`],
//! [`Subjects::presence_lease_bucket`]):
//!
//! | bucket | key | meaning |
//! |---|---|---|
//! | `<PREFIX>_PRESENCE_VIEW` | [`ViewKey`] `m.<app>.<channel-hex>.<user-hex>` | subscribers were told this user is a member |
//! | `<PREFIX>_PRESENCE_VIEW` | [`ViewKey`] `u.<app>.<user-hex>` | the user was online |
//! | `<PREFIX>_PRESENCE_VIEW` | [`ViewKey`] `o.<app>.<channel-hex>` | the channel was announced occupied |
//! | `<PREFIX>_LAST_SEEN` | [`last_seen_key`] `<app>.<user-hex>` | when the user's last connection went |
//! | `<PREFIX>_PRESENCE_LEADER` | [`LEASE_KEY`] | the active presence instance's lease |
//!
//! Because the bucket keeps the last value of every key, a restarted
//! presence service rebuilds the current state by reading it, with no replay
//! of history. A gateway removes its own keys when a socket leaves or it
//! shuts down; when a gateway dies, its `gw.` key goes stale and the presence
//! service deletes its keys after the heartbeat TTL.
//!
//! **Events out**: the presence service publishes [`PresenceEvent`]s on core
//! NATS ([`Subjects::presence_events`]) for gateways to fan out as
//! `pusher_internal:member_added` / `member_removed`.
//!
//! **Queries**: gateways ask for a presence channel's member list with a
//! [`MembersRequest`] on [`Subjects::presence_members`] (request/reply). The
//! reply reflects at least KV revision `min_revision` (the gateway's own
//! `put`), so a joining socket always sees itself. Replies hold at most
//! [`MEMBERS_PAGE`] members, in user-id order; `next` asks for the rest. A
//! gateway takes the first page's revision as the list's: a change between
//! pages is also delivered as an event, which clients apply idempotently.

use crate::channel::{AppId, ChannelName};
use crate::error::{Error, ErrorKind};
use crate::subject::Subjects;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub use crate::id::MAX_USER_ID_LEN;
/// Pusher's limit on a presence `user_info`, serialized, in bytes.
pub const MAX_USER_INFO_BYTES: usize = 1024;

/// Value of a `sub.` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceSubscription {
    /// The member's user id.
    pub user_id: String,
    /// The member's `user_info` from the signed `channel_data` (any JSON).
    #[serde(default)]
    pub user_info: Value,
    /// When the socket joined, ms since the epoch.
    pub at: i64,
}

/// Value of a `conn.` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserConnection {
    /// When the socket signed in, ms since the epoch.
    pub at: i64,
}

/// Value of an `occ.` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelOccupancy {
    /// When the gateway's first local subscriber joined, ms since the epoch.
    pub at: i64,
}

/// Value of a `gw.` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayHeartbeat {
    /// When this heartbeat was written, ms since the epoch.
    pub at: i64,
    /// How often the gateway re-puts it, in ms.
    pub interval_ms: u64,
}

/// What the presence service tells gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PresenceEvent {
    /// A user's first connection joined the channel.
    MemberAdded {
        user_id: String,
        #[serde(default)]
        user_info: Value,
        /// KV revision that caused it.
        revision: u64,
    },
    /// A user's last connection left the channel.
    MemberRemoved {
        user_id: String,
        /// KV revision that caused it.
        revision: u64,
    },
}

/// Pusher's limit on the users one signed-in connection may watch.
pub const MAX_WATCHLIST: usize = 100;

/// A user came online or went offline, published by the presence service
/// on [`Subjects::presence_online`] for gateways to tell the connections
/// watching the user (`pusher_internal:watchlist_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineEvent {
    /// The user.
    pub user_id: String,
    /// Whether the user is now online.
    pub online: bool,
    /// The KV revision that caused it (ordered with [`OnlineReply::revision`]).
    pub revision: u64,
}

/// A gateway asking which of some users are online, on
/// [`Subjects::presence_online_query`] (request/reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineRequest {
    /// The users asked about (at most [`MAX_WATCHLIST`]).
    pub user_ids: Vec<String>,
}

/// The presence service's answer to an [`OnlineRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineReply {
    /// The users asked about who are online.
    pub online: Vec<String>,
    /// The KV revision the answer reflects: [`OnlineEvent`]s at or below it
    /// are already in it.
    pub revision: u64,
    /// Set when the request could not be answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Most members in one [`MembersReply`]: keeps each reply far below NATS's
/// default 1 MB payload limit even with 1 KB `user_info`s. Larger channels
/// are read page by page with [`MembersRequest::after`].
pub const MEMBERS_PAGE: usize = 500;

/// A gateway asking for a presence channel's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersRequest {
    /// The presence channel.
    pub channel: String,
    /// Answer only once the service has applied this KV revision.
    pub min_revision: u64,
    /// The joining subscription's key, so the reply says whether it was
    /// admitted under the member limit.
    #[serde(default)]
    pub key: Option<String>,
    /// Page cursor: only members whose user id sorts after this one.
    #[serde(default)]
    pub after: Option<String>,
}

/// The presence service's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersReply {
    /// `user_id` → `user_info` of every member.
    pub members: BTreeMap<String, Value>,
    /// The KV revision this list reflects: events with a higher revision
    /// come after it.
    pub revision: u64,
    /// Whether the subscription named in the request counts as a member
    /// (false when the channel was full when it joined).
    pub admitted: bool,
    /// Set when the request could not be answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When more members follow: the `after` cursor of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A parsed presence KV key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PresenceKey {
    /// `sub.<app>.<channel-hex>.<gateway>.<socket>`
    Subscription {
        app: AppId,
        channel: ChannelName,
        gateway: String,
        socket_id: String,
    },
    /// `conn.<app>.<user-hex>.<gateway>.<socket>`
    Connection {
        app: AppId,
        user_id: String,
        gateway: String,
        socket_id: String,
    },
    /// `gw.<gateway>`
    Gateway { gateway: String },
    /// `occ.<app>.<channel-hex>.<gateway>`: the gateway has subscribers of
    /// the channel.
    Occupancy {
        app: AppId,
        channel: ChannelName,
        gateway: String,
    },
}

fn hex_encode(s: &str) -> String {
    hex::encode(s.as_bytes())
}

fn hex_decode(s: &str) -> Option<String> {
    String::from_utf8(hex::decode(s).ok()?).ok()
}

fn socket_token(socket_id: &str) -> String {
    socket_id.replace('.', "_")
}

/// The first token of a gateway's heartbeat key (`gw.<gateway>`).
const GATEWAY_TOKEN: &str = "gw";

/// A KV watch filter matching every gateway's heartbeat key, and nothing else.
pub const HEARTBEAT_KEYS: &str = "gw.*";

/// Whether a gateway id can be used in keys and subjects.
pub fn is_valid_gateway_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl PresenceKey {
    /// Render the key.
    pub fn render(&self) -> String {
        match self {
            PresenceKey::Subscription {
                app,
                channel,
                gateway,
                socket_id,
            } => format!(
                "sub.{app}.{}.{gateway}.{}",
                hex_encode(channel.as_str()),
                socket_token(socket_id)
            ),
            PresenceKey::Connection {
                app,
                user_id,
                gateway,
                socket_id,
            } => format!(
                "conn.{app}.{}.{gateway}.{}",
                hex_encode(user_id),
                socket_token(socket_id)
            ),
            PresenceKey::Gateway { gateway } => format!("{GATEWAY_TOKEN}.{gateway}"),
            PresenceKey::Occupancy {
                app,
                channel,
                gateway,
            } => format!("occ.{app}.{}.{gateway}", hex_encode(channel.as_str())),
        }
    }

    /// Parse a key written by [`PresenceKey::render`].
    pub fn parse(key: &str) -> Result<Self, Error> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidSubject,
                format!("not a presence key: {key}"),
            )
        };
        let parts: Vec<&str> = key.split('.').collect();
        let socket = |s: &str| {
            let (a, b) = s.split_once('_').ok_or_else(bad)?;
            Ok::<_, Error>(format!("{a}.{b}"))
        };
        match parts.as_slice() {
            ["sub", app, channel, gateway, sock] if is_valid_gateway_id(gateway) => {
                Ok(PresenceKey::Subscription {
                    app: AppId::parse(app)?,
                    channel: ChannelName::parse(&hex_decode(channel).ok_or_else(bad)?)?,
                    gateway: (*gateway).to_owned(),
                    socket_id: socket(sock)?,
                })
            }
            ["conn", app, user, gateway, sock] if is_valid_gateway_id(gateway) => {
                Ok(PresenceKey::Connection {
                    app: AppId::parse(app)?,
                    user_id: hex_decode(user).ok_or_else(bad)?,
                    gateway: (*gateway).to_owned(),
                    socket_id: socket(sock)?,
                })
            }
            ["occ", app, channel, gateway] if is_valid_gateway_id(gateway) => {
                Ok(PresenceKey::Occupancy {
                    app: AppId::parse(app)?,
                    channel: ChannelName::parse(&hex_decode(channel).ok_or_else(bad)?)?,
                    gateway: (*gateway).to_owned(),
                })
            }
            [GATEWAY_TOKEN, gateway] if is_valid_gateway_id(gateway) => Ok(PresenceKey::Gateway {
                gateway: (*gateway).to_owned(),
            }),
            _ => Err(bad()),
        }
    }

    /// The gateway whose heartbeat `key` is, if it is a heartbeat key: a
    /// cheaper test than [`PresenceKey::parse`] for code that looks at
    /// every key but only cares about heartbeats.
    pub fn heartbeat_gateway(key: &str) -> Option<&str> {
        key.strip_prefix(GATEWAY_TOKEN)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|gateway| is_valid_gateway_id(gateway))
    }

    /// The gateway that owns this key.
    pub fn gateway_of(&self) -> &str {
        match self {
            PresenceKey::Subscription { gateway, .. }
            | PresenceKey::Connection { gateway, .. }
            | PresenceKey::Gateway { gateway }
            | PresenceKey::Occupancy { gateway, .. } => gateway,
        }
    }
}

/// A key of the presence service's view bucket
/// ([`Subjects::presence_view_bucket`]): what subscribers have been told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ViewKey {
    /// Subscribers of `channel` were told `user_id` is a member.
    Member {
        app: AppId,
        channel: ChannelName,
        user_id: String,
    },
    /// `user_id` was online.
    Online { app: AppId, user_id: String },
    /// `channel` was announced occupied (some gateway had a subscriber).
    Occupied { app: AppId, channel: ChannelName },
}

impl ViewKey {
    /// Render the key (user ids and channels hex-encoded, as in every
    /// presence key).
    pub fn render(&self) -> String {
        match self {
            ViewKey::Member {
                app,
                channel,
                user_id,
            } => format!(
                "m.{app}.{}.{}",
                hex_encode(channel.as_str()),
                hex_encode(user_id)
            ),
            ViewKey::Online { app, user_id } => format!("u.{app}.{}", hex_encode(user_id)),
            ViewKey::Occupied { app, channel } => {
                format!("o.{app}.{}", hex_encode(channel.as_str()))
            }
        }
    }

    /// Parse a rendered key; `None` for anything else.
    pub fn parse(key: &str) -> Option<Self> {
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["m", app, channel, user] => Some(ViewKey::Member {
                app: AppId::parse(app).ok()?,
                channel: ChannelName::parse(&hex_decode(channel)?).ok()?,
                user_id: hex_decode(user)?,
            }),
            ["u", app, user] => Some(ViewKey::Online {
                app: AppId::parse(app).ok()?,
                user_id: hex_decode(user)?,
            }),
            ["o", app, channel] => Some(ViewKey::Occupied {
                app: AppId::parse(app).ok()?,
                channel: ChannelName::parse(&hex_decode(channel)?).ok()?,
            }),
            _ => None,
        }
    }
}

/// A user's key in the last-seen bucket ([`Subjects::last_seen_bucket`]).
pub fn last_seen_key(app: &AppId, user_id: &str) -> String {
    format!("{app}.{}", hex_encode(user_id))
}

/// The one key of the lease bucket ([`Subjects::presence_lease_bucket`]):
/// its value is the active instance's id.
pub const LEASE_KEY: &str = "active";

impl Subjects {
    /// The presence KV bucket.
    pub fn presence_bucket(&self) -> String {
        format!("{}_PRESENCE", self.prefix().to_ascii_uppercase())
    }

    /// The stream subject holding one key of the presence bucket (what a
    /// purge of that key's messages filters on).
    pub fn presence_key_subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.presence_bucket())
    }

    /// The presence service's view bucket: the members and online users
    /// subscribers were told about ([`ViewKey`]).
    pub fn presence_view_bucket(&self) -> String {
        format!("{}_PRESENCE_VIEW", self.prefix().to_ascii_uppercase())
    }

    /// The bucket of when each user's last connection went ([`last_seen_key`]).
    pub fn last_seen_bucket(&self) -> String {
        format!("{}_LAST_SEEN", self.prefix().to_ascii_uppercase())
    }

    /// The bucket holding the active presence instance's lease ([`LEASE_KEY`]).
    pub fn presence_lease_bucket(&self) -> String {
        format!("{}_PRESENCE_LEADER", self.prefix().to_ascii_uppercase())
    }

    /// Where the presence service publishes one presence channel's events.
    pub fn presence_events(&self, app: &AppId, channel: &ChannelName) -> String {
        format!(
            "{}.presence.events.{}.{}",
            self.prefix(),
            app,
            channel.to_token()
        )
    }

    /// Where the presence service publishes an app's [`OnlineEvent`]s.
    pub fn presence_online(&self, app: &AppId) -> String {
        format!("{}.presence.online.{}", self.prefix(), app)
    }

    /// Every app's [`OnlineEvent`]s (what a gateway subscribes to).
    pub fn presence_online_filter(&self) -> String {
        format!("{}.presence.online.*", self.prefix())
    }

    /// Parse a [`Subjects::presence_online`] subject back into its app.
    pub fn parse_presence_online(&self, subject: &str) -> Option<AppId> {
        let app = subject
            .strip_prefix(self.prefix())?
            .strip_prefix(".presence.online.")?;
        AppId::parse(app).ok()
    }

    /// Request/reply subject for [`OnlineRequest`]s of one app.
    pub fn presence_online_query(&self, app: &AppId) -> String {
        format!("{}.presence.onlinequery.{}", self.prefix(), app)
    }

    /// Request/reply subject for member lists of one app.
    pub fn presence_members(&self, app: &AppId) -> String {
        format!("{}.presence.members.{}", self.prefix(), app)
    }
}

/// Pusher's `presence` object for `pusher_internal:subscription_succeeded`:
/// `{"presence": {"ids": [...], "hash": {id: info}, "count": n}}`.
pub fn pusher_presence_data(members: &BTreeMap<String, Value>) -> Value {
    serde_json::json!({
        "presence": {
            "ids": members.keys().collect::<Vec<_>>(),
            "hash": members,
            "count": members.len(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_keys_round_trip() {
        let keys = [
            PresenceKey::Subscription {
                app: AppId::parse("app-id").unwrap(),
                channel: ChannelName::parse("presence-room.1;x@y,z").unwrap(),
                gateway: "gw-1".into(),
                socket_id: "123.456".into(),
            },
            PresenceKey::Connection {
                app: AppId::parse("app-id").unwrap(),
                user_id: "user@example.com with spaces ☃".into(),
                gateway: "gw-1".into(),
                socket_id: "1.2".into(),
            },
            PresenceKey::Gateway {
                gateway: "abc-123".into(),
            },
            PresenceKey::Occupancy {
                app: AppId::parse("app-id").unwrap(),
                channel: ChannelName::parse("private-a.b;c").unwrap(),
                gateway: "gw-2".into(),
            },
        ];
        for key in keys {
            let rendered = key.render();
            assert!(
                rendered
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)),
                "{rendered} must be a valid KV key"
            );
            assert_eq!(PresenceKey::parse(&rendered).unwrap(), key);
        }
    }

    #[test]
    fn foreign_keys_are_rejected() {
        for bad in [
            "",
            "sub.a",
            "gw.a.b",
            "sub.a.zz.g.1_2",
            "conn.a.61.g.12",
            "x.y",
        ] {
            assert!(PresenceKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn heartbeat_keys_are_told_apart_cheaply() {
        let key = PresenceKey::Gateway {
            gateway: "gw-1".into(),
        }
        .render();
        assert_eq!(PresenceKey::heartbeat_gateway(&key), Some("gw-1"));
        // The watch filter is the heartbeat key with a wildcard for the id.
        assert_eq!(HEARTBEAT_KEYS.replace('*', "gw-1"), key);
        for other in ["gw.a.b", "gw.", "gwx.a", "sub.a.61.g.1_2", "x.gw.a"] {
            assert_eq!(PresenceKey::heartbeat_gateway(other), None, "{other}");
        }
    }

    #[test]
    fn view_keys_round_trip_and_are_valid_kv_keys() {
        let keys = [
            ViewKey::Member {
                app: AppId::parse("app-id").unwrap(),
                channel: ChannelName::parse("presence-a.b;c").unwrap(),
                user_id: "user with spaces ☃".into(),
            },
            ViewKey::Online {
                app: AppId::parse("app-id").unwrap(),
                user_id: "u.1".into(),
            },
            ViewKey::Occupied {
                app: AppId::parse("app-id").unwrap(),
                channel: ChannelName::parse("cache-a.b").unwrap(),
            },
        ];
        for key in keys {
            let rendered = key.render();
            assert!(rendered
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)));
            assert_eq!(ViewKey::parse(&rendered), Some(key));
        }
        assert_eq!(ViewKey::parse("m.a.zz.00"), None);
        assert_eq!(ViewKey::parse("x.a.61"), None);
    }

    #[test]
    fn bucket_names_follow_the_prefix() {
        let s = Subjects::new("t1").unwrap();
        assert_eq!(s.presence_bucket(), "T1_PRESENCE");
        assert_eq!(s.presence_view_bucket(), "T1_PRESENCE_VIEW");
        assert_eq!(s.last_seen_bucket(), "T1_LAST_SEEN");
        assert_eq!(s.presence_lease_bucket(), "T1_PRESENCE_LEADER");
        assert_eq!(s.presence_key_subject("gw.a"), "$KV.T1_PRESENCE.gw.a");
        assert_eq!(
            last_seen_key(&AppId::parse("a").unwrap(), "u"),
            "a.75".to_string()
        );
    }

    #[test]
    fn pusher_presence_data_has_ids_hash_and_count() {
        let mut members = BTreeMap::new();
        members.insert("1".to_string(), serde_json::json!({"name": "a"}));
        members.insert("2".to_string(), Value::Null);
        let data = pusher_presence_data(&members);
        assert_eq!(data["presence"]["count"], 2);
        assert_eq!(data["presence"]["ids"], serde_json::json!(["1", "2"]));
        assert_eq!(data["presence"]["hash"]["1"]["name"], "a");
    }

    #[test]
    fn events_serialize_with_a_type_tag() {
        let e = PresenceEvent::MemberRemoved {
            user_id: "u".into(),
            revision: 3,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "member_removed");
        assert_eq!(serde_json::from_value::<PresenceEvent>(v).unwrap(), e);
    }
}
