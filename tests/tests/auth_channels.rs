//! Auth service, channel side: `/pusher/auth` and `/pusher/user-auth` as
//! pusher-js calls them, JWT channel tokens, single-use binding of session
//! tokens, rooms, DMs and app-managed membership with their events on the
//! channel's stream subject. Real Postgres and NATS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::envelope::Membership;
use herald_proto::token::{dm_channel, SessionClaims, TokenKind};
use herald_proto::{AppId, EventKind};
use herald_server::token::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use herald_server::token::{Verifier, VerifyError};
use herald_testkit::TestDatabase;
use herald_tests::{dev_app, Running, Stack};
use reqwest::Method;
use serde_json::{json, Value};

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

struct Env {
    stack: Stack,
    db: TestDatabase,
    auth: Running,
    http: reqwest::Client,
}

async fn env() -> Env {
    env_with(|_| {}).await
}

/// The same, with the auth service's configuration changed by `configure`.
async fn env_with(configure: impl FnOnce(&mut herald_auth::Config)) -> Env {
    let apps = AppRegistry::new(vec![
        dev_app(),
        AppConfig::new("other-app", "other-key", "other-secret"),
    ])
    .unwrap();
    let stack = Stack::with_apps(apps);
    let db = TestDatabase::create().await.unwrap();
    let mut config = stack.auth_config(&db);
    configure(&mut config);
    let auth = stack.auth_with(config).await;
    Env {
        stack,
        db,
        auth,
        http: reqwest::Client::new(),
    }
}

async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}")),
    )
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.auth.port)
    }

    /// A call with the development app's credentials.
    async fn app(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .basic_auth(KEY, Some(SECRET));
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.unwrap()).await
    }

    /// A call with a session token.
    async fn user(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.unwrap()).await
    }

    async fn register(&self, id: &str, name: &str) {
        let (s, b) = self
            .app(
                Method::PUT,
                &format!("/v1/apps/app-id/users/{id}"),
                Some(json!({"name": name, "avatar_url": format!("https://img.example/{id}.png")})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// A room created by the user of `token`.
    async fn create_room(&self, token: &str, name: &str) -> Value {
        let (s, room) = self
            .user(
                token,
                Method::POST,
                "/v1/apps/app-id/rooms",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, 200, "{room}");
        room
    }

    /// A fresh session token of `user` with `grants`.
    async fn session(&self, user: &str, grants: &[&str]) -> String {
        let (s, b) = self
            .app(
                Method::POST,
                &format!("/v1/apps/app-id/users/{user}/session-tokens"),
                Some(json!({"grants": grants})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["token"].as_str().unwrap().to_owned()
    }

    /// `/pusher/auth` exactly as pusher-js calls it: a form body and the
    /// session token as a Bearer header.
    async fn pusher_auth(&self, token: &str, socket: &str, channel: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/pusher/auth"))
            .bearer_auth(token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "socket_id={}&channel_name={}",
                urlencode(socket),
                urlencode(channel)
            ))
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    async fn user_auth(&self, token: &str, socket: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/pusher/user-auth"))
            .bearer_auth(token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("socket_id={}", urlencode(socket)))
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(self.url("/.well-known/jwks.json"))
            .with_refetch_interval(std::time::Duration::ZERO)
    }

    /// The current private key, to forge tokens the endpoints must refuse.
    async fn current_key(&self) -> (String, Vec<u8>) {
        let pool = sqlx::PgPool::connect(self.db.url()).await.unwrap();
        sqlx::query_as("SELECT kid, private_key FROM auth.signing_keys WHERE retired_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
    }

    /// The kinds and member ids of the events stored on `channel`.
    async fn membership_events(&self, channel: &str) -> Vec<(EventKind, String)> {
        self.stack
            .stored_events(channel)
            .await
            .into_iter()
            .map(|(_, env)| {
                let user = match env.kind {
                    EventKind::MemberJoined | EventKind::MemberLeft => {
                        serde_json::from_str::<Membership>(&env.data)
                            .unwrap()
                            .user_id
                    }
                    _ => String::new(),
                };
                (env.kind, user)
            })
            .collect()
    }
}

/// Percent-encoding of a form value (pusher-js's `encodeURIComponent`).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn pusher_auth_signs_a_granted_private_channel_with_the_app_secret() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let token = e.session("alice", &["private-orders-*"]).await;
    let (s, b) = e.pusher_auth(&token, "123.456", "private-orders-7").await;
    assert_eq!(s, 200, "{b}");
    let auth = b["auth"].as_str().unwrap();
    assert!(herald_proto::pusher::verify_channel_auth(
        KEY,
        SECRET,
        "123.456",
        "private-orders-7",
        None,
        auth
    ));
    assert!(b.get("channel_data").is_none(), "{b}");
    // A signature for another socket or channel does not verify.
    assert!(!herald_proto::pusher::verify_channel_auth(
        KEY,
        SECRET,
        "123.457",
        "private-orders-7",
        None,
        auth
    ));
    // JSON bodies are accepted too (same socket: the token is bound to it).
    let (s, b) = e
        .user(
            &token,
            Method::POST,
            "/pusher/auth",
            Some(json!({"socket_id": "123.456", "channel_name": "private-orders-8"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(herald_proto::pusher::verify_channel_auth(
        KEY,
        SECRET,
        "123.456",
        "private-orders-8",
        None,
        b["auth"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn presence_auth_carries_the_users_id_and_name_and_user_auth_signs_the_user_data() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let token = e.session("alice", &["presence-lobby"]).await;
    let (s, b) = e.pusher_auth(&token, "1.2", "presence-lobby").await;
    assert_eq!(s, 200, "{b}");
    let channel_data = b["channel_data"].as_str().unwrap();
    let data: Value = serde_json::from_str(channel_data).unwrap();
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["user_info"]["name"], "Alice");
    assert_eq!(
        data["user_info"]["avatar_url"],
        "https://img.example/alice.png"
    );
    assert!(herald_proto::pusher::verify_channel_auth(
        KEY,
        SECRET,
        "1.2",
        "presence-lobby",
        Some(channel_data),
        b["auth"].as_str().unwrap()
    ));

    let (s, b) = e.user_auth(&token, "1.2").await;
    assert_eq!(s, 200, "{b}");
    let user_data = b["user_data"].as_str().unwrap();
    let data: Value = serde_json::from_str(user_data).unwrap();
    assert_eq!(data["id"], "alice");
    assert_eq!(data["user_info"]["name"], "Alice");
    let expected = format!(
        "{KEY}:{}",
        herald_proto::pusher::user_signature(SECRET, "1.2", user_data)
    );
    assert_eq!(b["auth"], expected);
}

#[tokio::test]
async fn a_token_replayed_on_another_socket_is_refused_and_its_own_socket_may_authorize_more() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let token = e.session("alice", &["private-a", "private-b"]).await;
    let (s, b) = e.pusher_auth(&token, "1.1", "private-a").await;
    assert_eq!(s, 200, "{b}");
    // Another socket: refused, with the message that says what to do.
    let (s, b) = e.pusher_auth(&token, "2.2", "private-a").await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "forbidden");
    assert_eq!(message(&b), herald_auth::BOUND_ELSEWHERE);
    assert_eq!(
        message(&b),
        "this session token is bound to another connection; ask your backend for a new token"
    );
    let (s, b) = e.user_auth(&token, "2.2").await;
    assert_eq!((s, message(&b)), (403, herald_auth::BOUND_ELSEWHERE));
    let (s, b) = e
        .user(
            &token,
            Method::POST,
            "/v1/apps/app-id/channel-tokens",
            Some(json!({"socket_id": "2.2", "channel": "private-b"})),
        )
        .await;
    assert_eq!((s, message(&b)), (403, herald_auth::BOUND_ELSEWHERE));
    // The same socket: accepted for a second channel, and for the sign-in.
    let (s, b) = e.pusher_auth(&token, "1.1", "private-b").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = e.user_auth(&token, "1.1").await;
    assert_eq!(s, 200, "{b}");
    // A new token is a new binding.
    let fresh = e.session("alice", &["private-a"]).await;
    let (s, b) = e.pusher_auth(&fresh, "2.2", "private-a").await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_channel_no_grant_allows_is_refused_and_wildcards_do_not_reach_rooms_or_dms() {
    let e = env().await;
    e.register("alice", "Alice").await;
    e.register("bob", "Bob").await;
    let dm = dm_channel(&AppId::parse("app-id").unwrap(), "bob", "carol");
    let token = e
        .session("alice", &["private-*", "presence-room-*", "presence-exact"])
        .await;
    let (s, b) = e.pusher_auth(&token, "1.1", "presence-other").await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "forbidden");
    assert!(
        message(&b).contains("may not subscribe to presence-other"),
        "{b}"
    );
    // `private-*` would cover every DM, `presence-room-*` every room: a
    // wildcard never reaches a membership channel.
    let (s, b) = e.pusher_auth(&token, "1.1", dm.as_str()).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = e.pusher_auth(&token, "1.1", "presence-room-abc").await;
    assert_eq!(s, 403, "{b}");
    // A refusal binds nothing: the token still works, on any socket.
    let (s, b) = e.pusher_auth(&token, "3.3", "private-anything").await;
    assert_eq!(s, 200, "{b}");
    // A grant naming a room channel exactly does reach it.
    let exact = e.session("bob", &["presence-room-abc"]).await;
    let (s, b) = e.pusher_auth(&exact, "4.4", "presence-room-abc").await;
    assert_eq!(s, 200, "{b}");
    // Public and encrypted channels are not for this endpoint.
    let (s, b) = e.pusher_auth(&token, "3.3", "public-news").await;
    assert_eq!(s, 400, "{b}");
    assert!(message(&b).contains("public channels need no authorization"));
    let (s, b) = e.pusher_auth(&token, "3.3", "private-encrypted-x").await;
    assert_eq!(s, 400, "{b}");
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused_at_pusher_auth_with_the_precise_error() {
    let e = env().await;
    e.register("u1", "Alice").await;
    let good = e.session("u1", &["private-a"]).await;
    let (kid, pkcs8) = e.current_key().await;
    let key = EncodingKey::from_ed_der(&pkcs8);
    let t = now();
    let claims = |app: &str, nbf: u64, exp: u64| SessionClaims {
        sub: "u1".into(),
        app: app.into(),
        exp,
        iat: nbf,
        nbf,
        jti: uuid_like(exp),
        kind: TokenKind::Session,
        grants: vec!["private-a".into()],
    };
    let ed = |kid: &str| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.to_owned());
        h
    };
    let sign = |h: &Header, c: &SessionClaims| jsonwebtoken::encode(h, c, &key).unwrap();
    let parts: Vec<&str> = good.split('.').collect();

    let refused = |what: &str| format!("session token refused: {what}");
    let mut cases: Vec<(&str, String, String)> = Vec::new();
    cases.push((
        "expired",
        sign(&ed(&kid), &claims("app-id", t - 120, t - 60)),
        refused("token expired"),
    ));
    cases.push((
        "not yet valid",
        sign(&ed(&kid), &claims("app-id", t + 60, t + 120)),
        refused("token not yet valid"),
    ));
    cases.push((
        "an app not served here",
        sign(&ed(&kid), &claims("ghost-app", t, t + 60)),
        refused("its app is not served here"),
    ));
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
            parts[1]
        ),
        refused("malformed token"),
    ));
    // HS256 "signed" with the public key (key confusion).
    let jwks: Value = e
        .http
        .get(e.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    cases.push((
        "HS256 with the public key",
        jsonwebtoken::encode(
            &hs,
            &claims("app-id", t, t + 60),
            &EncodingKey::from_secret(&public),
        )
        .unwrap(),
        refused("token algorithm HS256 is not accepted; only EdDSA is"),
    ));
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    cases.push((
        "a tampered signature",
        format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig)),
        refused("invalid signature"),
    ));
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["grants"] = json!(["private-*"]);
    cases.push((
        "widened grants",
        format!("{}.{}.{}", parts[0], b64(&payload), parts[2]),
        refused("invalid signature"),
    ));
    cases.push((
        "a wrong kid",
        sign(&ed("nope"), &claims("app-id", t, t + 60)),
        refused("unknown key id \"nope\""),
    ));
    let mut channel_kind = serde_json::to_value(claims("app-id", t, t + 60)).unwrap();
    channel_kind["kind"] = json!("channel");
    cases.push((
        "a channel token",
        jsonwebtoken::encode(&ed(&kid), &channel_kind, &key).unwrap(),
        refused("wrong kind of token: a session token is expected"),
    ));
    // A validly signed token of a user the app never registered: presence
    // needs the user's name, so it is refused (a private channel is not).
    let mut ghost = claims("app-id", t, t + 60);
    ghost.sub = "ghost".into();
    ghost.grants = vec!["presence-x".into(), "private-a".into()];
    let ghost = sign(&ed(&kid), &ghost);
    let (s, b) = e.pusher_auth(&ghost, "8.8", "presence-x").await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(
        message(&b),
        "user \"ghost\" is not registered in this app: register it first"
    );
    let (s, b) = e.user_auth(&ghost, "8.8").await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = e.pusher_auth(&ghost, "8.8", "private-a").await;
    assert_eq!(s, 200, "{b}");
    for (what, token, expected) in &cases {
        let (s, b) = e.pusher_auth(token, "1.1", "private-a").await;
        assert_eq!(s, 401, "{what}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized", "{what}");
        assert_eq!(message(&b), expected, "{what}");
    }
    // No token at all.
    let resp = e
        .http
        .post(e.url("/pusher/auth"))
        .form(&[("socket_id", "1.1"), ("channel_name", "private-a")])
        .send()
        .await
        .unwrap();
    let (s, b) = answer(resp).await;
    assert_eq!(s, 401);
    assert!(message(&b).starts_with("missing session token"), "{b}");
    // Bearer, not Basic: a browser must not answer with a login prompt.
    let resp = e
        .http
        .post(e.url("/pusher/auth"))
        .bearer_auth(&cases[0].1)
        .form(&[("socket_id", "1.1"), ("channel_name", "private-a")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"herald\""
    );
    // The untouched token still works: none of the refusals bound it.
    let (s, b) = e.pusher_auth(&good, "9.9", "private-a").await;
    assert_eq!(s, 200, "{b}");
}

fn uuid_like(n: u64) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

#[tokio::test]
async fn a_token_of_another_app_is_refused_where_the_route_names_this_app() {
    let e = env().await;
    let (s, _) = e
        .http
        .put(e.url("/v1/apps/other-app/users/eve"))
        .basic_auth("other-key", Some("other-secret"))
        .json(&json!({"name": "Eve"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(s, 200);
    let resp = e
        .http
        .post(e.url("/v1/apps/other-app/users/eve/session-tokens"))
        .basic_auth("other-key", Some("other-secret"))
        .json(&json!({"grants": ["private-a"]}))
        .send()
        .await
        .unwrap();
    let token = answer(resp).await.1["token"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/apps/app-id/channel-tokens",
            Some(json!({"socket_id": "1.1", "channel": "private-a"})),
        ),
        (
            Method::POST,
            "/v1/apps/app-id/rooms",
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/apps/app-id/rooms", None),
        (Method::GET, "/v1/apps/app-id/dms", None),
    ] {
        let (s, b) = e.user(&token, method, path, body).await;
        assert_eq!(s, 401, "{path}: {b}");
        assert_eq!(
            message(&b),
            "session token refused: token belongs to another app"
        );
    }
    // At /pusher/auth it authorizes for its own app, signed with its own secret.
    let (s, b) = e.pusher_auth(&token, "1.1", "private-a").await;
    assert_eq!(s, 200, "{b}");
    assert!(herald_proto::pusher::verify_channel_auth(
        "other-key",
        "other-secret",
        "1.1",
        "private-a",
        None,
        b["auth"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn a_channel_token_is_issued_for_one_socket_and_verifies_as_a_channel_token_only() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let (s, b) = e
        .app(
            Method::POST,
            "/v1/apps/app-id/users/alice/session-tokens",
            Some(json!({"grants": ["presence-lobby", "private-x"], "ttl_secs": 120})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let session = b["token"].as_str().unwrap().to_owned();
    let session_exp = b["expires_at"].as_u64().unwrap();
    let (s, b) = e
        .user(
            &session,
            Method::POST,
            "/v1/apps/app-id/channel-tokens",
            Some(json!({"socket_id": "5.6", "channel": "presence-lobby"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"].as_str().unwrap();
    let expires_at = b["expires_at"].as_u64().unwrap();
    // The session token expires first: the channel token does not outlive it.
    assert_eq!(expires_at, session_exp);
    let v = e.verifier();
    let claims = v.verify_channel(token, "app-id").await.unwrap();
    assert_eq!(claims.kind, TokenKind::Channel);
    assert_eq!(claims.channel, "presence-lobby");
    assert_eq!(claims.socket_id, "5.6");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.exp, expires_at);
    assert_eq!(claims.user_info.as_ref().unwrap()["name"], "Alice");
    // Neither kind stands in for the other.
    assert_eq!(
        v.verify_session(token, Some("app-id")).await,
        Err(VerifyError::WrongKind("session"))
    );
    assert_eq!(
        v.verify_channel(&session, "app-id").await,
        Err(VerifyError::WrongKind("channel"))
    );
    assert_eq!(
        v.verify_channel(token, "other-app").await,
        Err(VerifyError::WrongApp)
    );
    // A channel token is no session token for the auth service either.
    let (s, b) = e.pusher_auth(token, "5.6", "private-x").await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(
        message(&b),
        "session token refused: wrong kind of token: a session token is expected"
    );
    // A long-lived session token: the channel token lives 5 minutes.
    let (_, b) = e
        .app(
            Method::POST,
            "/v1/apps/app-id/users/alice/session-tokens",
            Some(json!({"grants": ["private-x"], "ttl_secs": 3600})),
        )
        .await;
    let long = b["token"].as_str().unwrap().to_owned();
    let (s, b) = e
        .user(
            &long,
            Method::POST,
            "/v1/apps/app-id/channel-tokens",
            Some(json!({"socket_id": "7.8", "channel": "private-x"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let claims = v
        .verify_channel(b["token"].as_str().unwrap(), "app-id")
        .await
        .unwrap();
    assert!(claims.exp - claims.iat == herald_auth::CHANNEL_TOKEN_LIFE_SECS);
    assert!(claims.user_info.is_none());
    // Not granted: refused.
    let (s, b) = e
        .user(
            &long,
            Method::POST,
            "/v1/apps/app-id/channel-tokens",
            Some(json!({"socket_id": "7.8", "channel": "private-y"})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
}

#[tokio::test]
async fn a_room_lives_from_create_through_join_and_leave_to_a_purged_channel() {
    let e = env().await;
    for (id, name) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
        e.register(id, name).await;
    }
    let alice = e.session("alice", &[]).await;
    let room = e.create_room(&alice, "Lounge").await;
    let id = room["id"].as_str().unwrap().to_owned();
    let code = room["code"].as_str().unwrap().to_owned();
    let channel = room["channel"].as_str().unwrap().to_owned();
    assert_eq!(channel, format!("presence-room-{id}"));
    assert_eq!(room["owner"], "alice");
    assert_eq!(room["name"], "Lounge");
    assert_eq!(code.len(), herald_auth::ROOM_CODE_LEN);
    // The owner is a member at once.
    let (s, b) = e.pusher_auth(&alice, "1.1", &channel).await;
    assert_eq!(s, 200, "{b}");

    // Bob is no member yet.
    let bob = e.session("bob", &[]).await;
    let (s, b) = e.pusher_auth(&bob, "2.2", &channel).await;
    assert_eq!(s, 403, "{b}");
    // Wrong codes: one answer for all of them.
    let mut wrong = Vec::new();
    for bad in ["AAAAAAAAAA", "ZZZZZZZZZZ", &code[..9]] {
        let (s, b) = e
            .user(
                &bob,
                Method::POST,
                "/v1/apps/app-id/rooms/join",
                Some(json!({ "code": bad })),
            )
            .await;
        assert_eq!(s, 404, "{b}");
        wrong.push(b);
    }
    assert!(wrong.iter().all(|b| *b == wrong[0]));
    assert_eq!(message(&wrong[0]), "no room has this code");
    // The right code (typed in lower case) joins, and bob may subscribe
    // right away: membership is read from where it was written.
    let (s, b) = e
        .user(
            &bob,
            Method::POST,
            "/v1/apps/app-id/rooms/join",
            Some(json!({"code": code.to_ascii_lowercase()})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["id"], id.as_str());
    let (s, b) = e.pusher_auth(&bob, "2.2", &channel).await;
    assert_eq!(s, 200, "{b}");
    let data: Value = serde_json::from_str(b["channel_data"].as_str().unwrap()).unwrap();
    assert_eq!(data["user_id"], "bob");
    assert_eq!(data["user_info"]["name"], "Bob");
    // Joining again changes nothing (and stores no second event).
    let (s, _) = e
        .user(
            &bob,
            Method::POST,
            "/v1/apps/app-id/rooms/join",
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(s, 200);

    // Carol is not a member: no auth, no member list.
    let carol = e.session("carol", &[]).await;
    let (s, b) = e.pusher_auth(&carol, "3.3", &channel).await;
    assert_eq!(s, 403, "{b}");
    let members_path = format!("/v1/apps/app-id/rooms/{id}/members");
    let (s, b) = e.user(&carol, Method::GET, &members_path, None).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = e.user(&bob, Method::GET, &members_path, None).await;
    assert_eq!(s, 200, "{b}");
    let ids: Vec<&str> = b["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    // Paged, and the app sees it too.
    let (s, b) = e
        .app(Method::GET, &format!("{members_path}?limit=1"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["members"][0]["user_id"], "alice");
    assert_eq!(b["next"], "alice");
    let (_, b) = e
        .app(
            Method::GET,
            &format!("{members_path}?limit=1&after=alice"),
            None,
        )
        .await;
    assert_eq!(b["members"][0]["user_id"], "bob");
    assert_eq!(b["next"], Value::Null);
    // Bob's rooms, also as the app acting for him.
    let (s, b) = e
        .user(&bob, Method::GET, "/v1/apps/app-id/rooms", None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rooms"][0]["id"], id.as_str());
    let (_, b) = e
        .app(Method::GET, "/v1/apps/app-id/rooms?as_user=carol", None)
        .await;
    assert_eq!(b["rooms"], json!([]));

    // Bob cannot destroy it.
    let room_path = format!("/v1/apps/app-id/rooms/{id}");
    let (s, b) = e.user(&bob, Method::DELETE, &room_path, None).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(message(&b), "only the room's owner may destroy it");
    // Bob leaves: refused at once, with a new token too.
    let (s, b) = e
        .user(&bob, Method::POST, &format!("{room_path}/leave"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], true);
    let bob2 = e.session("bob", &[]).await;
    let (s, b) = e.pusher_auth(&bob2, "4.4", &channel).await;
    assert_eq!(s, 403, "{b}");
    // And rejoins: a new membership, a new event (not a "duplicate").
    let (s, _) = e
        .user(
            &bob2,
            Method::POST,
            "/v1/apps/app-id/rooms/join",
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(s, 200);

    // Every change is on the channel's subject, in order.
    let events = e.membership_events(&channel).await;
    let joined = |u: &str| (EventKind::MemberJoined, u.to_owned());
    let left = |u: &str| (EventKind::MemberLeft, u.to_owned());
    assert_eq!(
        events,
        [joined("alice"), joined("bob"), left("bob"), joined("bob")]
    );
    let stored = e.stack.stored_events(&channel).await;
    let first: Membership = serde_json::from_str(&stored[0].1.data).unwrap();
    assert_eq!(first.room_id.as_deref(), Some(id.as_str()));
    assert_eq!(stored[0].1.event, "herald:member_joined");
    assert_eq!(stored[0].1.author.as_deref(), Some("alice"));
    assert_eq!(stored[2].1.event, "herald:member_left");

    // The owner destroys it: the subject is purged, then a channel_purged
    // event is its only content; the room and its members are gone.
    let (s, b) = e.user(&alice, Method::DELETE, &room_path, None).await;
    assert_eq!(s, 200, "{b}");
    let after = e.stack.stored_events(&channel).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].1.kind, EventKind::ChannelPurged);
    assert_eq!(after[0].1.event, "herald:channel_purged");
    assert!(after[0].0 > stored[3].0);
    let (s, _) = e.user(&bob2, Method::GET, &members_path, None).await;
    assert_eq!(s, 404);
    let (s, _) = e
        .user(
            &bob2,
            Method::POST,
            "/v1/apps/app-id/rooms/join",
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(s, 404);
    let (s, b) = e.pusher_auth(&bob2, "4.4", &channel).await;
    assert_eq!(s, 403, "{b}");
    let (s, _) = e.user(&alice, Method::DELETE, &room_path, None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_dm_channel_is_the_same_both_ways_and_only_its_two_users_may_subscribe() {
    let e = env().await;
    for (id, name) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
        e.register(id, name).await;
    }
    let alice = e.session("alice", &[]).await;
    let bob = e.session("bob", &[]).await;
    let (s, ab) = e
        .user(
            &alice,
            Method::POST,
            "/v1/apps/app-id/dms",
            Some(json!({"user_id": "bob"})),
        )
        .await;
    assert_eq!(s, 200, "{ab}");
    let (s, ba) = e
        .user(
            &bob,
            Method::POST,
            "/v1/apps/app-id/dms",
            Some(json!({"user_id": "alice"})),
        )
        .await;
    assert_eq!(s, 200, "{ba}");
    let channel = ab["channel"].as_str().unwrap().to_owned();
    assert_eq!(ba["channel"], channel.as_str());
    assert_eq!(
        channel,
        dm_channel(&AppId::parse("app-id").unwrap(), "alice", "bob").as_str()
    );
    assert_eq!(ab["user_id"], "bob");
    assert_eq!(ba["user_id"], "alice");
    let (s, b) = e.pusher_auth(&alice, "1.1", &channel).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = e.pusher_auth(&bob, "2.2", &channel).await;
    assert_eq!(s, 200, "{b}");
    let carol = e.session("carol", &["private-*"]).await;
    let (s, b) = e.pusher_auth(&carol, "3.3", &channel).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = e.user(&bob, Method::GET, "/v1/apps/app-id/dms", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["dms"], json!([{"channel": channel, "user_id": "alice"}]));
    let (_, b) = e
        .app(Method::GET, "/v1/apps/app-id/dms?as_user=carol", None)
        .await;
    assert_eq!(b["dms"], json!([]));
    // Both joined once, whoever opened it first.
    let mut events = e.membership_events(&channel).await;
    events.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        events,
        [
            (EventKind::MemberJoined, "alice".to_owned()),
            (EventKind::MemberJoined, "bob".to_owned())
        ]
    );
    // Not with oneself, not with a stranger.
    let (s, b) = e
        .user(
            &alice,
            Method::POST,
            "/v1/apps/app-id/dms",
            Some(json!({"user_id": "alice"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = e
        .user(
            &alice,
            Method::POST,
            "/v1/apps/app-id/dms",
            Some(json!({"user_id": "nobody"})),
        )
        .await;
    assert_eq!(s, 404, "{b}");
    assert!(message(&b).contains("not registered"));
}

#[tokio::test]
async fn the_app_manages_membership_of_any_private_channel_with_its_credentials_only() {
    let e = env().await;
    e.register("bob", "Bob").await;
    let bob = e.session("bob", &[]).await;
    let (s, _) = e.pusher_auth(&bob, "1.1", "private-team").await;
    assert_eq!(s, 403);
    let member = "/v1/apps/app-id/channels/private-team/members/bob";
    let (s, b) = e.app(Method::PUT, member, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], true);
    let (s, b) = e.app(Method::PUT, member, None).await;
    assert_eq!((s, &b["changed"]), (200, &json!(false)));
    let (s, b) = e.pusher_auth(&bob, "1.1", "private-team").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = e
        .app(
            Method::GET,
            "/v1/apps/app-id/channels/private-team/members",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["members"][0]["user_id"], "bob");
    // A session token cannot manage membership.
    let (s, _) = e.user(&bob, Method::PUT, member, None).await;
    assert_eq!(s, 401);
    let (s, _) = e.user(&bob, Method::DELETE, member, None).await;
    assert_eq!(s, 401);
    // Unregistered users cannot be added.
    let (s, b) = e
        .app(
            Method::PUT,
            "/v1/apps/app-id/channels/private-team/members/ghost",
            None,
        )
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = e.app(Method::DELETE, member, None).await;
    assert_eq!((s, &b["changed"]), (200, &json!(true)));
    let again = e.session("bob", &[]).await;
    let (s, _) = e.pusher_auth(&again, "1.1", "private-team").await;
    assert_eq!(s, 403);
    assert_eq!(
        e.membership_events("private-team").await,
        [
            (EventKind::MemberJoined, "bob".to_owned()),
            (EventKind::MemberLeft, "bob".to_owned())
        ]
    );
    let stored = e.stack.stored_events("private-team").await;
    let m: Membership = serde_json::from_str(&stored[0].1.data).unwrap();
    assert_eq!(m.room_id, None);
}

#[tokio::test]
async fn a_membership_change_whose_event_cannot_be_stored_is_a_503_and_changes_nothing() {
    let mut e = env().await;
    e.register("bob", "Bob").await;
    e.stack.nats.stop();
    let (s, b) = e
        .app(
            Method::PUT,
            "/v1/apps/app-id/channels/private-team/members/bob",
            None,
        )
        .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "unavailable");
    assert!(message(&b).contains("nothing was changed"), "{b}");
    // Creating a room stores its owner's membership event: refused too.
    let (s, b) = e
        .app(
            Method::POST,
            "/v1/apps/app-id/rooms?as_user=bob",
            Some(json!({"name": "Lounge"})),
        )
        .await;
    assert_eq!(s, 503, "{b}");
    let pool = sqlx::PgPool::connect(e.db.url()).await.unwrap();
    for table in ["auth.channel_members", "auth.rooms"] {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}: the change was rolled back");
    }
}

#[tokio::test]
async fn concurrent_joins_of_one_user_make_one_member_and_one_event() {
    let e = env().await;
    e.register("alice", "Alice").await;
    e.register("bob", "Bob").await;
    let (s, room) = e
        .app(
            Method::POST,
            "/v1/apps/app-id/rooms?as_user=alice",
            Some(json!({"name": "Busy"})),
        )
        .await;
    assert_eq!(s, 200, "{room}");
    let joins = (0..8).map(|_| {
        e.app(
            Method::POST,
            "/v1/apps/app-id/rooms/join?as_user=bob",
            Some(json!({"code": room["code"]})),
        )
    });
    for (s, b) in futures::future::join_all(joins).await {
        assert_eq!(s, 200, "{b}");
    }
    let channel = room["channel"].as_str().unwrap();
    assert_eq!(
        e.membership_events(channel).await,
        [
            (EventKind::MemberJoined, "alice".to_owned()),
            (EventKind::MemberJoined, "bob".to_owned())
        ]
    );
    // Bob, a member without any grant, gets a channel token for the room.
    let bob = e.session("bob", &[]).await;
    let (s, b) = e
        .user(
            &bob,
            Method::POST,
            "/v1/apps/app-id/channel-tokens",
            Some(json!({"socket_id": "8.8", "channel": channel})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let claims = e
        .verifier()
        .verify_channel(b["token"].as_str().unwrap(), "app-id")
        .await
        .unwrap();
    assert_eq!(claims.channel, channel);
    assert_eq!(claims.user_info.unwrap()["name"], "Bob");
}

#[tokio::test]
async fn bad_input_in_every_new_field_is_a_json_400_with_nothing_internal() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let alice = e.session("alice", &["private-a"]).await;
    let long = "x".repeat(200);
    let mut bodies: Vec<(String, u16, Value)> = Vec::new();

    for (socket, channel) in [
        ("1.1'; DROP TABLE users; --", "private-a"),
        (&"1".repeat(42) as &str, "private-a"),
        ("", "private-a"),
        ("1.1", "private-a'; DROP TABLE users; --"),
        ("1.1", &format!("private-{long}")),
        ("1.1", ""),
    ] {
        let (s, b) = e.pusher_auth(&alice, socket, channel).await;
        bodies.push((format!("pusher/auth {socket:?} {channel:?}"), s, b));
    }
    let resp = e
        .http
        .post(e.url("/pusher/auth"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"socket_id\": 1")
        .send()
        .await
        .unwrap();
    let (s, b) = answer(resp).await;
    bodies.push(("pusher/auth broken JSON".into(), s, b));
    let (s, b) = e.user_auth(&alice, "1.1' OR '1'='1").await;
    bodies.push(("user-auth socket".into(), s, b));
    for body in [
        json!({"socket_id": "1.1", "channel": "private-a'--"}),
        json!({"socket_id": "1.1' --", "channel": "private-a"}),
        json!({"socket_id": "1.1", "channel": "private-a", "grants": ["*"]}),
        json!({"socket_id": "1.1"}),
    ] {
        let (s, b) = e
            .user(
                &alice,
                Method::POST,
                "/v1/apps/app-id/channel-tokens",
                Some(body.clone()),
            )
            .await;
        bodies.push((format!("channel-tokens {body}"), s, b));
    }
    for body in [
        json!({"name": "x".repeat(herald_auth::MAX_ROOM_NAME_LEN + 1)}),
        json!({"name": ""}),
        json!({"name": "a\u{0}b"}),
        json!({"name": "ok", "owner": "mallory"}),
        json!({"name": 5}),
    ] {
        let (s, b) = e
            .user(
                &alice,
                Method::POST,
                "/v1/apps/app-id/rooms",
                Some(body.clone()),
            )
            .await;
        bodies.push((format!("rooms {body}"), s, b));
    }
    for body in [
        json!({"code": "' OR '1'='1"}),
        json!({"code": "A".repeat(33)}),
        json!({"code": ""}),
        json!({"code": "%"}),
    ] {
        let (s, b) = e
            .user(
                &alice,
                Method::POST,
                "/v1/apps/app-id/rooms/join",
                Some(body.clone()),
            )
            .await;
        bodies.push((format!("join {body}"), s, b));
    }
    for path in [
        "/v1/apps/app-id/rooms/x'%20OR%201=1--/leave".to_owned(),
        format!("/v1/apps/app-id/rooms/{}/leave", "r".repeat(65)),
    ] {
        let (s, b) = e.user(&alice, Method::POST, &path, None).await;
        bodies.push((path.clone(), s, b));
        let members = path.replace("/leave", "/members");
        let (s, b) = e.user(&alice, Method::GET, &members, None).await;
        bodies.push((members, s, b));
        let room = path.replace("/leave", "");
        let (s, b) = e.user(&alice, Method::DELETE, &room, None).await;
        bodies.push((room, s, b));
    }
    for body in [
        json!({"user_id": "u".repeat(129)}),
        json!({"user_id": ""}),
        json!({"user_id": "bob", "x": 1}),
    ] {
        let (s, b) = e
            .user(
                &alice,
                Method::POST,
                "/v1/apps/app-id/dms",
                Some(body.clone()),
            )
            .await;
        bodies.push((format!("dms {body}"), s, b));
    }
    for path in [
        "/v1/apps/app-id/channels/private-x'%20OR%201=1/members/bob".to_owned(),
        format!("/v1/apps/app-id/channels/private-{long}/members/bob"),
        "/v1/apps/app-id/channels/public-news/members/bob".to_owned(),
        format!(
            "/v1/apps/app-id/channels/private-x/members/{}",
            "u".repeat(129)
        ),
    ] {
        let (s, b) = e.app(Method::PUT, &path, None).await;
        bodies.push((format!("PUT {path}"), s, b));
        let (s, b) = e.app(Method::DELETE, &path, None).await;
        bodies.push((format!("DELETE {path}"), s, b));
    }
    for query in ["limit=0", "limit=1001", "limit=1;DROP", "after=", "bogus=1"] {
        let path = format!("/v1/apps/app-id/channels/private-x/members?{query}");
        let (s, b) = e.app(Method::GET, &path, None).await;
        bodies.push((path, s, b));
    }
    let path = format!("/v1/apps/app-id/rooms?as_user={}", "u".repeat(129));
    let (s, b) = e.app(Method::GET, &path, None).await;
    bodies.push((path, s, b));
    // NUL (which Postgres text cannot hold) anywhere: a 400, never a 500.
    for path in [
        "/v1/apps/app-id/rooms?as_user=a%00b",
        "/v1/apps/app-id/dms?as_user=%00",
        "/v1/apps/app-id/users?prefix=a%00",
        "/v1/apps/app-id/users/a%00b",
        "/v1/apps/app-id/channels/private-x/members?after=a%00",
    ] {
        let (s, b) = e.app(Method::GET, path, None).await;
        bodies.push((format!("NUL: GET {path}"), s, b));
    }
    for body in [
        json!({"name": "a\u{0}b"}),
        json!({"name": "a", "metadata": {"k": "v\u{0}"}}),
        json!({"name": "a", "metadata": {"k\u{0}": 1}}),
        json!({"name": "a", "metadata": {"k": [{"deep": "\u{0}"}]}}),
    ] {
        let (s, b) = e
            .app(Method::PUT, "/v1/apps/app-id/users/nul", Some(body.clone()))
            .await;
        bodies.push((format!("NUL: PUT user {body}"), s, b));
    }
    let (s, b) = e
        .app(
            Method::POST,
            "/v1/apps/app-id/users/batch",
            Some(json!({"user_ids": ["a\u{0}"]})),
        )
        .await;
    bodies.push(("NUL: users/batch".into(), s, b));
    let (s, b) = e
        .user(
            &alice,
            Method::GET,
            "/v1/apps/app-id/rooms?as_user=bob",
            None,
        )
        .await;
    bodies.push(("as_user with a session token".into(), s, b));

    for (what, status, body) in &bodies {
        assert_eq!(*status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{what}: {body}");
        let text = body.to_string().to_lowercase();
        for leak in ["sqlx", "postgres", "syntax", "relation", "panicked", "nats"] {
            assert!(!text.contains(leak), "{what} leaks {leak:?}: {body}");
        }
        assert!(!message(body).is_empty(), "{what}");
    }

    // The app itself is no user: where a user must act, app credentials
    // without as_user are refused (well formed, but not allowed).
    for (method, path, body) in [
        (Method::GET, "/v1/apps/app-id/rooms", None),
        (Method::GET, "/v1/apps/app-id/dms", None),
        (
            Method::POST,
            "/v1/apps/app-id/rooms",
            Some(json!({"name": "r"})),
        ),
        (
            Method::POST,
            "/v1/apps/app-id/dms",
            Some(json!({"user_id": "alice"})),
        ),
    ] {
        let (s, b) = e.app(method.clone(), path, body).await;
        assert_eq!(s, 403, "{method} {path} as the app without as_user: {b}");
        assert!(message(&b).contains("as_user"), "{b}");
    }

    // Credentials are judged first: wrong ones are a 401 even when the
    // query or body is invalid too.
    for (method, path, body) in [
        (
            Method::GET,
            format!("/v1/apps/app-id/rooms?as_user={}", "u".repeat(129)),
            None,
        ),
        (
            Method::GET,
            "/v1/apps/app-id/dms?as_user=a%00".to_owned(),
            None,
        ),
        (
            Method::POST,
            "/v1/apps/app-id/rooms?bogus=1".to_owned(),
            Some(json!({"name": ""})),
        ),
        (
            Method::POST,
            "/v1/apps/app-id/rooms/join?as_user=bob".to_owned(),
            Some(json!({"code": "!"})),
        ),
    ] {
        for token in ["not-a-token", ""] {
            let (s, b) = e.user(token, method.clone(), &path, body.clone()).await;
            assert_eq!(s, 401, "{method} {path} with Bearer {token:?}: {b}");
        }
        let resp = e
            .http
            .request(method.clone(), e.url(&path))
            .basic_auth(KEY, Some("wrong"))
            .send()
            .await
            .unwrap();
        let (s, b) = answer(resp).await;
        assert_eq!(s, 401, "{method} {path} with a wrong secret: {b}");
    }

    // SQL metacharacters where they are valid are stored as written.
    let name = "Robert'); DROP TABLE rooms; --";
    let b = e.create_room(&alice, name).await;
    assert_eq!(b["name"], name);
    let (s, b) = e
        .user(&alice, Method::GET, "/v1/apps/app-id/rooms", None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rooms"][0]["name"], name);
    let (s, b) = e
        .user(
            &alice,
            Method::POST,
            "/v1/apps/app-id/dms",
            Some(json!({"user_id": "bob' OR '1'='1"})),
        )
        .await;
    assert_eq!(s, 404, "{b}");
}

#[tokio::test]
async fn browsers_may_call_the_bearer_routes_cross_origin_but_not_the_app_credential_ones() {
    let e = env().await;
    for path in [
        "/pusher/auth",
        "/pusher/user-auth",
        "/v1/apps/app-id/rooms",
        "/v1/apps/app-id/channel-tokens",
    ] {
        let (status, h) = herald_tests::cors_preflight(&e.http, e.url(path), "POST").await;
        assert!(status.is_success(), "{path}: {status}");
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization"), "{path}: {allowed}");
        assert!(allowed.contains("content-type"), "{path}: {allowed}");
        assert!(h.get("access-control-allow-credentials").is_none());
    }
    // The answers themselves carry the header too, refusals included, so
    // pusher-js in a browser can read why it was refused.
    e.register("alice", "Alice").await;
    let token = e.session("alice", &["private-a"]).await;
    for (channel, status) in [("private-a", 200), ("private-b", 403)] {
        let resp = e
            .http
            .post(e.url("/pusher/auth"))
            .header("origin", "https://chat.example")
            .bearer_auth(&token)
            .form(&[("socket_id", "1.1"), ("channel_name", channel)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    }
    let resp = e
        .http
        .post(e.url("/pusher/auth"))
        .header("origin", "https://chat.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = e
        .http
        .request(Method::OPTIONS, e.url("/v1/apps/app-id/users/u1"))
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_openapi_document_describes_the_channel_and_room_routes_with_their_bounds() {
    let e = env().await;
    let doc: Value = e
        .http
        .get(e.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method) in [
        ("/pusher/auth", "post"),
        ("/pusher/user-auth", "post"),
        ("/v1/apps/{app}/channel-tokens", "post"),
        ("/v1/apps/{app}/rooms", "post"),
        ("/v1/apps/{app}/rooms", "get"),
        ("/v1/apps/{app}/rooms/join", "post"),
        ("/v1/apps/{app}/rooms/{room}", "delete"),
        ("/v1/apps/{app}/rooms/{room}/leave", "post"),
        ("/v1/apps/{app}/rooms/{room}/members", "get"),
        ("/v1/apps/{app}/dms", "post"),
        ("/v1/apps/{app}/dms", "get"),
        ("/v1/apps/{app}/channels/{channel}/members/{user_id}", "put"),
        (
            "/v1/apps/{app}/channels/{channel}/members/{user_id}",
            "delete",
        ),
        ("/v1/apps/{app}/channels/{channel}/members", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    let s = &doc["components"]["schemas"];
    assert_eq!(
        s["CreateRoom"]["properties"]["name"]["maxLength"],
        herald_auth::MAX_ROOM_NAME_LEN
    );
    assert_eq!(s["JoinRoom"]["properties"]["code"]["maxLength"], 32);
    assert_eq!(
        s["PusherAuthBody"]["properties"]["channel_name"]["maxLength"],
        164
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["session_bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn the_gateway_accepts_what_pusher_auth_signs_and_delivers_membership_events_live() {
    let e = env().await;
    for (id, name) in [("alice", "Alice"), ("bob", "Bob")] {
        e.register(id, name).await;
    }
    // Presence channels are answered with the presence service's members.
    let _presence = e.stack.presence().await;
    let gateway = e.stack.gateway().await;
    let alice = e.session("alice", &[]).await;
    let room = e.create_room(&alice, "Lounge").await;
    let channel = room["channel"].as_str().unwrap();
    let mut socket = herald_tests::PusherSocket::connect(gateway.port, KEY)
        .await
        .unwrap();
    // What pusher-js does: ask /pusher/auth for the socket, subscribe with
    // the answer as it is.
    let (s, b) = e.pusher_auth(&alice, &socket.socket_id, channel).await;
    assert_eq!(s, 200, "{b}");
    let frame = socket
        .subscribe_with(json!({
            "channel": channel,
            "auth": b["auth"],
            "channel_data": b["channel_data"],
        }))
        .await
        .unwrap();
    assert_eq!(
        frame["event"], "pusher_internal:subscription_succeeded",
        "{frame}"
    );
    // And the sign-in, with /pusher/user-auth's answer.
    let (s, b) = e.user_auth(&alice, &socket.socket_id).await;
    assert_eq!(s, 200, "{b}");
    socket
        .send_event(
            "pusher:signin",
            json!({"auth": b["auth"], "user_data": b["user_data"]}),
        )
        .await
        .unwrap();
    let frame = socket
        .next_event_of(&["pusher:signin_success", "pusher:error"])
        .await
        .unwrap();
    assert_eq!(frame["event"], "pusher:signin_success", "{frame}");
    // Bob joins: the stored membership event reaches the subscriber.
    let bob = e.session("bob", &[]).await;
    let (s, _) = e
        .user(
            &bob,
            Method::POST,
            "/v1/apps/app-id/rooms/join",
            Some(json!({"code": room["code"]})),
        )
        .await;
    assert_eq!(s, 200);
    let frame = socket
        .next_event_of(&["herald:member_joined"])
        .await
        .unwrap();
    assert_eq!(frame["channel"], channel);
    assert_eq!(herald_tests::data_of(&frame)["user_id"], "bob");
}

#[tokio::test]
async fn room_routes_refuse_missing_and_wrong_credentials() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let resp = e
        .http
        .post(e.url("/v1/apps/app-id/rooms"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let (s, b) = answer(resp).await;
    assert_eq!(s, 401, "{b}");
    assert!(message(&b).starts_with("missing credentials"), "{b}");
    for (key, secret) in [("app-key", "wrong"), ("other-key", "other-secret")] {
        let resp = e
            .http
            .post(e.url("/v1/apps/app-id/rooms?as_user=alice"))
            .basic_auth(key, Some(secret))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        let (s, b) = answer(resp).await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(message(&b), herald_server::auth::BAD_CREDENTIALS);
    }
    // The app acting for a user who does not own the room cannot destroy
    // it; the app itself can.
    let (_, room) = e
        .app(
            Method::POST,
            "/v1/apps/app-id/rooms?as_user=alice",
            Some(json!({"name": "x"})),
        )
        .await;
    let path = format!("/v1/apps/app-id/rooms/{}", room["id"].as_str().unwrap());
    let (s, _) = e
        .app(Method::DELETE, &format!("{path}?as_user=mallory"), None)
        .await;
    assert_eq!(s, 403);
    let (s, b) = e.app(Method::DELETE, &path, None).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_user_guessing_room_codes_is_held_to_the_configured_joins_per_minute() {
    let e = env_with(|config| config.room_joins_per_minute = 3).await;
    for (id, name) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
        e.register(id, name).await;
    }
    let alice = e.session("alice", &[]).await;
    let room = e.create_room(&alice, "Vault").await;
    let code = room["code"].as_str().unwrap().to_owned();
    let join = |token: String, code: String| {
        let e = &e;
        async move {
            e.http
                .post(e.auth.url("/v1/apps/app-id/rooms/join"))
                .bearer_auth(token)
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap()
        }
    };
    let bob = e.session("bob", &[]).await;
    for guess in ["AAAAAAAAAA", "BBBBBBBBBB", "CCCCCCCCCC"] {
        let (s, b) = answer(join(bob.clone(), guess.into()).await).await;
        assert_eq!(s, 404, "{b}");
    }
    // The fourth try within the minute is refused, even with the right
    // code: the answer says nothing about the code.
    let resp = join(bob.clone(), code.clone()).await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (s, b) = answer(resp).await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"]["code"], "rate_limited");
    // Others are not held back by bob's guessing.
    let carol = e.session("carol", &[]).await;
    let (s, b) = answer(join(carol, code).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["id"], room["id"]);
}

#[tokio::test]
async fn a_users_rooms_and_dms_come_a_page_at_a_time_oldest_first_with_no_repeat_or_gap() {
    let e = env().await;
    e.register("alice", "Alice").await;
    let alice = e.session("alice", &[]).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let room = e.create_room(&alice, &format!("room {i}")).await;
        created.push(room["id"].as_str().unwrap().to_owned());
    }
    let mut dm_peers = Vec::new();
    for i in 0..3 {
        let peer = format!("peer{i}");
        e.register(&peer, "Peer").await;
        let (s, b) = e
            .user(
                &alice,
                Method::POST,
                "/v1/apps/app-id/dms",
                Some(json!({ "user_id": peer })),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        dm_peers.push(peer);
    }
    // Walk both lists two at a time.
    let walk = |path: &'static str, field: &'static str, key: &'static str| {
        let (e, alice) = (&e, alice.clone());
        async move {
            let (mut seen, mut pages, mut after) = (Vec::new(), 0, None::<String>);
            loop {
                let url = match &after {
                    Some(a) => format!("{path}?limit=2&after={a}"),
                    None => format!("{path}?limit=2"),
                };
                let (s, b) = e.user(&alice, Method::GET, &url, None).await;
                assert_eq!(s, 200, "{b}");
                pages += 1;
                let items = b[field].as_array().unwrap();
                assert!(items.len() <= 2);
                seen.extend(items.iter().map(|r| r[key].as_str().unwrap().to_owned()));
                match b["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            (seen, pages)
        }
    };
    let (rooms, pages) = walk("/v1/apps/app-id/rooms", "rooms", "id").await;
    assert_eq!(rooms, created, "every room once, oldest first");
    assert_eq!(pages, 3);
    let (dms, pages) = walk("/v1/apps/app-id/dms", "dms", "user_id").await;
    assert_eq!(dms, dm_peers);
    assert_eq!(pages, 2);
    // Without a limit: everything on one page, and no next.
    let (s, b) = e
        .user(&alice, Method::GET, "/v1/apps/app-id/rooms", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["rooms"].as_array().unwrap().len(), 5);
    assert_eq!(b["next"], Value::Null);
    // Bad bounds are JSON errors.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=nodot",
        "after=12.",
        "after=.abc",
        "after=1234567890123456789.abc",
        "after=12.a_b",
    ] {
        let (s, b) = e
            .user(
                &alice,
                Method::GET,
                &format!("/v1/apps/app-id/rooms?{query}"),
                None,
            )
            .await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b["error"]["message"].is_string(), "{query}: {b}");
    }
}
