//! The presence service against a real NATS server, driven exactly as
//! gateways drive it: by writing the presence KV bucket (subscriptions,
//! sign-ins, heartbeats) and asking for member lists, with the contract's
//! types from `herald_proto::presence`. The assertions are on the events it
//! publishes and on its REST API.

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::StreamExt;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::presence::{
    GatewayHeartbeat, MembersReply, MembersRequest, PresenceEvent, PresenceKey,
    PresenceSubscription, UserConnection,
};
use herald_proto::{now_ms, AppId, ChannelName, Subjects};
use herald_tests::{dev_app, eventually, Running, Stack};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Generous bound for anything that must happen "eventually".
const WAIT: Duration = Duration::from_secs(20);
/// After a marker (a member query answered at a revision, whose reply
/// follows every event up to it on the same connection), how long to keep
/// reading for events that were already on their way.
const QUIET: Duration = Duration::from_millis(300);
/// The heartbeat TTL and sweep interval of [`quick`].
const QUICK_TTL: Duration = Duration::from_secs(2);
const QUICK_SWEEP: Duration = Duration::from_millis(300);
/// What a bound on a timed event allows beyond the timings it is made of:
/// the deletes' round trip through the KV and its watch, and the event's
/// publication, on a loaded two-core machine.
const MARGIN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Harness: presence services are the shared harness's (`Stack::presence_with`,
// `Stack::spawn_presence`, `Running`), with configurations made here.
// ---------------------------------------------------------------------------

/// The stack's presence configuration, changed by `tweak`.
fn tweaked(
    stack: &Stack,
    tweak: impl FnOnce(&mut herald_presence::Config),
) -> herald_presence::Config {
    let mut config = stack.presence_config();
    tweak(&mut config);
    config
}

/// Short timings for tests that wait for timeouts.
fn quick(config: &mut herald_presence::Config) {
    config.heartbeat_ttl = QUICK_TTL;
    config.sweep_interval = QUICK_SWEEP;
    config.typing_timeout = Duration::from_millis(300);
    config.query_timeout = Duration::from_millis(500);
}

// ---------------------------------------------------------------------------
// Harness: a fake gateway writing the presence bucket as a gateway would.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct FakeGateway {
    id: String,
    kv: kv::Store,
    app: AppId,
}

impl FakeGateway {
    async fn new(stack: &Stack, id: &str, app: &str) -> Self {
        let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
        let kv = js
            .get_key_value(stack.subjects.presence_bucket())
            .await
            .expect("the presence service created its bucket");
        Self {
            id: id.to_owned(),
            kv,
            app: AppId::parse(app).unwrap(),
        }
    }

    fn sub_key(&self, channel: &str, socket: &str) -> String {
        PresenceKey::Subscription {
            app: self.app.clone(),
            channel: ChannelName::parse(channel).unwrap(),
            gateway: self.id.clone(),
            socket_id: socket.to_owned(),
        }
        .render()
    }

    fn conn_key(&self, user: &str, socket: &str) -> String {
        PresenceKey::Connection {
            app: self.app.clone(),
            user_id: user.to_owned(),
            gateway: self.id.clone(),
            socket_id: socket.to_owned(),
        }
        .render()
    }

    async fn heartbeat(&self) -> u64 {
        let hb = GatewayHeartbeat {
            at: now_ms(),
            interval_ms: 200,
        };
        self.kv
            .put(
                herald_tests::gateway_key(&self.id),
                serde_json::to_vec(&hb).unwrap().into(),
            )
            .await
            .unwrap()
    }

    /// Heartbeat every 200 ms until the returned handle is aborted.
    fn keep_alive(&self) -> tokio::task::JoinHandle<()> {
        let gw = self.clone();
        tokio::spawn(async move {
            loop {
                gw.heartbeat().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// A socket joins a presence channel as `user`; returns the revision.
    async fn join(&self, channel: &str, socket: &str, user: &str) -> u64 {
        let value = PresenceSubscription {
            user_id: user.to_owned(),
            user_info: json!({ "name": format!("User {user}") }),
            at: now_ms(),
        };
        self.kv
            .put(
                self.sub_key(channel, socket),
                serde_json::to_vec(&value).unwrap().into(),
            )
            .await
            .unwrap()
    }

    async fn leave(&self, channel: &str, socket: &str) {
        self.kv.delete(self.sub_key(channel, socket)).await.unwrap();
    }

    async fn sign_in(&self, user: &str, socket: &str) -> u64 {
        let value = UserConnection { at: now_ms() };
        self.kv
            .put(
                self.conn_key(user, socket),
                serde_json::to_vec(&value).unwrap().into(),
            )
            .await
            .unwrap()
    }

    async fn sign_out(&self, user: &str, socket: &str) {
        self.kv.delete(self.conn_key(user, socket)).await.unwrap();
    }

    async fn exists(&self, key: &str) -> bool {
        self.kv.get(key).await.unwrap().is_some()
    }

    /// The latest revision of the bucket (a put of a throw-away key).
    async fn revision(&self) -> u64 {
        self.kv.put("probe", "x".into()).await.unwrap()
    }
}

// ---------------------------------------------------------------------------
// Harness: the gateway's side of the NATS conversation.
// ---------------------------------------------------------------------------

/// A NATS client listening to one channel's presence events.
struct Listener {
    client: async_nats::Client,
    subjects: Subjects,
    app: AppId,
    channel: String,
    events: async_nats::Subscriber,
}

impl Listener {
    async fn new(stack: &Stack, app: &str, channel: &str) -> Self {
        let client = stack.nats.client().await.unwrap();
        let app = AppId::parse(app).unwrap();
        let events = client
            .subscribe(
                stack
                    .subjects
                    .presence_events(&app, &ChannelName::parse(channel).unwrap()),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        Self {
            client,
            subjects: stack.subjects.clone(),
            app,
            channel: channel.to_owned(),
            events,
        }
    }

    /// Ask for the whole member list as a joining gateway does: page by
    /// page, at the first page's revision.
    async fn members(&self, min_revision: u64, key: Option<String>) -> MembersReply {
        let mut first = self.members_page(min_revision, key, None).await;
        let mut next = first.next.take();
        while let Some(after) = next {
            let mut page = self.members_page(first.revision, None, Some(after)).await;
            first.members.append(&mut page.members);
            next = page.next;
        }
        first
    }

    /// One page of the member list.
    async fn members_page(
        &self,
        min_revision: u64,
        key: Option<String>,
        after: Option<String>,
    ) -> MembersReply {
        let request = MembersRequest {
            channel: self.channel.clone(),
            min_revision,
            key,
            after,
        };
        let msg = tokio::time::timeout(
            WAIT,
            self.client.request(
                self.subjects.presence_members(&self.app),
                serde_json::to_vec(&request).unwrap().into(),
            ),
        )
        .await
        .expect("member query answered in time")
        .expect("member query answered");
        serde_json::from_slice(&msg.payload).unwrap()
    }

    /// The next event, waiting up to `WAIT`.
    async fn next(&mut self) -> PresenceEvent {
        self.next_by(tokio::time::Instant::now() + WAIT).await
    }

    /// The next event, which must come before `deadline`.
    async fn next_by(&mut self, deadline: tokio::time::Instant) -> PresenceEvent {
        let msg = tokio::time::timeout_at(deadline, self.events.next())
            .await
            .expect("a presence event before the deadline")
            .expect("subscription open");
        serde_json::from_slice(&msg.payload).unwrap()
    }

    /// Every event already published up to `revision`: a member query at
    /// that revision is answered after them, on the same connection, so
    /// whatever has not arrived by then was never sent.
    async fn drain_up_to(&mut self, revision: u64) -> Vec<PresenceEvent> {
        self.members(revision, None).await;
        let mut out = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(QUIET, self.events.next()).await {
            out.push(serde_json::from_slice(&msg.payload).unwrap());
        }
        out
    }
}

fn added(user: &str) -> impl Fn(&PresenceEvent) -> bool + '_ {
    move |e| matches!(e, PresenceEvent::MemberAdded { user_id, .. } if user_id == user)
}

fn removed(user: &str) -> impl Fn(&PresenceEvent) -> bool + '_ {
    move |e| matches!(e, PresenceEvent::MemberRemoved { user_id, .. } if user_id == user)
}

fn describe(events: &[PresenceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            PresenceEvent::MemberAdded { user_id, .. } => format!("+{user_id}"),
            PresenceEvent::MemberRemoved { user_id, .. } => format!("-{user_id}"),
        })
        .collect()
}

fn user_ids(reply: &MembersReply) -> Vec<&str> {
    reply.members.keys().map(String::as_str).collect()
}

async fn rest_get(presence: &Running, path: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(presence.url(path));
    if let Some((key, secret)) = auth {
        req = req.basic_auth(key, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn rest_post(presence: &Running, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(presence.url(path))
        .basic_auth("app-key", Some("app-secret"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const DEV: Option<(&str, &str)> = Some(("app-key", "app-secret"));

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_sockets_of_one_user_make_one_member_and_only_the_last_one_leaving_removes_it() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    gw.heartbeat().await;
    let mut listener = Listener::new(&stack, "app-id", "presence-room").await;

    let first = gw.join("presence-room", "1.1", "alice").await;
    let event = listener.next().await;
    assert_eq!(
        event,
        PresenceEvent::MemberAdded {
            user_id: "alice".into(),
            user_info: json!({"name": "User alice"}),
            revision: first,
        }
    );

    let second = gw.join("presence-room", "1.2", "alice").await;
    assert!(listener.drain_up_to(second).await.is_empty());
    let reply = listener.members(second, None).await;
    assert_eq!(user_ids(&reply), ["alice"]);

    gw.leave("presence-room", "1.1").await;
    let rev = gw.revision().await;
    assert!(
        listener.drain_up_to(rev).await.is_empty(),
        "closing one of two devices emits nothing"
    );

    gw.leave("presence-room", "1.2").await;
    let event = listener.next().await;
    assert!(removed("alice")(&event), "{event:?}");
    let rev = gw.revision().await;
    assert!(listener.members(rev, None).await.members.is_empty());
}

#[tokio::test]
async fn a_members_query_at_the_revision_of_its_own_put_includes_the_joining_user() {
    let stack = Stack::start();
    let _presence = stack.presence_with(tweaked(&stack, quick)).await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let listener = Listener::new(&stack, "app-id", "presence-q").await;

    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        let socket = format!("1.{i}");
        let revision = gw.join("presence-q", &socket, user).await;
        // Asked straight after the put, before the watch may have seen it.
        let reply = listener
            .members(revision, Some(gw.sub_key("presence-q", &socket)))
            .await;
        assert_eq!(reply.error, None);
        assert!(reply.admitted);
        assert!(reply.revision >= revision);
        assert!(reply.members.contains_key(*user), "{reply:?}");
        assert_eq!(reply.members.len(), i + 1);
        assert_eq!(
            reply.members[*user],
            json!({"name": format!("User {user}")})
        );
    }

    // A revision the bucket never reaches is answered with an error after
    // the (short) query timeout rather than never.
    let reply = listener.members(1_000_000, None).await;
    assert!(reply.error.is_some(), "{reply:?}");
    assert!(!reply.admitted);

    // Bad requests are answered with errors too.
    let bad = Listener::new(&stack, "app-id", "private-x").await;
    assert!(bad.members(0, None).await.error.is_some());
}

#[tokio::test]
async fn a_full_channel_refuses_new_users_without_any_event_but_admits_more_devices_of_members() {
    let mut small = AppConfig::new("small", "small-key", "small-secret");
    small.limits.max_presence_members = 2;
    let stack = Stack::with_apps(AppRegistry::new(vec![dev_app(), small]).unwrap());
    let _presence = stack.presence().await;

    // A custom limit of 2.
    let gw = FakeGateway::new(&stack, "gw1", "small").await;
    let mut listener = Listener::new(&stack, "small", "presence-tiny").await;
    gw.join("presence-tiny", "1.1", "a").await;
    gw.join("presence-tiny", "1.2", "b").await;
    let third = gw.join("presence-tiny", "1.3", "c").await;
    let reply = listener
        .members(third, Some(gw.sub_key("presence-tiny", "1.3")))
        .await;
    assert!(!reply.admitted, "a third user is over the limit of 2");
    assert_eq!(user_ids(&reply), ["a", "b"]);
    let another_device = gw.join("presence-tiny", "1.4", "a").await;
    let reply = listener
        .members(another_device, Some(gw.sub_key("presence-tiny", "1.4")))
        .await;
    assert!(
        reply.admitted,
        "another device of a member is no new member"
    );
    let events = listener.drain_up_to(another_device).await;
    assert_eq!(describe(&events), ["+a", "+b"]);
    // The refused subscription's removal is no member_removed either.
    gw.leave("presence-tiny", "1.3").await;
    let rev = gw.revision().await;
    assert!(listener.drain_up_to(rev).await.is_empty());

    // The default limit of 100.
    let gw = FakeGateway::new(&stack, "gw2", "app-id").await;
    let mut listener = Listener::new(&stack, "app-id", "presence-big").await;
    for i in 0..100 {
        gw.join("presence-big", &format!("1.{i}"), &format!("user{i}"))
            .await;
    }
    let extra = gw.join("presence-big", "2.0", "one-too-many").await;
    let reply = listener
        .members(extra, Some(gw.sub_key("presence-big", "2.0")))
        .await;
    assert!(!reply.admitted);
    assert_eq!(reply.members.len(), 100);
    let events = listener.drain_up_to(extra).await;
    let joined: Vec<String> = (0..100).map(|i| format!("+user{i}")).collect();
    assert_eq!(
        describe(&events),
        joined,
        "each admitted user once, in order"
    );
    assert!(!events.iter().any(added("one-too-many")));
}

#[tokio::test]
async fn members_of_a_gateway_that_stops_heartbeating_are_removed_within_the_ttl_and_one_sweep() {
    let stack = Stack::start();
    let _presence = stack.presence_with(tweaked(&stack, quick)).await;
    let dying = FakeGateway::new(&stack, "dying", "app-id").await;
    let alive = FakeGateway::new(&stack, "alive", "app-id").await;
    let silent = FakeGateway::new(&stack, "silent", "app-id").await;
    let dying_beat = dying.keep_alive();
    let _alive_beat = alive.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-gw").await;

    dying.join("presence-gw", "1.1", "doomed").await;
    dying.sign_in("doomed", "1.1").await;
    alive.join("presence-gw", "2.1", "survivor").await;
    // Also in the channel through the dying gateway: must stay a member.
    alive.join("presence-gw", "2.2", "roamer").await;
    dying.join("presence-gw", "1.2", "roamer").await;
    // A gateway that never wrote a heartbeat: judged by its keys' age.
    silent.join("presence-gw", "3.1", "ghost").await;
    let rev = alive.revision().await;
    let events = listener.drain_up_to(rev).await;
    assert_eq!(
        describe(&events),
        ["+doomed", "+survivor", "+roamer", "+ghost"]
    );

    // From here the dying gateway's last heartbeat only gets older, and the
    // ghost's key is older still: both are dead at most one TTL from now,
    // and noticed by the first sweep after that.
    dying_beat.abort();
    let deadline = tokio::time::Instant::now() + QUICK_TTL + QUICK_SWEEP + MARGIN;
    let mut gone = BTreeSet::new();
    while gone.len() < 2 {
        let event = listener.next_by(deadline).await;
        match event {
            PresenceEvent::MemberRemoved { user_id, .. } => {
                assert!(
                    user_id == "doomed" || user_id == "ghost",
                    "{user_id} must not be removed"
                );
                gone.insert(user_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The sweep deletes the keys one by one; the events above can arrive
    // before it has reached the last of them.
    let sub_key = dying.sub_key("presence-gw", "1.1");
    let conn_key = dying.conn_key("doomed", "1.1");
    eventually(WAIT, "the dead gateway's keys to be deleted", || async {
        let any = dying.exists(&sub_key).await
            || dying.exists(&conn_key).await
            || dying.exists(&herald_tests::gateway_key("dying")).await;
        (!any).then_some(())
    })
    .await;
    assert!(alive.exists(&herald_tests::gateway_key("alive")).await);

    // The live gateway's members are untouched, across a few more sweeps.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rev = alive.revision().await;
    assert!(listener.drain_up_to(rev).await.is_empty());
    let reply = listener.members(rev, None).await;
    assert_eq!(user_ids(&reply), ["roamer", "survivor"]);
}

#[tokio::test]
async fn a_restarted_presence_service_emits_only_what_changed_while_it_was_down() {
    let stack = Stack::start();
    let presence = stack.presence().await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let _beat = gw.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-restart").await;

    gw.join("presence-restart", "1.1", "stays").await;
    gw.join("presence-restart", "1.2", "leaves").await;
    gw.sign_in("leaves", "1.2").await;
    let rev = gw.revision().await;
    assert_eq!(
        describe(&listener.drain_up_to(rev).await),
        ["+stays", "+leaves"]
    );

    presence.kill().await;
    // While it is down: one user joins, one leaves (both devices).
    let joined_while_down = gw.join("presence-restart", "1.3", "arrives").await;
    gw.leave("presence-restart", "1.2").await;
    gw.sign_out("leaves", "1.2").await;

    let presence = stack.presence().await;
    let rev = gw.revision().await;
    let mut events = describe(&listener.drain_up_to(rev).await);
    events.sort();
    assert_eq!(events, ["+arrives", "-leaves"]);
    let reply = listener.members(rev, None).await;
    assert_eq!(user_ids(&reply), ["arrives", "stays"]);
    assert!(reply.revision >= joined_while_down);

    // The user who left while it was down has a last-seen time.
    let (status, body) = rest_get(&presence, "/v1/apps/app-id/users/leaves/presence", DEV).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["online"], false);
    eventually(WAIT, "last-seen of the user who left", || async {
        let (_, body) = rest_get(&presence, "/v1/apps/app-id/users/leaves/presence", DEV).await;
        body["last_seen"].as_i64()
    })
    .await;

    // A second restart with nothing changed emits nothing at all.
    presence.kill().await;
    let _presence = stack.presence().await;
    let rev = gw.revision().await;
    assert!(listener.drain_up_to(rev).await.is_empty());

    // And it is live again.
    gw.leave("presence-restart", "1.1").await;
    assert!(removed("stays")(&listener.next().await));
}

#[tokio::test]
async fn after_a_restart_heartbeat_ages_come_from_the_kv_so_only_really_dead_gateways_expire() {
    let stack = Stack::start();
    let presence = stack.presence_with(tweaked(&stack, quick)).await;
    let live = FakeGateway::new(&stack, "live", "app-id").await;
    let dead = FakeGateway::new(&stack, "dead", "app-id").await;
    let _live_beat = live.keep_alive();
    let dead_beat = dead.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-ages").await;
    live.join("presence-ages", "1.1", "lively").await;
    dead.join("presence-ages", "2.1", "goner").await;
    let rev = live.revision().await;
    assert_eq!(
        describe(&listener.drain_up_to(rev).await),
        ["+lively", "+goner"]
    );

    presence.kill().await;
    dead_beat.abort();
    // Down for longer than the TTL (2 s): when the service comes back, the
    // dead gateway's last heartbeat is already stale, the live one's fresh.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _presence = stack.presence_with(tweaked(&stack, quick)).await;
    let event = listener.next().await;
    assert!(removed("goner")(&event), "{event:?}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rev = live.revision().await;
    assert!(listener.drain_up_to(rev).await.is_empty());
    assert_eq!(user_ids(&listener.members(rev, None).await), ["lively"]);
}

#[tokio::test]
async fn a_thousand_members_join_and_leave_one_channel_with_correct_counts() {
    let mut app = dev_app();
    app.limits.max_presence_members = 2000;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let presence = stack.presence().await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let _beat = gw.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-crowd").await;

    for i in 0..1000 {
        let revision = gw
            .join("presence-crowd", &format!("1.{i}"), &format!("u{i:04}"))
            .await;
        if (i + 1) % 250 == 0 {
            let reply = listener.members(revision, None).await;
            assert_eq!(reply.members.len(), i + 1, "after {} joins", i + 1);
        }
    }
    let (status, body) = rest_get(
        &presence,
        "/v1/apps/app-id/channels/presence-crowd/members",
        DEV,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 1000);
    assert_eq!(body["members"].as_array().unwrap().len(), 1000);
    assert_eq!(body["members"][0]["user_id"], "u0000");
    assert_eq!(body["members"][0]["user_info"]["name"], "User u0000");
    // Member lists come in pages of MEMBERS_PAGE, in user-id order.
    let page = listener.members_page(0, None, None).await;
    assert_eq!(page.members.len(), herald_proto::presence::MEMBERS_PAGE);
    assert_eq!(page.next.as_deref(), Some("u0499"));
    let last = listener.members_page(0, None, Some("u0499".into())).await;
    assert_eq!(
        last.members.keys().next().map(String::as_str),
        Some("u0500")
    );
    assert_eq!(last.members.len(), 500);
    assert_eq!(last.next, None);

    for i in 0..1000 {
        gw.leave("presence-crowd", &format!("1.{i}")).await;
        if (i + 1) % 250 == 0 {
            let rev = gw.revision().await;
            let reply = listener.members(rev, None).await;
            assert_eq!(
                reply.members.len(),
                1000 - (i + 1),
                "after {} leaves",
                i + 1
            );
        }
    }
    let rev = gw.revision().await;
    let events = listener.drain_up_to(rev).await;
    // Every user joined once and left once, in that order: by user, not by
    // totals (a duplicate must not make up for a lost event).
    let mut timeline: BTreeMap<String, Vec<char>> = BTreeMap::new();
    for e in &events {
        let (sign, user) = match e {
            PresenceEvent::MemberAdded { user_id, .. } => ('+', user_id),
            PresenceEvent::MemberRemoved { user_id, .. } => ('-', user_id),
        };
        timeline.entry(user.clone()).or_default().push(sign);
    }
    let expected: BTreeMap<String, Vec<char>> = (0..1000)
        .map(|i| (format!("u{i:04}"), vec!['+', '-']))
        .collect();
    assert_eq!(timeline, expected);
    // Revisions only grow along the channel's events.
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| match e {
            PresenceEvent::MemberAdded { revision, .. }
            | PresenceEvent::MemberRemoved { revision, .. } => *revision,
        })
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]));
    let (_, body) = rest_get(
        &presence,
        "/v1/apps/app-id/channels/presence-crowd/members",
        DEV,
    )
    .await;
    assert_eq!(body["count"], 0);
}

#[tokio::test]
async fn last_seen_is_recorded_when_a_users_last_connection_goes_and_batch_queries_report_it() {
    let stack = Stack::start();
    let presence = stack.presence().await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let _beat = gw.keep_alive();
    let listener = Listener::new(&stack, "app-id", "presence-seen").await;

    // Two connections of "dora": a sign-in and a presence subscription.
    gw.sign_in("dora", "1.1").await;
    gw.join("presence-seen", "1.1", "dora").await;
    gw.join("presence-lobby", "1.1", "dora").await;
    let rev = gw.join("presence-seen", "1.2", "eve").await;
    listener.members(rev, None).await;

    let (status, body) = rest_get(&presence, "/v1/apps/app-id/users/dora/presence", DEV).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "dora");
    assert_eq!(body["online"], true);
    assert_eq!(body["channels"], json!(["presence-lobby", "presence-seen"]));
    assert!(body["last_seen"].is_i64(), "online users are seen now");

    let before = now_ms();
    gw.leave("presence-seen", "1.1").await;
    gw.leave("presence-lobby", "1.1").await;
    let rev = gw.revision().await;
    listener.members(rev, None).await;
    let (_, body) = rest_get(&presence, "/v1/apps/app-id/users/dora/presence", DEV).await;
    assert_eq!(body["online"], true, "still signed in: {body}");
    assert_eq!(body["channels"], json!([]));

    gw.sign_out("dora", "1.1").await;
    let seen = eventually(WAIT, "dora's last-seen", || async {
        let (_, body) = rest_get(&presence, "/v1/apps/app-id/users/dora/presence", DEV).await;
        (body["online"] == false)
            .then(|| body["last_seen"].as_i64())
            .flatten()
    })
    .await;
    // KV timestamps are the server's; allow for coarse clocks.
    assert!(seen >= before - 1000 && seen <= now_ms() + 1000, "{seen}");

    let (status, body) = rest_post(
        &presence,
        "/v1/apps/app-id/users/presence",
        r#"{"user_ids":["eve","dora","nobody"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let users = body["users"].as_array().unwrap();
    assert_eq!(users.len(), 3);
    assert_eq!(users[0]["user_id"], "eve");
    assert_eq!(users[0]["online"], true);
    assert_eq!(users[0]["channels"], json!(["presence-seen"]));
    assert_eq!(users[1]["user_id"], "dora");
    assert_eq!(users[1]["online"], false);
    assert_eq!(users[1]["last_seen"], seen);
    assert_eq!(users[1]["channels"], json!([]));
    assert_eq!(users[2]["online"], false);
    assert_eq!(users[2]["last_seen"], Value::Null);
}

#[tokio::test]
async fn a_typist_who_goes_quiet_gets_a_typing_stopped_event_after_the_timeout() {
    let stack = Stack::start();
    let _presence = stack.presence_with(tweaked(&stack, quick)).await;
    let client = stack.nats.client().await.unwrap();
    let app = AppId::parse("app-id").unwrap();
    let channel = ChannelName::parse("presence-chat").unwrap();
    let subject = stack.subjects.ephemeral(&app, &channel);
    let mut events = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();

    let typing = |user: Option<&str>, socket: &str, data: Value| {
        json!({
            "event": "client-typing",
            "channel": "presence-chat",
            "data": data,
            "socket_id": socket,
            "user_id": user,
        })
    };
    let publish = |msg: Value| {
        let client = client.clone();
        let subject = subject.clone();
        async move {
            client
                .publish(subject, serde_json::to_vec(&msg).unwrap().into())
                .await
                .unwrap();
        }
    };
    // Wait for the next `herald:typing_stopped`, skipping our own events.
    async fn stopped(events: &mut async_nats::Subscriber) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, events.next())
                .await
                .expect("typing_stopped in time")
                .unwrap();
            let value: Value = serde_json::from_slice(&msg.payload).unwrap();
            if value["event"] == "herald:typing_stopped" {
                return value;
            }
        }
    }

    let started = tokio::time::Instant::now();
    publish(typing(Some("tom"), "1.1", json!({}))).await;
    let event = stopped(&mut events).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        event,
        json!({
            "event": "herald:typing_stopped",
            "channel": "presence-chat",
            "data": {"user_id": "tom"},
            "socket_id": null,
            "user_id": "tom",
        })
    );

    // `{"typing": false}` ends it without waiting for the timeout; a sender
    // without a user id is tracked by socket.
    publish(typing(None, "2.2", json!({"typing": true}))).await;
    publish(typing(None, "2.2", json!({"typing": false}))).await;
    let event = stopped(&mut events).await;
    assert_eq!(event["data"], json!({"user_id": null, "socket_id": "2.2"}));
    assert_eq!(event["user_id"], Value::Null);

    // Other client events start nothing.
    publish(json!({
        "event": "client-message",
        "channel": "presence-chat",
        "data": {},
        "socket_id": "3.3",
        "user_id": "ann",
    }))
    .await;
    // The marker: a typist after it, with the same timeout. Stops come in
    // deadline order, so had ann's message started anything, its stop would
    // come first.
    publish(typing(Some("marker"), "4.4", json!({}))).await;
    let event = stopped(&mut events).await;
    assert_eq!(
        event["data"],
        json!({"user_id": "marker"}),
        "no typing_stopped for a non-typing event"
    );
}

#[tokio::test]
async fn the_rest_api_refuses_bad_credentials_and_bad_inputs() {
    let stack = Stack::start();
    let presence = stack.presence().await;
    let members = "/v1/apps/app-id/channels/presence-x/members";

    for auth in [
        None,
        Some(("app-key", "wrong")),
        Some(("other-key", "app-secret")),
    ] {
        let (status, body) = rest_get(&presence, members, auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, _) = rest_get(
        &presence,
        "/v1/apps/no-such-app/channels/presence-x/members",
        DEV,
    )
    .await;
    assert_eq!(status, 401, "an unknown app looks like bad credentials");

    let (status, body) = rest_get(&presence, members, DEV).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"members": [], "count": 0}));

    for (path, why) in [
        (
            "/v1/apps/app-id/channels/public-room/members",
            "not presence",
        ),
        (
            "/v1/apps/app-id/channels/private-room/members",
            "not presence",
        ),
        (
            "/v1/apps/app-id/channels/presence-a%20b/members",
            "bad name",
        ),
    ] {
        let (status, body) = rest_get(&presence, path, DEV).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let long_user = "x".repeat(129);
    let (status, _) = rest_get(
        &presence,
        &format!("/v1/apps/app-id/users/{long_user}/presence"),
        DEV,
    )
    .await;
    assert_eq!(status, 400);

    let too_many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    for body in [
        json!({ "user_ids": too_many }).to_string(),
        r#"{"user_ids": [""]}"#.to_owned(),
        r#"{"users": []}"#.to_owned(),
        "not json".to_owned(),
    ] {
        let (status, reply) = rest_post(&presence, "/v1/apps/app-id/users/presence", &body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request");
    }
    let thousand: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let (status, reply) = rest_post(
        &presence,
        "/v1/apps/app-id/users/presence",
        &json!({ "user_ids": thousand }).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["users"].as_array().unwrap().len(), 1000);

    let (status, body) = rest_get(&presence, "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    let resp = reqwest::get(presence.url("/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (status, doc) = rest_get(&presence, "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/apps/{app}/channels/{channel}/members",
        "/v1/apps/{app}/users/{user_id}/presence",
        "/v1/apps/{app}/users/presence",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test]
async fn with_two_instances_one_is_active_and_each_event_is_published_once() {
    let stack = Stack::start();
    let active = stack.presence().await;
    let standby = stack.spawn_presence(stack.presence_config()).await;
    eventually(WAIT, "the second instance standing by", || async {
        let (status, body) = standby.readiness().await?;
        (status == 503 && body.contains("active_instance")).then_some(())
    })
    .await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let _beat = gw.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-pair").await;

    let rev = gw.join("presence-pair", "1.1", "once").await;
    // Only the active instance answers queries and publishes: one event.
    assert_eq!(describe(&listener.drain_up_to(rev).await), ["+once"]);
    let reply = listener.members(rev, None).await;
    assert_eq!(user_ids(&reply), ["once"]);

    // The standby's REST API says so at once rather than timing out.
    let (status, body) = rest_get(
        &standby,
        "/v1/apps/app-id/channels/presence-pair/members",
        DEV,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = rest_get(
        &active,
        "/v1/apps/app-id/channels/presence-pair/members",
        DEV,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_standby_takes_over_when_the_active_instance_dies_without_false_events() {
    let stack = Stack::start();
    let active = stack.presence().await;
    let standby = stack.spawn_presence(stack.presence_config()).await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let _beat = gw.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-failover").await;
    gw.join("presence-failover", "1.1", "before").await;
    let rev = gw.revision().await;
    assert_eq!(describe(&listener.drain_up_to(rev).await), ["+before"]);

    // A crash: the lease stays until it expires (3 s here), then the
    // standby takes over, rebuilds, and tells nobody anything new.
    active.kill().await;
    gw.join("presence-failover", "1.2", "during").await;
    standby.wait_ready().await;
    let rev = gw.revision().await;
    assert_eq!(describe(&listener.drain_up_to(rev).await), ["+during"]);

    // It is live: answers queries and publishes the next change, once.
    gw.leave("presence-failover", "1.1").await;
    let rev = gw.revision().await;
    assert_eq!(describe(&listener.drain_up_to(rev).await), ["-before"]);
    assert_eq!(user_ids(&listener.members(rev, None).await), ["during"]);
    let (status, body) = rest_get(
        &standby,
        "/v1/apps/app-id/channels/presence-failover/members",
        DEV,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_clean_stop_hands_the_lease_over_without_waiting_for_it_to_expire() {
    let stack = Stack::start();
    // A lease far longer than the wait below: only a release can explain a
    // takeover within it.
    let long = |config: &mut herald_presence::Config| config.lease_ttl = Duration::from_secs(120);
    let first = stack.presence_with(tweaked(&stack, long)).await;
    let second = stack.spawn_presence(tweaked(&stack, long)).await;
    eventually(WAIT, "the second instance standing by", || async {
        (second.readiness().await?.0 == 503).then_some(())
    })
    .await;
    first.stop().await;
    second.wait_ready().await;
}

#[tokio::test]
async fn the_delete_markers_of_gone_sockets_are_purged_and_a_restart_after_that_is_calm() {
    let stack = Stack::start();
    let short = |config: &mut herald_presence::Config| {
        quick(config);
        config.tombstone_age = Duration::from_millis(300);
    };
    let presence = stack.presence_with(tweaked(&stack, short)).await;
    let gw = FakeGateway::new(&stack, "gw1", "app-id").await;
    let _beat = gw.keep_alive();
    let mut listener = Listener::new(&stack, "app-id", "presence-reap").await;
    gw.join("presence-reap", "1.1", "stays").await;
    gw.join("presence-reap", "1.2", "brief").await;
    gw.sign_in("brief", "1.2").await;
    gw.leave("presence-reap", "1.2").await;
    gw.sign_out("brief", "1.2").await;
    let rev = gw.revision().await;
    assert_eq!(
        describe(&listener.drain_up_to(rev).await),
        ["+stays", "+brief", "-brief"]
    );

    // Nothing at all is left of the gone socket's keys, not even a marker;
    // the live socket's key and the gateway's heartbeat stay.
    let stream = gw.kv.stream.clone();
    let subject = |key: String| format!("{}{key}", gw.kv.prefix);
    let gone = [
        subject(gw.sub_key("presence-reap", "1.2")),
        subject(gw.conn_key("brief", "1.2")),
    ];
    eventually(WAIT, "the markers purged", || async {
        for subject in &gone {
            // Only "no such message" means purged; any other failure of the
            // lookup proves nothing and fails the test.
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(_) => return None,
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(err) => panic!("looking up {subject}: {err}"),
            }
        }
        Some(())
    })
    .await;
    assert!(gw.exists(&gw.sub_key("presence-reap", "1.1")).await);
    assert!(gw.exists(&herald_tests::gateway_key(&gw.id)).await);

    // A restart reads a bucket without them and has nothing to say.
    presence.kill().await;
    let _presence = stack.presence_with(tweaked(&stack, short)).await;
    let rev = gw.revision().await;
    assert!(listener.drain_up_to(rev).await.is_empty());
    assert_eq!(user_ids(&listener.members(rev, None).await), ["stays"]);
}
