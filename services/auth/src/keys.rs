//! Ed25519 signing keys, stored in Postgres (`signing_keys`).
//!
//! Exactly one key is current (signs new tokens); rotation retires it and
//! creates a new one in one transaction. A retired key stays in the JWKS
//! while a token it signed may still be valid: `retired_at + max token
//! lifetime + leeway`. The private key (a PKCS#8 document) never leaves
//! this module except as a `jsonwebtoken::EncodingKey`; [`SigningKey`]'s
//! `Debug` shows the kid only.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_server::token::{Jwk, JwkSet};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sqlx::PgPool;

/// Advisory-lock key serializing key creation and rotation across instances.
const KEYS_LOCK: i64 = 0x6865_7261_6c64_6b79; // "heraldky"

/// The current signing key.
pub(crate) struct SigningKey {
    pub kid: String,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    pub fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8)
    }
}

fn generate() -> anyhow::Result<(String, Vec<u8>, Vec<u8>)> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| anyhow::anyhow!("bad generated key"))?;
    let kid = uuid::Uuid::now_v7().simple().to_string();
    Ok((
        kid,
        doc.as_ref().to_vec(),
        pair.public_key().as_ref().to_vec(),
    ))
}

/// Create the first key if there is none (safe with concurrent instances).
pub(crate) async fn ensure_key(db: &PgPool) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEYS_LOCK)
        .execute(&mut *tx)
        .await?;
    let current: Option<(String,)> =
        sqlx::query_as("SELECT kid FROM signing_keys WHERE retired_at IS NULL")
            .fetch_optional(&mut *tx)
            .await?;
    if current.is_none() {
        let (kid, private, public) = generate()?;
        sqlx::query("INSERT INTO signing_keys (kid, private_key, public_key) VALUES ($1, $2, $3)")
            .bind(&kid)
            .bind(private)
            .bind(public)
            .execute(&mut *tx)
            .await?;
        tracing::info!(%kid, "created the first signing key");
    }
    tx.commit().await?;
    Ok(())
}

/// Retire the current key and make a new one current; returns its kid.
pub(crate) async fn rotate(db: &PgPool) -> anyhow::Result<String> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEYS_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
        .execute(&mut *tx)
        .await?;
    let (kid, private, public) = generate()?;
    sqlx::query("INSERT INTO signing_keys (kid, private_key, public_key) VALUES ($1, $2, $3)")
        .bind(&kid)
        .bind(private)
        .bind(public)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%kid, "rotated the signing key");
    Ok(kid)
}

/// The current key, read from the database (so every instance signs with
/// the same key right after a rotation).
pub(crate) async fn current(db: &PgPool) -> anyhow::Result<SigningKey> {
    let (kid, pkcs8): (String, Vec<u8>) =
        sqlx::query_as("SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL")
            .fetch_one(db)
            .await
            .context("reading the current signing key")?;
    Ok(SigningKey { kid, pkcs8 })
}

/// The published keys: the current one and every retired key retired less
/// than `keep_secs` ago.
pub(crate) async fn jwks(db: &PgPool, keep_secs: u64) -> anyhow::Result<JwkSet> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT kid, public_key FROM signing_keys
         WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)
         ORDER BY retired_at DESC NULLS FIRST, created_at DESC",
    )
    .bind(keep_secs as f64)
    .fetch_all(db)
    .await?;
    Ok(JwkSet {
        keys: rows
            .into_iter()
            .map(|(kid, public)| Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(public),
                kid,
                alg: "EdDSA".into(),
                use_: "sig".into(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_shows_the_private_key() {
        let (kid, pkcs8, _) = super::generate().unwrap();
        let key = super::SigningKey {
            kid,
            pkcs8: pkcs8.clone(),
        };
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&format!("{:?}", &pkcs8[..8])));
    }
}
