// Pusher compatibility: connecting. pusher:connection_established, ping/pong
// both ways, protocol version checks and unknown app keys (close codes seen
// on a raw WebSocket, since pusher-js hides them).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  APP,
  closeAll,
  collectFrames,
  connect,
  connectionState,
  newClient,
  dataOf,
  frameIn,
  openRaw,
  ports,
  sleep,
} from './helpers.mjs';

describe('connection', () => {
  let gw1, gw2;
  before(() => ({ gateway1: gw1, gateway2: gw2 } = ports()));
  afterEach(closeAll);
  after(closeAll);

  test('pusher-js connects to both gateways and gets distinct Pusher-style socket ids', async () => {
    const a = await connect(gw1);
    const b = await connect(gw2);
    for (const client of [a, b]) {
      assert.equal(client.connection.state, 'connected');
      assert.match(client.connection.socket_id, /^\d+\.\d+$/);
    }
    assert.notEqual(a.connection.socket_id, b.connection.socket_id);
  });

  test('pusher:connection_established carries socket_id and activity_timeout as a JSON string', async () => {
    const raw = await openRaw(gw1);
    const frame = raw.received[0];
    assert.equal(frame.event, 'pusher:connection_established');
    assert.equal(typeof frame.data, 'string', 'Pusher sends data as a JSON string');
    const data = JSON.parse(frame.data);
    assert.match(data.socket_id, /^\d+\.\d+$/);
    assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0, JSON.stringify(data));
  });

  test('pusher-js adopts the activity_timeout the server announces', async () => {
    const client = await connect(gw1);
    const raw = await openRaw(gw1);
    const announced = JSON.parse(raw.received[0].data).activity_timeout;
    // pusher-js keeps min(its own activityTimeout (120 s), the server's), in ms.
    assert.equal(client.connection.activityTimeout, Math.min(120_000, announced * 1000));
  });

  test('a client pusher:ping is answered with pusher:pong (pusher-js and raw)', async () => {
    const client = await connect(gw2);
    const frames = collectFrames(client);
    assert.ok(client.connection.send_event('pusher:ping', {}), 'pusher-js sent the ping');
    await frameIn(frames, (m) => m.event === 'pusher:pong', 'pusher:pong to pusher-js');

    const raw = await openRaw(gw1);
    raw.send('pusher:ping', {});
    await raw.event('pusher:pong');
    // pysher sends its ping with data "" (a string): also answered.
    const raw2 = await openRaw(gw1);
    raw2.send('pusher:ping', '');
    await raw2.event('pusher:pong');
  });

  test('an idle connection gets a server pusher:ping; answering pusher:pong keeps it open', async () => {
    // scripts/test runs the gateways with a short activity timeout
    // (HERALD_ACTIVITY_TIMEOUT_SECS) so that this does not take Pusher's 120 s.
    const raw = await openRaw(gw1);
    const timeout = JSON.parse(raw.received[0].data).activity_timeout;
    assert.ok(timeout <= 10, `activity_timeout ${timeout} s is too long for this test; see scripts/test`);
    const ping = await raw.next((f) => f.event === 'pusher:ping', 'a server ping', (timeout + 5) * 1000);
    assert.equal(typeof ping.data, 'string');
    raw.send('pusher:pong', {});
    // Still open and usable after a second idle period.
    await sleep(timeout * 1000 + 500);
    raw.send('pusher:ping', {});
    await raw.event('pusher:pong');
    assert.ok(!raw.received.some((f) => f.event === 'pusher:error'), JSON.stringify(raw.received));
    assert.equal(raw.ws.readyState, raw.ws.OPEN);
  });

  test('pusher-js stays connected across idle periods longer than activity_timeout', async () => {
    const client = await connect(gw2);
    const socketId = client.connection.socket_id;
    const timeout = client.connection.activityTimeout;
    assert.ok(timeout <= 10_000, `pusher-js activity timeout ${timeout} ms (server announced a short one)`);
    const states = [];
    client.connection.bind('state_change', ({ current }) => states.push(current));
    await sleep(timeout * 2 + 1000);
    assert.deepEqual(states, [], 'no reconnect');
    assert.equal(client.connection.state, 'connected');
    assert.equal(client.connection.socket_id, socketId);
  });

  for (const [query, code, what] of [
    ['', 4008, 'no protocol version'],
    ['?protocol=abc', 4006, 'an invalid version string'],
    ['?protocol=99', 4007, 'an unsupported protocol version'],
  ]) {
    test(`${what} is refused with pusher:error ${code} and close code ${code}`, async () => {
      const raw = await openRaw(gw1, { path: `/app/${APP.key}${query}`, established: false });
      const { code: closeCode } = await raw.closed();
      assert.equal(closeCode, code);
      const error = raw.received.find((f) => f.event === 'pusher:error');
      assert.ok(error, `a pusher:error frame before the close: ${JSON.stringify(raw.received)}`);
      assert.equal(dataOf(error).code, code);
      assert.ok(!raw.received.some((f) => f.event === 'pusher:connection_established'));
    });
  }

  test('protocol 5, 6 and 7 are accepted', async () => {
    for (const version of [5, 6, 7]) {
      const raw = await openRaw(gw2, { path: `/app/${APP.key}?protocol=${version}` });
      assert.match(raw.socketId, /^\d+\.\d+$/);
    }
  });

  test('an unknown app key is refused with pusher:error 4001 and close code 4001', async () => {
    const raw = await openRaw(gw1, { path: '/app/no-such-key?protocol=7', established: false });
    const { code } = await raw.closed();
    assert.equal(code, 4001);
    const error = raw.received.find((f) => f.event === 'pusher:error');
    assert.equal(dataOf(error).code, 4001);
    assert.match(dataOf(error).message, /no-such-key/);
  });

  test('pusher-js with an unknown app key reports 4001 and stops (no reconnect loop)', async () => {
    const client = newClient(gw1, { key: 'no-such-key' });
    const errors = [];
    const states = [];
    client.connection.bind('error', (err) => errors.push(err));
    client.connection.bind('state_change', ({ current }) => states.push(current));
    await connectionState(client, 'disconnected', 'pusher-js to give up on an unknown app key');
    const codes = errors.map((e) => e?.error?.data?.code);
    assert.ok(codes.includes(4001), `pusher-js reported 4001: ${JSON.stringify(errors)}`);
    await sleep(1500);
    assert.deepEqual(states, ['disconnected'], 'pusher-js does not retry a refused connection');
  });

  test('unknown events get a pusher:error and the connection stays usable', async () => {
    const raw = await openRaw(gw1);
    raw.send('not-an-event', {});
    const error = await raw.event('pusher:error');
    assert.ok(dataOf(error).message);
    raw.sendText('not json');
    await raw.next((f) => f.event === 'pusher:error' && f !== error, 'a second pusher:error');
    await raw.subscribe('still-usable');
  });
});
