//! Session tokens at the gateway: a token on the WebSocket URL signs the
//! connection in as its user, once; a replay, another app's token, an
//! expired or forged one are refused with Pusher's 4009 and a precise
//! message. Real auth service (its JWKS), NATS and Postgres.

use herald_config::{AppConfig, AppRegistry};
use herald_testkit::TestDatabase;
use herald_tests::{data_of, dev_app, Closed, PusherSocket, Running, Stack, SECRET};
use serde_json::{json, Value};

const KEY: &str = "app-key";

struct Env {
    stack: Stack,
    _db: TestDatabase,
    auth: Running,
    gateway: Running,
    _presence: Running,
    http: reqwest::Client,
}

async fn env() -> Env {
    let apps = AppRegistry::new(vec![
        dev_app(),
        AppConfig::new("other-app", "other-key", "other-secret"),
    ])
    .unwrap();
    let stack = Stack::with_apps(apps);
    let db = TestDatabase::create().await.unwrap();
    let auth = stack.auth_with(stack.auth_config(&db)).await;
    let mut config = stack.gateway_config();
    config.auth_jwks_url = Some(auth.url("/.well-known/jwks.json"));
    let gateway = stack.gateway_with(config).await;
    let presence = stack.presence().await;
    Env {
        _presence: presence,
        stack,
        _db: db,
        auth,
        gateway,
        http: reqwest::Client::new(),
    }
}

impl Env {
    /// Register `user` in `app` and issue a session token for it.
    async fn token(&self, app: (&str, &str, &str), user: &str, ttl_secs: u64) -> String {
        let (id, key, secret) = app;
        let put = self
            .http
            .put(self.auth.url(&format!("/v1/apps/{id}/users/{user}")))
            .basic_auth(key, Some(secret))
            .json(&json!({ "name": user }))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.text().await.unwrap());
        let issued: Value = self
            .http
            .post(
                self.auth
                    .url(&format!("/v1/apps/{id}/users/{user}/session-tokens")),
            )
            .basic_auth(key, Some(secret))
            .json(&json!({ "ttl_secs": ttl_secs }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        issued["token"].as_str().unwrap().to_owned()
    }

    async fn dev_token(&self, user: &str) -> String {
        self.token(("app-id", KEY, SECRET), user, 900).await
    }
}

/// Connect with `token` and expect a refusal: the `pusher:error` and the
/// close, both 4009, the error's message returned.
async fn refused(port: u16, token: &str) -> String {
    let mut socket = PusherSocket::connect_with_token(port, KEY, token)
        .await
        .unwrap();
    let (frames, closed) = socket.frames_before_close().await.unwrap();
    let error = frames
        .iter()
        .find(|f| f["event"] == "pusher:error")
        .unwrap_or_else(|| panic!("no pusher:error in {frames:?}"));
    // pusher:error's data is an object, not a JSON string (as in Pusher).
    let data = &error["data"];
    assert_eq!(data["code"], 4009, "{data}");
    assert!(
        matches!(closed, Closed::Code(4009, _)),
        "closed with {closed:?}"
    );
    assert!(
        !frames.iter().any(|f| f["event"] == "pusher:signin_success"),
        "{frames:?}"
    );
    data["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_session_token_on_the_url_signs_the_connection_in_as_its_user() {
    let e = env().await;
    let token = e.dev_token("alice").await;
    let mut socket = PusherSocket::connect_with_token(e.gateway.port, KEY, &token)
        .await
        .unwrap();
    let frame = socket
        .next_event_of(&["pusher:signin_success"])
        .await
        .unwrap();
    let user_data: Value = serde_json::from_str(data_of(&frame)["user_data"].as_str().unwrap())
        .expect("user_data is a JSON string");
    assert_eq!(user_data["id"], "alice");
    // Signed in: the user channel is this user's, and the presence
    // identity is the token's user.
    let ok = socket
        .subscribe_with(json!({ "channel": "#server-to-user-alice" }))
        .await
        .unwrap();
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    socket
        .join_presence(SECRET, "presence-room", "alice", Value::Null)
        .await
        .unwrap();
    // The app can terminate the user's connections: it is indexed as alice.
    let api = e.stack.api(&e.gateway);
    let (status, _) = api
        .post("/users/alice/terminate_connections", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(matches!(
        socket.close_frame().await.unwrap(),
        Closed::Code(4009, _)
    ));
}

#[tokio::test]
async fn a_session_token_used_by_a_second_connection_is_refused_there_only() {
    let e = env().await;
    let token = e.dev_token("alice").await;
    let mut first = PusherSocket::connect_with_token(e.gateway.port, KEY, &token)
        .await
        .unwrap();
    first
        .next_event_of(&["pusher:signin_success"])
        .await
        .unwrap();
    let message = refused(e.gateway.port, &token).await;
    assert!(
        message.contains("already used by another connection"),
        "{message}"
    );
    // The first connection is untouched.
    first.send_event("pusher:ping", json!({})).await.unwrap();
    first.next_event_of(&["pusher:pong"]).await.unwrap();
    // A fresh token opens a second connection of the same user.
    let again = e.dev_token("alice").await;
    let mut second = PusherSocket::connect_with_token(e.gateway.port, KEY, &again)
        .await
        .unwrap();
    second
        .next_event_of(&["pusher:signin_success"])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_presence_join_as_another_user_than_the_tokens_is_refused() {
    let e = env().await;
    let token = e.dev_token("alice").await;
    let mut socket = PusherSocket::connect_with_token(e.gateway.port, KEY, &token)
        .await
        .unwrap();
    socket
        .next_event_of(&["pusher:signin_success"])
        .await
        .unwrap();
    // Even with the app's valid signature over bob's channel_data.
    let answer = socket
        .try_join_presence(SECRET, "presence-room", "bob", Value::Null)
        .await
        .unwrap();
    assert_eq!(answer["event"], "pusher:subscription_error", "{answer}");
    let data = data_of(&answer);
    assert_eq!(data["status"], 403);
    assert!(
        data["error"]
            .as_str()
            .unwrap()
            .contains("not the user of this connection's session token"),
        "{data}"
    );
}

#[tokio::test]
async fn forged_expired_and_foreign_session_tokens_are_refused_with_a_precise_message() {
    let e = env().await;
    let port = e.gateway.port;
    let good = e.dev_token("alice").await;

    let foreign = e
        .token(("other-app", "other-key", "other-secret"), "alice", 900)
        .await;
    assert!(refused(port, &foreign).await.contains("another app"));

    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{flipped}{}", &sig[1..]);
    assert!(refused(port, &parts.join("."))
        .await
        .contains("invalid signature"));

    assert!(refused(port, "not-a-token").await.contains("malformed"));

    // alg none, with the payload of a real token.
    let none = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        good.split('.').nth(1).unwrap()
    );
    let message = refused(port, &none).await;
    assert!(message.starts_with("Invalid session token"), "{message}");

    let short = e.token(("app-id", KEY, SECRET), "bob", 1).await;
    // Past the 1 s lifetime and the verifier's 5 s leeway.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert!(refused(port, &short).await.contains("expired"));
}

#[tokio::test]
async fn a_gateway_without_the_auth_services_keys_refuses_tokens_and_serves_plain_clients() {
    let stack = Stack::start();
    let gateway = stack.gateway().await;
    let message = refused(gateway.port, "eyJ.any.token").await;
    assert!(
        message.contains("does not accept session tokens"),
        "{message}"
    );
    let mut plain = PusherSocket::connect(gateway.port, KEY).await.unwrap();
    plain.subscribe("public").await.unwrap();
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// A channel token from the auth service for this socket and channel.
async fn channel_token(e: &Env, token: &str, socket_id: &str, channel: &str) -> (u16, Value) {
    let resp = e
        .http
        .post(e.auth.url("/v1/apps/app-id/channel-tokens"))
        .bearer_auth(token)
        .json(&json!({ "socket_id": socket_id, "channel": channel }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_channel_token_subscribes_its_socket_to_its_channel_and_nothing_else() {
    let e = env().await;
    let alice = e.token(("app-id", KEY, SECRET), "alice", 900).await;
    let mut socket = PusherSocket::connect(e.gateway.port, KEY).await.unwrap();
    let mut other = PusherSocket::connect(e.gateway.port, KEY).await.unwrap();
    // Grant the channels through app-managed membership.
    for channel in ["private-ct", "presence-ct"] {
        let resp = e
            .http
            .put(
                e.auth
                    .url(&format!("/v1/apps/app-id/channels/{channel}/members/alice")),
            )
            .basic_auth(KEY, Some(SECRET))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }
    let (status, issued) = channel_token(&e, &alice, &socket.socket_id, "private-ct").await;
    assert_eq!(status, 200, "{issued}");
    let ct = issued["token"].as_str().unwrap().to_owned();
    // Another socket cannot use it, nor can it open another channel.
    let answer = other
        .subscribe_with(json!({ "channel": "private-ct", "token": ct }))
        .await
        .unwrap();
    assert_eq!(answer["event"], "pusher:subscription_error", "{answer}");
    assert!(data_of(&answer)["error"]
        .as_str()
        .unwrap()
        .contains("another connection"));
    let answer = socket
        .subscribe_with(json!({ "channel": "private-other", "token": ct }))
        .await
        .unwrap();
    assert_eq!(answer["event"], "pusher:subscription_error", "{answer}");
    assert!(data_of(&answer)["error"]
        .as_str()
        .unwrap()
        .contains("another channel"));
    // A session token is not a channel token.
    let answer = socket
        .subscribe_with(json!({ "channel": "private-ct", "token": alice }))
        .await
        .unwrap();
    assert_eq!(answer["event"], "pusher:subscription_error", "{answer}");
    // Its own socket and channel: subscribed.
    let answer = socket
        .subscribe_with(json!({ "channel": "private-ct", "token": ct }))
        .await
        .unwrap();
    assert_eq!(
        answer["event"], "pusher_internal:subscription_succeeded",
        "{answer}"
    );
    // A presence channel token names the member and its user_info.
    let (status, issued) = channel_token(&e, &alice, &socket.socket_id, "presence-ct").await;
    assert_eq!(status, 200, "{issued}");
    let answer = socket
        .subscribe_with(json!({ "channel": "presence-ct", "token": issued["token"] }))
        .await
        .unwrap();
    assert_eq!(
        answer["event"], "pusher_internal:subscription_succeeded",
        "{answer}"
    );
    let presence = &data_of(&answer)["presence"];
    assert_eq!(presence["ids"], json!(["alice"]), "{presence}");
    assert_eq!(presence["hash"]["alice"]["name"], "alice");
}
