//! Authorization for the REST APIs:
//!
//! * [`AuthorizedApp`] admits a request only with the credentials of the
//!   app named by the route's `{app}` segment (HTTP Basic `key:secret`,
//!   compared in constant time);
//! * [`Caller`] also admits a user of that app with a session token
//!   (`Authorization: Bearer`), verified against the auth service's keys:
//!   the handler then answers with that user's view.
//!
//! An unknown app answers exactly like bad credentials, so the API is no
//! oracle for app ids.

use crate::http::error_response;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum_extra::headers::authorization::Basic;
use axum_extra::headers::{Authorization, HeaderMapExt};
use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher::constant_time_eq;
use std::sync::Arc;

/// The message of every failed authorization.
pub const BAD_CREDENTIALS: &str =
    "Invalid or missing credentials: use HTTP Basic with the app key and secret";

/// A service state that knows the configured apps.
pub trait HasApps {
    /// The apps this service serves.
    fn apps(&self) -> &AppRegistry;
}

impl<T: HasApps> HasApps for Arc<T> {
    fn apps(&self) -> &AppRegistry {
        (**self).apps()
    }
}

/// A service state that can verify session tokens.
pub trait HasVerifier {
    /// The verifier; `None` when the service accepts no tokens.
    fn verifier(&self) -> Option<&crate::token::Verifier>;
}

impl<T: HasVerifier> HasVerifier for Arc<T> {
    fn verifier(&self) -> Option<&crate::token::Verifier> {
        (**self).verifier()
    }
}

/// Who makes a REST call: the app itself (its credentials: the whole app
/// is visible) or one of its users (a session token: only what that user
/// may see).
#[derive(Debug, Clone)]
pub enum Caller {
    /// HTTP Basic with the app's key and secret.
    App(Arc<AppConfig>),
    /// A session token of a user of the app.
    User {
        /// The app.
        app: Arc<AppConfig>,
        /// The verified token's claims (`sub` is the user).
        claims: herald_proto::token::SessionClaims,
    },
}

impl Caller {
    /// The app either way.
    pub fn app(&self) -> &Arc<AppConfig> {
        match self {
            Caller::App(app) | Caller::User { app, .. } => app,
        }
    }

    /// The user, for a token's caller.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::App(_) => None,
            Caller::User { claims, .. } => Some(&claims.sub),
        }
    }
}

fn bad_token(message: String) -> Response {
    error_response(StatusCode::UNAUTHORIZED, "unauthorized", &message)
}

impl<S: HasApps + HasVerifier + Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Some(token) = crate::token::bearer(&parts.headers).map(str::to_owned) else {
            return AuthorizedApp::from_request_parts(parts, state)
                .await
                .map(|AuthorizedApp(app)| Caller::App(app));
        };
        let app_id = app_param(parts, state).await?;
        let app = state
            .apps()
            .by_id(&app_id)
            .cloned()
            .ok_or_else(unauthorized)?;
        let Some(verifier) = state.verifier() else {
            return Err(bad_token(
                "This service does not accept session tokens; use the app's credentials".into(),
            ));
        };
        match verifier.verify_session(&token, Some(app.id.as_str())).await {
            Ok(claims) => Ok(Caller::User { app, claims }),
            Err(crate::token::VerifyError::Jwks(err)) => {
                tracing::error!(%err, "cannot fetch the auth service's keys");
                Err(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Session tokens cannot be checked right now; retry",
                ))
            }
            Err(err) => Err(bad_token(format!("Invalid session token: {err}"))),
        }
    }
}

async fn app_param<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, Response> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| unauthorized())?;
    params
        .iter()
        .find(|(name, _)| *name == "app")
        .map(|(_, value)| value.to_owned())
        .ok_or_else(unauthorized)
}

/// The app of the route's `{app}` path segment, authorized by the request's
/// credentials. Rejects with the JSON 401 of every Herald API.
#[derive(Debug, Clone)]
pub struct AuthorizedApp(pub Arc<AppConfig>);

impl std::ops::Deref for AuthorizedApp {
    type Target = AppConfig;
    fn deref(&self) -> &AppConfig {
        &self.0
    }
}

fn unauthorized() -> Response {
    error_response(StatusCode::UNAUTHORIZED, "unauthorized", BAD_CREDENTIALS)
}

impl<S: HasApps + Send + Sync> FromRequestParts<S> for AuthorizedApp {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let app_id = app_param(parts, state).await?;
        authorize_basic(state.apps(), &parts.headers, &app_id)
            .map(AuthorizedApp)
            .ok_or_else(unauthorized)
    }
}

/// The app named `app_id`, if `headers` carry its own key and secret as
/// HTTP Basic credentials.
pub fn authorize_basic(
    apps: &AppRegistry,
    headers: &axum::http::HeaderMap,
    app_id: &str,
) -> Option<Arc<AppConfig>> {
    let Authorization(basic) = headers.typed_get::<Authorization<Basic>>()?;
    let app = apps.by_id(app_id)?;
    let key_ok = constant_time_eq(basic.username(), &app.key);
    let secret_ok = constant_time_eq(basic.password(), &app.secret);
    (key_ok & secret_ok).then(|| app.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderMap, HeaderValue};
    use base64::Engine;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user)
        )
    }

    #[test]
    fn only_the_apps_own_key_and_secret_authorize_it() {
        let apps = AppRegistry::single(AppConfig::new("a", "k", "s"));
        assert!(authorize_basic(&apps, &headers(&basic("k:s")), "a").is_some());
        for bad in [
            basic("k:x"),
            basic("x:s"),
            basic("ks"),
            "Bearer k:s".into(),
            "Basic !!".into(),
        ] {
            assert!(
                authorize_basic(&apps, &headers(&bad), "a").is_none(),
                "{bad}"
            );
        }
        assert!(authorize_basic(&apps, &headers(&basic("k:s")), "other").is_none());
        assert!(authorize_basic(&apps, &HeaderMap::new(), "a").is_none());
    }
}
