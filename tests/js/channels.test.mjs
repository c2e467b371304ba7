// Pusher compatibility: public, private and private-encrypted channels with
// pusher-js, authorized the way Pusher apps do it (a customHandler or an auth
// endpoint signing with the server SDK).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  APP,
  ENCRYPTION_MASTER_KEY_BASE64,
  channelAuthorizer,
  closeAll,
  collect,
  collectFrames,
  connect,
  dataOf,
  eventually,
  nacl,
  nextEvent,
  openRaw,
  pong,
  ports,
  sdk,
  subscribe,
  subscription,
  track,
  unique,
} from './helpers.mjs';

describe('public channels', () => {
  let gw1, gw2;
  before(() => ({ gateway1: gw1, gateway2: gw2 } = ports()));
  afterEach(closeAll);
  after(closeAll);

  test('a triggered event reaches pusher-js subscribers on both gateways, data as sent', async () => {
    const name = unique('public-');
    const a = await subscribe(await connect(gw1), name);
    const b = await subscribe(await connect(gw2), name);
    const gotA = nextEvent(a, 'news', 'the event on gateway 1');
    const gotB = nextEvent(b, 'news', 'the event on gateway 2');
    const data = { text: 'héllo ✓', n: 1, nested: { list: [1, 2, 3] } };
    const res = await sdk(gw2).trigger(name, 'news', data);
    assert.equal(res.status, 200);
    assert.deepEqual(await gotA, data);
    assert.deepEqual(await gotB, data);
  });

  test('string data is delivered as the same string', async () => {
    const name = unique('public-');
    const channel = await subscribe(await connect(gw1), name);
    const got = nextEvent(channel, 'text');
    await sdk(gw1).trigger(name, 'text', 'just a string');
    assert.equal(await got, 'just a string');
  });

  test('after unsubscribing, pusher-js receives nothing more on that channel', async () => {
    const [gone, kept] = [unique('gone-'), unique('kept-')];
    const client = await connect(gw1);
    const goneChannel = await subscribe(client, gone);
    const keptChannel = await subscribe(client, kept);
    const goneEvents = collect(goneChannel, 'e');
    const frames = collectFrames(client);
    client.unsubscribe(gone);
    await pong(client); // the unsubscribe has no reply; the pong comes after it was handled
    // An observer still on `gone`, on the same gateway: once it has the event,
    // the gateway has fanned it out; the client's pong after that is the marker.
    const observer = await openRaw(gw1);
    await observer.subscribe(gone);
    const keptEvent = nextEvent(keptChannel, 'e');
    await sdk(gw1).trigger(gone, 'e', { n: 1 });
    await sdk(gw1).trigger(kept, 'e', { n: 2 });
    assert.deepEqual(await keptEvent, { n: 2 });
    await observer.event('e', gone);
    await pong(client);
    assert.deepEqual(frames.filter((f) => f.channel === gone), [], 'no frame for the channel left');
    assert.deepEqual(goneEvents, []);
    // And subscribing again works.
    const again = await subscribe(client, gone);
    const next = nextEvent(again, 'e');
    await sdk(gw1).trigger(gone, 'e', { n: 3 });
    assert.deepEqual(await next, { n: 3 });
  });

  test('a repeated raw subscribe is answered with success again', async () => {
    const name = unique('twice-');
    const raw = await openRaw(gw1);
    await raw.subscribe(name);
    raw.send('pusher:subscribe', { channel: name });
    await raw.next(
      (f) => f.event === 'pusher_internal:subscription_succeeded' && raw.all(f.event).length === 2,
      'a second subscription_succeeded',
    );
  });
});

describe('private channels', () => {
  let gw1, gw2;
  before(() => ({ gateway1: gw1, gateway2: gw2 } = ports()));
  afterEach(closeAll);
  after(closeAll);

  test('pusher-js with a channelAuthorization customHandler (SDK authorizeChannel) subscribes and receives', async () => {
    const name = unique('private-');
    const server = sdk(gw1);
    const client = await connect(gw2, {
      channelAuthorization: { customHandler: channelAuthorizer(server) },
    });
    const channel = await subscribe(client, name);
    const got = nextEvent(channel, 'secret');
    await server.trigger(name, 'secret', { for: 'members only' });
    assert.deepEqual(await got, { for: 'members only' });
  });

  test('pusher-js with an authEndpoint served by the app (SDK authorizeChannel) subscribes', async () => {
    const server = sdk(gw1);
    const requests = [];
    const endpoint = http.createServer((req, res) => {
      let body = '';
      req.on('data', (chunk) => (body += chunk));
      req.on('end', () => {
        const form = new URLSearchParams(body);
        requests.push(Object.fromEntries(form));
        const auth = server.authorizeChannel(form.get('socket_id'), form.get('channel_name'));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(auth));
      });
    });
    await new Promise((resolve) => endpoint.listen(0, '127.0.0.1', resolve));
    track(() => endpoint.close());
    const name = unique('private-');
    const client = await connect(gw1, {
      channelAuthorization: { endpoint: `http://127.0.0.1:${endpoint.address().port}/pusher/auth`, transport: 'ajax' },
    });
    const channel = await subscribe(client, name);
    assert.deepEqual(requests, [{ socket_id: client.connection.socket_id, channel_name: name }]);
    const got = nextEvent(channel, 'secret');
    await server.trigger(name, 'secret', { ok: true });
    assert.deepEqual(await got, { ok: true });
  });

  test('a bad signature gets pusher:subscription_error (401, AuthError) and the connection stays usable', async () => {
    const wrong = sdk(gw1, { secret: 'not-the-secret' });
    const client = await connect(gw1, {
      channelAuthorization: { customHandler: channelAuthorizer(wrong) },
    });
    const socketId = client.connection.socket_id;
    const result = await subscription(client, unique('private-'));
    assert.equal(result.ok, false, 'refused');
    assert.equal(result.status.status, 401, JSON.stringify(result.status));
    assert.equal(result.status.type, 'AuthError', JSON.stringify(result.status));
    assert.equal(typeof result.status.error, 'string');

    // Same connection, still usable.
    assert.equal(client.connection.state, 'connected');
    assert.equal(client.connection.socket_id, socketId);
    const name = unique('after-error-');
    const channel = await subscribe(client, name);
    const got = nextEvent(channel, 'e');
    await sdk(gw1).trigger(name, 'e', { still: 'here' });
    assert.deepEqual(await got, { still: 'here' });
  });

  test('a signature for another socket, a missing one or a garbled one is refused (raw)', async () => {
    const server = sdk(gw1);
    const raw = await openRaw(gw2);
    const other = await openRaw(gw2);
    const name = unique('private-');
    const cases = [
      { channel: name },
      { channel: name, auth: `${APP.key}:deadbeef` },
      { channel: name, auth: server.authorizeChannel(other.socketId, name).auth },
      { channel: name, auth: server.authorizeChannel(raw.socketId, `${name}-other`).auth },
      { channel: name, auth: `other-key:${server.authorizeChannel(raw.socketId, name).auth.split(':')[1]}` },
    ];
    for (const [i, data] of cases.entries()) {
      raw.send('pusher:subscribe', data);
      await raw.next(
        (f) => f.event === 'pusher:subscription_error' && raw.all(f.event).length === i + 1,
        `subscription_error #${i + 1} for ${JSON.stringify(data)}`,
      );
    }
    for (const frame of raw.all('pusher:subscription_error')) {
      assert.equal(frame.channel, name);
      assert.equal(typeof frame.data, 'string', 'data is a JSON string, as in Pusher');
      const data = dataOf(frame);
      assert.equal(data.status, 401, JSON.stringify(frame));
      assert.equal(data.type, 'AuthError');
    }
    // The right signature works on the same socket.
    await raw.subscribe(name, { auth: server.authorizeChannel(raw.socketId, name).auth });
  });
});

describe('private-encrypted channels', () => {
  let gw1, gw2;
  before(() => ({ gateway1: gw1, gateway2: gw2 } = ports()));
  afterEach(closeAll);
  after(closeAll);

  test('an event encrypted by the SDK is relayed opaquely and decrypted by pusher-js', async () => {
    const server = sdk(gw1, { encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64 });
    const name = unique('private-encrypted-');
    const client = await connect(gw2, {
      nacl,
      channelAuthorization: { customHandler: channelAuthorizer(server) },
    });
    const channel = await subscribe(client, name);

    // A raw subscriber with a valid signature sees the ciphertext as stored.
    const raw = await openRaw(gw1);
    await raw.subscribe(name, { auth: server.authorizeChannel(raw.socketId, name).auth });

    const got = nextEvent(channel, 'sealed', 'the decrypted event');
    const data = { message: 'for your eyes only', n: 42 };
    const res = await server.trigger(name, 'sealed', data);
    assert.equal(res.status, 200);
    assert.deepEqual(await got, data, 'pusher-js decrypted the payload');

    const frame = await raw.event('sealed', name);
    const sealed = dataOf(frame);
    assert.equal(typeof sealed.nonce, 'string', JSON.stringify(frame));
    assert.equal(typeof sealed.ciphertext, 'string', JSON.stringify(frame));
    assert.ok(!frame.data.includes('for your eyes only'), 'the server never sees the plain text');
  });

  test('the SDK refuses to encrypt to several channels at once (as with Pusher)', async () => {
    const server = sdk(gw1, { encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64 });
    assert.throws(() => server.trigger([unique('private-encrypted-'), unique('public-')], 'e', {}));
  });
});

describe('cache channels', () => {
  let gw1, gw2;
  before(() => ({ gateway1: gw1, gateway2: gw2 } = ports()));
  afterEach(closeAll);
  after(closeAll);

  test('pusher-js gets pusher:cache_miss on a cache channel with no event yet', async () => {
    const client = await connect(gw1);
    const channel = client.subscribe(unique('cache-'));
    const miss = nextEvent(channel, 'pusher:cache_miss', 'pusher:cache_miss');
    await miss;
  });

  test('pusher-js gets the last event of a cache channel on subscribe, then live ones', async () => {
    const name = unique('cache-');
    await sdk(gw2).trigger(name, 'price', { v: 1 });
    await sdk(gw2).trigger(name, 'price', { v: 2 });
    const client = await connect(gw1);
    const channel = client.subscribe(name);
    const prices = collect(channel, 'price');
    const misses = collect(channel, 'pusher:cache_miss');
    await eventually(() => prices.length === 1, 'the cached event');
    assert.deepEqual(prices, [{ v: 2 }]);
    await sdk(gw2).trigger(name, 'price', { v: 3 });
    await eventually(() => prices.length >= 2, 'the live event');
    // Marker: a later event on the same channel; a duplicate or a late
    // cache_miss would have come before it.
    await sdk(gw2).trigger(name, 'price', { v: 4 });
    await eventually(() => prices.length >= 3, 'the marker event');
    assert.deepEqual(prices, [{ v: 2 }, { v: 3 }, { v: 4 }]);
    assert.equal(misses.length, 0);
  });
});
