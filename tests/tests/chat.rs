//! The chat read models of the history service against real NATS and
//! Postgres: a three-user room through send, deliver, read, edit and
//! delete, with the inbox order, previews and unread counts checked at every
//! step; the row writes of one message counted by triggers, equal in a
//! 3-member and a 10,000-member room; pagination both ways with deletes in
//! the middle; an undecodable event stopping the projection.

use herald_proto::envelope::{event_names, Membership};
use herald_proto::{AppId, ChannelName, Envelope, EventKind};
use herald_stream::PublishOptions;
use herald_testkit::TestDatabase;
use herald_tests::{eventually, As, Running, Stack};
use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use std::time::Duration;

const KEY: &str = "app-key";
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    stack: Stack,
    db: TestDatabase,
    auth: Running,
    history: Running,
    http: reqwest::Client,
}

async fn env() -> Env {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let auth = stack.auth_with(stack.auth_config(&db)).await;
    let mut config = stack.history_config(&db);
    config.auth_jwks_url = Some(auth.url("/.well-known/jwks.json"));
    let history = stack.history_with(config).await;
    Env {
        stack,
        db,
        auth,
        history,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        who: As<'_>,
        body: Option<Value>,
    ) -> (u16, Value) {
        herald_tests::rest(&self.http, method, url, who, body).await
    }

    async fn user(&self, user: &str) -> String {
        let url = |p: &str| self.auth.url(&format!("/v1/apps/app-id/users/{user}{p}"));
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                url(""),
                As::App,
                Some(json!({ "name": user })),
            )
            .await;
        assert!(status < 300, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                url("/session-tokens"),
                As::App,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    fn h(&self, path: &str) -> String {
        self.history.url(&format!("/v1/apps/app-id{path}"))
    }

    /// Send a message as `who`; its seq.
    async fn send(&self, channel: &str, who: As<'_>, text: &str) -> (String, u64) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                self.h(&format!("/channels/{channel}/messages")),
                who,
                Some(json!({ "event": "message", "data": { "text": text }, "client_id": text })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["seq"].as_u64().unwrap(),
        )
    }

    async fn receipt(&self, channel: &str, token: &str, what: &str, seq: u64) -> u64 {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                self.h(&format!("/channels/{channel}/{what}")),
                As::User(token),
                Some(json!({ "seq": seq })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["seq"].as_u64().unwrap()
    }

    /// The inbox of `user` once the model has applied `min_seq`.
    async fn inbox(&self, user: &str, token: &str, min_seq: u64) -> Vec<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                self.h(&match min_seq {
                    0 => format!("/users/{user}/inbox"),
                    seq => format!("/users/{user}/inbox?min_seq={seq}"),
                }),
                As::User(token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["channels"].as_array().unwrap().clone()
    }

    /// `unread` of `channel` in `user`'s inbox.
    async fn unread(&self, user: &str, token: &str, channel: &str, min_seq: u64) -> i64 {
        let inbox = self.inbox(user, token, min_seq).await;
        inbox
            .iter()
            .find(|e| e["channel"] == channel)
            .unwrap_or_else(|| panic!("{channel} not in {user}'s inbox: {inbox:?}"))["unread"]
            .as_i64()
            .unwrap()
    }
}

#[tokio::test]
async fn a_three_user_room_through_send_read_edit_and_delete_keeps_inbox_and_unread_counts_right() {
    let e = env().await;
    let alice = e.user("alice").await;
    let bob = e.user("bob").await;
    let carol = e.user("carol").await;
    let (status, room) = e
        .call(
            reqwest::Method::POST,
            e.auth.url("/v1/apps/app-id/rooms"),
            As::User(&alice),
            Some(json!({ "name": "team" })),
        )
        .await;
    assert_eq!(status, 200, "{room}");
    let channel = room["channel"].as_str().unwrap().to_owned();
    for token in [&bob, &carol] {
        let (status, body) = e
            .call(
                reqwest::Method::POST,
                e.auth.url("/v1/apps/app-id/rooms/join"),
                As::User(token),
                Some(json!({ "code": room["code"] })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // The memberships reach history through the stream.
    let inbox = eventually(WAIT, "the room in carol's inbox", || async {
        let inbox = e.inbox("carol", &carol, 0).await;
        (inbox.len() == 1 && inbox[0]["member_count"] == 3).then_some(inbox)
    })
    .await;
    assert_eq!(inbox[0]["channel"], channel);
    assert_eq!(inbox[0]["unread"], 0, "nothing said yet");
    assert_eq!(inbox[0]["last_message"], Value::Null);

    // alice: m1. Unread for the others, not for her.
    let (m1, s1) = e.send(&channel, As::User(&alice), "m1").await;
    assert_eq!(e.unread("alice", &alice, &channel, s1).await, 0);
    assert_eq!(e.unread("bob", &bob, &channel, s1).await, 1);
    assert_eq!(e.unread("carol", &carol, &channel, s1).await, 1);
    let preview = &e.inbox("bob", &bob, s1).await[0]["last_message"];
    assert_eq!(preview["author"], "alice");
    assert_eq!(preview["seq"], s1);
    assert_eq!(preview["data"], "{\"text\":\"m1\"}");

    // bob: m2. Posting reads everything up to it for bob.
    let (m2, s2) = e.send(&channel, As::User(&bob), "m2").await;
    assert_eq!(e.unread("bob", &bob, &channel, s2).await, 0);
    assert_eq!(e.unread("alice", &alice, &channel, s2).await, 1);
    assert_eq!(e.unread("carol", &carol, &channel, s2).await, 2);

    // carol has both delivered and m1 read.
    let d = e.receipt(&channel, &carol, "delivered", s2).await;
    let r = e.receipt(&channel, &carol, "read", s1).await;
    assert_eq!(e.unread("carol", &carol, &channel, r.max(d)).await, 1);
    let (status, receipts) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!(
                "/channels/{channel}/messages/{m2}/receipts?min_seq={r}"
            )),
            As::User(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{receipts}");
    assert_eq!(
        receipts["members"],
        json!([
            { "user_id": "alice", "delivered": false, "read": false },
            { "user_id": "carol", "delivered": true, "read": false },
        ]),
        "bob wrote m2; carol has it delivered, not read"
    );

    // Edits: the author only.
    let (status, body) = e
        .call(
            reqwest::Method::PATCH,
            e.h(&format!("/channels/{channel}/messages/{m1}")),
            As::User(&bob),
            Some(json!({ "data": { "text": "hacked" } })),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, edit) = e
        .call(
            reqwest::Method::PATCH,
            e.h(&format!("/channels/{channel}/messages/{m1}")),
            As::User(&alice),
            Some(json!({ "data": { "text": "m1, edited" } })),
        )
        .await;
    assert_eq!(status, 200, "{edit}");
    let (status, one) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!(
                "/channels/{channel}/messages/{m1}?min_seq={}",
                edit["seq"]
            )),
            As::User(&carol),
            None,
        )
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["data"], "{\"text\":\"m1, edited\"}");
    assert!(one["edited_at"].is_i64());
    assert_eq!(one["seq"], s1, "an edit keeps the message's place");

    // Deletes: the author (or the app), never someone else.
    let (status, _) = e
        .call(
            reqwest::Method::DELETE,
            e.h(&format!("/channels/{channel}/messages/{m2}")),
            As::User(&carol),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, del) = e
        .call(
            reqwest::Method::DELETE,
            e.h(&format!("/channels/{channel}/messages/{m2}")),
            As::User(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200, "{del}");
    let after_delete = del["seq"].as_u64().unwrap();
    // m2 stops counting: carol (who read m1) and alice have nothing unread.
    assert_eq!(e.unread("carol", &carol, &channel, after_delete).await, 0);
    assert_eq!(e.unread("alice", &alice, &channel, after_delete).await, 0);
    // The preview falls back to m1, as edited.
    let preview = &e.inbox("alice", &alice, after_delete).await[0]["last_message"];
    assert_eq!(preview["id"], m1);
    assert_eq!(preview["data"], "{\"text\":\"m1, edited\"}");
    // History keeps m2's place as a tombstone.
    let (_, page) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!("/channels/{channel}/messages?after=1")),
            As::User(&alice),
            None,
        )
        .await;
    let messages: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["event"] == "message")
        .collect();
    assert_eq!(messages.len(), 2, "{page}");
    assert_eq!(messages[1]["id"], m2);
    assert_eq!(messages[1]["deleted"], true);
    assert_eq!(messages[1]["data"], "");

    // A DM with later activity comes first in alice's inbox.
    let (status, dm) = e
        .call(
            reqwest::Method::POST,
            e.auth.url("/v1/apps/app-id/dms"),
            As::User(&alice),
            Some(json!({ "user_id": "bob" })),
        )
        .await;
    assert_eq!(status, 200, "{dm}");
    let dm = dm["channel"].as_str().unwrap().to_owned();
    // The DM's memberships must be in the model before bob can post there.
    eventually(WAIT, "the DM in bob's inbox", || async {
        let inbox = e.inbox("bob", &bob, 0).await;
        inbox.iter().any(|c| c["channel"] == dm).then_some(())
    })
    .await;
    let (_, s3) = e.send(&dm, As::User(&bob), "psst").await;
    let inbox = e.inbox("alice", &alice, s3).await;
    let order: Vec<&str> = inbox
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(order, [dm.as_str(), channel.as_str()]);
    assert_eq!(inbox[0]["unread"], 1);
    assert_eq!(inbox[0]["member_count"], 2);
    // A user's token reads their own inbox only.
    let (status, _) = e
        .call(
            reqwest::Method::GET,
            e.h("/users/alice/inbox"),
            As::User(&bob),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

/// Count every row the projector writes in the chat tables: one trigger per
/// table, into `public.row_writes`.
async fn count_row_writes(db: &TestDatabase) {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    conn.execute(
        r#"
        CREATE TABLE IF NOT EXISTS public.row_writes (n BIGSERIAL PRIMARY KEY, tbl TEXT NOT NULL);
        CREATE OR REPLACE FUNCTION public.count_row_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.row_writes (tbl) VALUES (TG_TABLE_NAME);
            RETURN NULL;
        END $$;
        CREATE TRIGGER count_messages AFTER INSERT OR UPDATE OR DELETE ON history.messages
            FOR EACH ROW EXECUTE FUNCTION public.count_row_write();
        CREATE TRIGGER count_stats AFTER INSERT OR UPDATE OR DELETE ON history.channel_stats
            FOR EACH ROW EXECUTE FUNCTION public.count_row_write();
        CREATE TRIGGER count_cursors AFTER INSERT OR UPDATE OR DELETE ON history.read_cursors
            FOR EACH ROW EXECUTE FUNCTION public.count_row_write();
        CREATE TRIGGER count_members AFTER INSERT OR UPDATE OR DELETE ON history.channel_members
            FOR EACH ROW EXECUTE FUNCTION public.count_row_write();
        "#,
    )
    .await
    .unwrap();
}

async fn row_writes(db: &TestDatabase) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM public.row_writes")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Store `envelopes` on their channels' subjects as they are, pipelined
/// (acks awaited a thousand at a time).
async fn store_all(stack: &Stack, envelopes: impl IntoIterator<Item = Envelope>) {
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let mut acks = Vec::new();
    for env in envelopes {
        let app = AppId::parse(&env.app).unwrap();
        let ch = ChannelName::parse(&env.channel).unwrap();
        let ack = herald_stream::publish_envelope(
            &js,
            &stack.subjects,
            &app,
            &ch,
            &env,
            &env.id,
            &PublishOptions::default(),
        )
        .await
        .unwrap();
        acks.push(ack);
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Store `members` member_joined events on `channel` (as the auth service
/// would), pipelined.
async fn join_many(stack: &Stack, channel: &str, members: usize) {
    store_all(
        stack,
        (0..members).map(|i| {
            let user = format!("u{i}");
            Envelope::new(
                EventKind::MemberJoined,
                "app-id",
                channel,
                event_names::MEMBER_JOINED,
                Membership {
                    user_id: user.clone(),
                    room_id: None,
                }
                .to_data(),
                Some(user),
            )
        }),
    )
    .await;
}

#[tokio::test]
async fn one_message_costs_the_same_row_writes_in_a_3_member_and_a_10000_member_room() {
    let e = env().await;
    join_many(&e.stack, "private-small", 3).await;
    join_many(&e.stack, "private-big", 10_000).await;
    let pool = sqlx::PgPool::connect(e.db.url()).await.unwrap();
    eventually(WAIT, "10,000 members projected", || {
        let pool = pool.clone();
        async move {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT member_count FROM history.channel_stats WHERE channel = 'private-big'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            (n == Some(10_000)).then_some(())
        }
    })
    .await;
    count_row_writes(&e.db).await;
    let mut costs = Vec::new();
    for channel in [
        "private-small",
        "private-big",
        "private-small",
        "private-big",
    ] {
        let before = row_writes(&e.db).await;
        let (status, sent) = e
            .call(
                reqwest::Method::POST,
                e.h(&format!("/channels/{channel}/messages?as_user=u1")),
                As::App,
                Some(json!({ "event": "m", "data": "x", "client_id": format!("{channel}-{}", costs.len()) })),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        // Read it back through min_seq: it is applied once this answers.
        let (status, _) = e
            .call(
                reqwest::Method::GET,
                e.h(&format!(
                    "/channels/{channel}/messages?min_seq={}",
                    sent["seq"]
                )),
                As::App,
                None,
            )
            .await;
        assert_eq!(status, 200);
        costs.push(row_writes(&e.db).await - before);
    }
    // A message writes its row, its channel's counters and its author's
    // cursor, whatever the member count.
    assert_eq!(costs, [3, 3, 3, 3], "row writes per message: {costs:?}");
    // A read writes the reader's cursor only.
    let before = row_writes(&e.db).await;
    let (status, read) = e
        .call(
            reqwest::Method::POST,
            e.h("/channels/private-big/read?as_user=u2"),
            As::App,
            Some(json!({ "seq": 1_000_000 })),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    let (status, inbox) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!("/users/u2/inbox?min_seq={}", read["seq"])),
            As::App,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(row_writes(&e.db).await - before, 1);
    assert_eq!(inbox["channels"][0]["unread"], 0, "{inbox}");
    let (_, inbox) = e
        .call(reqwest::Method::GET, e.h("/users/u3/inbox"), As::App, None)
        .await;
    let big = inbox["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "private-big")
        .unwrap();
    assert_eq!(big["unread"], 2, "u3 has both big-room messages unread");
}

#[tokio::test]
async fn paging_both_ways_over_1000_messages_with_deletes_has_no_gap_or_repeat() {
    let e = env().await;
    let channel = "paged";
    let mut sent = Vec::new();
    for i in 0..1000 {
        let (id, seq) = e.send(channel, As::App, &format!("p{i}")).await;
        sent.push((id, seq));
    }
    // Delete every tenth (the app may delete anything).
    let mut last = 0;
    for (id, _) in sent.iter().step_by(10) {
        let (status, body) = e
            .call(
                reqwest::Method::DELETE,
                e.h(&format!("/channels/{channel}/messages/{id}")),
                As::App,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        last = body["seq"].as_u64().unwrap();
    }
    let seqs: Vec<u64> = sent.iter().map(|(_, s)| *s).collect();
    // Newest first, 97 at a time.
    let mut down = Vec::new();
    let mut query = format!("?limit=97&min_seq={last}");
    loop {
        let (status, page) = e
            .call(
                reqwest::Method::GET,
                e.h(&format!("/channels/{channel}/messages{query}")),
                As::App,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            down.push((m["seq"].as_u64().unwrap(), m["deleted"].as_bool().unwrap()));
        }
        match page["next_before"].as_u64() {
            Some(b) => query = format!("?limit=97&before={b}"),
            None => break,
        }
    }
    // Oldest first from the start, 89 at a time.
    let mut up = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = e
            .call(
                reqwest::Method::GET,
                e.h(&format!(
                    "/channels/{channel}/messages?limit=89&after={after}"
                )),
                As::App,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            up.push((m["seq"].as_u64().unwrap(), m["deleted"].as_bool().unwrap()));
        }
        match page["next_after"].as_u64() {
            Some(a) => after = a,
            None => break,
        }
    }
    let expected: Vec<(u64, bool)> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i % 10 == 0))
        .collect();
    let mut down_sorted = down.clone();
    down_sorted.reverse();
    assert_eq!(
        down_sorted, expected,
        "newest-first pages: every message once, tombstones in place"
    );
    assert_eq!(up, expected, "oldest-first pages: every message once");
}

#[tokio::test]
async fn an_event_this_build_cannot_read_stops_the_projection_and_readyz_says_why() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let mut config = stack.history_config(&db);
    config.read_wait = Duration::from_millis(300);
    let history = stack.history_with(config).await;
    let e = Env {
        auth: stack.auth().await,
        stack,
        db,
        history,
        http: reqwest::Client::new(),
    };
    let channel = "stall";
    let (_, before) = e.send(channel, As::App, "before").await;
    // Something on the channel's subject that is no envelope (a newer
    // build's, or a corrupt one).
    let js = async_nats::jetstream::new(e.stack.nats.client().await.unwrap());
    let subject = e.stack.subjects.channel(
        &AppId::parse("app-id").unwrap(),
        &ChannelName::parse(channel).unwrap(),
    );
    let bad = js
        .publish(subject, "{\"v\": 99, \"from\": \"the future\"}".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let (_, after) = e.send(channel, As::App, "after").await;
    let (status, why) = eventually(WAIT, "/readyz to report the stopped projection", || async {
        let (status, body) = e.history.readiness().await?;
        (status == 503 && body.contains("projection")).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert!(why.contains(&format!("seq {bad}")), "{why}");
    assert!(why.contains("version 99"), "{why}");
    // What came before it is served; nothing after it is applied (never
    // skipped): a read waiting for it times out with a clear 503.
    let (status, page) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!("/channels/{channel}/messages?min_seq={before}")),
            As::App,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    let (status, body) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!("/channels/{channel}/messages?min_seq={after}")),
            As::App,
            None,
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not yet"));
}

/// Store a frozen v1 envelope (an old build's) as it is.
async fn store_fixture(stack: &Stack, json: &str) -> u64 {
    let env = Envelope::decode(json.as_bytes()).unwrap();
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let subject = stack.subjects.channel(
        &AppId::parse(&env.app).unwrap(),
        &ChannelName::parse(&env.channel).unwrap(),
    );
    js.publish(subject, json.to_owned().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn a_rebuild_after_a_mixed_workload_equals_the_live_model_and_swaps_in_while_serving() {
    let e = env().await;
    let alice = e.user("alice").await;
    let bob = e.user("bob").await;
    let carol = e.user("carol").await;
    let room = |name: &'static str| {
        let e = &e;
        let alice = alice.clone();
        async move {
            let (status, room) = e
                .call(
                    reqwest::Method::POST,
                    e.auth.url("/v1/apps/app-id/rooms"),
                    As::User(&alice),
                    Some(json!({ "name": name })),
                )
                .await;
            assert_eq!(status, 200, "{room}");
            room
        }
    };
    let kept = room("kept").await;
    let gone = room("gone").await;
    for r in [&kept, &gone] {
        for token in [&bob, &carol] {
            let (status, _) = e
                .call(
                    reqwest::Method::POST,
                    e.auth.url("/v1/apps/app-id/rooms/join"),
                    As::User(token),
                    Some(json!({ "code": r["code"] })),
                )
                .await;
            assert_eq!(status, 200);
        }
    }
    let (kept_ch, gone_ch) = (
        kept["channel"].as_str().unwrap().to_owned(),
        gone["channel"].as_str().unwrap().to_owned(),
    );
    eventually(WAIT, "both rooms in carol's inbox", || async {
        (e.inbox("carol", &carol, 0).await.len() == 2).then_some(())
    })
    .await;
    // Posts, edits, deletes and receipts in both rooms.
    let mut ids = Vec::new();
    for i in 0..30 {
        let (who, token) = [("alice", &alice), ("bob", &bob), ("carol", &carol)][i % 3];
        let ch = if i % 2 == 0 { &kept_ch } else { &gone_ch };
        let (id, seq) = e.send(ch, As::User(token), &format!("{who}-{i}")).await;
        ids.push((ch.clone(), token.clone(), id, seq));
    }
    for (ch, token, id, _) in ids.iter().step_by(4) {
        let (status, _) = e
            .call(
                reqwest::Method::PATCH,
                e.h(&format!("/channels/{ch}/messages/{id}")),
                As::User(token),
                Some(json!({ "data": "edited" })),
            )
            .await;
        assert_eq!(status, 200);
    }
    for (ch, token, id, _) in ids.iter().skip(1).step_by(5) {
        let (status, _) = e
            .call(
                reqwest::Method::DELETE,
                e.h(&format!("/channels/{ch}/messages/{id}")),
                As::User(token),
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    e.receipt(&kept_ch, &carol, "read", ids[10].3).await;
    e.receipt(&kept_ch, &bob, "delivered", ids[20].3).await;
    // Carol leaves one room; the other is destroyed (purged).
    let (status, _) = e
        .call(
            reqwest::Method::POST,
            e.auth.url(&format!(
                "/v1/apps/app-id/rooms/{}/leave",
                kept["id"].as_str().unwrap()
            )),
            As::User(&carol),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = e
        .call(
            reqwest::Method::DELETE,
            e.auth.url(&format!(
                "/v1/apps/app-id/rooms/{}",
                gone["id"].as_str().unwrap()
            )),
            As::User(&alice),
            None,
        )
        .await;
    assert!(status < 300, "{status} {body}");
    // Two events an older build stored.
    store_fixture(
        &e.stack,
        include_str!("../../crates/herald-proto/tests/fixtures/envelope_v1_member_joined.json"),
    )
    .await;
    let last = store_fixture(
        &e.stack,
        include_str!("../../crates/herald-proto/tests/fixtures/envelope_v1_message.json"),
    )
    .await;
    // The live model has it all.
    let (status, _) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!("/users/alice/inbox?min_seq={last}")),
            As::App,
            None,
        )
        .await;
    assert_eq!(status, 200);

    let js = async_nats::jetstream::new(e.stack.nats.client().await.unwrap());
    let options: sqlx::postgres::PgConnectOptions = e.db.url().parse().unwrap();
    let report = herald_history::rebuild::rebuild(&js, &e.stack.subjects, &options, true)
        .await
        .unwrap();
    assert!(
        report.differing.is_empty(),
        "tables that differ: {:?}",
        report.differing
    );
    assert!(report.checkpoint >= last as i64);
    assert!(!report.swapped);

    // Now swap it in, with the service running, and keep going.
    let report = herald_history::rebuild::rebuild(&js, &e.stack.subjects, &options, false)
        .await
        .unwrap();
    assert!(report.swapped);
    // Text with every character COPY's text format escapes (the messages
    // go in by COPY).
    let tricky = "after the swap \\ \t tab \n line \r cr \\N \\. é 😀";
    let (id, seq) = e.send(&kept_ch, As::User(&bob), tricky).await;
    let (status, one) = e
        .call(
            reqwest::Method::GET,
            e.h(&format!("/channels/{kept_ch}/messages/{id}?min_seq={seq}")),
            As::User(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["data"], json!({ "text": tricky }).to_string());
    // And the model after the swap still equals a fresh replay.
    let report = herald_history::rebuild::rebuild(&js, &e.stack.subjects, &options, true)
        .await
        .unwrap();
    assert!(report.differing.is_empty(), "{:?}", report.differing);
}

#[tokio::test]
async fn edits_and_deletes_reach_live_subscribers_as_pusher_events_a_plain_client_can_bind() {
    let e = env().await;
    let gateway = e.stack.gateway().await;
    let mut socket = herald_tests::PusherSocket::connect(gateway.port, KEY)
        .await
        .unwrap();
    socket.subscribe("live-edits").await.unwrap();
    let (status, sent) = e
        .call(
            reqwest::Method::POST,
            e.h("/channels/live-edits/messages?as_user=alice"),
            As::App,
            Some(json!({ "event": "message", "data": "first", "client_id": "k1" })),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap();
    let live = socket.next_event_of(&["message"]).await.unwrap();
    assert_eq!(live["id"], id);
    assert_eq!(live["user_id"], "alice");
    let (status, _) = e
        .call(
            reqwest::Method::PATCH,
            e.h(&format!("/channels/live-edits/messages/{id}?as_user=alice")),
            As::App,
            Some(json!({ "data": "second" })),
        )
        .await;
    assert_eq!(status, 200);
    let edited = socket
        .next_event_of(&[event_names::MESSAGE_EDITED])
        .await
        .unwrap();
    assert_eq!(
        herald_tests::data_of(&edited),
        json!({ "id": id, "data": "second" })
    );
    assert_eq!(edited["user_id"], "alice");
    let (status, _) = e
        .call(
            reqwest::Method::DELETE,
            e.h(&format!("/channels/live-edits/messages/{id}")),
            As::App,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let deleted = socket
        .next_event_of(&[event_names::MESSAGE_DELETED])
        .await
        .unwrap();
    assert_eq!(herald_tests::data_of(&deleted), json!({ "id": id }));
}

#[tokio::test]
async fn a_rebuild_whose_nats_server_restarts_mid_replay_reads_on_and_holds_every_message_once() {
    let mut stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    herald_stream::ensure_channels_stream(
        &js,
        &stack.subjects,
        &herald_stream::StreamSettings::default(),
    )
    .await
    .unwrap();
    // The live schema, migrated (the service would do it at start).
    herald_history::connect_database(db.url(), 2)
        .await
        .unwrap()
        .pool
        .close()
        .await;
    // 60,000 messages over 6 channels: six batches of the replay.
    const MESSAGES: usize = 60_000;
    let channels: Vec<ChannelName> = (0..6)
        .map(|c| ChannelName::parse(&format!("private-replay-{c}")).unwrap())
        .collect();
    store_all(
        &stack,
        (0..MESSAGES).map(|i| {
            Envelope::new(
                EventKind::Message,
                "app-id",
                channels[i % channels.len()].as_str(),
                "m",
                format!("{{\"n\":{i}}}"),
                Some("u1".into()),
            )
        }),
    )
    .await;

    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let subjects = stack.subjects.clone();
    // Once the first batch is in the fresh schema (and before the last),
    // the NATS server is killed and started again on the same store.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let rebuild = herald_history::rebuild::rebuild(&js, &subjects, &options, false);
    let restart = async {
        let replayed = eventually(WAIT, "the replay's first batch", || async {
            let schema: String = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'history\\_rebuild\\_%'",
            )
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()?;
            let seq: i64 = sqlx::query_scalar(&format!(
                "SELECT last_seq FROM {schema}.projection_checkpoints"
            ))
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()?;
            (seq > 0).then_some(seq)
        })
        .await;
        assert!(
            replayed < MESSAGES as i64,
            "the replay ended before the restart"
        );
        stack.nats.restart().unwrap();
    };
    let (report, ()) = tokio::join!(rebuild, restart);
    let report = report.unwrap();
    assert_eq!(report.events, MESSAGES as u64);
    assert_eq!(report.checkpoint, MESSAGES as i64);
    assert!(report.swapped);
    // Every message once (the primary key would refuse a second), each
    // channel's ordinals 1..=n with no hole.
    let per_channel: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT channel, count(*), min(ordinal), max(ordinal) FROM history.messages
         GROUP BY channel ORDER BY channel",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let each = (MESSAGES / channels.len()) as i64;
    assert_eq!(
        per_channel,
        channels
            .iter()
            .map(|c| (c.as_str().to_owned(), each, 1, each))
            .collect::<Vec<_>>()
    );
}
