// End-to-end: Herald with the official Pusher JavaScript libraries.
//
// Expects two gateways and a history service sharing one NATS server (and
// one HERALD_PREFIX), all in development mode (app-id / app-key / app-secret).
// scripts/test starts them and sets:
//
//   HERALD_GATEWAY_PORT    gateway 1
//   HERALD_GATEWAY2_PORT   gateway 2
//   HERALD_HISTORY_PORT    history service
//
// Every wait has a timeout and every client is disconnected in `after`, so a
// broken server makes the tests fail, never hang.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import PusherClient from 'pusher-js';
import PusherServer from 'pusher';
import WebSocket from 'ws';

const HOST = '127.0.0.1';
const APP = { id: 'app-id', key: 'app-key', secret: 'app-secret' };
const TIMEOUT_MS = 10_000;

function port(name) {
  const value = Number(process.env[name]);
  assert.ok(
    Number.isInteger(value) && value > 0,
    `${name} must name the port of a running service (scripts/test sets it)`,
  );
  return value;
}

// --- helpers ------------------------------------------------------------------

/** Resolve `promise`, or reject after `ms` saying what we were waiting for. */
function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every client and socket opened by a test, closed in `after`. */
const opened = [];

/** A pusher-js client connected to the gateway on `wsPort`. */
async function connectClient(wsPort) {
  const client = new PusherClient(APP.key, {
    wsHost: HOST,
    wsPort,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    enableStats: false,
  });
  opened.push(() => client.disconnect());
  await withTimeout(
    new Promise((resolve, reject) => {
      const check = ({ current }) => {
        if (current === 'connected') resolve();
        if (current === 'failed' || current === 'unavailable') {
          reject(new Error(`pusher-js connection to port ${wsPort} is ${current}`));
        }
      };
      client.connection.bind('state_change', check);
      check({ current: client.connection.state });
    }),
    `pusher-js to connect to port ${wsPort}`,
  );
  return client;
}

/** Subscribe a pusher-js client; resolve with the channel once it succeeded. */
async function subscribe(client, name) {
  const channel = client.subscribe(name);
  await withTimeout(
    new Promise((resolve, reject) => {
      channel.bind('pusher:subscription_succeeded', () => resolve());
      channel.bind('pusher:subscription_error', (status) =>
        reject(new Error(`subscription to ${name} failed: ${JSON.stringify(status)}`)),
      );
    }),
    `subscription to ${name}`,
  );
  return channel;
}

/** The data of the next `event` on a pusher-js channel. */
function nextEvent(channel, event, what) {
  return withTimeout(
    new Promise((resolve) => {
      const handler = (data) => {
        channel.unbind(event, handler);
        resolve(data);
      };
      channel.bind(event, handler);
    }),
    what,
  );
}

/**
 * A raw WebSocket speaking the Pusher protocol, to see the frames exactly as
 * the gateway sends them (pusher-js drops unknown top-level fields like seq).
 */
async function openRaw(wsPort) {
  const ws = new WebSocket(`ws://${HOST}:${wsPort}/app/${APP.key}?protocol=7&client=js&version=8`);
  opened.push(() => ws.terminate());
  const received = [];
  const waiters = [];
  ws.on('message', (raw) => {
    const frame = JSON.parse(raw.toString());
    received.push(frame);
    for (const waiter of [...waiters]) {
      if (waiter.match(frame)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(frame);
      }
    }
  });
  const socket = {
    /** The first frame (already received or still to come) matching `match`. */
    next(match, what) {
      const seen = received.find(match);
      if (seen) return Promise.resolve(seen);
      return withTimeout(new Promise((resolve) => waiters.push({ match, resolve })), what);
    },
    send(event, data, channel) {
      ws.send(JSON.stringify(channel === undefined ? { event, data } : { event, data, channel }));
    },
  };
  const opening = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.on('error', () => {}); // reported by `opening` or by a waiter's timeout
  await withTimeout(opening, `a raw WebSocket to port ${wsPort}`);
  await socket.next((f) => f.event === 'pusher:connection_established', 'connection_established');
  return socket;
}

function server(apiPort, secret = APP.secret) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret,
    host: HOST,
    port: String(apiPort),
    useTLS: false,
    timeout: TIMEOUT_MS,
  });
}

/** GET a history page, with Basic auth unless `auth` is false. */
async function history(historyPort, channel, query = '', auth = true) {
  const headers = {};
  if (auth) {
    const basic = Buffer.from(`${APP.key}:${APP.secret}`).toString('base64');
    headers.authorization = `Basic ${basic}`;
  }
  const url =
    `http://${HOST}:${historyPort}/v1/apps/${encodeURIComponent(APP.id)}` +
    `/channels/${encodeURIComponent(channel)}/messages${query}`;
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

/** The list of messages in a history page: `{ messages: [...], next_before }`. */
function messagesOf(body) {
  assert.ok(Array.isArray(body?.messages), `history page has no messages list: ${JSON.stringify(body)}`);
  return body.messages;
}

/** A message's data, parsed when it is a JSON string (Pusher's data is a string). */
function dataOf(message) {
  if (typeof message.data !== 'string') return message.data;
  try {
    return JSON.parse(message.data);
  } catch {
    return message.data;
  }
}

// --- tests --------------------------------------------------------------------

describe('Herald with pusher-js and the pusher Node SDK', () => {
  let gateway1, gateway2, historyPort;
  const channelName = `herald-js-${randomUUID()}`;
  const first = { text: 'hello from the server SDK', n: 1, unicode: 'héllo ✓' };
  let firstSeq;

  before(() => {
    gateway1 = port('HERALD_GATEWAY_PORT');
    gateway2 = port('HERALD_GATEWAY2_PORT');
    historyPort = port('HERALD_HISTORY_PORT');
  });

  after(() => {
    for (const close of opened.splice(0)) {
      try {
        close();
      } catch {
        // already closed
      }
    }
  });

  test('(a) pusher-js connects and gets a socket id', async () => {
    const client = await connectClient(gateway1);
    assert.equal(client.connection.state, 'connected');
    assert.match(client.connection.socket_id, /^\d+\.\d+$/);
    client.disconnect();
  });

  test('(b) an event triggered by the server SDK reaches subscribers on both gateways', async () => {
    const client1 = await connectClient(gateway1);
    const client2 = await connectClient(gateway2);
    assert.notEqual(client1.connection.socket_id, client2.connection.socket_id);
    const channel1 = await subscribe(client1, channelName);
    const channel2 = await subscribe(client2, channelName);

    const raw = await openRaw(gateway1);
    raw.send('pusher:subscribe', { channel: channelName });
    await raw.next(
      (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === channelName,
      'raw subscription_succeeded',
    );

    const got1 = nextEvent(channel1, 'greeting', 'the event on gateway 1');
    const got2 = nextEvent(channel2, 'greeting', 'the event on gateway 2');
    const gotRaw = raw.next(
      (f) => f.event === 'greeting' && f.channel === channelName,
      'the raw event on gateway 1',
    );

    const res = await server(gateway1).trigger(channelName, 'greeting', first);
    assert.equal(res.status, 200);

    assert.deepEqual(await got1, first);
    assert.deepEqual(await got2, first);

    const frame = await gotRaw;
    assert.equal(typeof frame.data, 'string', 'Pusher sends data as a JSON string');
    assert.deepEqual(JSON.parse(frame.data), first);
    assert.ok(
      Number.isSafeInteger(frame.seq) && frame.seq > 0,
      `a durable event carries a numeric seq: ${JSON.stringify(frame)}`,
    );
    if ('id' in frame) assert.equal(typeof frame.id, 'string');
    if ('ts' in frame) assert.equal(typeof frame.ts, 'number');
    firstSeq = frame.seq;

    client1.disconnect();
    client2.disconnect();
  });

  test('(c) the server SDK with a wrong secret is refused with 401', async () => {
    await assert.rejects(
      server(gateway1, 'not-the-secret').trigger(channelName, 'greeting', { evil: true }),
      (err) => {
        assert.equal(err.status, 401, `expected 401, got ${err.status}: ${err.body ?? err.message}`);
        return true;
      },
    );
  });

  test('(d) pusher:ping is answered with pusher:pong', async () => {
    const client = await connectClient(gateway2);
    const pong = withTimeout(
      new Promise((resolve) => {
        client.connection.bind('message', (message) => {
          if (message.event === 'pusher:pong') resolve(message);
        });
      }),
      'pusher:pong',
    );
    assert.ok(client.connection.send_event('pusher:ping', {}), 'pusher-js sent the ping');
    assert.equal((await pong).event, 'pusher:pong');
    client.disconnect();
  });

  test('(e) history returns the triggered events, newest first', async () => {
    assert.ok(firstSeq, 'test (b) must have passed');
    const second = { text: 'second', n: 2 };
    const res = await server(gateway2).trigger(channelName, 'greeting', second);
    assert.equal(res.status, 200);

    // The history projection is asynchronous: poll until both events are in.
    let messages = [];
    const deadline = Date.now() + TIMEOUT_MS;
    for (;;) {
      const page = await history(historyPort, channelName, '?limit=10');
      assert.equal(page.status, 200, `history answered ${page.status}: ${JSON.stringify(page.body)}`);
      messages = messagesOf(page.body);
      if (messages.length >= 2) break;
      assert.ok(Date.now() < deadline, `history still has ${messages.length} of 2 events`);
      await sleep(100);
    }

    assert.equal(messages.length, 2, `exactly the two events: ${JSON.stringify(messages)}`);
    const [newest, oldest] = messages;
    assert.equal(oldest.seq, firstSeq, 'the first event keeps the seq it was delivered with');
    assert.ok(newest.seq > oldest.seq, 'newest first');
    assert.deepEqual(dataOf(newest), second);
    assert.deepEqual(dataOf(oldest), first);
    for (const m of messages) {
      assert.equal(m.event, 'greeting');
      assert.equal(typeof m.id, 'string');
      if ('channel' in m) assert.equal(m.channel, channelName);
    }

    // Keyset pagination: `limit` gives the newest page, `next_before` the next.
    const page1 = (await history(historyPort, channelName, '?limit=1')).body;
    assert.deepEqual(messagesOf(page1).map((m) => m.seq), [newest.seq], '`limit` is honoured');
    assert.equal(page1.next_before, newest.seq, 'next_before points at the older page');
    const page2 = (await history(historyPort, channelName, `?limit=1&before=${page1.next_before}`)).body;
    assert.deepEqual(messagesOf(page2).map((m) => m.seq), [oldest.seq], '`before` pages to older events');
    assert.equal(page2.next_before ?? null, null, 'no page after the oldest event');
  });

  test('(f) history refuses requests without valid credentials', async () => {
    const anonymous = await history(historyPort, channelName, '', false);
    assert.equal(anonymous.status, 401);
  });
});
