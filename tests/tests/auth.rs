//! Auth service: users, session tokens, JWKS, rotation, and the attacks a
//! token verifier must refuse. Real Postgres and NATS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::token::{SessionClaims, TokenKind};
use herald_server::token::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use herald_server::token::{Verifier, VerifyError};
use herald_testkit::TestDatabase;
use herald_tests::{dev_app, Running, Stack};
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";

struct Env {
    stack: Stack,
    db: TestDatabase,
    auth: Running,
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
    let auth = start(&stack, &db).await;
    Env {
        stack,
        db,
        auth,
        http: reqwest::Client::new(),
    }
}

async fn start(stack: &Stack, db: &TestDatabase) -> Running {
    let mut config = stack.auth_config(db);
    config.admin_token = Some(ADMIN.into());
    stack.auth_with(config).await
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.auth.port)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        creds: (&str, &str),
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .basic_auth(creds.0, Some(creds.1));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}")),
        )
    }

    async fn dev(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, ("app-key", "app-secret"), body)
            .await
    }

    async fn put_user(&self, id: &str, name: &str) {
        let (s, b) = self
            .dev(
                reqwest::Method::PUT,
                &format!("/v1/apps/app-id/users/{id}"),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    async fn token(&self, user: &str, body: Value) -> Value {
        let (s, b) = self
            .dev(
                reqwest::Method::POST,
                &format!("/v1/apps/app-id/users/{user}/session-tokens"),
                Some(body),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(self.url("/.well-known/jwks.json"))
            .with_refetch_interval(std::time::Duration::ZERO)
    }

    async fn rotate(&self) -> String {
        let resp = self
            .http
            .post(self.url("/v1/keys/rotate"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The current private key, read from the database, to forge tokens a
    /// verifier must still refuse on claims alone.
    async fn current_key(&self) -> (String, Vec<u8>) {
        let pool = sqlx::PgPool::connect(self.db.url()).await.unwrap();
        sqlx::query_as("SELECT kid, private_key FROM auth.signing_keys WHERE retired_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(app: &str, iat: u64, nbf: u64, exp: u64) -> SessionClaims {
    SessionClaims {
        sub: "u1".into(),
        app: app.into(),
        exp,
        iat,
        nbf,
        jti: "00000000-0000-0000-0000-000000000000".into(),
        kind: TokenKind::Session,
        grants: vec![],
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn users_register_get_batch_and_search() {
    let e = env().await;
    let (s, b) = e
        .dev(reqwest::Method::PUT, "/v1/apps/app-id/users/u1", Some(json!({"name": "Alice", "avatar_url": "https://x.example/a.png", "metadata": {"k": 1}})))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"id": "u1", "name": "Alice", "avatar_url": "https://x.example/a.png", "metadata": {"k": 1}})
    );
    // Idempotent upsert: the same PUT again, then a change.
    let (s, b2) = e
        .dev(reqwest::Method::PUT, "/v1/apps/app-id/users/u1", Some(json!({"name": "Alice", "avatar_url": "https://x.example/a.png", "metadata": {"k": 1}})))
        .await;
    assert_eq!((s, &b2), (200, &b));
    e.put_user("u1", "Alicia").await;
    let (s, b) = e
        .dev(reqwest::Method::GET, "/v1/apps/app-id/users/u1", None)
        .await;
    assert_eq!(
        (s, b["name"].clone(), b["avatar_url"].clone()),
        (200, json!("Alicia"), Value::Null)
    );
    e.put_user("u2", "Alina").await;
    e.put_user("u3", "Bob").await;
    e.put_user("p1", "a%b").await;
    e.put_user("p2", "axb").await;

    // Per-app isolation: the other app sees none of it.
    let (s, _) = e
        .call(
            reqwest::Method::GET,
            "/v1/apps/other-app/users/u1",
            ("other-key", "other-secret"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, b) = e
        .call(
            reqwest::Method::GET,
            "/v1/apps/other-app/users?prefix=A",
            ("other-key", "other-secret"),
            None,
        )
        .await;
    assert_eq!((s, b["users"].clone()), (200, json!([])));

    let (s, b) = e
        .dev(
            reqwest::Method::POST,
            "/v1/apps/app-id/users/batch",
            Some(json!({"user_ids": ["u3", "nope", "u1"]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let ids: Vec<&str> = b["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u3", "u1"]);
    assert_eq!(b["missing"], json!(["nope"]));

    // Keyset pages of one.
    let (s, b) = e
        .dev(
            reqwest::Method::GET,
            "/v1/apps/app-id/users?prefix=Ali&limit=1",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["users"][0]["name"], "Alicia");
    let next = b["next"].as_str().unwrap().to_owned();
    let (_, b) = e
        .dev(
            reqwest::Method::GET,
            &format!("/v1/apps/app-id/users?prefix=Ali&limit=1&after={next}"),
            None,
        )
        .await;
    assert_eq!(b["users"][0]["name"], "Alina");
    assert_eq!(b["next"], Value::Null);
    // LIKE metacharacters are literal: "a%" matches "a%b" only, "a_" nothing.
    let (_, b) = e
        .dev(
            reqwest::Method::GET,
            "/v1/apps/app-id/users?prefix=a%25",
            None,
        )
        .await;
    let names: Vec<&str> = b["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a%b"]);
    let (_, b) = e
        .dev(
            reqwest::Method::GET,
            "/v1/apps/app-id/users?prefix=a_",
            None,
        )
        .await;
    assert_eq!(b["users"], json!([]));
}

#[tokio::test]
async fn bad_input_in_every_field_is_a_json_400_with_nothing_internal() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let long_id = "x".repeat(129);
    let put = |id: String, body: Value| {
        (
            reqwest::Method::PUT,
            format!("/v1/apps/app-id/users/{id}"),
            Some(body),
        )
    };
    let cases: Vec<(reqwest::Method, String, Option<Value>, &str)> = vec![
        {
            let (m, p, b) = put(long_id.clone(), json!({"name": "a"}));
            (m, p, b, "user id must be 1-128")
        },
        {
            let (m, p, b) = put("u1".into(), json!({"name": ""}));
            (m, p, b, "name must be 1-100")
        },
        {
            let (m, p, b) = put("u1".into(), json!({"name": "n".repeat(101)}));
            (m, p, b, "name must be 1-100")
        },
        {
            let (m, p, b) = put("u1".into(), json!({"name": "a\u{0}b"}));
            (m, p, b, "control characters")
        },
        {
            let (m, p, b) = put(
                "u1".into(),
                json!({"name": "a", "avatar_url": "javascript:alert(1)"}),
            );
            (m, p, b, "avatar_url must be an http")
        },
        {
            let (m, p, b) = put(
                "u1".into(),
                json!({"name": "a", "avatar_url": format!("https://x/{}", "a".repeat(2048))}),
            );
            (m, p, b, "at most 2048")
        },
        {
            let (m, p, b) = put(
                "u1".into(),
                json!({"name": "a", "metadata": {"k": "v".repeat(4100)}}),
            );
            (m, p, b, "at most 4096")
        },
        {
            let (m, p, b) = put("u1".into(), json!({"name": "a", "metadata": [1]}));
            (m, p, b, "must be a JSON object")
        },
        {
            let (m, p, b) = put("u1".into(), json!({"name": "a", "role": "admin"}));
            (m, p, b, "unknown field")
        },
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/batch".into(),
            Some(json!({"user_ids": (0..101).map(|i| i.to_string()).collect::<Vec<_>>()})),
            "1-100 ids",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/batch".into(),
            Some(json!({"user_ids": [long_id.clone()]})),
            "user id must be 1-128",
        ),
        (
            reqwest::Method::GET,
            format!("/v1/apps/app-id/users?prefix={}", "p".repeat(101)),
            None,
            "prefix must be at most 100",
        ),
        (
            reqwest::Method::GET,
            "/v1/apps/app-id/users?limit=101".into(),
            None,
            "limit must be an integer 1-100",
        ),
        (
            reqwest::Method::GET,
            "/v1/apps/app-id/users?limit=1;DROP%20TABLE%20users".into(),
            None,
            "limit must be an integer",
        ),
        (
            reqwest::Method::GET,
            "/v1/apps/app-id/users?after='%20OR%201=1--".into(),
            None,
            "not a cursor",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens".into(),
            Some(json!({"grants": ["private-x' OR '1'='1"]})),
            "grant",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens".into(),
            Some(json!({"grants": ["*"]})),
            "channel name must not be empty",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens".into(),
            Some(json!({"grants": ["a".repeat(165)]})),
            "the limit is 164",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens".into(),
            Some(json!({"grants": (0..101).map(|i| format!("c{i}")).collect::<Vec<_>>()})),
            "at most 100 grants",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens".into(),
            Some(json!({"ttl_secs": 0})),
            "ttl_secs must be 1-3600",
        ),
        (
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens".into(),
            Some(json!({"ttl_secs": 3601})),
            "ttl_secs must be 1-3600",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/apps/app-id/users/{long_id}/session-tokens"),
            Some(json!({})),
            "user id must be 1-128",
        ),
    ];
    for (method, path, body, expect) in cases {
        let (s, b) = e.dev(method, &path, body).await;
        assert_eq!(s, 400, "{path}: {b}");
        assert_eq!(b["error"]["code"], "bad_request", "{path}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{path}: {msg}");
        for internal in ["sqlx", "postgres", "SELECT", "syntax error", "panicked"] {
            assert!(!msg.contains(internal), "{path}: {msg}");
        }
    }
    // A SQL-looking user id and name are stored as plain data.
    let id = "x'; DROP TABLE users;--";
    let enc = "x%27%3B%20DROP%20TABLE%20users%3B--";
    let (s, b) = e
        .dev(
            reqwest::Method::PUT,
            &format!("/v1/apps/app-id/users/{enc}"),
            Some(json!({"name": "'); DELETE FROM users;--"})),
        )
        .await;
    assert_eq!((s, b["id"].as_str()), (200, Some(id)));
    let (s, _) = e
        .dev(reqwest::Method::GET, "/v1/apps/app-id/users/u1", None)
        .await;
    assert_eq!(s, 200);
    // An oversized body is refused before parsing.
    let (s, b) = e
        .dev(
            reqwest::Method::PUT,
            "/v1/apps/app-id/users/u1",
            Some(json!({"name": "a", "metadata": {"k": "v".repeat(20_000)}})),
        )
        .await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn wrong_app_credentials_are_refused() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    for (path, creds) in [
        ("/v1/apps/app-id/users/u1", ("app-key", "wrong")),
        ("/v1/apps/app-id/users/u1", ("other-key", "other-secret")),
        ("/v1/apps/nope/users/u1", ("app-key", "app-secret")),
    ] {
        let (s, b) = e.call(reqwest::Method::GET, path, creds, None).await;
        assert_eq!(s, 401, "{path} {creds:?}");
        assert_eq!(b["error"]["code"], "unauthorized");
    }
    let (s, _) = e
        .call(
            reqwest::Method::POST,
            "/v1/apps/app-id/users/u1/session-tokens",
            ("app-key", "wrong"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 401);
    // Rotation needs the admin token.
    for auth in [None, Some("wrong"), Some("test-admin-tokenX")] {
        let mut req = e.http.post(e.url("/v1/keys/rotate"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
    }
}

#[tokio::test]
async fn an_issued_token_verifies_with_the_jwks() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let t = e
        .token(
            "u1",
            json!({"grants": ["private-user-42", "presence-room-*"]}),
        )
        .await;
    let token = t["token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), t["kid"].as_str());
    let c = e
        .verifier()
        .verify_session(token, Some("app-id"))
        .await
        .unwrap();
    assert_eq!(c.sub, "u1");
    assert_eq!(c.app, "app-id");
    assert_eq!(c.grants, ["private-user-42", "presence-room-*"]);
    assert_eq!(c.exp, t["expires_at"].as_u64().unwrap());
    assert!(c.exp - c.iat == 900 && c.nbf == c.iat, "15 min default");
    assert_eq!((c.jti.len(), c.jti.matches('-').count()), (36, 4), "a UUID");
    // The JWKS key is an OKP / Ed25519 key; no private part anywhere.
    let jwks: Value = e
        .http
        .get(e.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"]),
        (
            &json!("OKP"),
            &json!("Ed25519"),
            &json!("EdDSA"),
            &json!("sig")
        )
    );
    assert!(k.get("d").is_none());
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(k["x"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    // A token for an unregistered user is refused.
    let (s, _) = e
        .dev(
            reqwest::Method::POST,
            "/v1/apps/app-id/users/ghost/session-tokens",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused_with_the_precise_error() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let good = e.token("u1", json!({"grants": ["private-a"]})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = e.verifier().with_leeway_secs(0);
    let (kid, pkcs8) = e.current_key().await;
    let key = EncodingKey::from_ed_der(&pkcs8);
    let sign = |h: Header, c: &SessionClaims| jsonwebtoken::encode(&h, c, &key).unwrap();
    let ed = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = kid.map(str::to_owned);
        h
    };
    let parts: Vec<&str> = good.split('.').collect();
    let t = now();

    // alg none, with or without a signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        parts[1]
    );
    assert_eq!(
        v.verify_session(&none, Some("app-id")).await,
        Err(VerifyError::Malformed)
    );
    // HS256 "signed" with the public key bytes (key confusion).
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
    let hs = jsonwebtoken::encode(
        &hs,
        &claims("app-id", t, t, t + 60),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(
        v.verify_session(&hs, Some("app-id")).await,
        Err(VerifyError::Algorithm("HS256".into()))
    );
    // An RS256 header on an EdDSA signature.
    let rs = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "typ": "JWT", "kid": kid})),
        parts[1],
        parts[2]
    );
    assert_eq!(
        v.verify_session(&rs, Some("app-id")).await,
        Err(VerifyError::Algorithm("RS256".into()))
    );
    // No kid, an unknown kid.
    let c = claims("app-id", t, t, t + 60);
    assert_eq!(
        v.verify_session(&sign(ed(None), &c), Some("app-id")).await,
        Err(VerifyError::MissingKid)
    );
    assert_eq!(
        v.verify_session(&sign(ed(Some("nope")), &c), Some("app-id"))
            .await,
        Err(VerifyError::UnknownKid("nope".into()))
    );
    // Expired, not yet valid (beyond the leeway), another app.
    assert_eq!(
        v.verify_session(
            &sign(ed(Some(&kid)), &claims("app-id", t - 120, t - 120, t - 60)),
            Some("app-id")
        )
        .await,
        Err(VerifyError::Expired)
    );
    assert_eq!(
        v.verify_session(
            &sign(ed(Some(&kid)), &claims("app-id", t, t + 60, t + 120)),
            Some("app-id")
        )
        .await,
        Err(VerifyError::NotYetValid)
    );
    assert_eq!(
        v.verify_session(
            &sign(ed(Some(&kid)), &claims("other-app", t, t, t + 60)),
            Some("app-id")
        )
        .await,
        Err(VerifyError::WrongApp)
    );
    // The leeway: 5 s by default.
    let lenient = e.verifier();
    assert!(lenient
        .verify_session(
            &sign(ed(Some(&kid)), &claims("app-id", t - 60, t - 60, t - 2)),
            Some("app-id")
        )
        .await
        .is_ok());
    // Tampered payload (grants widened) and tampered signature.
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["grants"] = json!(["*"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    assert_eq!(
        v.verify_session(&tampered, Some("app-id")).await,
        Err(VerifyError::BadSignature)
    );
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(
        v.verify_session(&tampered, Some("app-id")).await,
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.verify_session("not.a.jwt", Some("app-id")).await,
        Err(VerifyError::Malformed)
    );
    // The untouched token still verifies.
    assert!(v.verify_session(&good, Some("app-id")).await.is_ok());
}

#[tokio::test]
async fn a_token_of_another_app_is_refused() {
    let e = env().await;
    let (s, _) = e
        .call(
            reqwest::Method::PUT,
            "/v1/apps/other-app/users/u1",
            ("other-key", "other-secret"),
            Some(json!({"name": "Eve"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            "/v1/apps/other-app/users/u1/session-tokens",
            ("other-key", "other-secret"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200);
    let token = b["token"].as_str().unwrap();
    let v = e.verifier();
    assert_eq!(
        v.verify_session(token, Some("app-id")).await,
        Err(VerifyError::WrongApp)
    );
    assert!(v.verify_session(token, Some("other-app")).await.is_ok());
}

#[tokio::test]
async fn an_expired_issued_token_is_refused() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let token = e.token("u1", json!({"ttl_secs": 1})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = e.verifier().with_leeway_secs(0);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        v.verify_session(&token, Some("app-id")).await,
        Err(VerifyError::Expired)
    );
}

#[tokio::test]
async fn rotation_signs_with_the_new_kid_and_old_tokens_keep_verifying_across_restarts() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let old = e.token("u1", json!({})).await;
    let v = e.verifier();
    assert!(v
        .verify_session(old["token"].as_str().unwrap(), Some("app-id"))
        .await
        .is_ok());
    let new_kid = e.rotate().await;
    assert_ne!(new_kid, old["kid"].as_str().unwrap());
    let new = e.token("u1", json!({})).await;
    assert_eq!(new["kid"].as_str().unwrap(), new_kid);
    // The verifier has never seen the new kid: it refetches the JWKS.
    assert!(v
        .verify_session(new["token"].as_str().unwrap(), Some("app-id"))
        .await
        .is_ok());
    assert!(v
        .verify_session(old["token"].as_str().unwrap(), Some("app-id"))
        .await
        .is_ok());
    let jwks: Value = e
        .http
        .get(e.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str(), old["kid"].as_str().unwrap()]);

    // Restart: the keys come from Postgres, so a fresh verifier against the
    // restarted service still accepts both tokens, and signing continues
    // with the new kid.
    let Env {
        stack,
        db,
        auth,
        http,
    } = e;
    auth.stop().await;
    let auth = start(&stack, &db).await;
    let e = Env {
        stack,
        db,
        auth,
        http,
    };
    let v = e.verifier();
    assert!(v
        .verify_session(old["token"].as_str().unwrap(), Some("app-id"))
        .await
        .is_ok());
    assert!(v
        .verify_session(new["token"].as_str().unwrap(), Some("app-id"))
        .await
        .is_ok());
    assert_eq!(
        e.token("u1", json!({})).await["kid"].as_str().unwrap(),
        new_kid
    );
}

#[tokio::test]
async fn a_key_retired_longer_than_the_longest_token_leaves_the_jwks() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let old = e.token("u1", json!({})).await;
    e.rotate().await;
    // Pretend the rotation happened longer ago than max ttl + leeway.
    let pool = sqlx::PgPool::connect(e.db.url()).await.unwrap();
    sqlx::query("UPDATE auth.signing_keys SET retired_at = now() - interval '3661 seconds' WHERE retired_at IS NOT NULL")
        .execute(&pool)
        .await
        .unwrap();
    let v = e.verifier();
    assert_eq!(
        v.verify_session(old["token"].as_str().unwrap(), Some("app-id"))
            .await,
        Err(VerifyError::UnknownKid(
            old["kid"].as_str().unwrap().to_owned()
        ))
    );
}

#[tokio::test]
async fn the_verifier_refetches_an_unknown_kid_at_most_once_per_interval() {
    let e = env().await;
    e.put_user("u1", "Alice").await;
    let v = Verifier::new(e.url("/.well-known/jwks.json"))
        .with_refetch_interval(std::time::Duration::from_secs(3600));
    let first = e.token("u1", json!({})).await;
    assert!(v
        .verify_session(first["token"].as_str().unwrap(), Some("app-id"))
        .await
        .is_ok());
    e.rotate().await;
    let second = e.token("u1", json!({})).await;
    // Within the interval, the new kid is not fetched.
    assert_eq!(
        v.verify_session(second["token"].as_str().unwrap(), Some("app-id"))
            .await,
        Err(VerifyError::UnknownKid(
            second["kid"].as_str().unwrap().to_owned()
        ))
    );
}

#[tokio::test]
async fn the_openapi_document_states_the_bounds() {
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
    let s = &doc["components"]["schemas"];
    assert_eq!(s["UserBody"]["properties"]["name"]["maxLength"], 100);
    assert_eq!(s["UserBody"]["properties"]["avatar_url"]["maxLength"], 2048);
    assert_eq!(s["BatchBody"]["properties"]["user_ids"]["maxItems"], 100);
    assert!(doc["paths"]["/v1/keys/rotate"]["post"].is_object());
}
