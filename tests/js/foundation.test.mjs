// End-to-end: Herald with the official Pusher JavaScript libraries — the
// foundation: connect, deliver an SDK-triggered event on both gateways (with
// Herald's id / seq / ts on the raw frame), refuse a wrong secret, ping/pong,
// and the history service's paginated history of what was delivered.
//
// Every test sets up its own channel and clients (no test relies on what
// another left behind); the stack is the one scripts/test starts (see
// helpers.mjs for the ports).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  basicAuth,
  closeAll,
  connect,
  dataOf,
  eventually,
  historyPage,
  nextEvent,
  openRaw,
  pong,
  port,
  ports,
  sdk,
  subscribe,
  unique,
} from './helpers.mjs';

/** The messages of a history page (`{ messages: [...], next_before }`). */
function messagesOf(body) {
  assert.ok(Array.isArray(body?.messages), `history page has no messages list: ${JSON.stringify(body)}`);
  return body.messages;
}

/** Herald's extra fields on a stored event's frame, checked. */
function assertDurableFields(frame) {
  const at = JSON.stringify(frame);
  assert.ok(Number.isSafeInteger(frame.seq) && frame.seq > 0, `a durable event carries a numeric seq: ${at}`);
  assert.equal(typeof frame.id, 'string', `a durable event carries a string id: ${at}`);
  assert.ok(frame.id.length > 0, `the id is not empty: ${at}`);
  assert.ok(Number.isSafeInteger(frame.ts), `a durable event carries a numeric ts: ${at}`);
  // Milliseconds since the epoch, within a few minutes of this machine's clock.
  assert.ok(Math.abs(frame.ts - Date.now()) < 5 * 60_000, `ts is a current time in ms: ${at}`);
}

describe('Herald with pusher-js and the pusher Node SDK', () => {
  let gateway1, gateway2, historyPort;

  before(() => {
    ({ gateway1, gateway2 } = ports());
    historyPort = port('HERALD_HISTORY_PORT');
  });
  afterEach(closeAll);
  after(closeAll);

  test('(a) pusher-js connects and gets a socket id', async () => {
    const client = await connect(gateway1);
    assert.equal(client.connection.state, 'connected');
    assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  });

  test('(b) an event triggered by the server SDK reaches subscribers on both gateways', async () => {
    const channelName = unique('herald-js-');
    const data = { text: 'hello from the server SDK', n: 1, unicode: 'héllo ✓' };
    const client1 = await connect(gateway1);
    const client2 = await connect(gateway2);
    assert.notEqual(client1.connection.socket_id, client2.connection.socket_id);
    const channel1 = await subscribe(client1, channelName);
    const channel2 = await subscribe(client2, channelName);
    const raw = await openRaw(gateway1);
    await raw.subscribe(channelName);

    const got1 = nextEvent(channel1, 'greeting', 'the event on gateway 1');
    const got2 = nextEvent(channel2, 'greeting', 'the event on gateway 2');
    const res = await sdk(gateway1).trigger(channelName, 'greeting', data);
    assert.equal(res.status, 200);

    assert.deepEqual(await got1, data);
    assert.deepEqual(await got2, data);

    const frame = await raw.event('greeting', channelName, 'the raw event on gateway 1');
    assert.equal(frame.channel, channelName);
    assert.equal(typeof frame.data, 'string', 'Pusher sends data as a JSON string');
    assert.deepEqual(JSON.parse(frame.data), data);
    assertDurableFields(frame);
  });

  test('(c) the server SDK with a wrong secret is refused with 401, and nothing is delivered', async () => {
    const channelName = unique('herald-js-refused-');
    const raw = await openRaw(gateway1);
    await raw.subscribe(channelName);
    await assert.rejects(
      sdk(gateway1, { secret: 'not-the-secret' }).trigger(channelName, 'greeting', { evil: true }),
      (err) => {
        assert.equal(err.status, 401, `expected 401, got ${err.status}: ${err.body ?? err.message}`);
        return true;
      },
    );
    // Marker: a good event on the same channel, stored after the refused one
    // would have been; once it is in, the refused one is known to be absent.
    await sdk(gateway1).trigger(channelName, 'marker', {});
    await raw.event('marker', channelName);
    assert.deepEqual(raw.all('greeting'), [], 'the refused event was not delivered');
  });

  test('(d) pusher:ping is answered with pusher:pong', async () => {
    const client = await connect(gateway2);
    const frame = await pong(client);
    assert.equal(frame.event, 'pusher:pong');
  });

  test('(e) history returns the triggered events, newest first, as they were delivered', async () => {
    const channelName = unique('herald-js-history-');
    const first = { text: 'first', n: 1, unicode: 'héllo ✓' };
    const second = { text: 'second', n: 2 };
    const raw = await openRaw(gateway2);
    await raw.subscribe(channelName);
    assert.equal((await sdk(gateway1).trigger(channelName, 'greeting', first)).status, 200);
    assert.equal((await sdk(gateway2).trigger(channelName, 'greeting', second)).status, 200);
    await raw.next(() => raw.all('greeting').length === 2, 'both events on the raw socket');
    const delivered = raw.all('greeting');
    assert.deepEqual(delivered.map(dataOf), [first, second], 'delivered in the order triggered');
    delivered.forEach(assertDurableFields);
    assert.ok(delivered[1].seq > delivered[0].seq, 'seq grows');

    // The history projection is asynchronous: poll until both events are in.
    const messages = await eventually(async () => {
      const page = await historyPage(historyPort, channelName, '?limit=10');
      assert.equal(page.status, 200, `history answered ${page.status}: ${JSON.stringify(page.body)}`);
      const got = messagesOf(page.body);
      return got.length >= 2 && got;
    }, 'both events in the history');

    assert.equal(messages.length, 2, `exactly the two events: ${JSON.stringify(messages)}`);
    const [newest, oldest] = messages;
    for (const [stored, frame] of [
      [oldest, delivered[0]],
      [newest, delivered[1]],
    ]) {
      // The history is of the very events delivered: same seq, id, ts, data.
      assert.equal(stored.seq, frame.seq, 'an event keeps the seq it was delivered with');
      assert.equal(stored.id, frame.id, 'and its id');
      assert.equal(stored.ts, frame.ts, 'and its ts');
      assert.equal(stored.event, 'greeting');
      assert.equal(stored.data, frame.data, 'data as the same JSON string');
      assert.equal(stored.author, null, 'server-triggered events have no author');
    }
    assert.deepEqual(dataOf(newest), second);
    assert.deepEqual(dataOf(oldest), first);

    // Keyset pagination: `limit` gives the newest page, `next_before` the next.
    const page1 = (await historyPage(historyPort, channelName, '?limit=1')).body;
    assert.deepEqual(messagesOf(page1).map((m) => m.seq), [newest.seq], '`limit` is honoured');
    assert.equal(page1.next_before, newest.seq, 'next_before points at the older page');
    const page2 = (await historyPage(historyPort, channelName, `?limit=1&before=${page1.next_before}`)).body;
    assert.deepEqual(messagesOf(page2).map((m) => m.seq), [oldest.seq], '`before` pages to older events');
    assert.equal(page2.next_before, null, 'no page after the oldest event');
  });

  test('(f) history refuses requests without valid credentials', async () => {
    const channelName = unique('herald-js-private-history-');
    const raw = await openRaw(gateway1);
    await raw.subscribe(channelName);
    await sdk(gateway1).trigger(channelName, 'secret', { n: 1 });
    await raw.event('secret', channelName);
    // Readable with the right credentials (so the refusals below are about them).
    const allowed = await eventually(async () => {
      const page = await historyPage(historyPort, channelName);
      return page.status === 200 && messagesOf(page.body).length === 1 && page;
    }, 'the event in the history');
    assert.deepEqual(dataOf(allowed.body.messages[0]), { n: 1 });

    for (const [authorization, what] of [
      [null, 'no credentials'],
      [basicAuth('app-key', 'not-the-secret'), 'a wrong secret'],
      [basicAuth('no-such-key', 'app-secret'), 'an unknown key'],
    ]) {
      const page = await historyPage(historyPort, channelName, '', authorization);
      assert.equal(page.status, 401, `${what}: ${JSON.stringify(page.body)}`);
      assert.ok(!JSON.stringify(page.body).includes('"n":1'), `${what}: no history in the refusal`);
    }
  });
});
