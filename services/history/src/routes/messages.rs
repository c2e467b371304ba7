//! `GET /v1/apps/{app}/channels/{channel}/messages?limit=&before=`: a
//! channel's history, newest first, keyset-paginated by stream sequence.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use herald_proto::ChannelName;
use herald_server::auth::Caller;
use serde::{Deserialize, Serialize};

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
pub const MAX_LIMIT: i64 = 1000;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/apps/{app}/channels/{channel}/messages", get(list))
}

/// Raw query parameters, validated by hand for clear messages.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Page size, 1-1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Return events with a sequence below this (the previous page's `next_before`).
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
}

/// One stored event.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Item {
    seq: i64,
    id: String,
    event: String,
    data: String,
    ts: i64,
    author: Option<String>,
}

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Page {
    messages: Vec<Item>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    next_before: Option<i64>,
}

fn parse_positive(name: &str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|s| {
        s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("{name} must be a positive integer, got {s:?}"))
        })
    })
    .transpose()
}

/// A channel's history, newest first.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/channels/{channel}/messages",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of events, newest first", body = Page),
        (status = 400, description = "Invalid channel name or paging parameter"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 403, description = "The token's user may not read this channel"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    let channel =
        ChannelName::parse(&channel).map_err(|e| ApiError::BadRequest(format!("Channel: {e}")))?;
    let app = caller.app().clone();
    super::may_read(&state, &caller, &channel).await?;
    let limit = parse_positive("limit", query.limit.as_deref())?.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be at most {MAX_LIMIT}"
        )));
    }
    let before = parse_positive("before", query.before.as_deref())?.unwrap_or(i64::MAX);
    // One row more than asked tells whether an older page exists.
    let mut messages: Vec<Item> = sqlx::query_as(
        "SELECT seq, id, event, data, ts, author FROM messages
         WHERE app_id = $1 AND channel = $2 AND seq < $3
         ORDER BY seq DESC LIMIT $4",
    )
    .bind(app.id.as_str())
    .bind(channel.as_str())
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let next_before = if messages.len() as i64 > limit {
        messages.truncate(limit as usize);
        messages.last().map(|m| m.seq)
    } else {
        None
    };
    Ok(Json(Page {
        messages,
        next_before,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_parameters_must_be_positive_integers() {
        assert_eq!(parse_positive("limit", None).unwrap(), None);
        assert_eq!(parse_positive("limit", Some("5")).unwrap(), Some(5));
        for bad in ["0", "-1", "x", "1.5", ""] {
            assert!(parse_positive("limit", Some(bad)).is_err(), "{bad}");
        }
    }
}
