//! Who is calling: a user with one of this service's session tokens
//! (`Authorization: Bearer`), or an app with its key and secret (HTTP Basic,
//! acting for one of its users with `as_user` where an actor is needed).
//!
//! Session tokens are verified in-process against the keys this service
//! publishes in its JWKS (read from `signing_keys` with the same retention
//! rule), by the same code as `herald_server::token::Verifier`
//! (`eddsa_kid`, `decode_with_key`): the algorithm pinned to EdDSA, a
//! `kid`, `exp`/`nbf` with the same leeway, the `kind` claim; then the app
//! both named by the caller and served here. Going
//! through our own JWKS URL instead would add an HTTP round trip to
//! ourselves and a cache that can lag a rotation.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use herald_config::AppConfig;
use herald_proto::token::{SessionClaims, TokenKind};
use herald_proto::UserId;
use herald_server::token::jsonwebtoken::DecodingKey;
use herald_server::token::{decode_with_key, eddsa_kid, VerifyError, DEFAULT_LEEWAY_SECS};
use std::sync::Arc;

/// The public key of `kid`, if it is one the JWKS publishes now.
async fn published_key(state: &AppState, kid: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let row: Option<(Vec<u8>,)> = sqlx::query_as(
        "SELECT public_key FROM signing_keys
         WHERE kid = $1
           AND (retired_at IS NULL OR retired_at > now() - make_interval(secs => $2))",
    )
    .bind(kid)
    .bind(state.key_retention_secs() as f64)
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(|(k,)| k))
}

fn refused(err: VerifyError) -> ApiError {
    ApiError::InvalidToken(format!("session token refused: {err}"))
}

/// Verify a session token. `app`: the app the route names, if it names
/// one; either way the token's app must be one this service serves.
pub(crate) async fn verify_session(
    state: &AppState,
    token: &str,
    app: Option<&str>,
) -> Result<(Arc<AppConfig>, SessionClaims), ApiError> {
    let kid = eddsa_kid(token).map_err(refused)?;
    let public = published_key(state, &kid)
        .await?
        .ok_or_else(|| refused(VerifyError::UnknownKid(kid.clone())))?;
    let key = DecodingKey::from_ed_der(&public);
    let claims: SessionClaims =
        decode_with_key(token, &key, TokenKind::Session, DEFAULT_LEEWAY_SECS).map_err(refused)?;
    if app.is_some_and(|a| a != claims.app) {
        return Err(refused(VerifyError::WrongApp));
    }
    let config = state.apps.by_id(&claims.app).cloned().ok_or_else(|| {
        ApiError::InvalidToken("session token refused: its app is not served here".into())
    })?;
    Ok((config, claims))
}

/// The Bearer session token of a request, verified.
pub(crate) async fn bearer_session(
    state: &AppState,
    headers: &HeaderMap,
    app: Option<&str>,
) -> Result<(Arc<AppConfig>, SessionClaims), ApiError> {
    let token = herald_server::token::bearer(headers).ok_or_else(|| {
        ApiError::InvalidToken(
            "missing session token: send Authorization: Bearer <session token>".into(),
        )
    })?;
    verify_session(state, token, app).await
}

/// The credentials of a request to a `/v1/apps/{app}/...` route, verified:
/// an extractor, so that a handler that takes it first answers a request
/// with wrong or missing credentials 401 before it reads (and judges) the
/// query or the body.
pub(crate) enum Credentials {
    /// A user, by their session token.
    User {
        app: Arc<AppConfig>,
        claims: SessionClaims,
    },
    /// The app itself, by its key and secret.
    App(Arc<AppConfig>),
}

impl FromRequestParts<AppState> for Credentials {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Every route this extractor serves has an `{app}` segment; a
        // missing one can only be a routing mistake, answered like bad
        // credentials.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::Unauthorized(herald_server::auth::BAD_CREDENTIALS.into()))?;
        let app_id = params
            .iter()
            .find(|(name, _)| *name == "app")
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| ApiError::Unauthorized(herald_server::auth::BAD_CREDENTIALS.into()))?;
        authenticate(state, &parts.headers, &app_id).await
    }
}

/// Authenticate a request to `/v1/apps/{app_id}/...`: a Bearer session
/// token of that app, or the app's HTTP Basic credentials.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    app_id: &str,
) -> Result<Credentials, ApiError> {
    let scheme = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(' ').next().unwrap_or(""));
    match scheme {
        Some("Basic") => herald_server::auth::authorize_basic(&state.apps, headers, app_id)
            .map(Credentials::App)
            .ok_or_else(|| ApiError::Unauthorized(herald_server::auth::BAD_CREDENTIALS.into())),
        Some("Bearer") => {
            let (app, claims) = bearer_session(state, headers, Some(app_id)).await?;
            Ok(Credentials::User { app, claims })
        }
        _ => Err(ApiError::InvalidToken(
            "missing credentials: send Authorization: Bearer <session token>, or HTTP Basic app credentials"
                .into(),
        )),
    }
}

impl Credentials {
    /// The caller these credentials make with `as_user` (the query
    /// parameter, read after the credentials were verified): a session
    /// token acts for its own user, so `as_user` must be absent; the app
    /// acts for `as_user` if given, else for itself.
    pub(crate) fn acting_for(self, as_user: Option<&str>) -> Result<Caller, ApiError> {
        match self {
            Credentials::User { app, claims } => {
                if as_user.is_some() {
                    return Err(ApiError::BadRequest(
                        "as_user is only accepted with app credentials; a session token acts for its own user"
                            .into(),
                    ));
                }
                Ok(Caller::User { app, claims })
            }
            Credentials::App(app) => {
                let as_user = as_user
                    .map(|u| {
                        UserId::parse(u).map_err(|e| ApiError::BadRequest(format!("as_user: {e}")))
                    })
                    .transpose()?;
                Ok(Caller::App { app, as_user })
            }
        }
    }
}

/// An authenticated caller of a `/v1/apps/{app}/...` route.
pub(crate) enum Caller {
    /// A user, by their session token.
    User {
        app: Arc<AppConfig>,
        claims: SessionClaims,
    },
    /// The app itself, by its key and secret, acting for `as_user` if given.
    App {
        app: Arc<AppConfig>,
        as_user: Option<UserId>,
    },
}

impl Caller {
    /// The app called.
    pub fn app(&self) -> &AppConfig {
        match self {
            Caller::User { app, .. } | Caller::App { app, .. } => app,
        }
    }

    /// The acting user: the token's subject, or `as_user`.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::User { claims, .. } => Some(&claims.sub),
            Caller::App { as_user, .. } => as_user.as_ref().map(UserId::as_str),
        }
    }

    /// The acting user, required: the app itself is no user, so it cannot
    /// own, join or leave a room or a DM. A 403, not a 400: the request is
    /// well formed, but these credentials, acting for no user, may not do
    /// it (and the OpenAPI document cannot say "as_user is required with
    /// one security scheme and forbidden with the other").
    pub fn acting_user(&self) -> Result<&str, ApiError> {
        self.user().ok_or_else(|| {
            ApiError::Forbidden(
                "the app itself is no user: with app credentials, name the user to act for with as_user"
                    .into(),
            )
        })
    }

    /// Whether the app itself calls, acting for no user: it may read and
    /// manage every room of its own.
    pub fn is_app_itself(&self) -> bool {
        matches!(self, Caller::App { as_user: None, .. })
    }
}
