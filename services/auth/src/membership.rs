//! Channel membership (rooms, DMs, channels the app manages) in Postgres,
//! and the durable `member_joined` / `member_left` events that record every
//! change on the channel's own stream subject.
//!
//! # Order of writes, and what a partial failure leaves
//!
//! A change is written in a Postgres transaction, its event is published
//! and its JetStream ack awaited **while the transaction is still open**,
//! and only then is the transaction committed:
//!
//! * the publish fails (NATS down, no ack): the transaction rolls back,
//!   nothing changed anywhere, the client gets a 503 and may retry;
//! * the publish is acked but the commit fails: the event is stored while
//!   the row is unchanged. A retry makes the same change again and
//!   publishes the same event with the same `Nats-Msg-Id` (derived from
//!   the membership's random `membership_id`), which JetStream stores once
//!   within its duplicate window. Readers must anyway treat joins and
//!   leaves as set operations (a second join of a member changes nothing).
//!
//! So a committed membership change always has its event stored. A change
//! that changes nothing (joining twice, leaving a channel one is not a
//! member of) publishes nothing. The open transaction holds the row's lock
//! during the publish, so two changes of one (channel, user) are ordered
//! the same way in Postgres and on the stream.
//!
//! The price: each change holds a pooled connection for one JetStream
//! round trip, and while NATS is unreachable for up to the JetStream
//! request timeout (5 s) before it answers 503.

use crate::error::ApiError;
use crate::AppState;
use herald_proto::envelope::{derived_msg_id, event_names, Membership};
use herald_proto::token::room_of_channel;
use herald_proto::{AppId, ChannelName, Envelope, EventKind};
use herald_stream::PublishOptions;
use sqlx::PgConnection;

/// Add `user` to `channel`; returns the new membership's id, or `None` if
/// the user already was a member.
pub(crate) async fn insert(
    tx: &mut PgConnection,
    app: &AppId,
    channel: &ChannelName,
    user: &str,
) -> Result<Option<String>, ApiError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let row: Option<(String,)> = sqlx::query_as(
        "INSERT INTO channel_members (app_id, channel, user_id, membership_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (app_id, channel, user_id) DO NOTHING
         RETURNING membership_id",
    )
    .bind(app.as_str())
    .bind(channel.as_str())
    .bind(user)
    .bind(&id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// Remove `user` from `channel`; returns the ended membership's id, or
/// `None` if the user was not a member.
pub(crate) async fn delete(
    tx: &mut PgConnection,
    app: &AppId,
    channel: &ChannelName,
    user: &str,
) -> Result<Option<String>, ApiError> {
    let row: Option<(String,)> = sqlx::query_as(
        "DELETE FROM channel_members WHERE app_id = $1 AND channel = $2 AND user_id = $3
         RETURNING membership_id",
    )
    .bind(app.as_str())
    .bind(channel.as_str())
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// Whether `user` is a member of `channel` (read from the primary, so a
/// user who has just joined is a member at once).
pub(crate) async fn is_member(
    state: &AppState,
    app: &str,
    channel: &str,
    user: &str,
) -> Result<bool, ApiError> {
    let (found,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM channel_members
                        WHERE app_id = $1 AND channel = $2 AND user_id = $3)",
    )
    .bind(app)
    .bind(channel)
    .bind(user)
    .fetch_one(&state.db)
    .await?;
    Ok(found)
}

/// Which way membership changed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    Joined,
    Left,
}

/// Store `envelope` on its channel's subject and wait for JetStream's ack;
/// any failure is logged and answered 503.
pub(crate) async fn store(
    state: &AppState,
    app: &AppId,
    channel: &ChannelName,
    envelope: &Envelope,
    msg_id: &str,
) -> Result<(), ApiError> {
    let unavailable = |err: String| {
        tracing::warn!(
            app = %app, channel = %channel, kind = envelope.kind.as_str(), error = %err,
            "could not store an event; the change is not made"
        );
        ApiError::Unavailable(
            "the event store did not accept the change, so nothing was changed; retry".into(),
        )
    };
    let ack = herald_stream::publish_envelope(
        &state.js,
        &state.subjects,
        app,
        channel,
        envelope,
        msg_id,
        &PublishOptions::default(),
    )
    .await
    .map_err(|e| unavailable(e.to_string()))?;
    ack.await.map_err(|e| unavailable(e.to_string()))?;
    Ok(())
}

/// Publish the event of one membership change (`membership_id` from
/// [`insert`] or [`delete`]).
pub(crate) async fn publish(
    state: &AppState,
    app: &AppId,
    channel: &ChannelName,
    user: &str,
    change: Change,
    membership_id: &str,
) -> Result<(), ApiError> {
    let (kind, event) = match change {
        Change::Joined => (EventKind::MemberJoined, event_names::MEMBER_JOINED),
        Change::Left => (EventKind::MemberLeft, event_names::MEMBER_LEFT),
    };
    let data = Membership {
        user_id: user.to_owned(),
        room_id: room_of_channel(channel.as_str()).map(str::to_owned),
    }
    .to_data();
    let envelope = Envelope::new(
        kind,
        app.as_str(),
        channel.as_str(),
        event,
        data,
        Some(user.to_owned()),
    );
    let msg_id = derived_msg_id(&[
        kind.as_str(),
        app.as_str(),
        channel.as_str(),
        user,
        membership_id,
    ]);
    store(state, app, channel, &envelope, &msg_id).await
}

/// Add `user` to `channel` in its own transaction, publishing the event if
/// this changed anything; returns whether it did.
pub(crate) async fn join(
    state: &AppState,
    app: &AppId,
    channel: &ChannelName,
    user: &str,
) -> Result<bool, ApiError> {
    let mut tx = state.db.begin().await?;
    let Some(id) = insert(&mut tx, app, channel, user).await? else {
        return Ok(false);
    };
    publish(state, app, channel, user, Change::Joined, &id).await?;
    tx.commit().await?;
    Ok(true)
}

/// Remove `user` from `channel` in its own transaction, publishing the
/// event if this changed anything; returns whether it did.
pub(crate) async fn leave(
    state: &AppState,
    app: &AppId,
    channel: &ChannelName,
    user: &str,
) -> Result<bool, ApiError> {
    let mut tx = state.db.begin().await?;
    let Some(id) = delete(&mut tx, app, channel, user).await? else {
        return Ok(false);
    };
    publish(state, app, channel, user, Change::Left, &id).await?;
    tx.commit().await?;
    Ok(true)
}

/// One member as listed.
#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Member {
    user_id: String,
    /// RFC 3339.
    joined_at: String,
}

/// A page of a channel's members, by user id.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct MembersPage {
    members: Vec<Member>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

/// Members of `channel` with a user id greater than `after`, at most `limit`.
pub(crate) async fn list(
    state: &AppState,
    app: &str,
    channel: &str,
    after: &str,
    limit: i64,
) -> Result<MembersPage, ApiError> {
    let mut members: Vec<Member> = sqlx::query_as(
        r#"SELECT user_id,
                  to_char(joined_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS joined_at
           FROM channel_members
           WHERE app_id = $1 AND channel = $2 AND user_id > $3
           ORDER BY user_id LIMIT $4"#,
    )
    .bind(app)
    .bind(channel)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let next = if members.len() as i64 > limit {
        members.truncate(limit as usize);
        members.last().map(|m| m.user_id.clone())
    } else {
        None
    };
    Ok(MembersPage { members, next })
}
