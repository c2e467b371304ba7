//! Users of an app: upsert, get, batch get, name-prefix search.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_proto::UserId;
use herald_server::auth::AuthorizedApp;
use serde::{Deserialize, Serialize};

/// Longest user name, in characters.
pub const MAX_NAME_LEN: usize = 100;
/// Longest avatar URL, in bytes.
pub const MAX_AVATAR_URL_LEN: usize = 2048;
/// Largest metadata object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most ids in one batch request.
pub const MAX_BATCH: usize = 100;
/// Largest search page.
pub const MAX_LIMIT: i64 = 100;
/// Default search page.
pub const DEFAULT_LIMIT: i64 = 20;
/// Pattern of an avatar URL: `http://` or `https://`, then a host part
/// that does not start with `/`, and no whitespace or control characters.
pub const AVATAR_URL_PATTERN: &str =
    r"^https?://[^\s/\u0000-\u001F\u007F-\u009F][^\s\u0000-\u001F\u007F-\u009F]*$";
/// Pattern of a display name (users, rooms): no control characters (the
/// Unicode `Cc` category, what `char::is_control` tests).
pub const NAME_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]+$";
/// Pattern of a name-prefix search: anything but NUL (Postgres text
/// cannot hold it, so no name contains it).
pub const PREFIX_PATTERN: &str = r"^[^\u0000]*$";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/apps/{app}/users/{user_id}",
            get(get_user).put(put_user),
        )
        .route("/v1/apps/{app}/users/batch", post(batch))
        .route("/v1/apps/{app}/users", get(search))
}

/// A user as stored.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct User {
    id: String,
    name: String,
    avatar_url: Option<String>,
    /// As Postgres gives it back, never parsed into numbers: JSONB keeps a
    /// number as an exact decimal and prints it in full (`-1.7976931348623157e308`
    /// comes back as 309 digits), which serde_json's f64 parsing can
    /// overflow; passing the stored text through answers what was stored.
    #[schema(value_type = Object)]
    metadata: sqlx::types::Json<Box<serde_json::value::RawValue>>,
}

/// The body of `PUT /v1/apps/{app}/users/{user_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    /// Display name, 1-100 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    name: String,
    /// `http://` or `https://` URL, at most 2048 bytes, without whitespace
    /// or control characters.
    #[schema(
        max_length = 2048,
        pattern = r"^https?://[^\s/\u0000-\u001F\u007F-\u009F][^\s\u0000-\u001F\u007F-\u009F]*$"
    )]
    avatar_url: Option<String>,
    /// A JSON object of at most 4096 bytes (serialized); no string in it
    /// (key or value, at any depth) may contain NUL (`\u0000`), which
    /// Postgres JSONB cannot store.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

impl User {
    /// The `user_info` of presence `channel_data`, sign-in `user_data` and
    /// channel tokens: the name and avatar, never the app's metadata.
    pub(crate) fn user_info(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "avatar_url": self.avatar_url})
    }
}

/// A `?limit=` page size: `default` when absent, else an integer 1-`max`.
pub(crate) fn page_limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be an integer 1-{max}"))),
    }
}

pub(crate) fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::BadRequest(format!("user_id: {e}")))
}

pub(crate) fn validate_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "name must be 1-{MAX_NAME_LEN} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name must not contain control characters".into(),
        ));
    }
    Ok(())
}

fn validate_avatar_url(url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_AVATAR_URL_LEN {
        return Err(ApiError::BadRequest(format!(
            "avatar_url must be at most {MAX_AVATAR_URL_LEN} bytes"
        )));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(())
        }
        _ => Err(ApiError::BadRequest(
            "avatar_url must be an http:// or https:// URL without whitespace".into(),
        )),
    }
}

/// Whether any key or string of `value`, at any depth, contains NUL.
fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn validate_metadata(metadata: &serde_json::Value) -> Result<(), ApiError> {
    if !metadata.is_object() {
        return Err(ApiError::BadRequest(
            "metadata must be a JSON object".into(),
        ));
    }
    if has_nul(metadata) {
        return Err(ApiError::BadRequest(
            "metadata must not contain NUL (\\u0000) in any key or string".into(),
        ));
    }
    if serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len()) > MAX_METADATA_BYTES {
        return Err(ApiError::BadRequest(format!(
            "metadata must be at most {MAX_METADATA_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Create or replace a user (idempotent).
#[utoipa::path(
    put,
    path = "/v1/apps/{app}/users/{user_id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("user_id" = String, Path, description = "User id: 1-128 characters, any but NUL", min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$"),
    ),
    request_body = UserBody,
    responses(
        (status = 200, description = "The stored user", body = User),
        (status = 400, description = "Invalid user id or body"),
        (status = 401, description = "Missing or wrong app credentials"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn put_user(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    Path((_app, user_id)): Path<(String, String)>,
    body: Result<Json<UserBody>, JsonRejection>,
) -> Result<Json<User>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let Json(body) = body?;
    validate_name(&body.name)?;
    if let Some(url) = &body.avatar_url {
        validate_avatar_url(url)?;
    }
    let metadata = body.metadata.unwrap_or_else(|| serde_json::json!({}));
    validate_metadata(&metadata)?;
    let user: User = sqlx::query_as(
        "INSERT INTO users (app_id, user_id, name, avatar_url, metadata) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (app_id, user_id) DO UPDATE
           SET name = EXCLUDED.name, avatar_url = EXCLUDED.avatar_url,
               metadata = EXCLUDED.metadata, updated_at = now()
         RETURNING user_id AS id, name, avatar_url, metadata",
    )
    .bind(app.id.as_str())
    .bind(user_id.as_str())
    .bind(&body.name)
    .bind(&body.avatar_url)
    .bind(&metadata)
    .fetch_one(&state.db)
    .await?;
    Ok(Json(user))
}

pub(crate) async fn find_user(
    state: &AppState,
    app: &str,
    user_id: &UserId,
) -> Result<Option<User>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT user_id AS id, name, avatar_url, metadata FROM users WHERE app_id = $1 AND user_id = $2",
    )
    .bind(app)
    .bind(user_id.as_str())
    .fetch_optional(&state.db)
    .await?)
}

/// One user.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{user_id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("user_id" = String, Path, description = "User id: 1-128 characters, any but NUL", min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$"),
    ),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "Invalid user id"),
        (status = 401, description = "Missing or wrong app credentials"),
        (status = 404, description = "No such user in this app"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    Path((_app, user_id)): Path<(String, String)>,
) -> Result<Json<User>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    find_user(&state, app.id.as_str(), &user_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no such user".into()))
}

/// The body of a batch get.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    /// 1-100 user ids.
    #[schema(min_items = 1, max_items = 100)]
    user_ids: Vec<UserIdText>,
}

/// A user id as a request body gives it, parsed by [`parse_user_id`]; its
/// schema states the rule of `herald_proto::UserId`.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct UserIdText(String);

impl utoipa::PartialSchema for UserIdText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(herald_proto::MAX_USER_ID_LEN))
            .pattern(Some(herald_proto::USER_ID_PATTERN))
            .description(Some("A user id: 1-128 characters, any but NUL"))
            .into()
    }
}

impl utoipa::ToSchema for UserIdText {
    fn name() -> std::borrow::Cow<'static, str> {
        "UserIdText".into()
    }
}

/// The users found, and the ids that were not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchAnswer {
    users: Vec<User>,
    missing: Vec<String>,
}

/// Several users at once.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/batch",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")),
    request_body = BatchBody,
    responses(
        (status = 200, description = "Users found (in request order) and ids not found", body = BatchAnswer),
        (status = 400, description = "Invalid body or id, or more than 100 ids"),
        (status = 401, description = "Missing or wrong app credentials"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn batch(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let Json(body) = body?;
    if body.user_ids.is_empty() || body.user_ids.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "user_ids must hold 1-{MAX_BATCH} ids"
        )));
    }
    let ids = body
        .user_ids
        .iter()
        .map(|id| parse_user_id(&id.0).map(|u| u.as_str().to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    let found: Vec<User> = sqlx::query_as(
        "SELECT user_id AS id, name, avatar_url, metadata FROM users WHERE app_id = $1 AND user_id = ANY($2)",
    )
    .bind(app.id.as_str())
    .bind(&ids)
    .fetch_all(&state.db)
    .await?;
    let mut by_id: std::collections::HashMap<String, User> =
        found.into_iter().map(|u| (u.id.clone(), u)).collect();
    let mut users = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match by_id.remove(&id) {
            Some(u) => users.push(u),
            None if !users.iter().any(|u: &User| u.id == id) => missing.push(id),
            None => {}
        }
    }
    Ok(Json(BatchAnswer { users, missing }))
}

/// Search parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    /// Name prefix (case-sensitive, byte order), 0-100 characters, no NUL.
    #[param(max_length = 100, pattern = r"^[^\u0000]*$")]
    prefix: Option<String>,
    /// Page size, 1-100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next` cursor.
    #[param(max_length = 1024)]
    after: Option<String>,
}

/// A page of users, by name then id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SearchPage {
    users: Vec<User>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

/// `%`, `_` and `\` stand for themselves in the prefix.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn decode_cursor(raw: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::BadRequest("after is not a cursor this API returned".into());
    if raw.len() > 1024 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    serde_json::from_slice::<(String, String)>(&bytes).map_err(|_| bad())
}

/// Users whose name starts with `prefix`, keyset-paginated.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        SearchQuery,
    ),
    responses(
        (status = 200, description = "A page of users", body = SearchPage),
        (status = 400, description = "Invalid parameter"),
        (status = 401, description = "Missing or wrong app credentials"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn search(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<SearchPage>, ApiError> {
    let Query(query) = query?;
    let prefix = query.prefix.unwrap_or_default();
    if prefix.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "prefix must be at most {MAX_NAME_LEN} characters"
        )));
    }
    if prefix.contains('\0') {
        return Err(ApiError::BadRequest(
            "prefix must not contain NUL (\\u0000)".into(),
        ));
    }
    let limit = page_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let (after_name, after_id) = match query.after.as_deref() {
        Some(c) => decode_cursor(c)?,
        None => (String::new(), String::new()),
    };
    let mut users: Vec<User> = sqlx::query_as(
        r#"SELECT user_id AS id, name, avatar_url, metadata FROM users
           WHERE app_id = $1 AND name LIKE $2 ESCAPE '\'
             AND (name, user_id) > ($3 COLLATE "C", $4)
           ORDER BY name, user_id LIMIT $5"#,
    )
    .bind(app.id.as_str())
    .bind(like_prefix(&prefix))
    .bind(&after_name)
    .bind(&after_id)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let next = if users.len() as i64 > limit {
        users.truncate(limit as usize);
        users.last().map(|u| {
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&(&u.name, &u.id)).unwrap_or_default())
        })
    } else {
        None
    };
    Ok(Json(SearchPage { users, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(like_prefix("a%b_c\\"), "a\\%b\\_c\\\\%");
    }

    #[test]
    fn nul_in_metadata_is_refused_at_any_depth() {
        assert!(validate_metadata(&serde_json::json!({"a": ["b", {"c": 1}]})).is_ok());
        for bad in [
            serde_json::json!({"a": "x\u{0}y"}),
            serde_json::json!({"a\u{0}": 1}),
            serde_json::json!({"a": [1, {"b": ["\u{0}"]}]}),
        ] {
            let err = validate_metadata(&bad).unwrap_err();
            assert!(err.to_string().contains("NUL"), "{bad}: {err}");
        }
    }

    #[test]
    fn names_refuse_control_characters_as_the_pattern_says() {
        let re = regex::Regex::new(NAME_PATTERN).unwrap();
        for name in ["Alice", "Zoë 🎉", "a b", "\u{a0}x"] {
            assert!(validate_name(name).is_ok(), "{name:?}");
            assert!(re.is_match(name), "{name:?}");
        }
        for name in ["", "a\u{0}", "a\nb", "\u{7f}", "\u{98}\u{a1}", "\u{9f}"] {
            assert!(validate_name(name).is_err(), "{name:?}");
            assert!(!re.is_match(name), "{name:?}");
        }
    }

    #[test]
    fn avatar_urls_must_be_http() {
        assert!(validate_avatar_url("https://x.example/a.png").is_ok());
        for bad in [
            "javascript:alert(1)",
            "https://",
            "ftp://x",
            "https://a b",
            "https:///x",
            "https://a\u{1}b",
            "https://a\u{85}b",
        ] {
            assert!(validate_avatar_url(bad).is_err(), "{bad:?}");
        }
        // The documented pattern draws the same line.
        let re = regex::Regex::new(AVATAR_URL_PATTERN).unwrap();
        assert!(re.is_match("https://x.example/a.png"));
        for bad in [
            "https://",
            "https:///x",
            "https://a b",
            "https://a\u{1}b",
            "ftp://x",
        ] {
            assert!(!re.is_match(bad), "{bad:?}");
        }
    }
}
