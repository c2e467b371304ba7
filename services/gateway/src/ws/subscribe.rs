//! Subscribing and unsubscribing: public, private, private-encrypted and
//! presence channels, Pusher's `#server-to-user-<id>` channel, and
//! subscriptions made on the server's authority (Herald extension).

use super::connection::{Connection, PresenceMembership};
use crate::hub::{stored_frame, Join, Ready};
use axum::extract::ws::Utf8Bytes;
use herald_proto::channel::server_to_user;
use herald_proto::presence::MAX_USER_INFO_BYTES;
use herald_proto::pusher::{self, ClientFrame};
use herald_proto::SubscriptionErrorKind::{
    AuthError, InvalidChannel, InvalidChannelData, InvalidRequest, LimitReached, ServerError,
};
use herald_proto::{ChannelKind, ChannelName, ServerFrame, SubscriptionErrorKind, UserId};
use herald_stream::replay::{self, RangeReader};
use serde_json::Value;

/// Who vouches for a subscription.
enum Authority<'a> {
    /// The client, with an `auth` signature (and presence `channel_data`).
    Client {
        auth: &'a str,
        channel_data: Option<&'a str>,
    },
    /// The client, with a channel token from the auth service (`token`,
    /// Herald extension) instead of `auth`.
    Token(&'a str),
    /// The app server, through the HTTP API.
    Server,
}

/// A subscription refused: Pusher's `{type, error, status}`.
#[derive(Debug)]
struct Refusal {
    kind: SubscriptionErrorKind,
    message: String,
    status: u16,
}

impl Refusal {
    fn new(kind: SubscriptionErrorKind, message: impl Into<String>, status: u16) -> Self {
        Self {
            kind,
            message: message.into(),
            status,
        }
    }
}

/// A presence member as described by signed `channel_data`.
#[derive(Debug)]
struct Member {
    user_id: UserId,
    user_info: Value,
}

/// `resume_from`: the last sequence the client has of the channel.
fn parse_resume_from(value: Option<&Value>) -> Result<Option<u64>, Refusal> {
    let bad = || {
        Refusal::new(
            InvalidRequest,
            "resume_from must be a non-negative integer (a seq the client has)",
            400,
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s.parse::<u64>().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn parse_member(channel_data: &str) -> Result<Member, Refusal> {
    let bad = |m: &str| Refusal::new(InvalidChannelData, m, 400);
    let value: Value =
        serde_json::from_str(channel_data).map_err(|_| bad("channel_data is not JSON"))?;
    let user_id = match value.get("user_id") {
        Some(Value::String(s)) => UserId::parse(s),
        Some(Value::Number(n)) => UserId::parse(&n.to_string()),
        _ => return Err(bad("channel_data needs a user_id (string)")),
    }
    .map_err(|e| bad(&format!("user_id: {e}")))?;
    let user_info = value.get("user_info").cloned().unwrap_or(Value::Null);
    if user_info.to_string().len() > MAX_USER_INFO_BYTES {
        return Err(Refusal::new(
            InvalidChannelData,
            format!("user_info is larger than {MAX_USER_INFO_BYTES} bytes"),
            413,
        ));
    }
    Ok(Member { user_id, user_info })
}

impl Connection {
    pub(super) async fn on_subscribe(&mut self, frame: &ClientFrame) {
        let data = frame.data_object().unwrap_or_default();
        let Some(name) = data.get("channel").and_then(|c| c.as_str()) else {
            return self
                .send(ServerFrame::Error {
                    code: None,
                    message: "pusher:subscribe needs data.channel, a string",
                })
                .await;
        };
        if let Some(user) = server_to_user(name) {
            return self.subscribe_user_channel(name, user).await;
        }
        let channel = match ChannelName::parse(name) {
            Ok(c) if c.as_str().len() <= self.app.limits.max_channel_name_len => c,
            Ok(_) => {
                let message = format!(
                    "Channel name is longer than this app's limit of {} bytes",
                    self.app.limits.max_channel_name_len
                );
                return self
                    .refuse(name, Refusal::new(InvalidChannel, message, 400))
                    .await;
            }
            Err(err) => {
                return self
                    .refuse(name, Refusal::new(InvalidChannel, err.message(), 400))
                    .await
            }
        };
        let resume = match parse_resume_from(data.get("resume_from")) {
            Ok(resume) => resume,
            Err(refusal) => return self.refuse(name, refusal).await,
        };
        let authority = match data.get("token").and_then(|t| t.as_str()) {
            Some(token) => Authority::Token(token),
            None => Authority::Client {
                auth: data
                    .get("auth")
                    .and_then(|a| a.as_str())
                    .unwrap_or_default(),
                channel_data: data.get("channel_data").and_then(|a| a.as_str()),
            },
        };
        if let Err(refusal) = self.subscribe(&channel, authority, resume).await {
            self.refuse(name, refusal).await;
        }
    }

    /// Subscribe on the app server's behalf (`POST .../subscriptions`).
    pub(super) async fn subscribe_on_server_authority(&mut self, channel: ChannelName) {
        if let Err(refusal) = self.subscribe(&channel, Authority::Server, None).await {
            self.refuse(channel.as_str(), refusal).await;
        }
    }

    async fn refuse(&self, channel: &str, refusal: Refusal) {
        self.send(ServerFrame::SubscriptionError {
            channel,
            kind: refusal.kind,
            message: &refusal.message,
            status: refusal.status,
        })
        .await;
    }

    /// `pusher-js` subscribes to `#server-to-user-<id>` after signing in;
    /// user events are routed by the hub's user index, so this only checks
    /// that the socket is that user.
    async fn subscribe_user_channel(&mut self, name: &str, user: &str) {
        match &self.user {
            Some(signed_in) if signed_in.id == user => {
                self.send(ServerFrame::SubscriptionSucceeded { channel: name })
                    .await;
            }
            _ => {
                let refusal = Refusal::new(
                    AuthError,
                    "Sign in as this user before subscribing to its channel",
                    403,
                );
                self.refuse(name, refusal).await;
            }
        }
    }

    /// A connection signed in with a session token joins presence channels
    /// as that user only: `channel_data` naming someone else is refused,
    /// even when the app signed it.
    fn check_member_is_token_user(&self, member: Option<&Member>) -> Result<(), Refusal> {
        match (&self.user, member) {
            (Some(user), Some(member)) if user.by_token && user.id != member.user_id => {
                Err(Refusal::new(
                    AuthError,
                    "channel_data's user_id is not the user of this connection's session token",
                    403,
                ))
            }
            _ => Ok(()),
        }
    }

    /// Check a channel token: signed by the auth service for this app, this
    /// channel and this socket, not expired. Returns the presence member it
    /// names.
    async fn check_channel_token(
        &self,
        token: &str,
        channel: &ChannelName,
    ) -> Result<Option<Member>, Refusal> {
        let refuse = |m: String| Refusal::new(AuthError, m, 401);
        let Some(verifier) = &self.state.verifier else {
            return Err(refuse("This server does not accept channel tokens".into()));
        };
        let claims = match verifier.verify_channel(token, self.app.id.as_str()).await {
            Ok(claims) => claims,
            Err(herald_server::token::VerifyError::Jwks(err)) => {
                tracing::error!(%err, "cannot fetch the auth service's keys");
                return Err(Refusal::new(
                    ServerError,
                    "Channel tokens cannot be checked right now; retry",
                    503,
                ));
            }
            Err(err) => return Err(refuse(format!("Invalid channel token: {err}"))),
        };
        if claims.channel != channel.as_str() {
            return Err(refuse("The channel token is for another channel".into()));
        }
        if claims.socket_id != *self.handle.socket_id {
            return Err(refuse("The channel token is for another connection".into()));
        }
        if channel.kind() != ChannelKind::Presence {
            return Ok(None);
        }
        let user_id = UserId::parse(&claims.sub)
            .map_err(|_| refuse("Invalid channel token: bad user id".into()))?;
        let member = Member {
            user_id,
            user_info: claims.user_info.unwrap_or(Value::Null),
        };
        self.check_member_is_token_user(Some(&member))?;
        Ok(Some(member))
    }

    /// [`Self::subscribe_now`], on the heap. Its future (authorization, the
    /// presence join, a replay of up to `HERALD_RESUME_MAX_EVENTS`) is
    /// ~10 KB; inline, every connection's task would be that big for its
    /// whole life for the moments it subscribes (idle connections cost
    /// ~20 KB each instead of ~11 KB; BENCHMARKS.md, 2026-12-03).
    async fn subscribe(
        &mut self,
        channel: &ChannelName,
        authority: Authority<'_>,
        resume: Option<u64>,
    ) -> Result<(), Refusal> {
        Box::pin(self.subscribe_now(channel, authority, resume)).await
    }

    async fn subscribe_now(
        &mut self,
        channel: &ChannelName,
        authority: Authority<'_>,
        resume: Option<u64>,
    ) -> Result<(), Refusal> {
        if self.channels.contains_key(channel) {
            // Pusher answers a repeated subscribe with success again.
            if channel.kind() != ChannelKind::Presence {
                self.send(ServerFrame::SubscriptionSucceeded {
                    channel: channel.as_str(),
                })
                .await;
            }
            return Ok(());
        }
        if self.channels.len() >= self.app.limits.max_channels_per_connection {
            return Err(Refusal::new(
                LimitReached,
                format!(
                    "Connection is already subscribed to {} channels, this app's limit",
                    self.app.limits.max_channels_per_connection
                ),
                403,
            ));
        }
        let kind = channel.kind();
        let member = match (&authority, kind) {
            (_, ChannelKind::Public) => None,
            (Authority::Client { auth, channel_data }, _) => {
                let channel_data = if kind == ChannelKind::Presence {
                    *channel_data
                } else {
                    None
                };
                if kind == ChannelKind::Presence && channel_data.is_none() {
                    return Err(Refusal::new(
                        AuthError,
                        "Presence channels need channel_data",
                        401,
                    ));
                }
                let ok = pusher::verify_channel_auth(
                    &self.app.key,
                    &self.app.secret,
                    &self.handle.socket_id,
                    channel.as_str(),
                    channel_data,
                    auth,
                );
                if !ok {
                    let message = if auth.is_empty() {
                        "Missing auth signature"
                    } else {
                        "Invalid signature: the auth string does not match this socket and channel"
                    };
                    return Err(Refusal::new(AuthError, message, 401));
                }
                let member = channel_data.map(parse_member).transpose()?;
                self.check_member_is_token_user(member.as_ref())?;
                member
            }
            (Authority::Token(token), _) => self.check_channel_token(token, channel).await?,
            (Authority::Server, ChannelKind::Presence) => {
                let Some(user) = &self.user else {
                    return Err(Refusal::new(
                        AuthError,
                        "Only signed-in connections join presence channels this way",
                        403,
                    ));
                };
                Some(Member {
                    user_id: user.id.clone(),
                    user_info: user
                        .user_data
                        .get("user_info")
                        .cloned()
                        .unwrap_or(Value::Null),
                })
            }
            (Authority::Server, _) => None,
        };
        match member {
            None => self.join_plain(channel, resume).await,
            Some(member) => self.join_presence(channel, member, resume).await,
        }
    }

    async fn join_plain(
        &mut self,
        channel: &ChannelName,
        resume: Option<u64>,
    ) -> Result<(), Refusal> {
        let succeeded: Utf8Bytes = ServerFrame::SubscriptionSucceeded {
            channel: channel.as_str(),
        }
        .to_json()
        .into();
        // A plain subscribe goes live at once; a cache channel or a resume
        // holds live frames until what comes before them has been sent.
        let hold = channel.is_cache() || resume.is_some();
        let join = Join {
            conn: self.handle.clone(),
            presence_user: None,
            first: (!hold).then(|| succeeded.clone()),
            hold,
            record_occupancy: records_occupancy(&self.app, channel),
        };
        self.state
            .hub
            .subscribe(&self.app.id, channel, join)
            .await
            .map_err(|err| {
                tracing::error!(%err, %channel, "live subscription failed");
                Refusal::new(ServerError, "Subscription failed; retry", 503)
            })?;
        if hold {
            // Live first (held), then read the stream: nothing published in
            // between is missed, and nothing is sent twice.
            let seq = self.catch_up(channel, resume, succeeded).await;
            let ready = Ready {
                revision: 0,
                seq,
                frames: Vec::new(),
            };
            self.state
                .hub
                .ready(&self.app.id, channel, self.handle.id, ready);
        }
        self.channels.insert(channel.clone(), None);
        Ok(())
    }

    /// Send a held subscriber what comes before its live frames: `first`
    /// (subscription succeeded), then the events after `resume` (or
    /// `herald:resume_failed`), or for a cache channel without `resume` its
    /// last event or `pusher:cache_miss`. Returns the stream sequence the
    /// subscriber is now up to date with: held live events at or below it
    /// are not sent again.
    async fn catch_up(&self, channel: &ChannelName, resume: Option<u64>, first: Utf8Bytes) -> u64 {
        self.send_frame(first).await;
        match resume {
            Some(after) => self.replay(channel, after).await,
            None if channel.is_cache() => {
                let (seq, cached) = self.cached_event(channel).await;
                self.send_frame(cached).await;
                seq
            }
            None => 0,
        }
    }

    /// Replay the stored events of `channel` after `after`, in order, or
    /// say `herald:resume_failed` when that cannot be done completely.
    async fn replay(&self, channel: &ChannelName, after: u64) -> u64 {
        let state = &self.state;
        let failed = |oldest_seq: u64, reason: &str| -> Utf8Bytes {
            metrics::counter!("herald_gateway_resumes_failed_total", "reason" => reason.to_owned())
                .increment(1);
            ServerFrame::ResumeFailed {
                channel: channel.as_str(),
                oldest_seq,
                reason,
            }
            .to_json()
            .into()
        };
        let position =
            match replay::channel_position(&state.js, &state.subjects, &self.app.id, channel).await
            {
                Ok(position) => position,
                Err(err) => {
                    tracing::warn!(%err, %channel, "cannot read a channel's position to resume");
                    self.send_frame(failed(0, "unavailable")).await;
                    return 0;
                }
            };
        let per_channel_limit = state.config.stream.max_msgs_per_channel > 0;
        let max = state.config.resume_max_events;
        let until = position.last_seq;
        let mut reader = match RangeReader::open(
            &state.js,
            &state.subjects,
            &self.app.id,
            channel,
            after,
            until,
        )
        .await
        {
            Ok(reader) => reader,
            Err(err) => {
                tracing::warn!(%err, %channel, "cannot open a replay");
                self.send_frame(failed(position.first_seq, "unavailable"))
                    .await;
                return 0;
            }
        };
        let first = match reader.next().await {
            Ok(first) => first,
            Err(err) => {
                tracing::warn!(%err, %channel, "replay failed");
                self.send_frame(failed(position.first_seq, "unavailable"))
                    .await;
                return 0;
            }
        };
        let pending = match &first {
            Some(_) => reader.pending().saturating_add(1),
            None => 0,
        };
        if let Err(refusal) =
            replay::check_resume(&position, after, pending, max, per_channel_limit)
        {
            self.send_frame(failed(position.first_seq, refusal.as_str()))
                .await;
            return 0;
        }
        let mut upto = after.max(until);
        let mut next = first;
        let mut replayed = 0u64;
        while let Some(event) = next {
            self.send_frame(stored_frame(channel, &event)).await;
            replayed += 1;
            upto = upto.max(event.seq);
            next = match reader.next().await {
                Ok(next) => next,
                Err(err) => {
                    // Part of the replay is out; the rest cannot be read.
                    // Say so, and let live events through from where it stopped.
                    tracing::warn!(%err, %channel, "replay stopped early");
                    self.send_frame(failed(position.first_seq, "unavailable"))
                        .await;
                    return event.seq;
                }
            };
        }
        metrics::counter!("herald_gateway_replayed_events_total").increment(replayed);
        upto
    }

    /// For a cache channel: the frame of its last stored event (if younger
    /// than `HERALD_CACHE_MAX_AGE_SECS`, Pusher's 30 minutes by default) or
    /// `pusher:cache_miss`, with the stream sequence of that last event (0 if
    /// none).
    async fn cached_event(&self, channel: &ChannelName) -> (u64, Utf8Bytes) {
        let state = &self.state;
        let miss = || -> Utf8Bytes {
            self.cache_miss_webhook(channel);
            ServerFrame::CacheMiss {
                channel: channel.as_str(),
            }
            .to_json()
            .into()
        };
        let max_age_ms = state.config.cache_max_age.as_millis() as i64;
        match herald_stream::last_event(&state.js, &state.subjects, &self.app.id, channel).await {
            Ok(Some((seq, env))) if herald_proto::now_ms() - env.at <= max_age_ms => {
                let frame = ServerFrame::Stored {
                    event: &env.event,
                    channel: channel.as_str(),
                    data: &env.data,
                    id: &env.id,
                    seq,
                    prev_seq: None,
                    ts: env.at,
                    user_id: env.author.as_deref(),
                };
                (seq, frame.to_json().into())
            }
            Ok(Some((seq, _))) => (seq, miss()),
            Ok(None) => (0, miss()),
            Err(err) => {
                // Reading the cache is best effort: the subscription works.
                tracing::warn!(%err, %channel, "could not read a cache channel's last event");
                (0, miss())
            }
        }
    }

    /// Join a presence channel: register as a pending subscriber, announce
    /// the membership in the presence KV, ask the presence service for the
    /// member list as of that write, then go live.
    async fn join_presence(
        &mut self,
        channel: &ChannelName,
        member: Member,
        resume: Option<u64>,
    ) -> Result<(), Refusal> {
        let user_id = member.user_id.clone();
        let unavailable = |err: &dyn std::fmt::Display| {
            tracing::error!(%err, %channel, "presence join failed");
            Refusal::new(
                ServerError,
                "Presence is temporarily unavailable; retry",
                503,
            )
        };
        let join = Join {
            conn: self.handle.clone(),
            presence_user: Some(user_id.clone()),
            first: None,
            hold: false,
            record_occupancy: records_occupancy(&self.app, channel),
        };
        self.state
            .hub
            .subscribe(&self.app.id, channel, join)
            .await
            .map_err(|e| unavailable(&e))?;
        let presence = &self.state.presence;
        let announced = presence
            .announce_subscription(
                &self.app.id,
                channel,
                &self.handle.socket_id,
                member.user_id.as_str(),
                member.user_info,
            )
            .await;
        let (key, revision) = match announced {
            Ok(ok) => ok,
            Err(err) => {
                return Err(self
                    .undo_presence_join(channel, None, unavailable(&err))
                    .await)
            }
        };
        let reply = match presence
            .members(&self.app.id, channel, revision, Some(&key))
            .await
        {
            Ok(reply) => reply,
            Err(err) => {
                let refusal = unavailable(&err);
                return Err(self.undo_presence_join(channel, Some(&key), refusal).await);
            }
        };
        if !reply.admitted {
            let full = Refusal::new(
                LimitReached,
                format!(
                    "Presence channel is full ({} members, this app's limit)",
                    self.app.limits.max_presence_members
                ),
                403,
            );
            return Err(self.undo_presence_join(channel, Some(&key), full).await);
        }
        self.state
            .hub
            .member_list(&self.app.id, channel, reply.revision, &reply.members);
        let first = ServerFrame::PresenceSubscriptionSucceeded {
            channel: channel.as_str(),
            members: &reply.members,
        };
        let seq = self.catch_up(channel, resume, first.to_json().into()).await;
        let ready = Ready {
            revision: reply.revision,
            seq,
            frames: Vec::new(),
        };
        self.state
            .hub
            .ready(&self.app.id, channel, self.handle.id, ready);
        self.channels
            .insert(channel.clone(), Some(PresenceMembership { user_id, key }));
        Ok(())
    }

    /// Undo a presence join that failed part way: leave the hub and, once
    /// the membership was announced, withdraw it. Returns `refusal`.
    async fn undo_presence_join(
        &self,
        channel: &ChannelName,
        announced: Option<&str>,
        refusal: Refusal,
    ) -> Refusal {
        self.state
            .hub
            .unsubscribe(&self.app.id, channel, self.handle.id);
        if let Some(key) = announced {
            self.state.presence.forget(key).await;
        }
        refusal
    }

    pub(super) async fn on_unsubscribe(&mut self, frame: &ClientFrame) {
        let data = frame.data_object().unwrap_or_default();
        if let Some(channel) = data
            .get("channel")
            .and_then(|c| c.as_str())
            .and_then(|c| ChannelName::parse(c).ok())
        {
            self.leave(&channel).await;
        }
    }

    /// Leave a channel; returns whether the socket was in it. The work
    /// ([`Self::leave_now`]) is on the heap, like [`Self::subscribe`]'s:
    /// the presence leave's future would otherwise be part of every
    /// connection's task.
    pub(super) async fn leave(&mut self, channel: &ChannelName) -> bool {
        Box::pin(self.leave_now(channel)).await
    }

    async fn leave_now(&mut self, channel: &ChannelName) -> bool {
        let Some(membership) = self.channels.remove(channel) else {
            return false;
        };
        self.state
            .hub
            .unsubscribe(&self.app.id, channel, self.handle.id);
        if let Some(presence) = membership {
            self.state.presence.forget(&presence.key).await;
        }
        true
    }

    /// The user id this socket is a member as, on a presence channel.
    pub(super) fn member_id(&self, channel: &ChannelName) -> Option<UserId> {
        self.channels
            .get(channel)
            .and_then(|m| m.as_ref())
            .map(|m| m.user_id.clone())
    }
}

/// Whether this gateway records the channel's occupancy in the presence
/// bucket: only when one of the app's webhooks wants its `channel_occupied`
/// or `channel_vacated` (occupancy feeds nothing else), so apps without
/// them pay nothing on the subscribe path. (A presence channel's
/// occupancy also follows its members.)
fn records_occupancy(app: &herald_config::AppConfig, channel: &ChannelName) -> bool {
    use herald_proto::webhook::WebhookKind;
    app.wants_webhook(WebhookKind::ChannelOccupied, Some(channel.as_str()))
        || app.wants_webhook(WebhookKind::ChannelVacated, Some(channel.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_needs_a_reasonable_user_id_and_small_user_info() {
        assert_eq!(
            parse_member(r#"{"user_id":"u1","user_info":{"n":1}}"#)
                .unwrap()
                .user_id,
            "u1"
        );
        assert_eq!(parse_member(r#"{"user_id":42}"#).unwrap().user_id, "42");
        for bad in ["nope", "{}", r#"{"user_id":""}"#, r#"{"user_id":true}"#] {
            assert_eq!(parse_member(bad).err().unwrap().status, 400, "{bad}");
        }
        let long = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(129));
        assert_eq!(parse_member(&long).err().unwrap().status, 400);
        let big = format!(r#"{{"user_id":"u","user_info":"{}"}}"#, "x".repeat(1100));
        assert_eq!(parse_member(&big).err().unwrap().status, 413);
    }
}
