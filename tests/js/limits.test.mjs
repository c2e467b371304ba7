// Pusher compatibility: limits and malformed input on the WebSocket — message
// size (10 KB, Pusher's), channels per connection (100, Pusher's default),
// invalid channel names, malformed frames.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeAll,
  connect,
  dataOf,
  eventually,
  nextEvent,
  openRaw,
  ports,
  sdk,
  subscribe,
  subscription,
  unique,
} from './helpers.mjs';

const MAX_MESSAGE_BYTES = 10 * 1024;
const MAX_CHANNELS_PER_CONNECTION = 100;
/** RFC 6455 "message too big". */
const CLOSE_MESSAGE_TOO_BIG = 1009;

describe('limits', () => {
  let gw1, gw2;
  before(() => ({ gateway1: gw1, gateway2: gw2 } = ports()));
  afterEach(closeAll);
  after(closeAll);

  test('a frame over 10 KB gets pusher:error and the connection stays usable', async () => {
    const raw = await openRaw(gw1);
    const frame = JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'x'.repeat(MAX_MESSAGE_BYTES + 1) } });
    assert.ok(frame.length > MAX_MESSAGE_BYTES);
    raw.sendText(frame);
    const error = await raw.event('pusher:error');
    assert.match(dataOf(error).message, /exceeds the limit/);
    assert.ok(!raw.all('pusher:subscription_error').length, 'refused before being read');
    const name = unique('after-big-');
    await raw.subscribe(name);
    await sdk(gw1).trigger(name, 'e', {});
    await raw.event('e', name);
  });

  test('a client event over 10 KB from pusher-js is refused and not relayed', async () => {
    const server = sdk(gw1);
    const auth = { channelAuthorization: { customHandler: (p, cb) => cb(null, server.authorizeChannel(p.socketId, p.channelName)) } };
    const name = unique('private-big-');
    const sender = await connect(gw1, auth);
    const channel = await subscribe(sender, name);
    const raw = await openRaw(gw2);
    await raw.subscribe(name, { auth: server.authorizeChannel(raw.socketId, name).auth });
    const errors = [];
    sender.connection.bind('error', (err) => errors.push(err));
    channel.trigger('client-big', { blob: 'x'.repeat(MAX_MESSAGE_BYTES) });
    channel.trigger('client-small', { ok: true });
    // The refusal reaches the sender and the small event the other gateway's
    // socket by different paths: neither is known to come first.
    await eventually(
      () => errors.some((e) => /exceeds the limit/.test(e?.data?.message ?? '')),
      'the sender told its event exceeds the limit',
    );
    await raw.event('client-small', name);
    assert.ok(!raw.all('client-big').length, 'the big one was not relayed');
    assert.equal(sender.connection.state, 'connected');
  });

  test('a giant frame (beyond 4x the limit) makes the server close the socket (close code 1009)', async () => {
    const raw = await openRaw(gw2);
    const other = await openRaw(gw2);
    raw.sendText('x'.repeat(200 * 1024));
    const { code, reason } = await raw.closed('the server to close the socket');
    // The WebSocket layer refuses the frame: RFC 6455's 1009 "message too
    // big" (no reason) and no pusher:error first.
    assert.equal(code, CLOSE_MESSAGE_TOO_BIG, `closed with ${code} ${JSON.stringify(reason)}`);
    assert.equal(reason, '');
    assert.deepEqual(raw.all('pusher:error'), [], 'no pusher:error before the close');
    // Only that socket: another one on the same gateway is still served.
    await other.pong();
  });

  test(`a connection may subscribe to ${MAX_CHANNELS_PER_CONNECTION} channels; the next gets subscription_error`, async () => {
    const raw = await openRaw(gw1);
    const prefix = unique('many-');
    for (let i = 0; i < MAX_CHANNELS_PER_CONNECTION; i++) raw.send('pusher:subscribe', { channel: `${prefix}${i}` });
    await raw.next(
      () => raw.all('pusher_internal:subscription_succeeded').length === MAX_CHANNELS_PER_CONNECTION,
      `${MAX_CHANNELS_PER_CONNECTION} subscriptions`,
    );
    const name = `${prefix}${MAX_CHANNELS_PER_CONNECTION}`;
    raw.send('pusher:subscribe', { channel: name });
    const error = await raw.event('pusher:subscription_error', name);
    assert.equal(dataOf(error).type, 'LimitReached', JSON.stringify(error));
    // Leaving one frees a slot.
    raw.send('pusher:unsubscribe', { channel: `${prefix}0` });
    await raw.subscribe(name);
  });

  test('invalid channel names get pusher:subscription_error (400, InvalidChannel) in pusher-js', async () => {
    const client = await connect(gw1);
    for (const bad of ['bad channel', 'bad*name', 'emoji-☃', 'a'.repeat(165), 'bad/slash', 'bad#hash']) {
      const result = await subscription(client, bad);
      assert.equal(result.ok, false, `${bad} refused`);
      assert.equal(result.status.status, 400, JSON.stringify(result.status));
      assert.equal(result.status.type, 'InvalidChannel', JSON.stringify(result.status));
      client.unsubscribe(bad);
    }
    // Every character Pusher allows, and the connection still works.
    const good = `ok-${unique('')}_=@,.;`;
    const channel = await subscribe(client, good);
    const got = nextEvent(channel, 'e');
    await sdk(gw1).trigger(good, 'e', { fine: true });
    assert.deepEqual(await got, { fine: true });
  });

  test('a 164-character name is accepted, 165 is not (raw)', async () => {
    const raw = await openRaw(gw2);
    await raw.subscribe('a'.repeat(164));
    raw.send('pusher:subscribe', { channel: 'b'.repeat(165) });
    const error = await raw.event('pusher:subscription_error', 'b'.repeat(165));
    assert.equal(dataOf(error).status, 400);
  });

  test('malformed frames get pusher:error and the connection stays usable', async () => {
    const raw = await openRaw(gw1);
    const bad = ['not json', '{"data":{}}', '[1,2]', '{"event":42}', '{"event":"pusher:subscribe","data":{}}'];
    for (const [i, text] of bad.entries()) {
      raw.sendText(text);
      await raw.next(() => raw.all('pusher:error').length === i + 1, `pusher:error #${i + 1} for ${text}`);
    }
    raw.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    await raw.next(() => raw.all('pusher:error').length === bad.length + 1, 'pusher:error for a binary frame');
    await raw.subscribe(unique('still-'));
  });
});
