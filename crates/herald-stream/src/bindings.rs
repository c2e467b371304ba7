//! Single-use session tokens: the first use of a token binds its `jti` to
//! one socket, atomically across every auth and gateway instance, with a
//! KV `create` (which fails when the key exists). Later uses naming the
//! same socket are accepted; any other socket is refused.
//!
//! The bucket's `max_age` is the longest any session token can live
//! ([`MAX_SESSION_TOKEN_LIFE_SECS`] plus a leeway), so a binding outlives
//! its token, and every service opening the bucket agrees on it without
//! sharing the auth service's configuration. That stands in for a per-key
//! TTL equal to the token's remaining life (NATS 2.11 per-message TTLs;
//! Herald supports 2.10), at the cost of bindings kept longer than needed.

use crate::{ensure_bucket, BucketSpec, StreamError};
use async_nats::jetstream::{self, kv};
use herald_proto::token::{binding_key, TokenBinding, MAX_SESSION_TOKEN_LIFE_SECS};
use herald_proto::{AppId, Subjects};
use std::time::Duration;

/// Added to the longest token life: clocks of issuers and verifiers differ.
const BINDING_LEEWAY_SECS: u64 = 300;

/// The token-binding bucket.
#[derive(Clone)]
pub struct TokenBindings {
    kv: kv::Store,
}

/// The outcome of a use of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// This use bound the token to the socket.
    Bound,
    /// The token was already bound to this same socket.
    AlreadyThisSocket,
    /// The token is bound to another socket: refuse this use.
    OtherSocket,
}

impl TokenBindings {
    /// Open the bucket, creating it when missing.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
    ) -> Result<Self, StreamError> {
        let kv = ensure_bucket(
            js,
            BucketSpec {
                name: subjects.token_bindings_bucket(),
                description: "Herald single-use session tokens: jti -> the socket it is bound to",
                replicas,
                max_age: Duration::from_secs(MAX_SESSION_TOKEN_LIFE_SECS + BINDING_LEEWAY_SECS),
            },
        )
        .await?;
        Ok(Self { kv })
    }

    /// Use token `jti` of `app` on `socket_id`.
    pub async fn bind(
        &self,
        app: &AppId,
        jti: &str,
        socket_id: &str,
    ) -> Result<BindOutcome, StreamError> {
        let key = binding_key(app, jti);
        let value = TokenBinding {
            socket_id: socket_id.to_owned(),
        };
        match self.kv.create(&key, value.encode().into()).await {
            Ok(_) => return Ok(BindOutcome::Bound),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StreamError::Binding {
                    source: Box::new(source),
                })
            }
        }
        let existing = self
            .kv
            .get(&key)
            .await
            .map_err(|source| StreamError::Binding {
                source: Box::new(source),
            })?;
        Ok(match existing.as_deref().and_then(TokenBinding::decode) {
            Some(b) if b.socket_id == socket_id => BindOutcome::AlreadyThisSocket,
            _ => BindOutcome::OtherSocket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_testkit::NatsServer;

    #[tokio::test]
    async fn a_token_binds_to_its_first_socket_only_even_when_raced() {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(nats.client().await.unwrap());
        let subjects = Subjects::new("t").unwrap();
        let bindings = TokenBindings::open(&js, &subjects, 1).await.unwrap();
        let app = AppId::parse("app").unwrap();
        // Twenty sockets race for one token: exactly one wins.
        let racers = (0..20).map(|i| {
            let b = bindings.clone();
            let app = app.clone();
            async move { (i, b.bind(&app, "jti-1", &format!("{i}.1")).await.unwrap()) }
        });
        let outcomes = futures::future::join_all(racers).await;
        let winners: Vec<_> = outcomes
            .iter()
            .filter(|(_, o)| *o == BindOutcome::Bound)
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let winner = format!("{}.1", winners[0].0);
        assert_eq!(
            bindings.bind(&app, "jti-1", &winner).await.unwrap(),
            BindOutcome::AlreadyThisSocket
        );
        assert_eq!(
            bindings.bind(&app, "jti-1", "99.9").await.unwrap(),
            BindOutcome::OtherSocket
        );
        // Another app's token with the same jti is another token.
        let other = AppId::parse("other").unwrap();
        assert_eq!(
            bindings.bind(&other, "jti-1", "99.9").await.unwrap(),
            BindOutcome::Bound
        );
    }
}
