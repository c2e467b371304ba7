//! Session tokens, the JWKS and key rotation.

use crate::error::ApiError;
use crate::keys;
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_proto::token::{SessionClaims, TokenKind, MAX_GRANTS};
use herald_server::auth::AuthorizedApp;
use herald_server::token::JwkSet;
use serde::{Deserialize, Serialize};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/users/{user_id}/session-tokens", post(issue))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/keys/rotate", post(rotate))
}

/// The body of a session-token request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// 0-100 grants, each a channel name (1-164 bytes) or a prefix ending in `*`.
    #[schema(max_items = 100)]
    #[serde(default)]
    grants: Vec<GrantText>,
    /// Lifetime in seconds, 1 to HERALD_SESSION_TOKEN_MAX_TTL_SECS (default: HERALD_SESSION_TOKEN_TTL_SECS, 900).
    #[schema(minimum = 1, maximum = 3600)]
    #[serde(default, deserialize_with = "integer")]
    ttl_secs: Option<u64>,
}

/// A JSON Schema `integer`: any number with a zero fractional part
/// (`2191.0` is one, as JSON Schema counts), which serde's `u64` refuses.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = n.as_u64() {
        return Ok(Some(n));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "ttl_secs must be a whole number of seconds, got {n}"
        ))),
    }
}

/// A grant as a request gives it, checked by [`validate_grant`]; its
/// schema states the rule of `herald_proto::token::validate_grant`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(transparent)]
pub(crate) struct GrantText(String);

impl utoipa::PartialSchema for GrantText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use herald_proto::channel::{GRANT_PATTERN, MAX_GRANT_LEN};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_GRANT_LEN))
            .pattern(Some(GRANT_PATTERN))
            .description(Some(
                "A channel name (1-164 characters of [A-Za-z0-9_-=@,.;]), or a name prefix followed by *",
            ))
            .into()
    }
}

impl utoipa::ToSchema for GrantText {
    fn name() -> std::borrow::Cow<'static, str> {
        "GrantText".into()
    }
}

/// An issued session token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenAnswer {
    /// The JWT (EdDSA, header `kid`).
    token: String,
    /// Unix seconds.
    expires_at: u64,
    /// The signing key's id.
    kid: String,
}

pub(crate) fn validate_grant(grant: &str) -> Result<(), ApiError> {
    herald_proto::token::validate_grant(grant)
        .map_err(|e| ApiError::BadRequest(format!("grant {grant:?}: {e}")))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::TokenRequest;

    #[test]
    fn ttl_secs_is_any_json_integer() {
        for (body, ttl) in [
            (r#"{"ttl_secs": 60}"#, Some(60)),
            (r#"{"ttl_secs": 2191.0}"#, Some(2191)),
            (r#"{"ttl_secs": null}"#, None),
            ("{}", None),
        ] {
            let req: TokenRequest = serde_json::from_str(body).unwrap();
            assert_eq!(req.ttl_secs, ttl, "{body}");
        }
        for body in [
            r#"{"ttl_secs": 1.5}"#,
            r#"{"ttl_secs": -1}"#,
            r#"{"ttl_secs": "60"}"#,
        ] {
            assert!(
                serde_json::from_str::<TokenRequest>(body).is_err(),
                "{body}"
            );
        }
    }
}

/// Issue a session token for a registered user.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/{user_id}/session-tokens",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("user_id" = String, Path, description = "User id: 1-128 characters, any but NUL", min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$"),
    ),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The token", body = TokenAnswer),
        (status = 400, description = "Invalid grant, ttl or user id"),
        (status = 401, description = "Missing or wrong app credentials"),
        (status = 404, description = "The user is not registered in this app"),
    ),
    security(("app_basic" = []))
)]
pub(crate) async fn issue(
    State(state): State<AppState>,
    AuthorizedApp(app): AuthorizedApp,
    Path((_app, user_id)): Path<(String, String)>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<TokenAnswer>, ApiError> {
    let user_id = crate::users::parse_user_id(&user_id)?;
    let Json(body) = body?;
    if body.grants.len() > MAX_GRANTS {
        return Err(ApiError::BadRequest(format!("at most {MAX_GRANTS} grants")));
    }
    for g in &body.grants {
        validate_grant(&g.0)?;
    }
    let ttl = body.ttl_secs.unwrap_or(state.token_ttl_secs);
    if ttl == 0 || ttl > state.token_max_ttl_secs {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be 1-{}",
            state.token_max_ttl_secs
        )));
    }
    if crate::users::find_user(&state, app.id.as_str(), &user_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("no such user: register it first".into()));
    }
    let key = keys::current(&state.db).await?;
    let now = now_secs();
    let claims = SessionClaims {
        sub: user_id.as_str().to_owned(),
        app: app.id.as_str().to_owned(),
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kind: TokenKind::Session,
        grants: body.grants.into_iter().map(|g| g.0).collect(),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding_key())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing: {e}")))?;
    Ok(Json(TokenAnswer {
        token,
        expires_at: claims.exp,
        kid: key.kid,
    }))
}

/// The public keys that verify session tokens.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    responses((status = 200, description = "The current key first, then retired keys whose tokens may still be valid", body = JwkSet)),
)]
pub(crate) async fn jwks(State(state): State<AppState>) -> Result<Json<JwkSet>, ApiError> {
    Ok(Json(
        keys::jwks(&state.db, state.key_retention_secs()).await?,
    ))
}

/// The new current key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Rotated {
    kid: String,
}

/// Rotate the signing key. Needs `Authorization: Bearer <HERALD_AUTH_ADMIN_TOKEN>`;
/// answers 403 when that variable is not set.
#[utoipa::path(
    post,
    path = "/v1/keys/rotate",
    responses(
        (status = 200, description = "The new key's id", body = Rotated),
        (status = 401, description = "Missing or wrong admin token"),
        (status = 403, description = "Rotation disabled: no admin token configured"),
    ),
    security(("admin_bearer" = []))
)]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Rotated>, ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(ApiError::Forbidden(
            "key rotation is disabled: HERALD_AUTH_ADMIN_TOKEN is not set".into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        expected.as_bytes(),
    )) {
        return Err(ApiError::Unauthorized(
            "invalid or missing admin token".into(),
        ));
    }
    Ok(Json(Rotated {
        kid: keys::rotate(&state.db).await?,
    }))
}
