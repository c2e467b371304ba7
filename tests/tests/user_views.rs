//! Auth, gateway, history and presence together, with real NATS and
//! Postgres: an app registers users and hands out session tokens; a user
//! opens a direct message, authorizes its channel through `/pusher/auth`
//! and subscribes on the gateway; history and presence answer each user's
//! token with that user's view only, and app credentials with the whole
//! app; a key rotation leaves old tokens valid and signs new ones with the
//! new key.

use herald_testkit::TestDatabase;
use herald_tests::{eventually, As, PusherSocket, Running, Stack};
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "app-key";
const ADMIN: &str = "views-admin-token";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    stack: Stack,
    _db: TestDatabase,
    auth: Running,
    gateway: Running,
    history: Running,
    presence: Running,
    http: reqwest::Client,
}

async fn env() -> Env {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let mut auth_config = stack.auth_config(&db);
    auth_config.admin_token = Some(ADMIN.into());
    let auth = stack.auth_with(auth_config).await;
    let jwks = auth.url("/.well-known/jwks.json");
    let mut gateway_config = stack.gateway_config();
    gateway_config.auth_jwks_url = Some(jwks.clone());
    let gateway = stack.gateway_with(gateway_config).await;
    let mut history_config = stack.history_config(&db);
    history_config.auth_jwks_url = Some(jwks.clone());
    let history = stack.history_with(history_config).await;
    let mut presence_config = stack.presence_config();
    presence_config.auth_jwks_url = Some(jwks);
    let presence = stack.presence_with(presence_config).await;
    Env {
        stack,
        _db: db,
        auth,
        gateway,
        history,
        presence,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        who: As<'_>,
        body: Option<Value>,
    ) -> (u16, Value) {
        herald_tests::rest(&self.http, method, url, who, body).await
    }

    /// Register `user` and issue a session token with `grants`.
    async fn user(&self, user: &str, grants: &[&str]) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                self.auth.url(&format!("/v1/apps/app-id/users/{user}")),
                As::App,
                Some(json!({ "name": user.to_uppercase() })),
            )
            .await;
        assert!(status < 300, "{status} {body}");
        self.token(user, grants).await
    }

    async fn token(&self, user: &str, grants: &[&str]) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                self.auth
                    .url(&format!("/v1/apps/app-id/users/{user}/session-tokens")),
                As::App,
                Some(json!({ "grants": grants })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn history(&self, channel: &str, who: As<'_>) -> (u16, Value) {
        self.call(
            reqwest::Method::GET,
            self.history
                .url(&format!("/v1/apps/app-id/channels/{channel}/messages")),
            who,
            None,
        )
        .await
    }
}

#[tokio::test]
async fn a_users_token_reads_their_dm_and_no_one_elses_through_every_service() {
    let e = env().await;
    let alice = e.user("alice", &[]).await;
    let bob = e.user("bob", &[]).await;
    let carol = e.user("carol", &["private-*", "presence-lobby"]).await;

    // Alice opens a DM with bob: both are members, as events on its stream.
    let (status, dm) = e
        .call(
            reqwest::Method::POST,
            e.auth.url("/v1/apps/app-id/dms"),
            As::User(&alice),
            Some(json!({ "user_id": "bob" })),
        )
        .await;
    assert_eq!(status, 200, "{dm}");
    let channel = dm["channel"].as_str().unwrap().to_owned();

    // Bob authorizes the DM for his socket at the auth service (as pusher-js
    // does) and subscribes on the gateway with the answer.
    let mut socket = PusherSocket::connect(e.gateway.port, KEY).await.unwrap();
    let (status, auth) = e
        .call(
            reqwest::Method::POST,
            e.auth.url("/pusher/auth"),
            As::User(&bob),
            Some(json!({ "socket_id": socket.socket_id, "channel_name": channel })),
        )
        .await;
    assert_eq!(status, 200, "{auth}");
    let answer = socket
        .subscribe_with(json!({ "channel": channel, "auth": auth["auth"] }))
        .await
        .unwrap();
    assert_eq!(
        answer["event"], "pusher_internal:subscription_succeeded",
        "{answer}"
    );
    // Carol's prefix grant does not reach someone else's DM.
    let mut intruder = PusherSocket::connect(e.gateway.port, KEY).await.unwrap();
    let (status, refused) = e
        .call(
            reqwest::Method::POST,
            e.auth.url("/pusher/auth"),
            As::User(&carol),
            Some(json!({ "socket_id": intruder.socket_id, "channel_name": channel })),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let answer = intruder
        .subscribe_with(json!({ "channel": channel, "auth": "app-key:forged" }))
        .await
        .unwrap();
    assert_eq!(answer["event"], "pusher:subscription_error");

    // A message on the DM reaches bob, and history.
    let (status, _) = e
        .stack
        .api(&e.gateway)
        .trigger(&[&channel], "said", "{\"text\":\"hi bob\"}")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let live = socket.next_event_of(&["said"]).await.unwrap();
    assert_eq!(live["data"], "{\"text\":\"hi bob\"}");

    // Alice's and bob's tokens read it (membership projected from the
    // stream); carol's does not; the app reads everything.
    for (who, token) in [("alice", &alice), ("bob", &bob)] {
        let page = eventually(WAIT, &format!("{who} reads the DM"), || async {
            let (status, body) = e.history(&channel, As::User(token)).await;
            (status == 200 && !body["messages"].as_array().unwrap().is_empty()).then_some(body)
        })
        .await;
        assert_eq!(page["messages"][0]["seq"], live["seq"], "{who}");
    }
    let (status, body) = e.history(&channel, As::User(&carol)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = e.history(&channel, As::App).await;
    assert_eq!(status, 200, "{body}");
    // A channel carol's grant names is hers to read; a forged token is no one's.
    let (status, _) = e.history("private-anything", As::User(&carol)).await;
    assert_eq!(status, 200);
    let (status, _) = e.history("private-anything", As::User(&alice)).await;
    assert_eq!(status, 403);
    let (status, body) = e.history(&channel, As::User("not.a.token")).await;
    assert_eq!(status, 401, "{body}");

    // Presence: carol may list a granted presence channel, alice may not.
    let members = |token: String| {
        let e = &e;
        async move {
            e.call(
                reqwest::Method::GET,
                e.presence
                    .url("/v1/apps/app-id/channels/presence-lobby/members"),
                As::User(&token),
                None,
            )
            .await
        }
    };
    assert_eq!(members(carol.clone()).await.0, 200);
    let (status, body) = members(alice.clone()).await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn after_a_key_rotation_old_tokens_stay_valid_and_new_ones_use_the_new_key() {
    let e = env().await;
    let old = e.user("dora", &["private-dora"]).await;
    let (status, rotated) = e
        .call(
            reqwest::Method::POST,
            e.auth.url("/v1/keys/rotate"),
            As::User(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = e.token("dora", &["private-dora"]).await;
    let kid = |token: &str| {
        herald_server::token::jsonwebtoken::decode_header(token)
            .unwrap()
            .kid
            .unwrap()
    };
    assert_ne!(kid(&old), kid(&new));
    assert_eq!(kid(&new), rotated["kid"].as_str().unwrap());
    for token in [&old, &new] {
        let (status, body) = e.history("private-dora", As::User(token)).await;
        assert_eq!(status, 200, "{body}");
        let mut socket = PusherSocket::connect_with_token(e.gateway.port, KEY, token)
            .await
            .unwrap();
        socket
            .next_event_of(&["pusher:signin_success"])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_browser_page_on_another_origin_may_read_history_and_presence_with_a_session_token() {
    let e = env().await;
    let token = e.user("alice", &["private-open"]).await;
    let routes = [
        (
            &e.history,
            "/v1/apps/app-id/channels/private-open/messages",
            "GET",
        ),
        (
            &e.history,
            "/v1/apps/app-id/channels/private-open/messages/some-id",
            "PATCH",
        ),
        (
            &e.history,
            "/v1/apps/app-id/channels/private-open/read",
            "POST",
        ),
        (&e.history, "/v1/apps/app-id/users/alice/inbox", "GET"),
        (
            &e.presence,
            "/v1/apps/app-id/channels/presence-open/members",
            "GET",
        ),
    ];
    for (service, path, method) in routes {
        // The preflight a browser sends before a call with `Authorization`.
        let (status, h) = herald_tests::cors_preflight(&e.http, service.url(path), method).await;
        assert!(status.is_success(), "{path}: {status}");
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains(method), "{path}: {methods}");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization"), "{path}: {allowed}");
        assert!(h.get("access-control-allow-credentials").is_none());
    }
    // The answers carry the header too, refusals included, so the page can
    // read why it was refused.
    for (channel, status) in [("private-open", 200), ("private-closed", 403)] {
        let resp = e
            .http
            .get(
                e.history
                    .url(&format!("/v1/apps/app-id/channels/{channel}/messages")),
            )
            .header("origin", "https://chat.example")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{channel}");
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    }
}
