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

use anyhow::{anyhow, Context};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use herald_proto::envelope::Membership;
use herald_proto::{Envelope, EventKind, Subjects};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name of this projection (checkpoint row and consumer suffix).
const PROJECTION: &str = "history";

pub(crate) struct Projector {
    js: jetstream::Context,
    subjects: Subjects,
    pool: PgPool,
    options: PgConnectOptions,
    batch: usize,
    name: String,
}

/// One event ready to write.
struct Row {
    seq: i64,
    env: Envelope,
}

/// A batch of rows as one array per column, for a single `UNNEST` insert.
#[derive(Default)]
struct Columns<'a> {
    app: Vec<&'a str>,
    channel: Vec<&'a str>,
    seq: Vec<i64>,
    id: Vec<&'a str>,
    kind: Vec<&'a str>,
    event: Vec<&'a str>,
    data: Vec<&'a str>,
    author: Vec<Option<&'a str>>,
    client_id: Vec<Option<&'a str>>,
    ts: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn from_rows(rows: &'a [Row]) -> Self {
        let mut c = Self::default();
        for r in rows {
            c.app.push(&r.env.app);
            c.channel.push(&r.env.channel);
            c.seq.push(r.seq);
            c.id.push(&r.env.id);
            c.kind.push(r.env.kind.as_str());
            c.event.push(&r.env.event);
            c.data.push(&r.env.data);
            c.author.push(r.env.author.as_deref());
            c.client_id.push(r.env.client_id.as_deref());
            c.ts.push(r.env.at);
        }
        c
    }
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
        }
    }

    /// Project until `shutdown`; transient failures are retried.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            match self.lead(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "projector failed; retrying");
                    metrics::counter!("herald_history_projector_restarts_total").increment(1);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
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
        let stream = self.js.get_stream(self.subjects.channels_stream()).await?;
        let checkpoint = self.checkpoint().await? as u64;
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

    /// Apply one batch in one transaction, then acknowledge it.
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
            max_seq = max_seq.max(seq);
            match Envelope::decode(&msg.payload) {
                Ok(env)
                    if matches!(
                        env.kind,
                        EventKind::Trigger
                            | EventKind::Message
                            | EventKind::MemberJoined
                            | EventKind::MemberLeft
                            | EventKind::ChannelPurged
                    ) =>
                {
                    rows.push(Row { seq, env })
                }
                Ok(env) => tracing::debug!(seq, kind = ?env.kind, "not a history event"),
                Err(err) => {
                    // Keep going: the event stays in the stream, and a newer
                    // build can rebuild the model from it.
                    metrics::counter!("herald_history_undecodable_events_total").increment(1);
                    tracing::warn!(seq, %err, "skipping undecodable event");
                }
            }
        }

        let mut tx = self.pool.begin().await?;
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
        rows.retain(|r| r.seq > checkpoint);
        let applied = rows.len();
        // In stream order: runs of messages are inserted together; a
        // membership event or a purge is applied where it stands (a purge
        // forgets the messages before it, not those after it).
        let mut run_start = 0;
        for i in 0..=rows.len() {
            let is_message = rows
                .get(i)
                .is_some_and(|r| matches!(r.env.kind, EventKind::Trigger | EventKind::Message));
            if is_message {
                continue;
            }
            insert_messages(&mut tx, &rows[run_start..i]).await?;
            if let Some(row) = rows.get(i) {
                apply_membership(&mut tx, row).await?;
            }
            run_start = i + 1;
        }
        if max_seq > checkpoint {
            sqlx::query("UPDATE projection_checkpoints SET last_seq = $2 WHERE name = $1")
                .bind(&self.name)
                .bind(max_seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // AckPolicy::All: acknowledging the last message acknowledges the batch.
        last.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
        metrics::counter!("herald_history_events_projected_total").increment(applied as u64);
        tracing::debug!(applied, max_seq, "batch projected");
        Ok(())
    }
}

/// Insert a run of message rows with one statement.
async fn insert_messages(tx: &mut PgConnection, rows: &[Row]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let cols = Columns::from_rows(rows);
    sqlx::query(
        "INSERT INTO messages (app_id, channel, seq, id, kind, event, data, author, client_id, ts)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&cols.app)
    .bind(&cols.channel)
    .bind(&cols.seq)
    .bind(&cols.id)
    .bind(&cols.kind)
    .bind(&cols.event)
    .bind(&cols.data)
    .bind(&cols.author)
    .bind(&cols.client_id)
    .bind(&cols.ts)
    .execute(tx)
    .await?;
    Ok(())
}

/// Apply a member joined / left or a channel purge.
async fn apply_membership(tx: &mut PgConnection, row: &Row) -> anyhow::Result<()> {
    let env = &row.env;
    if env.kind == EventKind::ChannelPurged {
        sqlx::query("DELETE FROM messages WHERE app_id = $1 AND channel = $2 AND seq < $3")
            .bind(&env.app)
            .bind(&env.channel)
            .bind(row.seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM channel_members WHERE app_id = $1 AND channel = $2")
            .bind(&env.app)
            .bind(&env.channel)
            .execute(&mut *tx)
            .await?;
        return Ok(());
    }
    let Ok(member) = serde_json::from_str::<Membership>(&env.data) else {
        metrics::counter!("herald_history_undecodable_events_total").increment(1);
        tracing::warn!(seq = row.seq, kind = ?env.kind, "membership event without a user_id");
        return Ok(());
    };
    let query = if env.kind == EventKind::MemberJoined {
        "INSERT INTO channel_members (app_id, channel, user_id, since) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM channel_members WHERE app_id = $1 AND channel = $2 AND user_id = $3
         AND $4::int8 IS NOT NULL"
    };
    sqlx::query(query)
        .bind(&env.app)
        .bind(&env.channel)
        .bind(&member.user_id)
        .bind(row.seq)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
