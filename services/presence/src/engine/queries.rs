//! Gateways' member queries. A query asks for a presence channel's members
//! as of at least the KV revision of the gateway's own write, so that a
//! joining socket always sees itself: it is answered at once when the state
//! has reached that revision, and otherwise held, in revision order, until
//! the watch brings the state there (or the query timeout refuses it). All
//! from the engine's one loop, so a list answered at revision X goes out
//! before any event above X.

use super::Engine;
use async_nats::Message;
use bytes::Bytes;
use herald_proto::presence::{
    MembersReply, MembersRequest, OnlineReply, OnlineRequest, MAX_WATCHLIST, MEMBERS_PAGE,
};
use herald_proto::{AppId, ChannelKind, ChannelName};
use std::collections::BTreeMap;
use std::time::Instant;

/// A member query waiting for the state to reach its `min_revision`.
struct Pending {
    app: AppId,
    channel: ChannelName,
    key: Option<String>,
    /// Page cursor (see `MembersRequest::after`).
    after: Option<String>,
    reply: async_nats::Subject,
    deadline: Instant,
}

/// Queries held until the state reaches their revision, keyed by
/// (min_revision, arrival) so they are answered in revision order.
#[derive(Default)]
pub(super) struct Waiting {
    pending: BTreeMap<(u64, u64), Pending>,
    next: u64,
}

impl Waiting {
    /// Whether no query is held.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hold a query until the state reaches `min_revision`.
    fn hold(&mut self, min_revision: u64, pending: Pending) {
        self.pending.insert((min_revision, self.next), pending);
        self.next += 1;
    }
}

impl Engine {
    /// Send a reply to a query.
    async fn reply(&self, to: async_nats::Subject, reply: &MembersReply) {
        let payload = Bytes::from(serde_json::to_vec(reply).unwrap_or_default());
        if let Err(err) = self.client.publish(to, payload).await {
            tracing::warn!(%err, "cannot answer a member query");
        }
    }

    /// Answer a query with an error.
    async fn refuse(&self, to: async_nats::Subject, error: String) {
        metrics::counter!("herald_presence_member_queries_total", "outcome" => "error")
            .increment(1);
        let reply = MembersReply {
            members: BTreeMap::new(),
            revision: self.state.revision(),
            admitted: false,
            error: Some(error),
            next: None,
        };
        self.reply(to, &reply).await;
    }

    /// A gateway's member query: answered now if the state has reached its
    /// revision, held otherwise.
    pub(super) async fn on_query(&self, waiting: &mut Waiting, app: AppId, msg: Message) {
        if msg.subject.as_str() == self.subjects.presence_online_query(&app) {
            return self.answer_online(&app, msg).await;
        }
        let Some(reply) = msg.reply else {
            tracing::debug!("member query without a reply subject ignored");
            return;
        };
        let request: MembersRequest = match serde_json::from_slice(&msg.payload) {
            Ok(request) => request,
            Err(err) => return self.refuse(reply, format!("bad request: {err}")).await,
        };
        let channel = match ChannelName::parse(&request.channel) {
            Ok(channel) if channel.kind() == ChannelKind::Presence => channel,
            Ok(_) => {
                return self
                    .refuse(reply, "not a presence channel".to_owned())
                    .await
            }
            Err(err) => return self.refuse(reply, err.to_string()).await,
        };
        let pending = Pending {
            app,
            channel,
            key: request.key,
            after: request.after,
            reply,
            deadline: Instant::now() + self.settings.query_timeout,
        };
        if request.min_revision <= self.state.revision() {
            self.answer(pending).await;
        } else {
            waiting.hold(request.min_revision, pending);
        }
    }

    /// Which of the users asked about are online (for a watchlist), as of
    /// the state's revision: later changes come as `OnlineEvent`s with a
    /// higher revision, published from this same loop after this answer.
    async fn answer_online(&self, app: &AppId, msg: Message) {
        let Some(reply) = msg.reply else { return };
        let answer = match serde_json::from_slice::<OnlineRequest>(&msg.payload) {
            Ok(request) if request.user_ids.len() <= MAX_WATCHLIST => OnlineReply {
                online: request
                    .user_ids
                    .into_iter()
                    .filter(|user| self.state.is_online(app, user))
                    .collect(),
                revision: self.state.revision(),
                error: None,
            },
            Ok(_) => OnlineReply {
                online: Vec::new(),
                revision: self.state.revision(),
                error: Some(format!("at most {MAX_WATCHLIST} users")),
            },
            Err(err) => OnlineReply {
                online: Vec::new(),
                revision: self.state.revision(),
                error: Some(format!("bad request: {err}")),
            },
        };
        let payload = serde_json::to_vec(&answer).unwrap_or_default();
        if let Err(err) = self.client.publish(reply, payload.into()).await {
            tracing::warn!(%err, "cannot answer an online query");
        }
    }

    /// Answer a query from the state as it is now.
    async fn answer(&self, pending: Pending) {
        let admitted = match &pending.key {
            Some(key) => self.state.admitted(key, &pending.app, &pending.channel),
            None => true,
        };
        let (members, next) = self.state.members_page(
            &pending.app,
            &pending.channel,
            pending.after.as_deref(),
            MEMBERS_PAGE,
        );
        let reply = MembersReply {
            members,
            revision: self.state.revision(),
            admitted,
            error: None,
            next,
        };
        metrics::counter!("herald_presence_member_queries_total", "outcome" => "answered")
            .increment(1);
        self.reply(pending.reply, &reply).await;
    }

    /// Answer every waiting query whose revision has been reached.
    pub(super) async fn answer_ready(&self, waiting: &mut Waiting) {
        let revision = self.state.revision();
        while let Some(entry) = waiting.pending.first_entry() {
            if entry.key().0 > revision {
                break;
            }
            self.answer(entry.remove()).await;
        }
    }

    /// Refuse every held query whose deadline has passed.
    pub(super) async fn expire_queries(&self, waiting: &mut Waiting) {
        let now = Instant::now();
        let expired: Vec<(u64, u64)> = waiting
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(pending) = waiting.pending.remove(&key) {
                tracing::warn!(
                    min_revision = key.0,
                    revision = self.state.revision(),
                    "member query timed out waiting for its revision"
                );
                self.refuse(
                    pending.reply,
                    format!(
                        "presence state has not reached revision {} (at {})",
                        key.0,
                        self.state.revision()
                    ),
                )
                .await;
            }
        }
    }
}
