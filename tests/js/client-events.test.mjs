// Pusher compatibility: client events (`client-*`) sent with pusher-js's
// `channel.trigger`. The stack's app has client events enabled with a limit
// of 10 per second per connection (scripts/test's HERALD_APPS).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  channelAuthorizer,
  closeAll,
  collect,
  collectFrames,
  connect,
  dataOf,
  eventually,
  nextEvent,
  openRaw,
  pong,
  ports,
  sdk,
  sleep,
  subscribe,
  unique,
} from './helpers.mjs';

const LIMIT_PER_SECOND = 10;

describe('client events', () => {
  let gw1, gw2, server, auth;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
    auth = { channelAuthorization: { customHandler: channelAuthorizer(server) } };
  });
  afterEach(closeAll);
  after(closeAll);

  test('on a private channel, a client event reaches the other gateway and this one, not the sender', async () => {
    const name = unique('private-chat-');
    const sender = await connect(gw1, auth);
    const sameGateway = await connect(gw1, auth);
    const otherGateway = await connect(gw2, auth);
    const senderChannel = await subscribe(sender, name);
    const near = await subscribe(sameGateway, name);
    const far = await subscribe(otherGateway, name);
    const echoed = collect(senderChannel, 'client-typing');

    const gotNear = nextEvent(near, 'client-typing', 'the client event on the same gateway');
    const gotFar = nextEvent(far, 'client-typing', 'the client event on the other gateway');
    assert.ok(senderChannel.trigger('client-typing', { from: 'sender', text: 'héllo' }), 'pusher-js sent it');
    assert.deepEqual(await gotFar, { from: 'sender', text: 'héllo' });
    assert.deepEqual(await gotNear, { from: 'sender', text: 'héllo' });
    // Marker: gateway 1 has relayed it to `near`; an echo to the sender would
    // be queued on the sender's socket before the pong to a later ping.
    await pong(sender);
    assert.deepEqual(echoed, [], 'never echoed to the sender');
  });

  test('client events are relayed as Pusher frames (event, channel, data) and are not stored', async () => {
    const name = unique('private-raw-');
    const sender = await connect(gw2, auth);
    const senderChannel = await subscribe(sender, name);
    const raw = await openRaw(gw1);
    await raw.subscribe(name, { auth: server.authorizeChannel(raw.socketId, name).auth });
    senderChannel.trigger('client-ping', { n: 1 });
    const frame = await raw.event('client-ping', name);
    assert.deepEqual(dataOf(frame), { n: 1 });
    assert.equal(frame.seq, undefined, 'client events are ephemeral: no stream sequence');
  });

  test('on a public channel the server refuses a client event with pusher:error', async () => {
    const name = unique('public-chat-');
    const sender = await connect(gw1);
    const channel = await subscribe(sender, name);
    const listenerClient = await connect(gw2);
    const listener = await subscribe(listenerClient, name);
    const delivered = collect(listener, 'client-x');
    const errors = [];
    sender.connection.bind('error', (err) => errors.push(err));
    // pusher-js 8 sends it (it only checks the client- prefix); Pusher's
    // server answers with an error, and so does Herald.
    channel.trigger('client-x', { nope: true });
    await eventually(() => errors.length > 0, 'a pusher:error reported by pusher-js');
    assert.equal(errors[0].type, 'PusherError', JSON.stringify(errors));
    assert.match(errors[0].data.message, /private and presence/);
    // Marker: an event triggered through gateway 1 after the refusal, on the
    // same channel; it travels further (stored, then republished) than a
    // relayed client event would have, and the listener's pong after it
    // flushes anything gateway 2 had queued.
    const marker = nextEvent(listener, 'marker');
    await sdk(gw1).trigger(name, 'marker', {});
    await marker;
    await pong(listenerClient);
    assert.deepEqual(delivered, [], 'not relayed');
    assert.equal(sender.connection.state, 'connected', 'the connection stays open');
  });

  test('a client event on a private channel the socket has not joined is refused', async () => {
    const raw = await openRaw(gw1);
    raw.send('client-x', { a: 1 }, unique('private-not-joined-'));
    const error = await raw.event('pusher:error');
    assert.ok(dataOf(error).message);
    raw.send('client-x', { a: 1 }); // and without a channel
    await raw.next((f) => f.event === 'pusher:error' && f !== error, 'a second pusher:error');
  });

  test('pusher-js refuses event names without the client- prefix', async () => {
    const name = unique('private-');
    const channel = await subscribe(await connect(gw1, auth), name);
    assert.throws(() => channel.trigger('not-client', {}), /client-/);
  });

  test(`more than ${LIMIT_PER_SECOND} client events per second get pusher:error 4301; the connection stays usable`, async () => {
    const name = unique('private-flood-');
    const sender = await connect(gw1, auth);
    const senderChannel = await subscribe(sender, name);
    const listener = await subscribe(await connect(gw2, auth), name);
    const delivered = collect(listener, 'client-flood');
    const frames = collectFrames(sender);
    const errors = [];
    sender.connection.bind('error', (err) => errors.push(err));

    const sent = 15;
    for (let i = 0; i < sent; i++) senderChannel.trigger('client-flood', { i });
    await eventually(
      () => delivered.length + errors.length >= sent,
      `every client event delivered or refused (delivered ${delivered.length}, refused ${errors.length})`,
    );
    const rejected = frames.filter((f) => f.event === 'pusher:error');
    assert.ok(rejected.length >= sent - LIMIT_PER_SECOND - 1, `${rejected.length} refused`);
    for (const frame of rejected) assert.equal(frame.data.code, 4301, JSON.stringify(frame));
    assert.ok(errors.every((e) => e.data?.code === 4301), JSON.stringify(errors));
    assert.ok(delivered.length <= LIMIT_PER_SECOND + 1, `${delivered.length} delivered`);
    assert.deepEqual(
      delivered.map((d) => d.i),
      [...Array(delivered.length).keys()],
      'the first ones went through, in order',
    );

    // Still connected, and after a second the budget is back.
    assert.equal(sender.connection.state, 'connected');
    await sleep(1100);
    const next = nextEvent(listener, 'client-again');
    senderChannel.trigger('client-again', { ok: true });
    assert.deepEqual(await next, { ok: true });
  });

  test('the rate limit is per connection', async () => {
    const name = unique('private-two-');
    const a = await subscribe(await connect(gw1, auth), name);
    const b = await subscribe(await connect(gw1, auth), name);
    const listener = await subscribe(await connect(gw2, auth), name);
    const delivered = collect(listener, 'client-n');
    for (let i = 0; i < LIMIT_PER_SECOND; i++) {
      a.trigger('client-n', { from: 'a', i });
      b.trigger('client-n', { from: 'b', i });
    }
    await eventually(() => delivered.length === 2 * LIMIT_PER_SECOND, `20 client events (got ${delivered.length})`);
  });

  test('frames show the 4301 error exactly as Pusher sends it (raw)', async () => {
    const name = unique('private-raw-flood-');
    const raw = await openRaw(gw2);
    await raw.subscribe(name, { auth: server.authorizeChannel(raw.socketId, name).auth });
    for (let i = 0; i < LIMIT_PER_SECOND + 3; i++) raw.send('client-x', { i }, name);
    const error = await raw.event('pusher:error');
    assert.equal(error.data.code, 4301, JSON.stringify(error));
    assert.equal(typeof error.data.message, 'string');
    raw.send('pusher:ping', {});
    await raw.event('pusher:pong');
  });
});
