//! `herald-history rebuild`: replay the channel stream from its first
//! sequence into fresh tables, then swap them in while the service keeps
//! serving.
//!
//! 1. A new schema gets the service's migrations, so its tables are exactly
//!    the live ones, empty.
//! 2. An ordered consumer replays the stream into it with the same
//!    [`model::apply`] the live projector uses, in batches, each with its own
//!    checkpoint (progress on a terminal, log lines otherwise).
//! 3. Near the head, the swap: one transaction takes the projection's apply
//!    lock (every live batch takes it shared, so the live projector pauses
//!    between two batches), reads the live checkpoint, replays on until the
//!    rebuilt checkpoint has reached it, then moves the live tables out to
//!    a `history_old_…` schema and the rebuilt ones in, and commits. The live
//!    projector's next batch lands in the rebuilt tables, whose checkpoint
//!    skips whatever they already hold, so nothing is lost or applied twice.
//!    Tables, not schemas, are moved: moving a table invalidates the
//!    statements cached on every connection, which then resolve the names
//!    anew.
//!
//! `--verify` builds the same way, then, at the same pause, compares a
//! checksum of every table with the live one, says which differ, and drops
//! the rebuilt schema instead of swapping.

use crate::model::{self, Row};
use anyhow::{anyhow, Context};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use herald_proto::{Envelope, Subjects};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use std::time::{Duration, Instant};

/// The tables of the read model, with the columns that order their rows
/// (for checksums). Moved together by a swap.
pub const TABLES: [(&str, &str); 5] = [
    ("messages", "app_id, channel, seq"),
    ("channel_members", "app_id, channel, user_id"),
    ("channel_stats", "app_id, channel"),
    ("read_cursors", "app_id, channel, user_id"),
    ("projection_checkpoints", "name"),
];

/// Events applied per rebuild transaction.
const BATCH: usize = 10_000;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events replayed (all kinds, including ones the model skips).
    pub events: u64,
    /// The stream position the rebuilt tables reached.
    pub checkpoint: i64,
    /// With `verify`: the tables whose content differs from the live ones.
    pub differing: Vec<String>,
    /// Whether the rebuilt tables were swapped in.
    pub swapped: bool,
    /// Where the old tables went (after a swap).
    pub old_schema: Option<String>,
    /// Wall time of the replay.
    pub elapsed: Duration,
}

/// The lock every live batch takes shared and a swap takes exclusive.
pub(crate) fn apply_lock_key(projection: &str) -> String {
    format!("{projection}:apply")
}

/// Rebuild the read model of `schema` (the service's, `history`) from the
/// stream; `verify` compares instead of swapping.
pub async fn rebuild(
    js: &jetstream::Context,
    subjects: &Subjects,
    options: &PgConnectOptions,
    verify: bool,
) -> anyhow::Result<RebuildReport> {
    let projection = subjects.durable(crate::projector::PROJECTION);
    let stamp = chrono_stamp();
    let fresh = format!("{}_rebuild_{stamp}", crate::SCHEMA);
    let started = Instant::now();

    // 1. Fresh tables.
    let mut admin = PgConnection::connect_with(options).await?;
    admin
        .execute(format!("CREATE SCHEMA {fresh}").as_str())
        .await?;
    let mut target =
        PgConnection::connect_with(&options.clone().options([("search_path", fresh.as_str())]))
            .await?;
    sqlx::migrate!("../../sql/history")
        .run(&mut target)
        .await
        .context("migrating the rebuild schema")?;

    // 2. Replay.
    let stream = js.get_stream(subjects.channels_stream()).await?;
    let filter = subjects.channels_filter();
    let messages = replay_from(&stream, &filter, 0).await?;
    let mut progress = Progress::new(js, subjects).await?;
    let mut reader = Reader {
        stream,
        filter,
        messages,
        last_seq: 0,
        pending: progress.stored,
    };
    let mut writer = Writer {
        target: &mut target,
        projection: &projection,
        checkpoint: 0,
        events: 0,
    };
    // Catch up with the head (the consumer says how many are left). A task
    // of its own reads and decodes the next batch while this one writes the
    // previous: they wait on different processes (nats-server, Postgres)
    // and decoding takes a thread of its own.
    let (batches, mut written) = tokio::sync::mpsc::channel::<Batch>(1);
    let reading = tokio::spawn(async move {
        while reader.pending > 0 {
            let Some(batch) = reader.read(i64::MAX).await? else {
                break;
            };
            if batches.send(batch).await.is_err() {
                break;
            }
        }
        anyhow::Ok(reader)
    });
    while let Some(batch) = written.recv().await {
        writer.write(batch).await?;
        progress.update(writer.checkpoint as u64, writer.events);
    }
    let mut reader = reading.await.context("the replay reader")??;

    // 3. Pause the live projector between two batches, reach its position.
    let mut swap = PgConnection::connect_with(options).await?;
    let mut tx = swap.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(apply_lock_key(&projection))
        .execute(&mut *tx)
        .await?;
    let live: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE((SELECT last_seq FROM {}.projection_checkpoints WHERE name = $1), 0)",
        crate::SCHEMA
    ))
    .bind(&projection)
    .fetch_one(&mut *tx)
    .await?;
    // The live projector applied everything up to `live`; the rebuild has
    // to hold at least as much (events stored since may keep coming: the
    // replay stops once it has passed `live` or read all there is).
    while writer.checkpoint < live && reader.pending > 0 {
        if let Some(batch) = reader.read(live).await? {
            writer.write(batch).await?;
        }
        progress.update(writer.checkpoint as u64, writer.events);
    }
    progress.finish(writer.checkpoint as u64, writer.events);
    let (events, checkpoint) = (writer.events, writer.checkpoint);
    let elapsed = started.elapsed();

    if verify {
        let differing = compare(&mut tx, &fresh, checkpoint > live).await?;
        tx.rollback().await?;
        admin
            .execute(format!("DROP SCHEMA {fresh} CASCADE").as_str())
            .await?;
        return Ok(RebuildReport {
            events,
            checkpoint,
            differing,
            swapped: false,
            old_schema: None,
            elapsed,
        });
    }
    let old = format!("{}_old_{stamp}", crate::SCHEMA);
    tx.execute(format!("CREATE SCHEMA {old}").as_str()).await?;
    for (table, _) in TABLES {
        tx.execute(format!("ALTER TABLE {}.{table} SET SCHEMA {old}", crate::SCHEMA).as_str())
            .await?;
        tx.execute(format!("ALTER TABLE {fresh}.{table} SET SCHEMA {}", crate::SCHEMA).as_str())
            .await?;
    }
    tx.commit().await?;
    admin
        .execute(format!("DROP SCHEMA {fresh} CASCADE").as_str())
        .await?;
    tracing::info!(events, checkpoint, old = %old, "rebuilt tables swapped in");
    Ok(RebuildReport {
        events,
        checkpoint,
        differing: Vec::new(),
        swapped: true,
        old_schema: Some(old),
        elapsed,
    })
}

/// How many times in a row the replay may lose its consumer (an error, a
/// NATS restart, a stream that stops answering) and open a new one after
/// the last event read before the rebuild gives up.
const REOPENS: u32 = 10;

/// An ordered consumer of the channel events after stream sequence `after`.
async fn replay_from(
    stream: &jetstream::stream::Stream,
    filter: &str,
    after: i64,
) -> anyhow::Result<consumer::pull::Ordered> {
    let deliver_policy = match after {
        0 => consumer::DeliverPolicy::All,
        n => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: n as u64 + 1,
        },
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            description: Some("Herald history rebuild".into()),
            filter_subject: filter.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// The read side of the replay: events from the stream, decoded.
struct Reader {
    stream: jetstream::stream::Stream,
    filter: String,
    messages: consumer::pull::Ordered,
    /// The stream sequence of the last event read.
    last_seq: i64,
    /// Messages the stream holds after the last one read.
    pending: u64,
}

/// Events read for one rebuild transaction.
struct Batch {
    rows: Vec<Row>,
    /// Events read (all kinds).
    events: u64,
    /// The stream sequence of the last event read (projected or not).
    last_seq: i64,
}

impl Reader {
    /// Up to [`BATCH`] events (fewer when the stream has no more ready,
    /// and never waiting past `until`); `None` when nothing was read.
    async fn read(&mut self, until: i64) -> anyhow::Result<Option<Batch>> {
        let mut rows = Vec::with_capacity(BATCH);
        let mut read: u64 = 0;
        let mut reopened = 0;
        while read < BATCH as u64 && self.last_seq < until && self.pending > 0 {
            let wait = if read == 0 {
                Duration::from_secs(30)
            } else {
                Duration::from_millis(20)
            };
            let lost = match tokio::time::timeout(wait, self.messages.next()).await {
                Ok(Some(Ok(msg))) => Ok(msg),
                Ok(Some(Err(err))) => Err(err.to_string()),
                Ok(None) => Err("the consumer ended".to_owned()),
                Err(_) if read == 0 => Err("the stream stopped answering".to_owned()),
                Err(_) => break,
            };
            let msg = match lost {
                Ok(msg) => msg,
                Err(why) => {
                    // The consumer is gone or stuck; the events after the
                    // last one read are still in the stream.
                    self.reopen(&why, &mut reopened).await?;
                    continue;
                }
            };
            let info = msg.info().map_err(|e| anyhow!("message info: {e}"))?;
            let seq = info.stream_sequence as i64;
            if seq <= self.last_seq {
                // Already read (a reopened consumer starts after it).
                continue;
            }
            reopened = 0;
            self.pending = info.pending;
            self.last_seq = seq;
            read += 1;
            let env = Envelope::decode(&msg.payload).map_err(|e| {
                anyhow!("seq {seq} cannot be read by this build: {e}; the rebuild stops")
            })?;
            if model::is_projected(env.kind) {
                rows.push(Row::new(seq, env));
            }
        }
        Ok((read > 0).then_some(Batch {
            rows,
            events: read,
            last_seq: self.last_seq,
        }))
    }

    /// Replace a lost consumer with one that starts after the last event
    /// read, waiting a little longer each time. `attempts` counts the
    /// losses and failed reopenings since the last event read; past
    /// [`REOPENS`] the rebuild ends.
    async fn reopen(&mut self, why: &str, attempts: &mut u32) -> anyhow::Result<()> {
        loop {
            *attempts += 1;
            let attempt = *attempts;
            if attempt > REOPENS {
                return Err(anyhow!(
                    "the replay lost the stream at seq {} {REOPENS} times in a row ({why}); \
                     the rebuild stops",
                    self.last_seq
                ));
            }
            tracing::warn!(
                seq = self.last_seq,
                attempt,
                why,
                "replay consumer lost; reopening"
            );
            metrics::counter!("herald_history_rebuild_reopens_total").increment(1);
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            match replay_from(&self.stream, &self.filter, self.last_seq).await {
                Ok(messages) => {
                    self.messages = messages;
                    return Ok(());
                }
                Err(err) => tracing::debug!(%err, "cannot reopen the replay yet"),
            }
        }
    }
}

/// The write side of the replay: batches applied to the rebuild schema,
/// each with its checkpoint.
struct Writer<'a> {
    target: &'a mut PgConnection,
    projection: &'a str,
    checkpoint: i64,
    /// Events written (all kinds, including ones the model skips).
    events: u64,
}

impl Writer<'_> {
    async fn write(&mut self, batch: Batch) -> anyhow::Result<()> {
        let mut tx = self.target.begin().await?;
        model::apply(&mut tx, &batch.rows).await?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, last_seq) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET last_seq = EXCLUDED.last_seq",
        )
        .bind(self.projection)
        .bind(batch.last_seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.checkpoint = batch.last_seq;
        self.events += batch.events;
        Ok(())
    }
}

/// Tables of `fresh` whose content differs from the live ones. With
/// `ahead`, the rebuild went past the live position (it replays whole
/// batches) and the checkpoint rows are not compared.
async fn compare(tx: &mut PgConnection, fresh: &str, ahead: bool) -> anyhow::Result<Vec<String>> {
    let mut differing = Vec::new();
    for (table, order) in TABLES {
        if ahead && table == "projection_checkpoints" {
            continue;
        }
        let sum = |schema: &str| {
            format!(
                "SELECT md5(COALESCE(string_agg(t::text, '|' ORDER BY {order}), ''))
                 FROM {schema}.{table} t"
            )
        };
        let live: String = sqlx::query_scalar(&sum(crate::SCHEMA))
            .fetch_one(&mut *tx)
            .await?;
        let rebuilt: String = sqlx::query_scalar(&sum(fresh)).fetch_one(&mut *tx).await?;
        if live != rebuilt {
            differing.push(table.to_owned());
        }
    }
    Ok(differing)
}

/// A sortable, unique-enough suffix for schema names: the time in ms.
fn chrono_stamp() -> String {
    herald_proto::now_ms().to_string()
}

/// Progress: a bar on a terminal, a log line every 5 s otherwise.
struct Progress {
    head: u64,
    /// Messages in the stream when the rebuild started.
    stored: u64,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    async fn new(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<Self> {
        let mut stream = js.get_stream(subjects.channels_stream()).await?;
        let state = stream.info().await?.state.clone();
        let (head, stored) = (state.last_sequence, state.messages);
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(head);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} seq  {per_sec}  eta {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Ok(Self {
            head,
            stored,
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
        })
    }

    fn update(&mut self, position: u64, events: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(position.min(bar.length().unwrap_or(position)));
            bar.set_message(format!("{events} events"));
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            let rate = events as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                position,
                head = self.head,
                events,
                rate = rate as u64,
                "rebuilding"
            );
        }
    }

    fn finish(&mut self, position: u64, events: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            position,
            events,
            events_per_sec = (events as f64 / secs) as u64,
            "replayed"
        );
    }
}
