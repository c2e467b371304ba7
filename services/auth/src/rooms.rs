//! Rooms, direct messages, and channel membership the app manages itself.
//!
//! A room's channel is `presence-room-<id>`; its members are who
//! `/pusher/auth` authorizes for it. Anyone with a room's share code can
//! join. Only its owner (or the app itself) can destroy it, which purges
//! the channel's events from the stream. A DM channel belongs to exactly
//! two users. Membership changes are stored as events on the channel's
//! subject (see [`crate::membership`] for the order of writes).
//!
//! Callers: a user with a Bearer session token, or the app with HTTP Basic
//! credentials, acting for `?as_user=<id>` where an acting user is needed.

use crate::error::ApiError;
use crate::membership::{self, Change};
use crate::session::{Caller, Credentials};
use crate::AppState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use herald_proto::envelope::event_names;
use herald_proto::token::{dm_channel, room_channel};
use herald_proto::{AppId, ChannelName, Envelope, EventKind};
use herald_server::auth::AuthorizedApp;
use serde::{Deserialize, Serialize};

/// Longest room name, in characters.
pub const MAX_ROOM_NAME_LEN: usize = 100;
/// Length of a share code (base32: 50 random bits).
pub const ROOM_CODE_LEN: usize = 10;
/// Longest code accepted in a join request.
const MAX_CODE_INPUT_LEN: usize = 32;
/// Largest page of members.
pub const MAX_MEMBERS_PAGE: i64 = 1000;
/// Most rooms (and DMs) one list answer holds, oldest first.
pub const MAX_ROOMS_LISTED: i64 = 1000;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/rooms", post(create).get(my_rooms))
        .route("/v1/apps/{app}/rooms/join", post(join))
        .route(
            "/v1/apps/{app}/rooms/{room}",
            axum::routing::delete(destroy),
        )
        .route("/v1/apps/{app}/rooms/{room}/leave", post(leave))
        .route("/v1/apps/{app}/rooms/{room}/members", get(room_members))
        .route("/v1/apps/{app}/dms", post(open_dm).get(my_dms))
}

/// Routes for app credentials only (no CORS: an app secret has no
/// business in a browser).
pub(crate) fn app_router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/apps/{app}/channels/{channel}/members/{user_id}",
            put(app_add_member).delete(app_remove_member),
        )
        .route(
            "/v1/apps/{app}/channels/{channel}/members",
            get(app_list_members),
        )
}

/// A random share code from the OS CSPRNG.
fn new_code() -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; ROOM_CODE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("the system RNG failed")))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(BASE32[usize::from(b & 31)]))
        .collect())
}

/// `?as_user=`: the user the app acts for (app credentials only).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActorQuery {
    /// With app credentials: the user to act for, 1-128 characters, any
    /// but NUL. Required with app credentials where a user acts (else
    /// 403); refused with a session token, which acts for its own user.
    #[param(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    as_user: Option<String>,
}

/// `?as_user=&after=&limit=` of a user's rooms or DMs.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// With app credentials: the user to act for, 1-128 characters, any
    /// but NUL. Required with app credentials (else 403); refused with a
    /// session token, which acts for its own user.
    #[param(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    as_user: Option<String>,
    /// The previous page's `next`.
    #[param(
        min_length = 3,
        max_length = 200,
        pattern = r"^[0-9]{1,18}\.[A-Za-z0-9-]{1,180}$"
    )]
    after: Option<String>,
    /// Page size, 1-1000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// Where a page of a user's rooms or DMs starts: after the one created at
/// `micros` (since the epoch) with this id (its `next`, `<micros>.<id>`).
struct ListCursor {
    micros: Option<i64>,
    id: String,
    limit: i64,
}

fn list_bounds(query: &ListQuery) -> Result<ListCursor, ApiError> {
    let bad = || ApiError::BadRequest("after must be a page's next".into());
    let (micros, id) = match query.after.as_deref() {
        None => (None, String::new()),
        Some(after) => {
            let (micros, id) = after.split_once('.').ok_or_else(bad)?;
            // As the OpenAPI pattern says: 1-18 digits (always an i64).
            if micros.is_empty() || micros.len() > 18 || !micros.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let micros = micros.parse::<i64>().map_err(|_| bad())?;
            if id.is_empty()
                || id.len() > 180
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad());
            }
            (Some(micros), id.to_owned())
        }
    };
    let limit =
        crate::users::page_limit(query.limit.as_deref(), MAX_ROOMS_LISTED, MAX_ROOMS_LISTED)?;
    Ok(ListCursor { micros, id, limit })
}

/// Cut a list fetched with one row more than the page size (to tell
/// whether a next page exists) to the page, and the `next` of its last row.
fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    position: impl Fn(&T) -> (i64, &str),
) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = match rows.last() {
        Some(row) if more => {
            let (micros, id) = position(row);
            Some(format!("{micros}.{id}"))
        }
        _ => None,
    };
    (rows, next)
}

/// `?as_user=&after=&limit=` of member lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct MembersQuery {
    /// With app credentials: the user to act for, 1-128 characters, any
    /// but NUL. Required with app credentials where a user acts (else
    /// 403); refused with a session token, which acts for its own user.
    #[param(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    as_user: Option<String>,
    /// The previous page's `next` (a user id: 1-128 characters, any but NUL).
    #[param(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    after: Option<String>,
    /// Page size, 1-1000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

fn page_bounds(after: Option<&str>, limit: Option<&str>) -> Result<(String, i64), ApiError> {
    let after = match after {
        Some(a) => crate::users::parse_user_id(a)
            .map_err(|_| ApiError::BadRequest("after must be a user id (a page's next)".into()))?
            .as_str()
            .to_owned(),
        None => String::new(),
    };
    let limit = crate::users::page_limit(limit, MAX_MEMBERS_PAGE, MAX_MEMBERS_PAGE)?;
    Ok((after, limit))
}

/// The caller of verified `credentials` with the query's `as_user`, read
/// only now: a request with bad credentials is a 401 whatever its query.
fn actor(
    credentials: Credentials,
    query: Result<Query<ActorQuery>, QueryRejection>,
) -> Result<Caller, ApiError> {
    let Query(query) = query?;
    credentials.acting_for(query.as_user.as_deref())
}

/// 404 unless `user` is registered in `app`.
async fn require_registered(state: &AppState, app: &str, user: &str) -> Result<(), ApiError> {
    let id = crate::users::parse_user_id(user)?;
    match crate::users::find_user(state, app, &id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!(
            "user {user:?} is not registered in this app: register it first"
        ))),
    }
}

fn parse_room_id(raw: &str) -> Result<ChannelName, ApiError> {
    room_channel(raw).ok_or_else(|| {
        ApiError::BadRequest("room id must be 1-64 characters of A-Z a-z 0-9 _ -".into())
    })
}

/// A room.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Room {
    /// 32 hex digits.
    id: String,
    name: String,
    /// The share code: whoever has it can join.
    code: String,
    /// `presence-room-<id>`.
    channel: String,
    /// The user who created it.
    owner: String,
}

const ROOM_COLUMNS: &str = "room_id AS id, name, code, channel, owner";

/// The body of `POST /v1/apps/{app}/rooms`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRoom {
    /// 1-100 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    name: String,
}

/// Create a room; its creator owns it and is its first member.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/rooms",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ActorQuery),
    request_body = CreateRoom,
    responses(
        (status = 200, description = "The new room", body = Room),
        (status = 400, description = "Invalid name or as_user, or as_user with a session token"),
        (status = 403, description = "App credentials without as_user: the app itself is no user"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 404, description = "The acting user is not registered"),
        (status = 503, description = "The membership event could not be stored; nothing was created"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<CreateRoom>, JsonRejection>,
) -> Result<Json<Room>, ApiError> {
    let caller = actor(credentials, query)?;
    let Json(body) = body?;
    crate::users::validate_name(&body.name)?;
    let owner = caller.acting_user()?.to_owned();
    let app = caller.app().id.clone();
    require_registered(&state, app.as_str(), &owner).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let channel = parse_room_id(&id)?;
    let mut tx = state.db.begin().await?;
    // A code collision (50 random bits) is all but impossible; retry anyway.
    let mut room = None;
    for _ in 0..3 {
        room = sqlx::query_as::<_, Room>(&format!(
            "INSERT INTO rooms (app_id, room_id, name, code, owner, channel)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (app_id, code) DO NOTHING
             RETURNING {ROOM_COLUMNS}"
        ))
        .bind(app.as_str())
        .bind(&id)
        .bind(&body.name)
        .bind(new_code()?)
        .bind(&owner)
        .bind(channel.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if room.is_some() {
            break;
        }
    }
    let room = room.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no free room code")))?;
    let membership_id = membership::insert(&mut tx, &app, &channel, &owner)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a new room had members")))?;
    membership::publish(
        &state,
        &app,
        &channel,
        &owner,
        Change::Joined,
        &membership_id,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(room))
}

/// The body of `POST /v1/apps/{app}/rooms/join`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinRoom {
    /// The room's share code: 1-32 letters and digits (case-insensitive).
    #[schema(min_length = 1, max_length = 32, pattern = r"^[A-Za-z0-9]+$")]
    code: String,
}

/// Join the room a share code names (idempotent).
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/rooms/join",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ActorQuery),
    request_body = JoinRoom,
    responses(
        (status = 200, description = "The room joined", body = Room),
        (status = 400, description = "A code that is not 1-32 letters and digits, an invalid as_user, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "App credentials without as_user: the app itself is no user"),
        (status = 404, description = "No room has this code (the same answer for every wrong code), or the acting user is not registered"),
        (status = 429, description = "More joins by code than HERALD_ROOM_JOINS_PER_MINUTE for this user; Retry-After says when to retry"),
        (status = 503, description = "The membership event could not be stored; nothing changed"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn join(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<JoinRoom>, JsonRejection>,
) -> Result<Json<Room>, ApiError> {
    let caller = actor(credentials, query)?;
    let Json(body) = body?;
    if body.code.is_empty()
        || body.code.len() > MAX_CODE_INPUT_LEN
        || !body.code.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ApiError::BadRequest(format!(
            "code must be 1-{MAX_CODE_INPUT_LEN} letters and digits"
        )));
    }
    let code = body.code.to_ascii_uppercase();
    let user = caller.acting_user()?.to_owned();
    let app = caller.app().id.clone();
    within_join_rate(&state, app.as_str(), &user)?;
    require_registered(&state, app.as_str(), &user).await?;
    let mut tx = state.db.begin().await?;
    // FOR SHARE: a destroy in progress finishes first (and then there is
    // no room to join), so no member is added to a room being deleted.
    let room: Room = sqlx::query_as(&format!(
        "SELECT {ROOM_COLUMNS} FROM rooms WHERE app_id = $1 AND code = $2 FOR SHARE"
    ))
    .bind(app.as_str())
    .bind(&code)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound("no room has this code".into()))?;
    let channel = parse_room_id(&room.id)?;
    if let Some(id) = membership::insert(&mut tx, &app, &channel, &user).await? {
        membership::publish(&state, &app, &channel, &user, Change::Joined, &id).await?;
    }
    tx.commit().await?;
    Ok(Json(room))
}

/// Spend one of the user's room joins by code for this minute, or say when
/// the next one is allowed. Every attempt counts, right or wrong, so the
/// answer says nothing about the code.
fn within_join_rate(state: &AppState, app: &str, user: &str) -> Result<(), ApiError> {
    use governor::clock::{Clock, DefaultClock};
    let limiter = &state.room_joins;
    // Forget users who stopped trying, now and then, so the map stays small.
    if limiter.len() > 10_000 {
        limiter.retain_recent();
    }
    limiter
        .check_key(&(app.to_owned(), user.to_owned()))
        .map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            metrics::counter!("herald_auth_room_joins_limited_total").increment(1);
            ApiError::TooManyRequests {
                message: format!("Too many room joins by code; retry in {retry_after_secs} s"),
                retry_after_secs,
            }
        })
}

/// How a room's row is locked until the transaction ends.
#[derive(Clone, Copy)]
enum Lock {
    /// Membership changes: many at once, but not during a destroy.
    Share,
    /// Destroy: alone.
    Update,
}

/// The room `room_id` of `app`, locked for the transaction's duration.
async fn locked_room(
    tx: &mut sqlx::PgConnection,
    app: &AppId,
    room_id: &str,
    lock: Lock,
) -> Result<Room, ApiError> {
    let lock = match lock {
        Lock::Share => "FOR SHARE",
        Lock::Update => "FOR UPDATE",
    };
    sqlx::query_as(&format!(
        "SELECT {ROOM_COLUMNS} FROM rooms WHERE app_id = $1 AND room_id = $2 {lock}"
    ))
    .bind(app.as_str())
    .bind(room_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such room".into()))
}

/// Whether the membership change did anything.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MembershipAnswer {
    channel: String,
    user_id: String,
    /// Whether the user is a member now.
    member: bool,
    /// Whether this request changed it (false on a repeated request).
    changed: bool,
}

/// Leave a room (the owner may leave too, and stays its owner).
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/rooms/{room}/leave",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("room" = String, Path, description = "Room id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ActorQuery,
    ),
    responses(
        (status = 200, description = "Membership after the request", body = MembershipAnswer),
        (status = 400, description = "Invalid room id or as_user, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "App credentials without as_user: the app itself is no user"),
        (status = 404, description = "No such room"),
        (status = 503, description = "The membership event could not be stored; nothing changed"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn leave(
    State(state): State<AppState>,
    credentials: Credentials,
    Path((_app, room_id)): Path<(String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let caller = actor(credentials, query)?;
    let channel = parse_room_id(&room_id)?;
    let user = caller.acting_user()?.to_owned();
    let app = caller.app().id.clone();
    let mut tx = state.db.begin().await?;
    locked_room(&mut tx, &app, &room_id, Lock::Share).await?;
    let changed = match membership::delete(&mut tx, &app, &channel, &user).await? {
        Some(id) => {
            membership::publish(&state, &app, &channel, &user, Change::Left, &id).await?;
            true
        }
        None => false,
    };
    tx.commit().await?;
    Ok(Json(MembershipAnswer {
        channel: channel.as_str().to_owned(),
        user_id: user,
        member: false,
        changed,
    }))
}

/// Destroy a room: purge its channel's events from the stream, store a
/// `channel_purged` event, delete it and its memberships.
///
/// In that order, inside one transaction holding the room's row: if the
/// purge or the publish fails, the room still exists (503) and a retry
/// purges again (which also drops a `channel_purged` a failed commit left
/// behind) and stores a new one, so the channel ends with exactly one.
#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/rooms/{room}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("room" = String, Path, description = "Room id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ActorQuery,
    ),
    responses(
        (status = 200, description = "The destroyed room", body = Room),
        (status = 400, description = "Invalid room id or as_user, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "The acting user is not the room's owner"),
        (status = 404, description = "No such room"),
        (status = 503, description = "The stream could not be purged or the event stored; the room still exists"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn destroy(
    State(state): State<AppState>,
    credentials: Credentials,
    Path((_app, room_id)): Path<(String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
) -> Result<Json<Room>, ApiError> {
    let caller = actor(credentials, query)?;
    let channel = parse_room_id(&room_id)?;
    let app = caller.app().id.clone();
    let mut tx = state.db.begin().await?;
    let room = locked_room(&mut tx, &app, &room_id, Lock::Update).await?;
    if !caller.is_app_itself() && caller.user() != Some(room.owner.as_str()) {
        return Err(ApiError::Forbidden(
            "only the room's owner may destroy it".into(),
        ));
    }
    let subject = state.subjects.channel(&app, &channel);
    let unavailable = |what: &str, err: String| {
        tracing::warn!(app = %app, channel = %channel, error = %err, "room destroy: {what} failed");
        ApiError::Unavailable(format!(
            "the event store could not {what}; the room still exists, retry"
        ))
    };
    let stream = state
        .js
        .get_stream(state.subjects.channels_stream())
        .await
        .map_err(|e| unavailable("purge the channel", e.to_string()))?;
    stream
        .purge()
        .filter(subject)
        .await
        .map_err(|e| unavailable("purge the channel", e.to_string()))?;
    let envelope = Envelope::new(
        EventKind::ChannelPurged,
        app.as_str(),
        channel.as_str(),
        event_names::CHANNEL_PURGED,
        "{}".into(),
        caller.user().map(str::to_owned),
    );
    // The envelope's own id, not a derived one: a retry after a failed
    // commit purged the earlier event and must store a new one.
    membership::store(&state, &app, &channel, &envelope, &envelope.id).await?;
    sqlx::query("DELETE FROM channel_members WHERE app_id = $1 AND channel = $2")
        .bind(app.as_str())
        .bind(channel.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM rooms WHERE app_id = $1 AND room_id = $2")
        .bind(app.as_str())
        .bind(&room_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(room))
}

/// Members of a room, for its members (or the app itself).
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/rooms/{room}/members",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("room" = String, Path, description = "Room id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        MembersQuery,
    ),
    responses(
        (status = 200, description = "A page of members, by user id", body = crate::membership::MembersPage),
        (status = 400, description = "Invalid room id, as_user, after or limit, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "The acting user is not a member"),
        (status = 404, description = "No such room"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn room_members(
    State(state): State<AppState>,
    credentials: Credentials,
    Path((_app, room_id)): Path<(String, String)>,
    query: Result<Query<MembersQuery>, QueryRejection>,
) -> Result<Json<membership::MembersPage>, ApiError> {
    let Query(query) = query?;
    let caller = credentials.acting_for(query.as_user.as_deref())?;
    let channel = parse_room_id(&room_id)?;
    let (after, limit) = page_bounds(query.after.as_deref(), query.limit.as_deref())?;
    let app = caller.app().id.clone();
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM rooms WHERE app_id = $1 AND room_id = $2)")
            .bind(app.as_str())
            .bind(&room_id)
            .fetch_one(&state.db)
            .await?;
    if !exists {
        return Err(ApiError::NotFound("no such room".into()));
    }
    if !caller.is_app_itself() {
        let user = caller.acting_user()?;
        if !membership::is_member(&state, app.as_str(), channel.as_str(), user).await? {
            return Err(ApiError::Forbidden(
                "only the room's members may list its members".into(),
            ));
        }
    }
    Ok(Json(
        membership::list(&state, app.as_str(), channel.as_str(), &after, limit).await?,
    ))
}

/// The acting user's rooms.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RoomList {
    /// Oldest first, at most `limit`.
    rooms: Vec<Room>,
    /// `after` for the next page; null on the last.
    next: Option<String>,
}

/// A room with its list position.
#[derive(sqlx::FromRow)]
struct ListedRoom {
    #[sqlx(flatten)]
    room: Room,
    micros: i64,
}

/// The rooms the acting user is a member of, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/rooms",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ListQuery),
    responses(
        (status = 200, description = "A page of the user's rooms, oldest first", body = RoomList),
        (status = 400, description = "Invalid as_user, after or limit, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "App credentials without as_user: the app itself is no user"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn my_rooms(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RoomList>, ApiError> {
    let Query(query) = query?;
    let cursor = list_bounds(&query)?;
    let caller = credentials.acting_for(query.as_user.as_deref())?;
    let user = caller.acting_user()?;
    // Positions in whole microseconds (what timestamptz holds), compared
    // as integers: no rounding between pages.
    let rows: Vec<ListedRoom> = sqlx::query_as(
        "SELECT r.room_id AS id, r.name, r.code, r.channel, r.owner,
                (extract(epoch FROM r.created_at) * 1000000)::int8 AS micros
         FROM rooms r JOIN channel_members m
           ON m.app_id = r.app_id AND m.channel = r.channel
         WHERE r.app_id = $1 AND m.user_id = $2
           AND ($3::int8 IS NULL
                OR ((extract(epoch FROM r.created_at) * 1000000)::int8, r.room_id) > ($3, $4))
         ORDER BY r.created_at, r.room_id LIMIT $5",
    )
    .bind(caller.app().id.as_str())
    .bind(user)
    .bind(cursor.micros)
    .bind(&cursor.id)
    .bind(cursor.limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (rows, next) = page(rows, cursor.limit, |r| (r.micros, &r.room.id));
    let rooms = rows.into_iter().map(|r| r.room).collect();
    Ok(Json(RoomList { rooms, next }))
}

/// The body of `POST /v1/apps/{app}/dms`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenDm {
    /// The other user (registered, not the acting one): 1-128
    /// characters, any but NUL.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    user_id: String,
}

/// A DM channel and the other user in it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Dm {
    /// `private-dm-<hash>`: the same for both users.
    channel: String,
    /// The other user.
    user_id: String,
}

/// Open (or find) the DM channel of the acting user and another user;
/// both become members (idempotent).
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/dms",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ActorQuery),
    request_body = OpenDm,
    responses(
        (status = 200, description = "The DM channel", body = Dm),
        (status = 400, description = "Invalid user id or as_user, user_id naming the acting user themself, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "App credentials without as_user: the app itself is no user"),
        (status = 404, description = "One of the users is not registered"),
        (status = 503, description = "A membership event could not be stored; nothing changed"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn open_dm(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<OpenDm>, JsonRejection>,
) -> Result<Json<Dm>, ApiError> {
    let caller = actor(credentials, query)?;
    let Json(body) = body?;
    let other = crate::users::parse_user_id(&body.user_id)?;
    let me = caller.acting_user()?.to_owned();
    if other.as_str() == me {
        return Err(ApiError::BadRequest(
            "user_id must be another user than the acting one".into(),
        ));
    }
    let app = caller.app().id.clone();
    require_registered(&state, app.as_str(), &me).await?;
    require_registered(&state, app.as_str(), other.as_str()).await?;
    let channel = dm_channel(&app, &me, other.as_str());
    let (a, b) = if me.as_str() <= other.as_str() {
        (me.as_str(), other.as_str())
    } else {
        (other.as_str(), me.as_str())
    };
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO dms (app_id, channel, user_a, user_b) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app_id, channel) DO NOTHING",
    )
    .bind(app.as_str())
    .bind(channel.as_str())
    .bind(a)
    .bind(b)
    .execute(&mut *tx)
    .await?;
    for user in [a, b] {
        if let Some(id) = membership::insert(&mut tx, &app, &channel, user).await? {
            membership::publish(&state, &app, &channel, user, Change::Joined, &id).await?;
        }
    }
    tx.commit().await?;
    Ok(Json(Dm {
        channel: channel.as_str().to_owned(),
        user_id: other.as_str().to_owned(),
    }))
}

/// The acting user's DMs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DmList {
    /// Oldest first, at most `limit`.
    dms: Vec<Dm>,
    /// `after` for the next page; null on the last.
    next: Option<String>,
}

/// A DM with its list position.
#[derive(sqlx::FromRow)]
struct ListedDm {
    #[sqlx(flatten)]
    dm: Dm,
    micros: i64,
}

/// The DM channels of the acting user, with the other user of each, oldest
/// first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/dms",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ListQuery),
    responses(
        (status = 200, description = "A page of the user's DMs, oldest first", body = DmList),
        (status = 400, description = "Invalid as_user, after or limit, or as_user with a session token"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 403, description = "App credentials without as_user: the app itself is no user"),
    ),
    security(("session_bearer" = []), ("app_basic" = []))
)]
pub(crate) async fn my_dms(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DmList>, ApiError> {
    let Query(query) = query?;
    let cursor = list_bounds(&query)?;
    let caller = credentials.acting_for(query.as_user.as_deref())?;
    let user = caller.acting_user()?;
    let rows: Vec<ListedDm> = sqlx::query_as(
        "SELECT channel, CASE WHEN user_a = $2 THEN user_b ELSE user_a END AS user_id,
                (extract(epoch FROM created_at) * 1000000)::int8 AS micros
         FROM dms WHERE app_id = $1 AND (user_a = $2 OR user_b = $2)
           AND ($3::int8 IS NULL
                OR ((extract(epoch FROM created_at) * 1000000)::int8, channel) > ($3, $4))
         ORDER BY created_at, channel LIMIT $5",
    )
    .bind(caller.app().id.as_str())
    .bind(user)
    .bind(cursor.micros)
    .bind(&cursor.id)
    .bind(cursor.limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (rows, next) = page(rows, cursor.limit, |r| (r.micros, &r.dm.channel));
    let dms = rows.into_iter().map(|r| r.dm).collect();
    Ok(Json(DmList { dms, next }))
}

fn parse_member_channel(raw: &str) -> Result<ChannelName, ApiError> {
    let channel =
        ChannelName::parse(raw).map_err(|e| ApiError::BadRequest(format!("channel: {e}")))?;
    if !channel.kind().requires_auth() {
        return Err(ApiError::BadRequest(
            "channel: public channels have no members to manage".into(),
        ));
    }
    Ok(channel)
}

/// Make a user a member of any private or presence channel of the app
/// (idempotent): `/pusher/auth` then authorizes it for them.
#[utoipa::path(
    put,
    path = "/v1/apps/{app}/channels/{channel}/members/{user_id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "A private- (private-encrypted- included) or presence- channel, 8-164 characters of [A-Za-z0-9_-=@,.;]: public channels have no members", min_length = 8, max_length = 164, pattern = r"^(private|presence)-[A-Za-z0-9_\-=@,.;]*$"),
        ("user_id" = String, Path, description = "A registered user: 1-128 characters, any but NUL", min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$"),
    ),
    responses(
        (status = 200, description = "Membership after the request", body = MembershipAnswer),
        (status = 400, description = "Invalid or public channel, or invalid user id"),
        (status = 401, description = "Missing or wrong app credentials"),
        (status = 404, description = "The user is not registered"),
        (status = 503, description = "The membership event could not be stored; nothing changed"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn app_add_member(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    Path((_app, channel, user_id)): Path<(String, String, String)>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let channel = parse_member_channel(&channel)?;
    let user = crate::users::parse_user_id(&user_id)?;
    require_registered(&state, app.id.as_str(), user.as_str()).await?;
    let changed = membership::join(&state, &app.id, &channel, user.as_str()).await?;
    Ok(Json(MembershipAnswer {
        channel: channel.as_str().to_owned(),
        user_id: user.as_str().to_owned(),
        member: true,
        changed,
    }))
}

/// End a user's membership of a channel (idempotent).
#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/channels/{channel}/members/{user_id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "A private- (private-encrypted- included) or presence- channel, 8-164 characters of [A-Za-z0-9_-=@,.;]: public channels have no members", min_length = 8, max_length = 164, pattern = r"^(private|presence)-[A-Za-z0-9_\-=@,.;]*$"),
        ("user_id" = String, Path, description = "User id: 1-128 characters, any but NUL", min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$"),
    ),
    responses(
        (status = 200, description = "Membership after the request", body = MembershipAnswer),
        (status = 400, description = "Invalid or public channel, or invalid user id"),
        (status = 401, description = "Missing or wrong app credentials"),
        (status = 503, description = "The membership event could not be stored; nothing changed"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn app_remove_member(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    Path((_app, channel, user_id)): Path<(String, String, String)>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let channel = parse_member_channel(&channel)?;
    let user = crate::users::parse_user_id(&user_id)?;
    let changed = membership::leave(&state, &app.id, &channel, user.as_str()).await?;
    Ok(Json(MembershipAnswer {
        channel: channel.as_str().to_owned(),
        user_id: user.as_str().to_owned(),
        member: false,
        changed,
    }))
}

/// `?after=&limit=` of the app's member list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// The previous page's `next` (a user id: 1-128 characters, any but NUL).
    #[param(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    after: Option<String>,
    /// Page size, 1-1000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The members of any channel of the app (rooms and DMs included).
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/channels/{channel}/members",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "A private- (private-encrypted- included) or presence- channel, 8-164 characters of [A-Za-z0-9_-=@,.;]: public channels have no members", min_length = 8, max_length = 164, pattern = r"^(private|presence)-[A-Za-z0-9_\-=@,.;]*$"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of members, by user id", body = crate::membership::MembersPage),
        (status = 400, description = "Invalid or public channel, after or limit"),
        (status = 401, description = "Missing or wrong app credentials"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn app_list_members(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    Path((_app, channel)): Path<(String, String)>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<membership::MembersPage>, ApiError> {
    let Query(query) = query?;
    let channel = parse_member_channel(&channel)?;
    let (after, limit) = page_bounds(query.after.as_deref(), query.limit.as_deref())?;
    Ok(Json(
        membership::list(&state, app.id.as_str(), channel.as_str(), &after, limit).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_codes_are_base32_of_the_stated_length_and_differ() {
        let codes: Vec<String> = (0..50).map(|_| new_code().unwrap()).collect();
        for code in &codes {
            assert_eq!(code.len(), ROOM_CODE_LEN);
            assert!(code.bytes().all(|b| BASE32.contains(&b)), "{code}");
        }
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
    }
}
