//! Opening a JetStream KV bucket, creating it when missing: the one
//! get-or-create every Herald bucket goes through (the presence bucket of
//! gateways and the presence service, and the presence service's own).

use crate::StreamError;
use async_nats::jetstream::{self, kv, stream};
use herald_proto::Subjects;
use std::time::Duration;

/// What a bucket is created with when it is missing. An existing bucket is
/// opened as it is: its settings win over these.
#[derive(Debug, Clone)]
pub struct BucketSpec<'a> {
    /// Bucket name (from [`Subjects`]).
    pub name: String,
    /// What the bucket holds, shown by `nats kv ls`.
    pub description: &'a str,
    /// Replicas (1 for a single server, 3 in a cluster).
    pub replicas: usize,
    /// Entries expire after this; zero keeps them.
    pub max_age: Duration,
}

/// Open the bucket `spec` names, creating it (one value per key, file
/// storage) when missing.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    spec: BucketSpec<'_>,
) -> Result<kv::Store, StreamError> {
    if let Ok(store) = js.get_key_value(&spec.name).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: spec.name.clone(),
            description: spec.description.to_owned(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: spec.replicas,
            max_age: spec.max_age,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another service or instance created it in the meantime.
        Err(source) => js
            .get_key_value(&spec.name)
            .await
            .map_err(|_| StreamError::Bucket {
                bucket: spec.name,
                source,
            }),
    }
}

/// Open the presence KV bucket (see `herald_proto::presence`), creating it
/// when missing. Gateways and the presence service both call this at start.
pub async fn ensure_presence_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, StreamError> {
    ensure_bucket(
        js,
        BucketSpec {
            name: subjects.presence_bucket(),
            description:
                "Herald presence: subscriptions, signed-in connections, gateway heartbeats",
            replicas,
            max_age: Duration::ZERO,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_testkit::NatsServer;

    #[tokio::test]
    async fn a_missing_bucket_is_created_and_an_existing_one_opened_as_it_is() {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(nats.client().await.unwrap());
        let spec = |max_age| BucketSpec {
            name: "T_BUCKET".into(),
            description: "test",
            replicas: 1,
            max_age,
        };
        let created = ensure_bucket(&js, spec(Duration::from_secs(60)))
            .await
            .unwrap();
        created.put("k", "v".into()).await.unwrap();
        let opened = ensure_bucket(&js, spec(Duration::ZERO)).await.unwrap();
        assert_eq!(opened.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            opened.status().await.unwrap().max_age(),
            Duration::from_secs(60)
        );
    }

    #[tokio::test]
    async fn a_bucket_that_cannot_be_created_says_which_and_why() {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(nats.client().await.unwrap());
        let err = ensure_bucket(
            &js,
            BucketSpec {
                name: "T_BUCKET".into(),
                description: "test",
                // More replicas than a single server has.
                replicas: 3,
                max_age: Duration::ZERO,
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, StreamError::Bucket { bucket, .. } if bucket == "T_BUCKET"),
            "{err}"
        );
    }
}
