//! The projector: folds the `CHANNELS` stream into the `messages` table
//! (triggered and published events) and the `channel_members` table (member
//! joined / left; a purged channel forgets its messages and members).
//!
//! Exactly-once in effect: each batch is applied in one transaction that
//! first locks the projection's checkpoint row, skips every event at or below
//! it, writes the rows and advances the checkpoint; only after the commit is
//! the batch acknowledged. A redelivery (crash between commit and ack, a
//! second projector during a lock hand-over) therefore changes nothing.
//!
//! One instance projects at a time: the holder of a Postgres advisory lock.

use crate::model::{self, Row};
use anyhow::{anyhow, Context};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use herald_proto::{Envelope, Subjects};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a stopped projection tries again.
const STALLED_RETRY: Duration = Duration::from_secs(30);

/// Why the projection stopped, when it has: shown by `/readyz`.
pub(crate) type StallStatus = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// The projection cannot go on: the event at `seq` cannot be read or
/// applied by this build (a newer envelope version during a rolling
/// upgrade, a corrupt payload), or events it has not applied were lost to
/// the stream's retention. It is never skipped.
#[derive(Debug, thiserror::Error)]
#[error("stopped at seq {seq}: {reason}")]
pub(crate) struct Stalled {
    pub seq: i64,
    pub reason: String,
}

/// Name of this projection (checkpoint row and consumer suffix).
pub(crate) const PROJECTION: &str = "history";

pub(crate) struct Projector {
    js: jetstream::Context,
    subjects: Subjects,
    pool: PgPool,
    options: PgConnectOptions,
    batch: usize,
    name: String,
    stalled: StallStatus,
}

impl Projector {
    pub fn new(
        js: jetstream::Context,
        subjects: Subjects,
        pool: PgPool,
        options: PgConnectOptions,
        batch: usize,
    ) -> Self {
        let name = subjects.durable(PROJECTION);
        Self {
            js,
            subjects,
            pool,
            options,
            batch,
            name,
            stalled: Default::default(),
        }
    }

    /// Project until `shutdown`; transient failures are retried.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let pause = match self.lead(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(err) => match err.downcast_ref::<Stalled>() {
                    Some(stalled) => {
                        // Stopped on purpose: said by /readyz, a metric and
                        // the log, and tried again now and then (a newer
                        // build, or a repaired stream, gets it going).
                        tracing::error!(seq = stalled.seq, reason = %stalled.reason,
                            "projection stopped: an event cannot be applied");
                        metrics::gauge!("herald_history_projection_stalled").set(1.0);
                        *self.stalled.lock().expect("stalled lock") = Some(stalled.to_string());
                        STALLED_RETRY
                    }
                    None => {
                        tracing::warn!(error = %format!("{err:#}"), "projector failed; retrying");
                        metrics::counter!("herald_history_projector_restarts_total").increment(1);
                        Duration::from_secs(1)
                    }
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The checkpoint row's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the projection is stopped, if it is (shared with `/readyz`).
    pub fn stalled(&self) -> StallStatus {
        self.stalled.clone()
    }

    /// Take the projector lock, then apply batches until shutdown or error.
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // The lock lives as long as this dedicated connection.
        let mut lock_conn = PgConnection::connect_with(&self.options).await?;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(&self.name)
                .fetch_one(&mut lock_conn)
                .await?;
            if got {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        tracing::info!(projection = %self.name, "projector leading");
        let consumer = self.fresh_consumer().await?;
        let mut batches = consumer.messages().await?.ready_chunks(self.batch);
        let mut lock_check = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = lock_check.tick() => {
                    // Losing the lock connection means another instance may
                    // take over; stop rather than race it needlessly.
                    lock_conn.ping().await.context("projector lock connection lost")?;
                }
                batch = batches.next() => {
                    let batch = batch.ok_or_else(|| anyhow!("consumer stream ended"))?;
                    let messages = batch.into_iter().collect::<Result<Vec<_>, _>>()?;
                    self.apply(messages).await?;
                    if self.stalled.lock().expect("stalled lock").take().is_some() {
                        tracing::info!("projection going again");
                        metrics::gauge!("herald_history_projection_stalled").set(0.0);
                    }
                }
            }
        }
    }

    async fn checkpoint(&self) -> anyhow::Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM projection_checkpoints WHERE name = $1")
                .bind(&self.name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }

    /// The durable consumer, created afresh to deliver, in order, everything
    /// after the checkpoint.
    ///
    /// It is re-created every time this instance starts leading (at start-up,
    /// after taking over, and after a failed batch). Reusing it would be
    /// wrong: messages it had delivered to a leader that crashed, or in a
    /// batch that failed, come back only after `ack_wait`, by which time
    /// newer events have moved the checkpoint past them and they would be
    /// skipped, lost to the read model. A fresh consumer starts at the first
    /// event not stored and needs no redelivery. (A previous leader still
    /// applying a batch it already holds is harmless: its batch continues the
    /// checkpoint in order, and the checkpoint row lock makes whichever
    /// commits second skip it.)
    async fn fresh_consumer(&self) -> anyhow::Result<consumer::PullConsumer> {
        let mut stream = self.js.get_stream(self.subjects.channels_stream()).await?;
        let checkpoint = self.checkpoint().await? as u64;
        let first = stream.info().await?.state.first_sequence;
        if checkpoint > 0 && first > checkpoint + 1 {
            // Retention removed events this model never applied: nothing
            // can bring them back; say so loudly (a rebuild from what the
            // stream still holds is the operator's remedy).
            let lost = first - checkpoint - 1;
            tracing::error!(
                checkpoint,
                first,
                lost,
                "events were removed from the stream before the projection applied them"
            );
            metrics::counter!("herald_history_events_lost_total").increment(lost);
        }
        if stream.consumer_info(&self.name).await.is_ok() {
            stream.delete_consumer(&self.name).await?;
        }
        let deliver_policy = if checkpoint == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            }
        };
        let config = consumer::pull::Config {
            durable_name: Some(self.name.clone()),
            description: Some("Herald history projection".into()),
            filter_subject: self.subjects.channels_filter(),
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 20_000,
            deliver_policy,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    /// Apply one batch in one transaction, then acknowledge it. An event
    /// this build cannot read stops the projection (see [`Stalled`]).
    async fn apply(&self, messages: Vec<jetstream::Message>) -> anyhow::Result<()> {
        let Some(last) = messages.last() else {
            return Ok(());
        };
        let mut rows = Vec::with_capacity(messages.len());
        let mut max_seq = 0i64;
        for msg in &messages {
            let seq = msg
                .info()
                .map_err(|e| anyhow!("message info: {e}"))?
                .stream_sequence as i64;
            match Envelope::decode(&msg.payload) {
                Ok(env) if model::is_projected(env.kind) => rows.push(Row::new(seq, env)),
                Ok(env) => {
                    // A kind from a newer build: the stream keeps it, and
                    // this model has nothing to change for it.
                    tracing::debug!(seq, kind = ?env.kind, "not a history event")
                }
                Err(err) => {
                    // Never skipped: the events after it wait until a build
                    // that understands it runs (or the stream is repaired).
                    // What came before it in this batch is still applied.
                    // Nothing is acknowledged: the next attempt starts from
                    // the checkpoint with a fresh consumer.
                    self.apply_rows(&rows, max_seq).await?;
                    return Err(Stalled {
                        seq,
                        reason: err.to_string(),
                    }
                    .into());
                }
            }
            max_seq = max_seq.max(seq);
        }
        let applied = self.apply_rows(&rows, max_seq).await?;
        // AckPolicy::All: acknowledging the last message acknowledges the batch.
        last.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
        metrics::counter!("herald_history_events_projected_total").increment(applied as u64);
        tracing::debug!(applied, max_seq, "batch projected");
        Ok(())
    }

    /// Apply `rows` and move the checkpoint to `max_seq`, in one
    /// transaction; returns how many rows were new.
    async fn apply_rows(&self, rows: &[Row], max_seq: i64) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        // Shared with other batches, exclusive for a rebuild's swap: the
        // live tables are never replaced in the middle of a batch.
        sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext($1))")
            .bind(crate::rebuild::apply_lock_key(&self.name))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO projection_checkpoints (name, last_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING")
            .bind(&self.name)
            .execute(&mut *tx)
            .await?;
        let checkpoint: i64 = sqlx::query_scalar(
            "SELECT last_seq FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        )
        .bind(&self.name)
        .fetch_one(&mut *tx)
        .await?;
        let fresh: Vec<&Row> = rows.iter().filter(|r| r.seq > checkpoint).collect();
        let applied = fresh.len();
        if let Some(first) = fresh.first() {
            // Rows are in stream order: the fresh ones are the tail.
            let start = rows.len() - fresh.len();
            model::apply(&mut tx, &rows[start..])
                .await
                .map_err(|err| match err.downcast_ref::<model::BadEventData>() {
                    Some(bad) => anyhow::Error::new(Stalled {
                        seq: first.seq,
                        reason: bad.to_string(),
                    }),
                    None => err,
                })?;
        }
        if max_seq > checkpoint {
            sqlx::query("UPDATE projection_checkpoints SET last_seq = $2 WHERE name = $1")
                .bind(&self.name)
                .bind(max_seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(applied)
    }
}
