//! User authentication: `pusher:signin` (the app signs `user_data` for this
//! socket), or a session token on the WebSocket URL (`?token=`, Herald
//! extension), which signs the connection in as the token's user as soon as
//! it opens. A signed-in socket receives events sent to its user and can be
//! terminated or subscribed by the app server.
//!
//! A session token is single-use: its first use binds it to one socket
//! (`herald_stream::TokenBindings`), and any other connection showing it is
//! refused, so a leaked or replayed token cannot open a second connection.

use super::connection::{CloseReason, Connection, SignedIn};
use herald_proto::presence::MAX_WATCHLIST;
use herald_proto::pusher::{self, codes, ClientFrame};
use herald_proto::{ServerFrame, UserId, MAX_USER_ID_LEN};
use herald_server::token::VerifyError;
use herald_stream::BindOutcome;
use serde_json::Value;

impl Connection {
    pub(super) async fn on_signin(&mut self, frame: &ClientFrame) -> Option<CloseReason> {
        let data = frame.data_object().unwrap_or_default();
        let user_data = data
            .get("user_data")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let auth = data
            .get("auth")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if self.user.is_some() {
            self.send(ServerFrame::Error {
                code: None,
                message: "This connection is already signed in",
            })
            .await;
            return None;
        }
        let expected = format!(
            "{}:{}",
            self.app.key,
            pusher::user_signature(&self.app.secret, &self.handle.socket_id, user_data)
        );
        if !pusher::constant_time_eq(auth, &expected) {
            return self.signin_failed("Invalid signature for user_data").await;
        }
        let parsed: Value = serde_json::from_str(user_data).unwrap_or(Value::Null);
        let Some(id) = parsed
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| UserId::parse(s).ok())
        else {
            let message =
                format!("user_data needs an id (string of 1-{MAX_USER_ID_LEN} characters)");
            return self.signin_failed(&message).await;
        };
        let watchlist = match watchlist_of(&parsed) {
            Ok(watchlist) => watchlist,
            Err(message) => return self.signin_failed(&message).await,
        };
        self.complete_signin(id, parsed, user_data, false, watchlist)
            .await
    }

    /// Sign the connection in with the session token of its URL.
    pub(super) async fn sign_in_with_token(&mut self, token: &str) -> Option<CloseReason> {
        let Some(verifier) = &self.state.verifier else {
            return self
                .signin_failed("This server does not accept session tokens")
                .await;
        };
        let claims = match verifier
            .verify_session(token, Some(self.app.id.as_str()))
            .await
        {
            Ok(claims) => claims,
            Err(VerifyError::Jwks(err)) => {
                tracing::error!(%err, "cannot fetch the auth service's keys");
                return self.token_unavailable().await;
            }
            Err(err) => {
                metrics::counter!("herald_gateway_token_refusals_total", "reason" => "invalid")
                    .increment(1);
                return self
                    .signin_failed(&format!("Invalid session token: {err}"))
                    .await;
            }
        };
        let Ok(id) = UserId::parse(&claims.sub) else {
            return self
                .signin_failed("Invalid session token: bad user id")
                .await;
        };
        match self
            .state
            .bindings
            .bind(&self.app.id, &claims.jti, &self.handle.socket_id)
            .await
        {
            Ok(BindOutcome::Bound | BindOutcome::AlreadyThisSocket) => {}
            Ok(BindOutcome::OtherSocket) => {
                metrics::counter!("herald_gateway_token_refusals_total", "reason" => "reused")
                    .increment(1);
                return self
                    .signin_failed(
                        "This session token was already used by another connection; \
                         ask your backend for a new one",
                    )
                    .await;
            }
            Err(err) => {
                tracing::error!(%err, "token binding not recorded");
                return self.token_unavailable().await;
            }
        }
        let parsed = serde_json::json!({ "id": id.as_str() });
        let user_data = parsed.to_string();
        self.complete_signin(id, parsed, &user_data, true, Vec::new())
            .await
    }

    /// The token could not be checked now (auth service or NATS away):
    /// the client should reconnect later with a fresh token.
    async fn token_unavailable(&self) -> Option<CloseReason> {
        let message = "Session tokens cannot be checked right now; reconnect later";
        self.send(ServerFrame::Error {
            code: Some(codes::GENERIC_RECONNECT),
            message,
        })
        .await;
        Some((codes::GENERIC_RECONNECT, "Session token not checked"))
    }

    /// Record the signed-in user and tell the client (`pusher:signin_success`,
    /// which pusher-js also takes after a token sign-in: it then subscribes
    /// to the user's `#server-to-user-` channel by itself).
    async fn complete_signin(
        &mut self,
        id: UserId,
        parsed: Value,
        user_data: &str,
        by_token: bool,
        watchlist: Vec<String>,
    ) -> Option<CloseReason> {
        let key = match self
            .state
            .presence
            .announce_connection(&self.app.id, id.as_str(), &self.handle.socket_id)
            .await
        {
            Ok(key) => key,
            Err(err) => {
                tracing::error!(%err, "sign-in not recorded");
                self.send(ServerFrame::Error {
                    code: None,
                    message: "Sign-in is temporarily unavailable; retry",
                })
                .await;
                return None;
            }
        };
        self.state
            .hub
            .add_user(&self.app.id, &id, self.handle.clone());
        if !watchlist.is_empty() {
            // Registered before asking, so no change after the answer is missed.
            self.state
                .hub
                .watchlists
                .watch(&self.app.id, &watchlist, self.handle.clone());
        }
        self.user = Some(SignedIn {
            id,
            user_data: parsed,
            key,
            by_token,
            watchlist: watchlist.clone(),
        });
        self.send(ServerFrame::SigninSuccess { user_data }).await;
        if !watchlist.is_empty() {
            match self.state.presence.online(&self.app.id, &watchlist).await {
                Ok(reply) => self.state.hub.watchlists.initial(
                    &self.app.id,
                    self.handle.id,
                    &watchlist,
                    &reply.online,
                    reply.revision,
                ),
                // Changes still arrive as events; only the first list is missing.
                Err(err) => tracing::warn!(%err, "cannot read a watchlist's online users"),
            }
        }
        None
    }

    async fn signin_failed(&self, message: &str) -> Option<CloseReason> {
        self.send(ServerFrame::Error {
            code: Some(codes::UNAUTHORIZED),
            message,
        })
        .await;
        Some((codes::UNAUTHORIZED, "Sign-in failed"))
    }
}

/// The `watchlist` of a user data object: user ids, at most
/// [`MAX_WATCHLIST`], duplicates dropped.
fn watchlist_of(user_data: &Value) -> Result<Vec<String>, String> {
    let Some(list) = user_data.get("watchlist") else {
        return Ok(Vec::new());
    };
    let bad = || format!("watchlist must be a list of at most {MAX_WATCHLIST} user ids");
    let list = list.as_array().ok_or_else(bad)?;
    if list.len() > MAX_WATCHLIST {
        return Err(bad());
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for id in list {
        let id = id
            .as_str()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(bad)?;
        if !out.iter().any(|u| u == id.as_str()) {
            out.push(id.as_str().to_owned());
        }
    }
    Ok(out)
}
