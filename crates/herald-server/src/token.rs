//! Token verification for every Herald service: [`Verifier`] fetches the
//! auth service's JWKS over HTTP, caches it, refetches on an unknown `kid`
//! (at most once per `refetch_interval`), and verifies a session or channel
//! token (claims in `herald_proto::token`) with the algorithm pinned to
//! EdDSA, `exp`/`nbf` checked with a small leeway, the `kind` claim checked,
//! and the `app` claim compared with the app the caller expects.
//!
//! Only the auth service holds private keys; everyone else verifies here.

use herald_proto::token::{ChannelClaims, SessionClaims, TokenKind};
/// The JWT library the tokens are made with, for consumers' own checks.
pub use jsonwebtoken;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// One public key as a JWK (RFC 8037: OKP / Ed25519).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding (32 bytes).
    pub x: String,
    /// Key id, as in the token header's `kid`.
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// A JSON Web Key Set.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JwkSet {
    /// The current key first, then retired keys whose tokens may still be valid.
    pub keys: Vec<Jwk>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, an undecodable header or payload, or an algorithm no
    /// Herald token uses (such as `none`).
    #[error("malformed token")]
    Malformed,
    /// A known algorithm other than EdDSA (HS256, RS256, ...).
    #[error("token algorithm {0} is not accepted; only EdDSA is")]
    Algorithm(String),
    /// The header names no `kid`.
    #[error("token header has no kid")]
    MissingKid,
    /// No published key has this `kid`.
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    /// The signature does not match.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// Signed for another app.
    #[error("token belongs to another app")]
    WrongApp,
    /// A session token where a channel token is expected, or the reverse.
    #[error("wrong kind of token: a {0} token is expected")]
    WrongKind(&'static str),
    /// The JWKS could not be fetched or read.
    #[error("could not fetch the JWKS: {0}")]
    Jwks(String),
}

/// Verifies session tokens against a JWKS URL.
pub struct Verifier {
    jwks_url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    refetch_interval: Duration,
    leeway_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

/// Default clock-skew allowance on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// Default minimum time between two JWKS fetches caused by unknown kids.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

impl Verifier {
    /// A verifier for the JWKS at `jwks_url` (e.g.
    /// `http://auth:6002/.well-known/jwks.json`), with the default leeway
    /// and refetch interval. Nothing is fetched until the first token.
    pub fn new(jwks_url: impl Into<String>) -> Self {
        Self {
            jwks_url: jwks_url.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }

    /// Set the minimum time between two fetches.
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// Set the clock-skew allowance on `exp` and `nbf`.
    pub fn with_leeway_secs(mut self, leeway: u64) -> Self {
        self.leeway_secs = leeway;
        self
    }

    /// Fetch the JWKS now, if the last fetch is older than the refetch
    /// interval (or there was none). Returns whether it fetched.
    async fn refresh(&self) -> Result<bool, VerifyError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let set: JwkSet = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| VerifyError::Jwks(e.to_string()))?
            .json()
            .await
            .map_err(|e| VerifyError::Jwks(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" || jwk.alg != "EdDSA" {
                continue;
            }
            if let Ok(key) = DecodingKey::from_ed_components(&jwk.x) {
                keys.insert(jwk.kid, key);
            }
        }
        *self.keys.write().await = keys;
        Ok(true)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        self.refresh().await?;
        self.keys
            .read()
            .await
            .get(kid)
            .cloned()
            .ok_or_else(|| VerifyError::UnknownKid(kid.to_owned()))
    }

    /// Verify `token` as a session token of `app` (of any app when `None`:
    /// the caller then looks the claimed app up itself).
    pub async fn verify_session(
        &self,
        token: &str,
        app: Option<&str>,
    ) -> Result<SessionClaims, VerifyError> {
        let claims: SessionClaims = self.decode(token, TokenKind::Session).await?;
        check(claims.kind, TokenKind::Session, &claims.app, app)?;
        Ok(claims)
    }

    /// Verify `token` as a channel token of `app`.
    pub async fn verify_channel(
        &self,
        token: &str,
        app: &str,
    ) -> Result<ChannelClaims, VerifyError> {
        let claims: ChannelClaims = self.decode(token, TokenKind::Channel).await?;
        check(claims.kind, TokenKind::Channel, &claims.app, Some(app))?;
        Ok(claims)
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        token: &str,
        kind: TokenKind,
    ) -> Result<T, VerifyError> {
        let kid = eddsa_kid(token)?;
        let key = self.key(&kid).await?;
        decode_with_key(token, &key, kind, self.leeway_secs)
    }
}

/// The `kid` of a token's header, after checking that the header names
/// EdDSA: the first step of a verification, before any key is looked up.
/// (For the auth service, which looks its own keys up in its database;
/// everyone else uses [`Verifier`].)
pub fn eddsa_kid(token: &str) -> Result<String, VerifyError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(VerifyError::Algorithm(format!("{:?}", header.alg)));
    }
    header.kid.ok_or(VerifyError::MissingKid)
}

/// Verify `token`'s EdDSA signature with `key` and its `exp`/`nbf` (with
/// `leeway_secs`), then check the `kind` claim before reading the claims
/// as `T`: the two kinds have different claims, so a token of the other
/// kind is reported as such, not as malformed. The `app` claim is the
/// caller's to check.
pub fn decode_with_key<T: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    kind: TokenKind,
    leeway_secs: u64,
) -> Result<T, VerifyError> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = leeway_secs;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => VerifyError::BadSignature,
            K::ExpiredSignature => VerifyError::Expired,
            K::ImmatureSignature => VerifyError::NotYetValid,
            K::InvalidAlgorithm => VerifyError::Algorithm("mismatch".into()),
            _ => VerifyError::Malformed,
        }
    })?;
    let claimed = data
        .claims
        .get("kind")
        .and_then(|k| serde_json::from_value::<TokenKind>(k.clone()).ok());
    if claimed != Some(kind) {
        return Err(VerifyError::WrongKind(kind_name(kind)));
    }
    serde_json::from_value(data.claims).map_err(|_| VerifyError::Malformed)
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Session => "session",
        TokenKind::Channel => "channel",
    }
}

fn check(
    kind: TokenKind,
    expected: TokenKind,
    app: &str,
    expected_app: Option<&str>,
) -> Result<(), VerifyError> {
    if kind != expected {
        return Err(VerifyError::WrongKind(kind_name(expected)));
    }
    if expected_app.is_some_and(|a| a != app) {
        return Err(VerifyError::WrongApp);
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
