// herald-js (clients/js) beside an unmodified pusher-js 8, against real
// gateway processes: resume after reconnect with de-duplication by seq,
// herald:resume_failed, acknowledged publish with retry, receipts.
//
// Two groups:
//
// * on a private nats-server and gateways this file starts itself
//   (helpers' privateStack), because they get SIGKILLed and restarted; the
//   app's events are published by the pusher Node SDK through a gateway
//   that stays up, while the pusher-js client's gateway goes down;
// * on the shared stack of scripts/test (gateway 1 and 2, history), where a
//   reconnect is made by closing pusher-js's socket.
//
// herald-js itself is imported as the package `herald-js` (tests/js's
// dependency file:../../clients/js, built by `npm ci`'s prepare script).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { herald, HeraldPublishError } from 'herald-js';
import {
  channelAuthorizer,
  closeAll,
  eventually,
  historyPage,
  newClient,
  openRaw,
  port,
  ports,
  privateStack,
  sdk,
  signedIn,
  track,
  unique,
  withTimeout,
} from './helpers.mjs';

const range = (n) => Array.from({ length: n }, (_, i) => i);

/** A pusher-js client (not yet connected) with herald-js attached. */
function heraldClient(wsPort, server, options = {}, heraldOptions = {}) {
  const client = newClient(wsPort, {
    channelAuthorization: { customHandler: channelAuthorizer(server) },
    ...options,
  });
  const h = herald(client, heraldOptions);
  track(() => h.detach());
  return { client, h };
}

/**
 * Wait until pusher-js has (re)subscribed the channel. After a refused
 * connection attempt pusher-js 8 tries again only after its strategy timeout
 * (15 s), so waits for a reconnect are long.
 */
function subscribed(channel, what = `the subscription to ${channel.name}`, ms = 10_000) {
  return eventually(() => channel.subscribed, what, ms);
}

const RECONNECT_MS = 45_000;

/** Every event `name` the app sees on `channel`: `{data, meta}`. */
function seen(channel, name) {
  const got = [];
  channel.bind(name, (data, meta) => got.push({ data, meta }));
  return got;
}

/**
 * Frames as the server sent them to a pusher-js client (every connection it
 * makes from now on), seen before pusher-js and herald-js get them.
 * `swallow(frame)` returning true keeps a frame from them (a frame "lost on
 * the wire").
 */
function wire(client, swallow = () => false) {
  const frames = [];
  const hooked = new WeakSet();
  const hook = () => {
    const transport = client.connection.connection?.transport;
    if (!transport || hooked.has(transport)) return;
    hooked.add(transport);
    const inner = transport.emit;
    transport.emit = function (name, message, ...rest) {
      if (name === 'message' && typeof message?.data === 'string') {
        const frame = JSON.parse(message.data);
        frames.push(frame);
        if (swallow(frame)) return this;
      }
      return inner.call(this, name, message, ...rest);
    };
  };
  // 'connected' comes right after pusher-js installed the connection (and
  // herald-js hooked it), before any frame after the handshake.
  client.connection.bind('connected', hook);
  hook();
  return frames;
}

/** Whether pusher-js has lost its connection (from the moment it saw it close). */
const offline = (client, channel) => client.connection.connection === null || !channel.subscribed;

/** Close pusher-js's WebSocket as a network drop would; pusher-js reconnects. */
function dropSocket(client) {
  const transport = client.connection.connection?.transport;
  assert.ok(transport, 'pusher-js has a connection to drop');
  transport.close();
}

/** A raw socket subscribed to a private channel (with `extra` in the subscribe). */
async function rawSubscriber(wsPort, server, name, extra = {}) {
  const raw = await openRaw(wsPort);
  await raw.subscribe(name, { auth: server.authorizeChannel(raw.socketId, name).auth, ...extra });
  return raw;
}

/** Assert that seqs strictly increase and that each prev_seq names the previous seq. */
function assertChain(metas, what) {
  for (let i = 1; i < metas.length; i++) {
    assert.ok(
      metas[i].seq > metas[i - 1].seq,
      `${what}: seq ${metas[i].seq} after ${metas[i - 1].seq} (index ${i})`,
    );
    if (metas[i].prev_seq !== undefined) {
      assert.equal(metas[i].prev_seq, metas[i - 1].seq, `${what}: prev_seq of seq ${metas[i].seq}`);
    }
  }
}

describe('herald-js through gateway processes that are killed and restarted', () => {
  let stack;
  before(async () => {
    // gateway 1: stays up (the SDK publishes through it); gateway 2: the
    // client's, killed and restarted; gateway 3: replays at most 5 events.
    stack = await privateStack({ gateways: [{}, {}, { HERALD_RESUME_MAX_EVENTS: '5' }] });
  });
  after(async () => {
    closeAll();
    await stack?.stop();
  });
  afterEach(closeAll);

  test('while the SDK keeps publishing, the app sees every event exactly once and in seq order', async () => {
    const [stable, flaky] = stack.gateways;
    const server = sdk(stable.port);
    const name = unique('private-hjs-kill-');
    const { client, h } = heraldClient(flaky.port, server);
    const resumes = [];
    h.bind('resume', (r) => resumes.push(r));
    const channel = h.subscribe(name);
    const got = seen(channel, 'tick');
    await subscribed(channel);

    const total = 300;
    let publishedWhileDown = 0;
    let publishing = true;
    const publisher = (async () => {
      try {
        for (const n of range(total)) {
          const down = offline(client, channel);
          await server.trigger(name, 'tick', { n });
          if (down && offline(client, channel)) publishedWhileDown += 1;
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      } finally {
        publishing = false;
      }
    })();

    await eventually(() => got.length >= 50, 'the first 50 events', 30_000);
    await flaky.kill();
    await eventually(() => offline(client, channel), 'pusher-js to notice its gateway is gone');
    await eventually(() => publishedWhileDown >= 30 || !publishing, '30 events published while it is down', 30_000);
    assert.ok(publishedWhileDown >= 30, 'the SDK published while the client was disconnected');
    await flaky.start();
    await subscribed(channel, 'pusher-js to resubscribe after the restart', RECONNECT_MS);
    await withTimeout(publisher, 'the SDK to publish every event', 60_000);
    // Marker: an event after the last tick; once it is in, so is every tick.
    const marker = new Promise((resolve) => channel.bind('marker', (_, meta) => resolve(meta)));
    await server.trigger(name, 'marker', {});
    const markerMeta = await withTimeout(marker, 'the marker after the last tick');

    assert.deepEqual(
      got.map((e) => e.data.n),
      range(total),
      'every published value once, in publish order',
    );
    assertChain(
      got.map((e) => e.meta),
      'ticks',
    );
    assert.ok(resumes.length >= 1, 'the resubscribe carried resume_from');
    const seenBefore = got.filter((e) => e.meta.seq <= resumes[0].resume_from);
    assert.ok(seenBefore.length >= 50, 'resumed from an event it had seen');
    assert.equal(seenBefore.at(-1).meta.seq, resumes[0].resume_from, 'from the last one it had seen');
    assert.equal(h.lastSeq(name), markerMeta.seq, 'the position is the last event seen');
    assert.equal(h.stats().gaps, 0, 'no break in the prev_seq chain');
    assert.equal(client.connection.state, 'connected');
  });

  test('a publish made while the gateway is down is acknowledged after the reconnect and stored once', async () => {
    const [stable, flaky] = stack.gateways;
    const server = sdk(stable.port);
    const name = unique('private-hjs-offline-');
    const observer = await rawSubscriber(stable.port, server, name);
    const { client, h } = heraldClient(flaky.port, server);
    const channel = h.subscribe(name);
    await subscribed(channel);

    await flaky.kill();
    await eventually(() => offline(client, channel), 'pusher-js to notice its gateway is gone');
    let settled = false;
    const publishing = channel.publish('said', { text: 'written offline' });
    publishing.then(
      () => (settled = true),
      () => (settled = true),
    );
    assert.equal(h.pending(name), 1, 'the publish waits');
    await flaky.start();
    assert.equal(settled, false, 'not acknowledged while the gateway was down');
    const ack = await withTimeout(publishing, 'the ack after the reconnect', RECONNECT_MS);

    assert.equal(ack.channel, name);
    assert.match(ack.client_id, /^[0-9a-f-]{36}$/, 'a random UUID client_id');
    assert.equal(typeof ack.id, 'string');
    assert.ok(Number.isSafeInteger(ack.seq) && ack.seq > 0, `seq: ${JSON.stringify(ack)}`);
    assert.equal(typeof ack.ts, 'number');
    assert.equal(h.pending(name), 0);

    // Another subscriber gets it once, with the acknowledged id and seq.
    const frame = await observer.event('said', name);
    assert.equal(frame.seq, ack.seq);
    assert.equal(frame.id, ack.id);
    assert.deepEqual(JSON.parse(frame.data), { text: 'written offline' });
    await server.trigger(name, 'marker', {});
    await observer.event('marker', name);
    assert.equal(observer.all('said').length, 1, 'delivered once');

    // Stored once: a replay of the whole channel.
    const replay = await rawSubscriber(stable.port, server, name, { resume_from: 0 });
    await replay.event('marker', name, 'the replay up to the marker');
    assert.deepEqual(
      replay.all('said').map((f) => [f.seq, f.id]),
      [[ack.seq, ack.id]],
      'stored once',
    );
  });

  test('herald:resume_failed (too far behind) reaches the app, and live events flow after it', async () => {
    const [stable, , shortReplay] = stack.gateways;
    const server = sdk(stable.port);
    const name = unique('private-hjs-behind-');
    const { client, h } = heraldClient(shortReplay.port, server);
    const channel = h.subscribe(name);
    const failures = [];
    channel.bind('herald:resume_failed', (data) => failures.push(data));
    const got = seen(channel, 'tick');
    await subscribed(channel);
    await server.trigger(name, 'tick', { n: 0 });
    await eventually(() => got.length === 1, 'the first event');
    const position = got[0].meta.seq;
    assert.equal(h.lastSeq(name), position);

    await shortReplay.kill();
    await eventually(() => offline(client, channel), 'pusher-js to notice its gateway is gone');
    for (const n of range(10)) await server.trigger(name, 'tick', { n: n + 1 });
    await shortReplay.start();
    await eventually(() => failures.length === 1, 'herald:resume_failed on the channel', RECONNECT_MS);
    assert.equal(failures[0].channel, name);
    assert.equal(failures[0].reason, 'too_far_behind');
    assert.equal(failures[0].resume_from, position, 'herald-js adds the position it asked for');
    assert.ok(Number.isSafeInteger(failures[0].oldest_seq), JSON.stringify(failures[0]));
    assert.equal(h.stats().resumeFailures, 1);

    // The subscription is live: the next event arrives, nothing was replayed.
    await server.trigger(name, 'tick', { n: 11 });
    await eventually(() => got.length === 2, 'the live event after resume_failed');
    assert.deepEqual(
      got.map((e) => e.data.n),
      [0, 11],
    );
    assert.equal(h.lastSeq(name), got[1].meta.seq);
  });
});

describe('herald-js on the shared stack', () => {
  let gw1, gw2, historyPort, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    historyPort = port('HERALD_HISTORY_PORT');
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  test('a position beyond the channel: herald:resume_failed (unknown_position), then live events arrive', async () => {
    const name = unique('private-hjs-future-');
    const { h } = heraldClient(gw1, server);
    const channel = h.subscribe(name, { resumeFrom: 10 ** 12 });
    const failures = [];
    channel.bind('herald:resume_failed', (data) => failures.push(data));
    const got = seen(channel, 'news');
    await eventually(() => failures.length === 1, 'herald:resume_failed');
    assert.equal(failures[0].reason, 'unknown_position');
    assert.equal(failures[0].channel, name);
    assert.equal(failures[0].resume_from, 10 ** 12);

    // The far-away position is forgotten: live events are not "already seen".
    await server.trigger(name, 'news', { n: 1 });
    await eventually(() => got.length === 1, 'the live event');
    assert.deepEqual(got[0].data, { n: 1 });
    assert.equal(h.lastSeq(name), got[0].meta.seq);
  });

  test('a resume that overlaps what the app has seen: the replayed duplicates never reach it', async () => {
    const name = unique('hjs-overlap-');
    const { client, h } = heraldClient(gw1, server);
    const frames = wire(client);
    const channel = h.subscribe(name);
    const got = seen(channel, 'item');
    const global = [];
    client.bind_global((event, data) => event === 'item' && global.push(data.n));
    await subscribed(channel);
    for (const n of range(5)) await server.trigger(name, 'item', { n });
    await eventually(() => got.length === 5, 'five events');
    const seqs = got.map((e) => e.meta.seq);
    assert.equal(h.lastSeq(name), seqs[4]);

    // Below herald-js, make the resubscribe ask for more than it needs (as a
    // position kept from earlier would): the server replays items 2..4 again.
    const send = client.connection.send_event;
    client.connection.send_event = function (event, data, ...rest) {
      if (event === 'pusher:subscribe' && data.channel === name) {
        assert.equal(data.resume_from, seqs[4], 'herald-js asked to resume from the last seq seen');
        data = { ...data, resume_from: seqs[1] };
      }
      return send.call(this, event, data, ...rest);
    };
    const duplicates = [];
    h.bind('duplicate', (d) => duplicates.push(d));
    // The resubscribe's success, bound before the drop: polling for the
    // drop itself can miss it when the reconnect is quick.
    const resubscribed = withTimeout(
      new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve)),
      'the resubscribe',
      RECONNECT_MS,
    );
    dropSocket(client);
    await resubscribed;
    await server.trigger(name, 'item', { n: 5 });
    await eventually(() => got.length >= 6, 'the event after the reconnect');

    const replayed = frames.filter((f) => f.event === 'item' && f.seq <= seqs[4]).map((f) => f.seq);
    assert.deepEqual(replayed, [...seqs, ...seqs.slice(2)], 'the server did send items 2..4 twice');
    assert.deepEqual(
      got.map((e) => e.data.n),
      range(6),
      'the app saw each once',
    );
    assert.deepEqual(global, range(6), 'bind_global too');
    assert.deepEqual(
      duplicates.map((d) => d.seq),
      seqs.slice(2),
    );
    assert.equal(h.stats().duplicates, 3);
    assertChain(
      got.map((e) => e.meta),
      'items',
    );
    assert.equal(h.stats().gaps, 0);
  });

  test('a break in the prev_seq chain is reported as herald:gap', async () => {
    const name = unique('hjs-gap-');
    const { h } = heraldClient(gw2, server);
    const channel = h.subscribe(name);
    const gaps = [];
    channel.bind('herald:gap', (g) => gaps.push(g));
    const got = seen(channel, 'item');
    await subscribed(channel);
    await server.trigger(name, 'item', { n: 0 });
    await eventually(() => got.length === 1, 'the first event');
    const first = got[0].meta.seq;
    // Pretend an event between was never seen.
    h.setLastSeq(name, first - 1);
    await server.trigger(name, 'item', { n: 1 });
    await eventually(() => got.length === 2, 'the second event');
    assert.equal(got[1].meta.prev_seq, first);
    assert.deepEqual(gaps, [{ channel: name, seq: got[1].meta.seq, prev_seq: first, last_seq: first - 1 }]);
    assert.equal(h.stats().gaps, 1);
  });

  test('an ack lost with its socket: the retry (same client_id) gets the original id and seq, stored once', async () => {
    const name = unique('private-hjs-lost-ack-');
    const observer = await rawSubscriber(gw2, server, name);
    let lost;
    const { client, h } = heraldClient(gw1, server);
    wire(client, (frame) => {
      if (frame.event !== 'herald:ack' || lost) return false;
      lost = JSON.parse(frame.data);
      // The connection drops before the ack gets through.
      setImmediate(() => dropSocket(client));
      return true;
    });
    const channel = h.subscribe(name);
    const own = seen(channel, 'said');
    const first = seen(channel, 'before');
    await subscribed(channel);
    // An event first, so that the reconnect resumes (and replays the
    // stored publish before the retry's ack comes).
    await server.trigger(name, 'before', {});
    await eventually(() => first.length === 1, 'the first event');

    const ack = await withTimeout(channel.publish('said', { text: 'once' }), 'the ack of the retry', 30_000);
    assert.ok(lost, 'the first ack was lost');
    assert.deepEqual(ack, lost, 'the retry is acknowledged with the original client_id, id, seq and ts');
    assert.ok(h.stats().retries >= 1, JSON.stringify(h.stats()));
    assert.ok(h.stats().resumes >= 1);

    // Other subscribers got it once.
    const frame = await observer.event('said', name);
    assert.equal(frame.seq, ack.seq);
    const marker = new Promise((resolve) => channel.bind('marker', resolve));
    await server.trigger(name, 'marker', {});
    await observer.event('marker', name);
    assert.equal(observer.all('said').length, 1);
    // The author never gets its own message as an event: not live (the
    // server leaves its socket out), not in the replay (herald-js held it
    // until the ack named its seq).
    await withTimeout(marker, 'the marker on the author');
    assert.deepEqual(own, [], 'its own publish is not handed back to the author');
    assert.equal(h.stats().ownEchoes, 1, 'the replay did contain it');

    // Stored once (the history service's projection).
    const messages = await eventually(async () => {
      const page = await historyPage(historyPort, name, '?limit=10');
      assert.equal(page.status, 200, JSON.stringify(page.body));
      const list = page.body.messages;
      return list.some((m) => m.event === 'marker') && list;
    }, 'the history of the channel');
    assert.deepEqual(
      messages.filter((m) => m.event === 'said').map((m) => [m.seq, m.id]),
      [[ack.seq, ack.id]],
    );
  });

  test('publish: refusals reject with the nack; other subscribers see the event with its meta', async () => {
    const name = unique('private-hjs-publish-');
    const { h } = heraldClient(gw1, server);
    const channel = h.subscribe(name);
    const reader = heraldClient(gw2, server).h.subscribe(name);
    const got = seen(reader, 'said');
    await subscribed(channel);
    await subscribed(reader);

    const ack = await channel.publish('said', 'a plain string');
    await eventually(() => got.length === 1, 'the event on the reader');
    assert.equal(got[0].data, 'a plain string');
    assert.equal(got[0].meta.seq, ack.seq);
    assert.equal(got[0].meta.id, ack.id);
    assert.equal(got[0].meta.ts, ack.ts);

    const refusal = (promise) => promise.then(
      (ok) => assert.fail(`expected a rejection, got ${JSON.stringify(ok)}`),
      (err) => err,
    );
    const reserved = await refusal(channel.publish('client-typing', {}));
    assert.ok(reserved instanceof HeraldPublishError);
    assert.equal(reserved.code, 'invalid');
    assert.equal(reserved.channel, name);

    const publicChannel = h.subscribe(unique('hjs-public-'));
    await subscribed(publicChannel);
    assert.equal((await refusal(publicChannel.publish('said', {}))).code, 'not_allowed');

    // Idempotent by client_id: the same id is stored once, acked alike.
    const again = await channel.publish('said', 'a plain string', { clientId: ack.client_id });
    assert.deepEqual(again, ack);

    // A channel that never gets subscribed (its authorization fails): the
    // publish waits for it, then times out.
    const refused = heraldClient(gw1, server, {
      channelAuthorization: { customHandler: (_, callback) => callback(new Error('no'), null) },
    }).h;
    const never = refused.subscribe(unique('private-hjs-never-'));
    const timedOut = await refusal(never.publish('said', {}, { timeoutMs: 500 }));
    assert.equal(timedOut.code, 'timeout');
    assert.equal(refused.pending(), 0);
    assert.equal(refused.stats().publishesSent, 0, 'never sent to a channel not subscribed');
  });

  test('receipts: markDelivered / markRead reach the other members as herald:delivered / herald:read', async () => {
    const name = unique('private-hjs-receipts-');
    const alice = { id: unique('alice-') };
    const bob = { id: unique('bob-') };
    const aliceClient = await signedIn(gw1, server, alice);
    const bobClient = await signedIn(gw2, server, bob);
    const ha = herald(aliceClient);
    const hb = herald(bobClient);
    track(() => ha.detach());
    track(() => hb.detach());
    const aliceChannel = ha.subscribe(name);
    const bobChannel = hb.subscribe(name);
    const reads = seen(aliceChannel, 'herald:read');
    const delivered = seen(aliceChannel, 'herald:delivered');
    const messages = seen(bobChannel, 'said');
    const ownReads = seen(bobChannel, 'herald:read');
    await subscribed(aliceChannel);
    await subscribed(bobChannel);

    const ack = await aliceChannel.publish('said', { text: 'hi Bob' });
    await eventually(() => messages.length === 1, 'the message on Bob');
    const { seq } = messages[0].meta;
    assert.equal(seq, ack.seq);
    assert.equal(messages[0].meta.user_id, alice.id, 'attributed to its author');
    assert.equal(bobChannel.markDelivered(seq), true, 'sent');
    assert.equal(bobChannel.markRead(seq), true, 'sent');
    assert.equal(bobChannel.markRead(seq), false, 'nothing new to say');

    await eventually(() => reads.length === 1 && delivered.length === 1, 'both receipts on Alice');
    assert.deepEqual(delivered[0].data, { user_id: bob.id, seq });
    assert.deepEqual(reads[0].data, { user_id: bob.id, seq });
    assert.ok(reads[0].meta.seq > seq, 'a receipt is a durable event of the channel');
    assert.equal(reads[0].meta.user_id, bob.id);

    // Bob gets his own receipts too, so the next message continues his
    // chain of prev_seq: no false gap after marking read.
    await eventually(() => ownReads.length === 1, 'his own read receipt on Bob');
    assert.equal(ownReads[0].meta.seq, reads[0].meta.seq);
    await aliceChannel.publish('said', { text: 'and again' });
    await eventually(() => messages.length === 2, 'the second message on Bob');
    assert.equal(hb.stats().gaps, 0, 'no gap reported after his own receipts');
  });
});
