//! The gateway's side of the presence contract (`herald_proto::presence`):
//! it announces presence memberships and signed-in connections as keys in
//! the presence KV bucket, keeps its heartbeat key fresh, and asks the
//! presence service for member lists.
//!
//! A gateway that was silent longer than the presence TTL (stalled, or cut
//! off from NATS) while its sockets stayed connected has had its keys
//! expired by the presence service, and its members were announced as gone.
//! The heartbeat notices (its conditional update finds the key changed) and
//! announces every key it holds again.
//!
//! A key whose delete failed (NATS unreachable, JetStream not ready) would
//! keep its member online for as long as this gateway lives: it is deleted
//! again at every heartbeat until the delete succeeds.

use async_nats::jetstream::kv;
use herald_proto::presence::{
    ChannelOccupancy, GatewayHeartbeat, MembersReply, MembersRequest, OnlineReply, OnlineRequest,
    PresenceKey, PresenceSubscription, UserConnection, HEARTBEAT_KEYS,
};
use herald_proto::{AppId, ChannelName, Subjects};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a gateway waits for the presence service's member list.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the presence client: what failed, with the NATS or decoding
/// error as the source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PresenceError {
    /// Writing one of this gateway's keys to the presence bucket failed.
    #[error("presence KV: cannot put {key}: {source}")]
    Put {
        key: String,
        #[source]
        source: kv::PutError,
    },
    /// The member query could not be sent or got no answer.
    #[error("presence service: {0}")]
    Request(#[source] async_nats::RequestError),
    /// The presence service did not answer within [`MEMBERS_TIMEOUT`].
    #[error("presence service: no answer in time")]
    Timeout,
    /// The answer is not a [`MembersReply`].
    #[error("presence service: bad reply: {0}")]
    BadReply(#[source] serde_json::Error),
    /// The presence service answered with an error (its own message).
    #[error("presence service: {0}")]
    Refused(String),
}

pub(crate) struct PresenceClient {
    nats: async_nats::Client,
    subjects: Subjects,
    kv: kv::Store,
    gateway_id: String,
    heartbeat: Duration,
    /// `gw.<id>` key → last heartbeat time (ms), from the KV watch.
    peers: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// The keys this gateway announced and has not forgotten, with their
    /// values, to announce again after an expiry.
    owned: std::sync::Mutex<std::collections::HashMap<String, bytes::Bytes>>,
    /// Keys forgotten whose delete failed, deleted again at every heartbeat.
    undeleted: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl PresenceClient {
    pub fn new(
        nats: async_nats::Client,
        subjects: Subjects,
        kv: kv::Store,
        gateway_id: String,
        heartbeat: Duration,
    ) -> Self {
        Self {
            nats,
            subjects,
            kv,
            gateway_id,
            heartbeat,
            peers: Default::default(),
            owned: Default::default(),
            undeleted: Default::default(),
        }
    }

    /// This gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Announce that a socket joined a presence channel; returns the key and
    /// the KV revision of the write.
    pub async fn announce_subscription(
        &self,
        app: &AppId,
        channel: &ChannelName,
        socket_id: &str,
        user_id: &str,
        user_info: serde_json::Value,
    ) -> Result<(String, u64), PresenceError> {
        let key = PresenceKey::Subscription {
            app: app.clone(),
            channel: channel.clone(),
            gateway: self.gateway_id.clone(),
            socket_id: socket_id.to_owned(),
        }
        .render();
        let value = PresenceSubscription {
            user_id: user_id.to_owned(),
            user_info,
            at: herald_proto::now_ms(),
        };
        let revision = self
            .announce(&key, serde_json::to_vec(&value).unwrap_or_default().into())
            .await?;
        Ok((key, revision))
    }

    /// Announce a signed-in connection of a user; returns the key.
    pub async fn announce_connection(
        &self,
        app: &AppId,
        user_id: &str,
        socket_id: &str,
    ) -> Result<String, PresenceError> {
        let key = PresenceKey::Connection {
            app: app.clone(),
            user_id: user_id.to_owned(),
            gateway: self.gateway_id.clone(),
            socket_id: socket_id.to_owned(),
        }
        .render();
        let value = UserConnection {
            at: herald_proto::now_ms(),
        };
        self.announce(&key, serde_json::to_vec(&value).unwrap_or_default().into())
            .await?;
        Ok(key)
    }

    /// The `occ.` key of a channel on this gateway.
    pub fn occupancy_key(&self, app: &AppId, channel: &ChannelName) -> String {
        PresenceKey::Occupancy {
            app: app.clone(),
            channel: channel.clone(),
            gateway: self.gateway_id.clone(),
        }
        .render()
    }

    /// Announce that this gateway has subscribers of a channel (see
    /// [`crate::occupancy`]); returns the key.
    pub async fn announce_occupancy(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<String, PresenceError> {
        let key = self.occupancy_key(app, channel);
        let value = ChannelOccupancy {
            at: herald_proto::now_ms(),
        };
        self.announce(&key, serde_json::to_vec(&value).unwrap_or_default().into())
            .await?;
        Ok(key)
    }

    /// Put one of this gateway's keys and remember it.
    async fn announce(&self, key: &str, value: bytes::Bytes) -> Result<u64, PresenceError> {
        // An `occ.` key is put again after being forgotten: a delete of it
        // still waiting for a retry must not undo this put.
        self.undeleted
            .lock()
            .expect("undeleted keys lock")
            .remove(key);
        let revision =
            self.kv
                .put(key, value.clone())
                .await
                .map_err(|source| PresenceError::Put {
                    key: key.to_owned(),
                    source,
                })?;
        self.owned
            .lock()
            .expect("owned keys lock")
            .insert(key.to_owned(), value);
        Ok(revision)
    }

    /// Put every key this gateway holds again (after the presence service
    /// expired them). A key forgotten meanwhile is deleted again: `forget`
    /// drops it from `owned` before deleting it, so either its delete comes
    /// after our put, or we see it gone here.
    async fn reannounce(&self) {
        let owned: Vec<(String, bytes::Bytes)> = self
            .owned
            .lock()
            .expect("owned keys lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tracing::warn!(
            keys = owned.len(),
            "this gateway's presence keys were expired (it was silent for longer than the \
             presence TTL): announcing them again"
        );
        metrics::counter!("herald_gateway_presence_reannounced_total").increment(1);
        for (key, value) in owned {
            if let Err(err) = self.kv.put(&key, value).await {
                tracing::warn!(%err, key, "could not announce a presence key again");
                continue;
            }
            let forgotten = !self
                .owned
                .lock()
                .expect("owned keys lock")
                .contains_key(&key);
            if forgotten {
                self.forget(&key).await;
            }
        }
    }

    /// Remove a key this gateway wrote. The presence service expires the
    /// keys of a gateway that stops heartbeating, but a live gateway's stray
    /// key would keep its member online for ever: a failed delete is
    /// retried at every heartbeat until it succeeds.
    pub async fn forget(&self, key: &str) {
        self.owned.lock().expect("owned keys lock").remove(key);
        if let Err(err) = self.kv.delete(key).await {
            tracing::warn!(%err, key, "could not remove presence key; retrying at the next heartbeat");
            metrics::counter!("herald_gateway_presence_delete_failures_total").increment(1);
            self.undeleted
                .lock()
                .expect("undeleted keys lock")
                .insert(key.to_owned());
        }
    }

    /// Delete again the keys whose delete failed; those that fail again
    /// wait for the next heartbeat.
    async fn retry_deletes(&self) {
        let keys: Vec<String> = self
            .undeleted
            .lock()
            .expect("undeleted keys lock")
            .iter()
            .cloned()
            .collect();
        for key in keys {
            match self.kv.delete(&key).await {
                Ok(_) => {
                    self.undeleted
                        .lock()
                        .expect("undeleted keys lock")
                        .remove(&key);
                    tracing::info!(key, "presence key removed on retry");
                }
                Err(err) => {
                    tracing::warn!(%err, key, "could not remove presence key; retrying later");
                    return;
                }
            }
        }
    }

    /// Ask the presence service which of `user_ids` are online (a
    /// watchlist's first answer).
    pub async fn online(
        &self,
        app: &AppId,
        user_ids: &[String],
    ) -> Result<OnlineReply, PresenceError> {
        let request = OnlineRequest {
            user_ids: user_ids.to_vec(),
        };
        let payload = serde_json::to_vec(&request).unwrap_or_default();
        let reply = tokio::time::timeout(
            MEMBERS_TIMEOUT,
            self.nats
                .request(self.subjects.presence_online_query(app), payload.into()),
        )
        .await
        .map_err(|_| PresenceError::Timeout)?
        .map_err(PresenceError::Request)?;
        let reply: OnlineReply =
            serde_json::from_slice(&reply.payload).map_err(PresenceError::BadReply)?;
        if let Some(error) = reply.error {
            return Err(PresenceError::Refused(error));
        }
        Ok(reply)
    }

    /// Ask the presence service for a channel's members, as of at least
    /// `min_revision`, reading every page. The list's revision is the first
    /// page's: changes between pages also arrive as member events.
    pub async fn members(
        &self,
        app: &AppId,
        channel: &ChannelName,
        min_revision: u64,
        key: Option<&str>,
    ) -> Result<MembersReply, PresenceError> {
        let mut first = self
            .members_page(app, channel, min_revision, key, None)
            .await?;
        let mut next = first.next.take();
        while let Some(after) = next {
            let mut page = self
                .members_page(app, channel, first.revision, None, Some(after))
                .await?;
            first.members.append(&mut page.members);
            next = page.next;
        }
        Ok(first)
    }

    async fn members_page(
        &self,
        app: &AppId,
        channel: &ChannelName,
        min_revision: u64,
        key: Option<&str>,
        after: Option<String>,
    ) -> Result<MembersReply, PresenceError> {
        let request = MembersRequest {
            channel: channel.to_string(),
            min_revision,
            key: key.map(str::to_owned),
            after,
        };
        let payload = serde_json::to_vec(&request).unwrap_or_default();
        let reply = tokio::time::timeout(
            MEMBERS_TIMEOUT,
            self.nats
                .request(self.subjects.presence_members(app), payload.into()),
        )
        .await
        .map_err(|_| PresenceError::Timeout)?
        .map_err(PresenceError::Request)?;
        let reply: MembersReply =
            serde_json::from_slice(&reply.payload).map_err(PresenceError::BadReply)?;
        if let Some(error) = reply.error {
            return Err(PresenceError::Refused(error));
        }
        Ok(reply)
    }

    /// Keep `gw.<id>` fresh until shutdown, then remove it.
    pub async fn run_heartbeat(&self, shutdown: CancellationToken) {
        let key = PresenceKey::Gateway {
            gateway: self.gateway_id.clone(),
        }
        .render();
        let mut tick = tokio::time::interval(self.heartbeat);
        // The revision of our last beat: each beat is conditional on it, so a
        // beat that finds the key changed or deleted tells us we were expired.
        let mut last: Option<u64> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let beat = GatewayHeartbeat {
                at: herald_proto::now_ms(),
                interval_ms: self.heartbeat.as_millis() as u64,
            };
            let value: bytes::Bytes = serde_json::to_vec(&beat).unwrap_or_default().into();
            let result = match last {
                None => self
                    .kv
                    .put(&key, value.clone())
                    .await
                    .map_err(|e| e.to_string()),
                Some(revision) => match self.kv.update(&key, value.clone(), revision).await {
                    Ok(revision) => Ok(revision),
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        // Expired: beat first (so the sweep spares what we
                        // put next), then everything else.
                        let beat = self.kv.put(&key, value).await.map_err(|e| e.to_string());
                        if beat.is_ok() {
                            self.reannounce().await;
                        }
                        beat
                    }
                    Err(err) => Err(err.to_string()),
                },
            };
            match result {
                Ok(revision) => {
                    last = Some(revision);
                    self.retry_deletes().await;
                }
                Err(err) => tracing::warn!(%err, "gateway heartbeat failed"),
            }
        }
        self.forget(&key).await;
    }

    /// Follow every gateway's heartbeat key, so that scatter-gather
    /// requests know how many answers to expect.
    pub async fn run_peer_watch(&self, shutdown: CancellationToken) {
        use futures::StreamExt;
        loop {
            let watch = self.kv.watch_with_history(HEARTBEAT_KEYS).await;
            let mut watch = match watch {
                Ok(w) => w,
                Err(err) => {
                    tracing::warn!(%err, "cannot watch gateway heartbeats; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    entry = watch.next() => entry,
                };
                let Some(Ok(entry)) = entry else { break };
                let mut peers = self.peers.lock().expect("peers lock");
                match entry.operation {
                    kv::Operation::Put => {
                        if let Ok(beat) = serde_json::from_slice::<GatewayHeartbeat>(&entry.value) {
                            peers.insert(entry.key.clone(), beat.at);
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        peers.remove(&entry.key);
                    }
                }
            }
        }
    }

    /// How many gateways (this one included) heartbeated within `ttl`.
    pub fn live_gateways(&self, ttl: Duration) -> usize {
        let now = herald_proto::now_ms();
        let peers = self.peers.lock().expect("peers lock");
        peers
            .values()
            .filter(|at| now - **at <= ttl.as_millis() as i64)
            .count()
            .max(1)
    }
}
