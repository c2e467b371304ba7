//! Reading a channel's history:
//!
//! * `GET /v1/apps/{app}/channels/{channel}/messages?limit=&before=&after=&around=&min_seq=`:
//!   keyset-paginated by stream sequence, newest first (`before`, or
//!   nothing), oldest first (`after`), or the page centred on a seq
//!   (`around`). Deleted messages stay as tombstones (no data,
//!   `deleted: true`), so paging has no hole.
//! * `GET /v1/apps/{app}/channels/{channel}/messages/{id}`: one message.

use super::{may_read, positive, wait_for};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use herald_proto::ChannelName;
use herald_server::auth::Caller;
use serde::{Deserialize, Serialize};

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
pub const MAX_LIMIT: i64 = 100;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/channels/{channel}/messages/{id}", get(one))
        .route("/v1/apps/{app}/channels/{channel}/messages", get(list))
}

/// Raw query parameters, validated by hand for clear messages.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Page size, 1-100 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Events with a sequence below this, newest first (the previous page's `next_before`).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9223372036854775807_i64)]
    before: Option<String>,
    /// Events with a sequence above this, oldest first (the previous page's `next_after`; 0 for the first page).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    after: Option<String>,
    /// The page around this sequence: up to half of `limit` before it, it, and the rest after; oldest first. (`after` wins over `around`, which wins over `before`.)
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9223372036854775807_i64)]
    around: Option<String>,
    /// Wait (bounded) until the read model has applied this stream sequence (one a write answered).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9223372036854775807_i64)]
    min_seq: Option<String>,
}

/// One stored event.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Item {
    pub seq: i64,
    pub id: String,
    pub event: String,
    /// Empty for a deleted message.
    pub data: String,
    pub ts: i64,
    pub author: Option<String>,
    /// When its author last edited it (ms), if ever.
    pub edited_at: Option<i64>,
    /// A tombstone: the message was deleted.
    pub deleted: bool,
}

/// The columns of an [`Item`].
pub(crate) const ITEM_COLUMNS: &str =
    "seq, id, event, data, ts, author, edited_at, deleted_at IS NOT NULL AS deleted";

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Page {
    messages: Vec<Item>,
    /// Pass as `before` for the next older page; `null` when there is none.
    next_before: Option<i64>,
    /// Pass as `after` for the next newer page; `null` when there is none.
    next_after: Option<i64>,
}

pub(crate) fn parse_channel(channel: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(channel).map_err(|e| ApiError::BadRequest(format!("Channel: {e}")))
}

/// A channel's history, one page.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/channels/{channel}/messages",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of events: newest first, or oldest first with `after` or `around`", body = Page),
        (status = 400, description = "Invalid channel name or paging parameter"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 403, description = "The token's user may not read this channel"),
        (status = 503, description = "min_seq not reached within the read wait"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel)): Path<(String, String)>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query?;
    let channel = parse_channel(&channel)?;
    let app = caller.app().clone();
    let limit = positive("limit", query.limit.as_deref())?.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be at most {MAX_LIMIT}"
        )));
    }
    let before = positive("before", query.before.as_deref())?;
    // `after=0` starts at the beginning.
    let after = match query.after.as_deref() {
        Some("0") => Some(0),
        other => positive("after", other)?,
    };
    let around = positive("around", query.around.as_deref())?;
    // Several given: `after` wins, then `around`, then `before` (so that
    // every combination the document allows has one meaning).
    may_read(&state, &caller, &channel).await?;
    wait_for(&state, positive("min_seq", query.min_seq.as_deref())?).await?;
    let (app, channel) = (app.id.as_str(), channel.as_str());
    let messages = match (after, around) {
        (Some(after), _) => older_or_newer(&state, app, channel, after, limit, true).await?,
        (None, Some(seq)) => {
            // Up to half before the seq (newest first, then turned), the
            // rest from the seq on.
            let half = limit / 2;
            let mut page = older_or_newer(&state, app, channel, seq, half, false).await?;
            page.reverse();
            let rest = limit - page.len() as i64;
            page.extend(older_or_newer(&state, app, channel, seq - 1, rest, true).await?);
            page
        }
        (None, None) => {
            let before = before.unwrap_or(i64::MAX);
            older_or_newer(&state, app, channel, before, limit, false).await?
        }
    };
    // The neighbours of the page tell whether more exists either way.
    let (low, high) = match (messages.first(), messages.last()) {
        (Some(a), Some(b)) => (a.seq.min(b.seq), a.seq.max(b.seq)),
        _ => (0, 0),
    };
    let exists = |query: &'static str, seq: i64| {
        let state = &state;
        async move {
            sqlx::query_scalar::<_, i32>(query)
                .bind(app)
                .bind(channel)
                .bind(seq)
                .fetch_optional(&state.db)
                .await
                .map(|r| r.is_some())
        }
    };
    let (next_before, next_after) = if messages.is_empty() {
        (None, None)
    } else {
        let older = exists(
            "SELECT 1 FROM messages WHERE app_id = $1 AND channel = $2 AND seq < $3 LIMIT 1",
            low,
        )
        .await?;
        let newer = exists(
            "SELECT 1 FROM messages WHERE app_id = $1 AND channel = $2 AND seq > $3 LIMIT 1",
            high,
        )
        .await?;
        (older.then_some(low), newer.then_some(high))
    };
    Ok(Json(Page {
        messages,
        next_before,
        next_after,
    }))
}

/// `limit` messages below `from` (newest first), or above it (oldest
/// first) when `newer`.
async fn older_or_newer(
    state: &AppState,
    app: &str,
    channel: &str,
    from: i64,
    limit: i64,
    newer: bool,
) -> Result<Vec<Item>, ApiError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let query = if newer {
        format!(
            "SELECT {ITEM_COLUMNS} FROM messages WHERE app_id = $1 AND channel = $2 AND seq > $3
             ORDER BY seq ASC LIMIT $4"
        )
    } else {
        format!(
            "SELECT {ITEM_COLUMNS} FROM messages WHERE app_id = $1 AND channel = $2 AND seq < $3
             ORDER BY seq DESC LIMIT $4"
        )
    };
    Ok(sqlx::query_as(&query)
        .bind(app)
        .bind(channel)
        .bind(from)
        .bind(limit)
        .fetch_all(&state.db)
        .await?)
}

/// `?min_seq=` of single reads.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct MinSeqQuery {
    /// Wait (bounded) until the read model has applied this stream sequence (one a write answered).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9223372036854775807_i64)]
    pub min_seq: Option<String>,
}

/// One message by id.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/channels/{channel}/messages/{id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ("id" = String, Path, description = "Message id", min_length = 1, max_length = 64),
        MinSeqQuery,
    ),
    responses(
        (status = 200, description = "The message", body = Item),
        (status = 400, description = "Invalid channel name or parameter (min_seq past the stream's last seq included)"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 403, description = "The token's user may not read this channel"),
        (status = 404, description = "No such message in this channel"),
        (status = 503, description = "min_seq not reached within the read wait"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel, id)): Path<(String, String, String)>,
    query: Result<Query<MinSeqQuery>, QueryRejection>,
) -> Result<Json<Item>, ApiError> {
    let Query(query) = query?;
    let channel = parse_channel(&channel)?;
    may_read(&state, &caller, &channel).await?;
    wait_for(&state, positive("min_seq", query.min_seq.as_deref())?).await?;
    find(&state, caller.app().id.as_str(), channel.as_str(), &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no such message in this channel".into()))
}

/// A message of a channel by id.
pub(crate) async fn find(
    state: &AppState,
    app: &str,
    channel: &str,
    id: &str,
) -> Result<Option<Item>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ITEM_COLUMNS} FROM messages WHERE app_id = $1 AND channel = $2 AND id = $3"
    ))
    .bind(app)
    .bind(channel)
    .bind(id)
    .fetch_optional(&state.db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::super::positive;

    #[test]
    fn page_parameters_must_be_positive_integers() {
        assert_eq!(positive("limit", None).unwrap(), None);
        assert_eq!(positive("limit", Some("5")).unwrap(), Some(5));
        for bad in ["0", "-1", "x", "1.5", ""] {
            assert!(positive("limit", Some(bad)).is_err(), "{bad}");
        }
    }
}
