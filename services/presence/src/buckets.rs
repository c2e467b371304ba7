//! The KV buckets this service owns besides the presence bucket, and reading
//! a whole bucket at start-up. Their names and key layouts are in
//! `herald_proto::presence` with every other presence name:
//!
//! | bucket | key | value | meaning |
//! |---|---|---|---|
//! | `<PREFIX>_PRESENCE_VIEW` | `m.<app>.<channel-hex>.<user-hex>` | [`ViewValue`] `{user_info, since}` | subscribers were told this user is a member |
//! | `<PREFIX>_PRESENCE_VIEW` | `u.<app>.<user-hex>` | [`ViewValue`] `{at, since}` | the user was online |
//! | `<PREFIX>_PRESENCE_VIEW` | `o.<app>.<channel-hex>` | [`ViewValue`] `{at, since}` | the channel was announced occupied |
//! | `<PREFIX>_LAST_SEEN` | `<app>.<user-hex>` | [`LastSeen`] | when the user's last connection went |
//!
//! The view is "what the world has been told": it is written as events are
//! emitted, so that after a restart the service can diff it against the
//! rebuilt presence state and emit only the real differences.

use anyhow::Context;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Value of a last-seen key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    /// When the user's last connection went, ms since the epoch.
    pub at: i64,
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

/// A view value: what was told, and the revision that began the fact
/// (`since`), which names the fact's webhook events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewValue {
    /// A member's `user_info` (member keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_info: Option<serde_json::Value>,
    /// When it was told, ms since the epoch (online and occupied keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// The KV revision that began the fact.
    pub since: u64,
}

impl ViewValue {
    /// The value's bytes.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The `since` of a view value, if it has one (values written before it
/// was recorded have none).
pub fn told_since(value: &[u8]) -> Option<u64> {
    serde_json::from_slice::<ViewValue>(value)
        .ok()
        .map(|v| v.since)
}
