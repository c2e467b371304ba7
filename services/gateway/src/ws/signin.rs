//! User authentication (`pusher:signin`): the app signs `user_data` for this
//! socket; a signed-in socket receives events sent to its user and can be
//! terminated or subscribed by the app server.

use super::connection::{CloseReason, Connection, SignedIn};
use herald_proto::pusher::{self, codes, ClientFrame};
use herald_proto::{ServerFrame, UserId, MAX_USER_ID_LEN};
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
        self.user = Some(SignedIn {
            id,
            user_data: parsed,
            key,
        });
        self.send(ServerFrame::SigninSuccess { user_data }).await;
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
