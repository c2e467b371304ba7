//! The KV buckets this service owns, their key layouts, and reading a whole
//! bucket at start-up.
//!
//! | bucket | key | value | meaning |
//! |---|---|---|---|
//! | `<PREFIX>_PRESENCE_VIEW` | `m.<app>.<channel-hex>.<user-hex>` | `user_info` | subscribers were told this user is a member |
//! | `<PREFIX>_PRESENCE_VIEW` | `u.<app>.<user-hex>` | `{"at": ms}` | the user was online |
//! | `<PREFIX>_LAST_SEEN` | `<app>.<user-hex>` | [`LastSeen`] | when the user's last connection went |
//!
//! The view is "what the world has been told": it is written as events are
//! emitted, so that after a restart the service can diff it against the
//! rebuilt presence state and emit only the real differences.

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use herald_proto::{AppId, ChannelName, Subjects};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Name of the member-view bucket.
pub fn view_bucket(subjects: &Subjects) -> String {
    format!("{}_PRESENCE_VIEW", subjects.prefix().to_ascii_uppercase())
}

/// Name of the last-seen bucket.
pub fn last_seen_bucket(subjects: &Subjects) -> String {
    format!("{}_LAST_SEEN", subjects.prefix().to_ascii_uppercase())
}

/// Value of a last-seen key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    /// When the user's last connection went, ms since the epoch.
    pub at: i64,
}

/// A parsed key of the view bucket.
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
}

fn hex_decode(s: &str) -> Option<String> {
    String::from_utf8(hex::decode(s).ok()?).ok()
}

impl ViewKey {
    /// Render the key (user ids and channels hex-encoded: KV keys allow only
    /// `[-/_=.a-zA-Z0-9]`).
    pub fn render(&self) -> String {
        match self {
            ViewKey::Member {
                app,
                channel,
                user_id,
            } => format!(
                "m.{app}.{}.{}",
                hex::encode(channel.as_str()),
                hex::encode(user_id)
            ),
            ViewKey::Online { app, user_id } => format!("u.{app}.{}", hex::encode(user_id)),
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
            _ => None,
        }
    }
}

/// The last-seen key of a user.
pub fn last_seen_key(app: &AppId, user_id: &str) -> String {
    format!("{app}.{}", hex::encode(user_id))
}

/// Open `bucket`, creating it (history 1, file storage, entries expiring
/// after `max_age`, zero for never) when missing. An existing bucket is
/// opened as it is.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: std::time::Duration,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            max_age,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another instance created it in the meantime.
        Err(_) => js
            .get_key_value(bucket)
            .await
            .with_context(|| format!("opening KV bucket {bucket}")),
    }
}

/// How many messages a bucket's stream holds and its last sequence: taken
/// before a watch starts, it tells when the watch has delivered the initial
/// state (see [`crate::engine`]).
pub async fn bucket_extent(store: &kv::Store) -> anyhow::Result<(u64, u64)> {
    let mut stream = store.stream.clone();
    let info = stream
        .info()
        .await
        .with_context(|| format!("reading the state of bucket {}", store.name))?;
    Ok((info.state.messages, info.state.last_sequence))
}

/// Every live key of a bucket with its value (deleted and purged keys left
/// out), read with one "last value per key" watch.
pub async fn read_all(store: &kv::Store) -> anyhow::Result<HashMap<String, Bytes>> {
    let mut out = HashMap::new();
    let (messages, _) = bucket_extent(store).await?;
    if messages == 0 {
        return Ok(out);
    }
    let mut watch = store
        .watch_with_history(">")
        .await
        .with_context(|| format!("watching bucket {}", store.name))?;
    while let Some(entry) = watch.next().await {
        let entry = entry.with_context(|| format!("reading bucket {}", store.name))?;
        match entry.operation {
            kv::Operation::Put => {
                out.insert(entry.key, entry.value);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                out.remove(&entry.key);
            }
        }
        // `delta` is the number of messages still pending on the consumer:
        // zero means the initial state has been delivered.
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(view_bucket(&s), "T1_PRESENCE_VIEW");
        assert_eq!(last_seen_bucket(&s), "T1_LAST_SEEN");
        assert_eq!(
            last_seen_key(&AppId::parse("a").unwrap(), "u"),
            "a.75".to_string()
        );
    }
}
