//! App authorization for the REST APIs: [`AuthorizedApp`], an axum
//! extractor that admits a request only with the credentials of the app
//! named by the route's `{app}` segment (HTTP Basic `key:secret`, compared
//! in constant time). An unknown app answers exactly like bad credentials,
//! so the API is no oracle for app ids.

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
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| unauthorized())?;
        let app_id = params
            .iter()
            .find(|(name, _)| *name == "app")
            .map(|(_, value)| value.to_owned())
            .ok_or_else(unauthorized)?;
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
