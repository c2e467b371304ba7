//! How each kind of channel event changes the read model, inside the
//! projector's transaction:
//!
//! * triggered and published messages: a `messages` row (with its ordinal,
//!   its position among the channel's messages), the channel's counters and
//!   preview (`channel_stats`), and the author's read cursor (posting reads
//!   everything up to one's own message);
//! * edits and deletes: the message row (a delete empties its data and keeps
//!   the row as a tombstone) and, when it is the latest, the preview;
//! * read and delivery receipts: the user's cursor;
//! * member joined / left: `channel_members`, the member count, and the new
//!   member's cursor (set at the join: what was said before is not unread);
//! * channel purged: every row of the channel goes.
//!
//! Every change is O(1) rows whatever the channel's member count; unread
//! counts are computed from the counters when asked ([`UNREAD_SQL`]).
//! Applying is idempotent in effect only together with the projector's
//! checkpoint (which skips anything applied before).

use anyhow::Context;
use herald_proto::envelope::{Membership, MessageEdit, MessageRef, Receipt};
use herald_proto::{Envelope, EventKind};
use sqlx::PgConnection;
use std::collections::HashMap;

/// Characters of a message's data kept as the inbox preview.
pub const PREVIEW_CHARS: usize = 200;

/// The unread count of a cursor row `c` in channel stats `s` (SQL
/// expression; `m` must not be used as an alias by the caller):
/// messages posted since the cursor minus those deleted since.
pub const UNREAD_SQL: &str =
    "GREATEST(0, COALESCE(s.message_count, 0) - COALESCE(c.read_ordinal, 0)
     - (SELECT count(*) FROM messages d
        WHERE d.app_id = s.app_id AND d.channel = s.channel
          AND d.deleted_at IS NOT NULL AND d.seq > COALESCE(c.read_seq, 0)))";

/// One stored event to apply, with its stream sequence.
pub(crate) struct Row {
    pub seq: i64,
    pub env: Envelope,
}

impl Row {
    /// The event, its text made storable ([`pg_text`]).
    pub fn new(seq: i64, mut env: Envelope) -> Self {
        for field in [
            &mut env.app,
            &mut env.channel,
            &mut env.id,
            &mut env.event,
            &mut env.data,
        ] {
            if let std::borrow::Cow::Owned(clean) = pg_text(field) {
                *field = clean;
            }
        }
        for field in [&mut env.author, &mut env.client_id].into_iter().flatten() {
            if let std::borrow::Cow::Owned(clean) = pg_text(field) {
                *field = clean;
            }
        }
        Self { seq, env }
    }
}

/// Whether the projection applies events of this kind (others are stored
/// in the stream for other readers and skipped here).
pub(crate) fn is_projected(kind: EventKind) -> bool {
    !matches!(kind, EventKind::Unknown)
}

fn is_message(kind: EventKind) -> bool {
    matches!(kind, EventKind::Trigger | EventKind::Message)
}

/// Text as Postgres can store it: `TEXT` cannot hold NUL, which a stored
/// event may carry (Pusher's `data` is any string, and older builds let
/// NUL into names), so it becomes U+FFFD here. Deterministic, so a rebuild
/// stores the same; live delivery still carries the exact bytes.
fn pg_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn preview(data: &str) -> String {
    pg_text(data).chars().take(PREVIEW_CHARS).collect()
}

/// Apply `rows` (in stream order, none applied before).
pub(crate) async fn apply(tx: &mut PgConnection, rows: &[Row]) -> anyhow::Result<()> {
    // Runs of messages go in together; anything else is applied where it
    // stands (a purge forgets the messages before it, not those after it).
    let mut run_start = 0;
    for i in 0..=rows.len() {
        if rows.get(i).is_some_and(|r| is_message(r.env.kind)) {
            continue;
        }
        insert_messages(tx, &rows[run_start..i]).await?;
        if let Some(row) = rows.get(i) {
            apply_one(tx, row)
                .await
                .with_context(|| format!("applying seq {} ({:?})", row.seq, row.env.kind))?;
        }
        run_start = i + 1;
    }
    Ok(())
}

/// The last message of a run on one channel, and how many the run holds.
struct ChannelRun<'a> {
    count: i64,
    last: &'a Row,
}

/// Insert a run of messages with their ordinals, then advance their
/// channels' counters and their authors' cursors: a handful of statements
/// per run, whatever its length.
async fn insert_messages(tx: &mut PgConnection, rows: &[Row]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // The channels' counters before the run.
    let mut channels: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.env.app.as_str(), r.env.channel.as_str()))
        .collect();
    channels.sort_unstable();
    channels.dedup();
    let (apps, names): (Vec<&str>, Vec<&str>) = channels.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO channel_stats (app_id, channel)
         SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&apps)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    // No `FOR UPDATE`: one transaction at a time applies (it holds the
    // checkpoint row's lock), and locking would write every row twice.
    let counts: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT s.app_id, s.channel, s.message_count FROM channel_stats s
         JOIN UNNEST($1::text[], $2::text[]) AS u(app_id, channel)
           ON s.app_id = u.app_id AND s.channel = u.channel",
    )
    .bind(&apps)
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    let mut next: HashMap<(String, String), i64> =
        counts.into_iter().map(|(a, c, n)| ((a, c), n)).collect();

    let mut ordinals = Vec::with_capacity(rows.len());
    let mut runs: HashMap<(&str, &str), ChannelRun<'_>> = HashMap::new();
    // Per (app, channel, author): the author's last message in the run.
    let mut authors: HashMap<(&str, &str, &str), (i64, i64)> = HashMap::new();
    for row in rows {
        let key = (row.env.app.clone(), row.env.channel.clone());
        let n = next.entry(key).or_insert(0);
        *n += 1;
        ordinals.push(*n);
        let channel = (row.env.app.as_str(), row.env.channel.as_str());
        let run = runs.entry(channel).or_insert(ChannelRun {
            count: 0,
            last: row,
        });
        run.count += 1;
        run.last = row;
        if let Some(author) = row.env.author.as_deref() {
            authors.insert((channel.0, channel.1, author), (row.seq, *n));
        }
    }

    // COPY, not an INSERT of arrays: Postgres parses no arrays and checks
    // no conflict (none can happen: the checkpoint, locked in the same
    // transaction, lets each seq through once), which is most of a
    // message's cost in a rebuild.
    let mut copy = String::with_capacity(rows.len() * 160);
    for (row, ordinal) in rows.iter().zip(&ordinals) {
        copy_row(&mut copy, row, *ordinal);
    }
    let mut sink = tx
        .copy_in_raw(
            "COPY messages (app_id, channel, seq, id, kind, event, data, author, client_id, ts, ordinal)
             FROM STDIN",
        )
        .await?;
    sink.send(copy.into_bytes()).await?;
    sink.finish().await?;

    let mut s = StatsColumns::default();
    for ((app, channel), run) in &runs {
        s.app.push(app);
        s.channel.push(channel);
        s.count.push(run.count);
        s.seq.push(run.last.seq);
        s.id.push(&run.last.env.id);
        s.author.push(run.last.env.author.as_deref());
        s.data.push(preview(&run.last.env.data));
        s.ts.push(run.last.env.at);
    }
    sqlx::query(
        "UPDATE channel_stats s SET message_count = s.message_count + u.n,
             last_seq = u.seq, last_id = u.id, last_author = u.author, last_data = u.data,
             last_ts = u.ts, last_activity = GREATEST(s.last_activity, u.ts)
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[],
                     $7::text[], $8::int8[]) AS u(app_id, channel, n, seq, id, author, data, ts)
         WHERE s.app_id = u.app_id AND s.channel = u.channel",
    )
    .bind(&s.app)
    .bind(&s.channel)
    .bind(&s.count)
    .bind(&s.seq)
    .bind(&s.id)
    .bind(&s.author)
    .bind(&s.data)
    .bind(&s.ts)
    .execute(&mut *tx)
    .await?;

    if !authors.is_empty() {
        let mut a = CursorColumns::default();
        for ((app, channel, user), (seq, ordinal)) in &authors {
            a.app.push(app);
            a.channel.push(channel);
            a.user.push(user);
            a.seq.push(*seq);
            a.ordinal.push(*ordinal);
        }
        advance_cursors(tx, &a, true).await?;
    }
    Ok(())
}

/// Move read (and delivery) cursors forward, never back.
async fn advance_cursors(
    tx: &mut PgConnection,
    a: &CursorColumns<'_>,
    read: bool,
) -> anyhow::Result<()> {
    let query = if read {
        "INSERT INTO read_cursors (app_id, channel, user_id, read_seq, read_ordinal, delivered_seq)
         SELECT u.app_id, u.channel, u.user_id, u.seq, u.ordinal, u.seq
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])
              AS u(app_id, channel, user_id, seq, ordinal)
         ON CONFLICT (app_id, channel, user_id) DO UPDATE SET
             read_seq = GREATEST(read_cursors.read_seq, EXCLUDED.read_seq),
             read_ordinal = GREATEST(read_cursors.read_ordinal, EXCLUDED.read_ordinal),
             delivered_seq = GREATEST(read_cursors.delivered_seq, EXCLUDED.delivered_seq)"
    } else {
        "INSERT INTO read_cursors (app_id, channel, user_id, delivered_seq)
         SELECT u.app_id, u.channel, u.user_id, u.seq
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])
              AS u(app_id, channel, user_id, seq, ordinal)
         ON CONFLICT (app_id, channel, user_id) DO UPDATE SET
             delivered_seq = GREATEST(read_cursors.delivered_seq, EXCLUDED.delivered_seq)"
    };
    sqlx::query(query)
        .bind(&a.app)
        .bind(&a.channel)
        .bind(&a.user)
        .bind(&a.seq)
        .bind(&a.ordinal)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// An event that is not a message.
async fn apply_one(tx: &mut PgConnection, row: &Row) -> anyhow::Result<()> {
    let env = &row.env;
    let (app, channel) = (env.app.as_str(), env.channel.as_str());
    match env.kind {
        EventKind::Edited => {
            let mut edit: MessageEdit = decode(env)?;
            edit.data = pg_text(&edit.data).into_owned();
            // Only its author edits a message, and a deleted one stays so.
            let edited: Option<String> = sqlx::query_scalar(
                "UPDATE messages SET data = $4, edited_at = $5
                 WHERE app_id = $1 AND channel = $2 AND id = $3 AND deleted_at IS NULL
                   AND author IS NOT DISTINCT FROM $6 AND $6::text IS NOT NULL
                 RETURNING id",
            )
            .bind(app)
            .bind(channel)
            .bind(&edit.id)
            .bind(&edit.data)
            .bind(env.at)
            .bind(env.author.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
            if edited.is_some() {
                sqlx::query(
                    "UPDATE channel_stats SET last_data = $4
                     WHERE app_id = $1 AND channel = $2 AND last_id = $3",
                )
                .bind(app)
                .bind(channel)
                .bind(&edit.id)
                .bind(preview(&edit.data))
                .execute(&mut *tx)
                .await?;
            }
        }
        EventKind::Deleted => {
            let mut target: MessageRef = decode(env)?;
            target.id = pg_text(&target.id).into_owned();
            // The author deletes their message; the app (no author) any.
            let deleted: Option<String> = sqlx::query_scalar(
                "UPDATE messages SET data = '', deleted_at = $4
                 WHERE app_id = $1 AND channel = $2 AND id = $3 AND deleted_at IS NULL
                   AND ($5::text IS NULL OR author = $5)
                 RETURNING id",
            )
            .bind(app)
            .bind(channel)
            .bind(&target.id)
            .bind(env.at)
            .bind(env.author.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
            if deleted.is_some() {
                // The preview falls back to the latest message left.
                sqlx::query(
                    "UPDATE channel_stats s SET (last_seq, last_id, last_author, last_data, last_ts) =
                         (SELECT m.seq, m.id, m.author, left(m.data, $4), m.ts FROM messages m
                          WHERE m.app_id = $1 AND m.channel = $2 AND m.deleted_at IS NULL
                          ORDER BY m.seq DESC LIMIT 1)
                     WHERE s.app_id = $1 AND s.channel = $2 AND s.last_id = $3",
                )
                .bind(app)
                .bind(channel)
                .bind(&target.id)
                .bind(PREVIEW_CHARS as i32)
                .execute(&mut *tx)
                .await?;
            }
        }
        EventKind::Read | EventKind::Delivered => {
            let mut receipt: Receipt = decode(env)?;
            receipt.user_id = pg_text(&receipt.user_id).into_owned();
            // The stored author is who sent it (set by the gateway or the
            // history API from the sender's identity, never by the client).
            let user = env.author.as_deref().unwrap_or(&receipt.user_id);
            let seq = i64::try_from(receipt.seq).unwrap_or(i64::MAX);
            let ordinal: i64 = sqlx::query_scalar(
                "SELECT COALESCE((SELECT ordinal FROM messages
                    WHERE app_id = $1 AND channel = $2 AND seq <= $3
                    ORDER BY seq DESC LIMIT 1), 0)",
            )
            .bind(app)
            .bind(channel)
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
            let cursor = CursorColumns {
                app: vec![app],
                channel: vec![channel],
                user: vec![user],
                seq: vec![seq],
                ordinal: vec![ordinal],
            };
            advance_cursors(tx, &cursor, env.kind == EventKind::Read).await?;
        }
        EventKind::MemberJoined => {
            let mut member: Membership = decode(env)?;
            member.user_id = pg_text(&member.user_id).into_owned();
            let joined: Option<i32> = sqlx::query_scalar(
                "INSERT INTO channel_members (app_id, channel, user_id, since) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING RETURNING 1",
            )
            .bind(app)
            .bind(channel)
            .bind(&member.user_id)
            .bind(row.seq)
            .fetch_optional(&mut *tx)
            .await?;
            if joined.is_some() {
                let count: i64 = sqlx::query_scalar(
                    "INSERT INTO channel_stats (app_id, channel, member_count) VALUES ($1, $2, 1)
                     ON CONFLICT (app_id, channel) DO UPDATE
                     SET member_count = channel_stats.member_count + 1
                     RETURNING message_count",
                )
                .bind(app)
                .bind(channel)
                .fetch_one(&mut *tx)
                .await?;
                // What was said before the join is not unread for them.
                let cursor = CursorColumns {
                    app: vec![app],
                    channel: vec![channel],
                    user: vec![&member.user_id],
                    seq: vec![row.seq],
                    ordinal: vec![count],
                };
                advance_cursors(tx, &cursor, true).await?;
            }
        }
        EventKind::MemberLeft => {
            let mut member: Membership = decode(env)?;
            member.user_id = pg_text(&member.user_id).into_owned();
            let left: Option<i32> = sqlx::query_scalar(
                "DELETE FROM channel_members WHERE app_id = $1 AND channel = $2 AND user_id = $3
                 RETURNING 1",
            )
            .bind(app)
            .bind(channel)
            .bind(&member.user_id)
            .fetch_optional(&mut *tx)
            .await?;
            if left.is_some() {
                sqlx::query(
                    "UPDATE channel_stats SET member_count = GREATEST(member_count - 1, 0)
                     WHERE app_id = $1 AND channel = $2",
                )
                .bind(app)
                .bind(channel)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM read_cursors WHERE app_id = $1 AND channel = $2 AND user_id = $3",
                )
                .bind(app)
                .bind(channel)
                .bind(&member.user_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        EventKind::ChannelPurged => {
            sqlx::query("DELETE FROM messages WHERE app_id = $1 AND channel = $2 AND seq < $3")
                .bind(app)
                .bind(channel)
                .bind(row.seq)
                .execute(&mut *tx)
                .await?;
            for table in ["channel_members", "channel_stats", "read_cursors"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE app_id = $1 AND channel = $2"
                ))
                .bind(app)
                .bind(channel)
                .execute(&mut *tx)
                .await?;
            }
        }
        EventKind::Trigger | EventKind::Message | EventKind::Unknown => {}
    }
    Ok(())
}

/// An event whose `data` is not what its kind says: the stream holds
/// something this build cannot apply, and the projection must stop.
#[derive(Debug, thiserror::Error)]
#[error("the data of a {kind:?} event is not valid: {source}")]
pub(crate) struct BadEventData {
    kind: EventKind,
    #[source]
    source: serde_json::Error,
}

fn decode<T: serde::de::DeserializeOwned>(env: &Envelope) -> Result<T, BadEventData> {
    serde_json::from_str(&env.data).map_err(|source| BadEventData {
        kind: env.kind,
        source,
    })
}

/// One `messages` row in `COPY`'s text format (tab-separated, `\N` for
/// none, backslash escapes); [`Row::new`] made its text storable.
fn copy_row(out: &mut String, row: &Row, ordinal: i64) {
    use std::fmt::Write;
    let env = &row.env;
    let text = |out: &mut String, value: Option<&str>| {
        match value {
            None => out.push_str("\\N"),
            Some(value) => copy_text(out, value),
        }
        out.push('\t');
    };
    text(out, Some(&env.app));
    text(out, Some(&env.channel));
    let _ = write!(out, "{}\t", row.seq);
    text(out, Some(&env.id));
    text(out, Some(env.kind.as_str()));
    text(out, Some(&env.event));
    text(out, Some(&env.data));
    text(out, env.author.as_deref());
    text(out, env.client_id.as_deref());
    let _ = writeln!(out, "{}\t{ordinal}", env.at);
}

/// `value` escaped for `COPY`'s text format.
fn copy_text(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '\n', '\r', '\t']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

#[derive(Default)]
struct StatsColumns<'a> {
    app: Vec<&'a str>,
    channel: Vec<&'a str>,
    count: Vec<i64>,
    seq: Vec<i64>,
    id: Vec<&'a str>,
    author: Vec<Option<&'a str>>,
    data: Vec<String>,
    ts: Vec<i64>,
}

#[derive(Default)]
struct CursorColumns<'a> {
    app: Vec<&'a str>,
    channel: Vec<&'a str>,
    user: Vec<&'a str>,
    seq: Vec<i64>,
    ordinal: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_exactly_what_the_copy_format_reads_as_special() {
        let mut out = String::new();
        copy_text(&mut out, "a\\b\tc\nd\re \\N \\. é😀");
        assert_eq!(out, "a\\\\b\\tc\\nd\\re \\\\N \\\\. é😀");
        let mut plain = String::new();
        copy_text(&mut plain, "plain text, \"quoted\"");
        assert_eq!(plain, "plain text, \"quoted\"");
    }
}
