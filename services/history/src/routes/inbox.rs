//! `GET /v1/apps/{app}/users/{user_id}/inbox?limit=&before=&min_seq=`: the
//! channels a user is a member of (rooms, direct messages, channels the app
//! manages), latest activity first, each with the last message's preview,
//! the user's unread count and the member count. Keyset-paginated by
//! (activity, channel): pass the previous page's `next` as `before`.

use super::{positive, wait_for};
use crate::error::ApiError;
use crate::model::UNREAD_SQL;
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use herald_proto::UserId;
use herald_server::auth::Caller;
use serde::{Deserialize, Serialize};

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
pub const MAX_LIMIT: i64 = 200;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/apps/{app}/users/{user_id}/inbox", get(inbox))
}

/// Query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboxQuery {
    /// Page size, 1-200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The previous page's `next` (`<activity ms>:<channel>`): entries after it in the inbox order.
    #[param(
        max_length = 183,
        pattern = r"^[0-9]{1,18}:[A-Za-z0-9_\-=@,.;]{1,164}$"
    )]
    before: Option<String>,
    /// Wait (bounded) until the read model has applied this stream sequence (one a write answered).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9223372036854775807_i64)]
    min_seq: Option<String>,
}

/// The last message of a channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Preview {
    seq: i64,
    id: String,
    author: Option<String>,
    /// The first 200 characters of its data.
    data: String,
    ts: i64,
}

/// One channel of the inbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InboxEntry {
    channel: String,
    /// Messages since the user's read cursor (their own and deleted ones excluded).
    unread: i64,
    member_count: i64,
    /// When anything was last posted (ms), 0 for none.
    last_activity: i64,
    /// `null` when the channel has no message (left).
    last_message: Option<Preview>,
}

/// A page of the inbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Inbox {
    channels: Vec<InboxEntry>,
    /// Pass as `before` for the next page; `null` on the last page.
    next: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    channel: String,
    unread: i64,
    member_count: i64,
    last_activity: i64,
    last_seq: Option<i64>,
    last_id: Option<String>,
    last_author: Option<String>,
    last_data: Option<String>,
    last_ts: Option<i64>,
}

/// A cursor is "<activity>:<channel>".
fn parse_cursor(raw: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::BadRequest("before must be a `next` value of a previous page".into());
    let (activity, channel) = raw.split_once(':').ok_or_else(bad)?;
    let activity = activity.parse::<i64>().map_err(|_| bad())?;
    herald_proto::ChannelName::parse(channel).map_err(|_| bad())?;
    Ok((activity, channel.to_owned()))
}

/// A user's inbox.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{user_id}/inbox",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("user_id" = String, Path, description = "User id, 1-128 characters", min_length = 1, max_length = 128),
        InboxQuery,
    ),
    responses(
        (status = 200, description = "The user's channels, latest activity first", body = Inbox),
        (status = 400, description = "Invalid parameter"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 403, description = "A session token reads its own user's inbox only"),
        (status = 503, description = "min_seq not reached within the read wait"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id))]
pub(crate) async fn inbox(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, user_id)): Path<(String, String)>,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<Inbox>, ApiError> {
    let Query(query) = query?;
    let user =
        UserId::parse(&user_id).map_err(|e| ApiError::BadRequest(format!("user_id: {e}")))?;
    if caller.user().is_some_and(|u| u != user.as_str()) {
        return Err(ApiError::Forbidden(
            "a session token reads its own user's inbox only".into(),
        ));
    }
    let limit = positive("limit", query.limit.as_deref())?.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be at most {MAX_LIMIT}"
        )));
    }
    let (before_activity, before_channel) = match query.before.as_deref() {
        Some(raw) => {
            let (a, c) = parse_cursor(raw)?;
            (Some(a), Some(c))
        }
        None => (None, None),
    };
    wait_for(&state, positive("min_seq", query.min_seq.as_deref())?).await?;
    let sql = format!(
        "SELECT m.channel, {UNREAD_SQL} AS unread,
                COALESCE(s.member_count, 0) AS member_count,
                COALESCE(s.last_activity, 0) AS last_activity,
                s.last_seq, s.last_id, s.last_author, s.last_data, s.last_ts
         FROM channel_members m
         LEFT JOIN channel_stats s ON s.app_id = m.app_id AND s.channel = m.channel
         LEFT JOIN read_cursors c
           ON c.app_id = m.app_id AND c.channel = m.channel AND c.user_id = m.user_id
         WHERE m.app_id = $1 AND m.user_id = $2
           AND ($3::int8 IS NULL OR (COALESCE(s.last_activity, 0), m.channel) < ($3, $4::text))
         ORDER BY COALESCE(s.last_activity, 0) DESC, m.channel DESC
         LIMIT $5"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(caller.app().id.as_str())
        .bind(user.as_str())
        .bind(before_activity)
        .bind(&before_channel)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    let more = rows.len() as i64 > limit;
    let channels: Vec<InboxEntry> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| InboxEntry {
            last_message: match (r.last_seq, r.last_id, r.last_ts) {
                (Some(seq), Some(id), Some(ts)) => Some(Preview {
                    seq,
                    id,
                    author: r.last_author,
                    data: r.last_data.unwrap_or_default(),
                    ts,
                }),
                _ => None,
            },
            channel: r.channel,
            unread: r.unread,
            member_count: r.member_count,
            last_activity: r.last_activity,
        })
        .collect();
    let next = more
        .then(|| {
            channels
                .last()
                .map(|e| format!("{}:{}", e.last_activity, e.channel))
        })
        .flatten();
    Ok(Json(Inbox { channels, next }))
}
