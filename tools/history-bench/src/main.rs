//! `herald-history-bench`: the numbers BENCHMARKS.md reports for the
//! history service's chat read models, measured against a private
//! nats-server and a fresh database (`HERALD_TEST_DATABASE_URL`, or the
//! private cluster `scripts/test-postgres` starts):
//!
//! 1. **Rebuild**: `--messages` stored messages over `--channels` channels
//!    (plus the members of every channel) are replayed into fresh tables
//!    by `herald_history::rebuild`; events/s, and as a ratio of a bare
//!    `COPY` of the same message rows into an unindexed table.
//! 2. **History page**: `--pages` random pages (`before` a random seq,
//!    limit 50) through the running service's REST API; p50/p99.
//! 3. **Inbox**: one user who is a member of `--inbox-channels` channels
//!    (each with a message); `GET …/inbox` p50/p99.
//! 4. **Unread cost**: row writes of one message in a `--room-members`
//!    member room (counted by row triggers on the model's tables), next to
//!    one in a 3-member room.
//!
//! Only loopback; run by hand (release build), never in CI.

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::envelope::{event_names, Membership};
use herald_proto::{AppId, ChannelName, Envelope, EventKind, Subjects};
use herald_stream::PublishOptions;
use herald_testkit::{NatsServer, TestDatabase};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "herald-history-bench", about)]
struct Args {
    /// Stored messages to rebuild from.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Channels they are spread over.
    #[arg(long, default_value_t = 1_000)]
    channels: u64,
    /// Members of each of those channels.
    #[arg(long, default_value_t = 3)]
    members: u64,
    /// History pages to time.
    #[arg(long, default_value_t = 2_000)]
    pages: u64,
    /// Channels of the inbox user.
    #[arg(long, default_value_t = 1_000)]
    inbox_channels: u64,
    /// Inbox reads to time.
    #[arg(long, default_value_t = 500)]
    inbox_reads: u64,
    /// Members of the big room of the unread-cost measurement.
    #[arg(long, default_value_t = 10_000)]
    room_members: u64,
}

const APP: &str = "app-id";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsServer::start()?;
    let db = TestDatabase::create().await?;
    let subjects = Subjects::new("hbench")?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let settings = herald_stream::StreamSettings::default();
    herald_stream::ensure_channels_stream(&js, &subjects, &settings).await?;
    let apps = AppRegistry::single(AppConfig::new(APP, "app-key", "app-secret"));

    // --- the stream: members, then messages --------------------------------
    let started = Instant::now();
    let mut store = Store::new(js.clone(), subjects.clone());
    for c in 0..args.channels {
        for m in 0..args.members {
            store.join(&channel(c), &format!("u{m}")).await?;
        }
    }
    for i in 0..args.messages {
        let c = i % args.channels;
        let author = format!("u{}", i % args.members.max(1));
        store.message(&channel(c), &author, i).await?;
    }
    store.flush().await?;
    let stored = store.count;
    println!(
        "stored {stored} events ({} messages) in {:.1} s",
        args.messages,
        started.elapsed().as_secs_f64()
    );

    // --- rebuild ------------------------------------------------------------
    // The live schema, migrated (the service would do it at start).
    herald_history::connect_database(db.url(), 2)
        .await?
        .pool
        .close()
        .await;
    let options: sqlx::postgres::PgConnectOptions = db.url().parse()?;
    let report = herald_history::rebuild::rebuild(&js, &subjects, &options, false).await?;
    let rebuild_rate = report.events as f64 / report.elapsed.as_secs_f64();
    println!(
        "rebuild: {} events in {:.2} s = {:.0} events/s (checkpoint {})",
        report.events,
        report.elapsed.as_secs_f64(),
        rebuild_rate,
        report.checkpoint
    );
    let copy_rate = bare_copy(db.url(), args.messages, args.channels).await?;
    println!(
        "bare COPY of {} message rows: {:.0} rows/s; rebuild / COPY = {:.2}",
        args.messages,
        copy_rate,
        rebuild_rate / copy_rate
    );

    // --- the service, for REST reads ------------------------------------------
    let mut config =
        herald_history::Config::new(&nats.url(), subjects.clone(), db.url(), apps.clone());
    config.db_max_connections = 8;
    let app = herald_history::Application::build(config).await?;
    let port = app.port();
    let shutdown = herald_server::Service::shutdown_token(&app);
    let served = tokio::spawn(herald_server::Service::run_until_stopped(app));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v1/apps/{APP}");
    let get = |path: String| {
        let http = http.clone();
        async move {
            let t = Instant::now();
            let resp = http
                .get(path)
                .basic_auth("app-key", Some("app-secret"))
                .send()
                .await?;
            anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
            let _ = resp.bytes().await?;
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    // Pages at random positions (a simple LCG: repeatable without a crate).
    let mut pages = Histogram::<u64>::new(3)?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..args.pages {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let c = (x >> 33) % args.channels;
        let before = 1 + (x >> 11) % report.checkpoint.max(1) as u64;
        let took = get(format!(
            "{base}/channels/{}/messages?limit=50&before={before}",
            channel(c)
        ))
        .await?;
        pages.record(took.as_micros() as u64)?;
    }
    println!(
        "history page (limit 50, {} messages stored): p50 {:.2} ms, p99 {:.2} ms",
        args.messages,
        pages.value_at_quantile(0.5) as f64 / 1000.0,
        pages.value_at_quantile(0.99) as f64 / 1000.0
    );

    // --- inbox ---------------------------------------------------------------
    for c in 0..args.inbox_channels {
        let ch = format!("private-inbox-{c}");
        store.join(&ch, "reader").await?;
        store.message(&ch, "someone", c).await?;
    }
    let last = store.flush().await?;
    wait_applied(&http, &base, last).await?;
    let mut inbox = Histogram::<u64>::new(3)?;
    for _ in 0..args.inbox_reads {
        let took = get(format!("{base}/users/reader/inbox?limit=50")).await?;
        inbox.record(took.as_micros() as u64)?;
    }
    println!(
        "inbox of a user in {} channels (first page of 50): p50 {:.2} ms, p99 {:.2} ms",
        args.inbox_channels,
        inbox.value_at_quantile(0.5) as f64 / 1000.0,
        inbox.value_at_quantile(0.99) as f64 / 1000.0
    );

    // --- unread cost ---------------------------------------------------------
    for m in 0..args.room_members {
        store.join("private-big-room", &format!("m{m}")).await?;
    }
    for m in 0..3 {
        store.join("private-small-room", &format!("m{m}")).await?;
    }
    let last = store.flush().await?;
    wait_applied(&http, &base, last).await?;
    count_row_writes(db.url()).await?;
    for room in ["private-small-room", "private-big-room"] {
        let before = row_writes(db.url()).await?;
        let t = Instant::now();
        store.message(room, "m1", 1).await?;
        let last = store.flush().await?;
        wait_applied(&http, &base, last).await?;
        let took = t.elapsed();
        let after = row_writes(db.url()).await?;
        println!(
            "one message in {room} ({} members): {} row writes, applied in {:.1} ms",
            if room.contains("big") {
                args.room_members
            } else {
                3
            },
            after - before,
            took.as_secs_f64() * 1000.0
        );
    }
    shutdown.cancel();
    let _ = served.await;
    Ok(())
}

fn channel(c: u64) -> String {
    format!("private-room-{c}")
}

/// Wait until the service's model has applied `seq`.
async fn wait_applied(http: &reqwest::Client, base: &str, seq: u64) -> anyhow::Result<()> {
    let url = format!("{base}/channels/none/messages?min_seq={seq}");
    for _ in 0..600 {
        let resp = http
            .get(&url)
            .basic_auth("app-key", Some("app-secret"))
            .send()
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
    }
    anyhow::bail!("the model did not reach seq {seq}")
}

/// Count every row written to the model's tables from now on (a trigger
/// per table into `public.row_writes`), committed with the writes: exact,
/// unlike the statistics views, which backends report late.
async fn count_row_writes(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(
        "CREATE TABLE public.row_writes (n BIGSERIAL PRIMARY KEY, tbl TEXT NOT NULL);
         CREATE FUNCTION public.count_row_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.row_writes (tbl) VALUES (TG_TABLE_NAME); RETURN NULL; END $$;",
    )
    .execute(&mut conn)
    .await?;
    for table in [
        "messages",
        "channel_stats",
        "read_cursors",
        "channel_members",
    ] {
        sqlx::raw_sql(&format!(
            "CREATE TRIGGER count_{table} AFTER INSERT OR UPDATE OR DELETE ON history.{table}
             FOR EACH ROW EXECUTE FUNCTION public.count_row_write()"
        ))
        .execute(&mut conn)
        .await?;
    }
    Ok(())
}

/// Rows written to the model's tables since [`count_row_writes`].
async fn row_writes(url: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM public.row_writes")
        .fetch_one(&mut conn)
        .await?)
}

/// COPY the same message rows (as the model stores them, without its
/// indexes) into a scratch table: rows/s.
async fn bare_copy(url: &str, messages: u64, channels: u64) -> anyhow::Result<f64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(
        "CREATE TABLE public.copy_bench (app_id text, channel text, seq int8, id text, kind text,
         event text, data text, author text, client_id text, ts int8, ordinal int8)",
    )
    .execute(&mut conn)
    .await?;
    let mut text = String::with_capacity(messages as usize * 120);
    for i in 0..messages {
        let c = i % channels;
        text.push_str(&format!(
            "{APP}\t{}\t{}\t0190f1c2-7a3b-7c4d-8e5f-{:012}\tmessage\tm\t{{\"n\":{i}}}\tu1\t\\N\t1796000000000\t{}\n",
            channel(c),
            i + 1,
            i,
            i / channels + 1
        ));
    }
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY public.copy_bench FROM STDIN")
        .await
        .context("COPY")?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await?;
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

use sqlx::Connection;

/// Stores envelopes, pipelined (acks awaited a thousand at a time).
struct Store {
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    app: AppId,
    pending: Vec<async_nats::jetstream::context::PublishAckFuture>,
    count: u64,
    last: u64,
}

impl Store {
    fn new(js: async_nats::jetstream::Context, subjects: Subjects) -> Self {
        Self {
            js,
            subjects,
            app: AppId::parse(APP).expect("app id"),
            pending: Vec::new(),
            count: 0,
            last: 0,
        }
    }

    async fn put(&mut self, env: Envelope) -> anyhow::Result<()> {
        let channel = ChannelName::parse(&env.channel)?;
        let ack = herald_stream::publish_envelope(
            &self.js,
            &self.subjects,
            &self.app,
            &channel,
            &env,
            &env.id,
            &PublishOptions::default(),
        )
        .await?;
        self.pending.push(ack);
        self.count += 1;
        if self.pending.len() >= 1000 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn join(&mut self, channel: &str, user: &str) -> anyhow::Result<()> {
        let data = Membership {
            user_id: user.to_owned(),
            room_id: None,
        }
        .to_data();
        self.put(Envelope::new(
            EventKind::MemberJoined,
            APP,
            channel,
            event_names::MEMBER_JOINED,
            data,
            Some(user.to_owned()),
        ))
        .await
    }

    async fn message(&mut self, channel: &str, author: &str, n: u64) -> anyhow::Result<()> {
        self.put(Envelope::new(
            EventKind::Message,
            APP,
            channel,
            "m",
            format!("{{\"n\":{n}}}"),
            Some(author.to_owned()),
        ))
        .await
    }

    /// Await every ack; the highest stored seq.
    async fn flush(&mut self) -> anyhow::Result<u64> {
        for ack in self.pending.drain(..) {
            self.last = self.last.max(ack.await?.sequence);
        }
        Ok(self.last)
    }
}
