// Pusher compatibility: the HTTP API through the pusher Node SDK — trigger
// (one and many channels, socket_id exclusion, info), triggerBatch, channel
// queries across both gateways, and authentication.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeAll,
  collect,
  connect,
  eventually,
  nextEvent,
  openRaw,
  outcome,
  ports,
  sdk,
  subscribe,
  unique,
} from './helpers.mjs';

describe('HTTP API: publishing', () => {
  let gw1, gw2, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  test('trigger to one channel answers 200 with {} and delivers', async () => {
    const name = unique('one-');
    const channel = await subscribe(await connect(gw2), name);
    const got = nextEvent(channel, 'e');
    const res = await outcome(server.trigger(name, 'e', { n: 1 }));
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, {});
    assert.deepEqual(await got, { n: 1 });
  });

  test('trigger to several channels delivers on each, once per channel', async () => {
    const names = [unique('multi-a-'), unique('multi-b-'), unique('multi-c-')];
    const client = await connect(gw1);
    const channels = [];
    for (const name of names) channels.push(await subscribe(client, name));
    const both = await subscribe(await connect(gw2), names[0]);
    const got = channels.map((c) => nextEvent(c, 'fan'));
    const bothGot = collect(both, 'fan');
    assert.equal((await server.trigger(names, 'fan', { x: 1 })).status, 200);
    for (const data of await Promise.all(got)) assert.deepEqual(data, { x: 1 });
    await eventually(() => bothGot.length === 1, 'the event on gateway 2');
  });

  test('trigger accepts 100 channels and refuses 101 with 400', async () => {
    const hundred = Array.from({ length: 100 }, (_, i) => unique(`c${i}-`));
    const listener = await subscribe(await connect(gw2), hundred[99]);
    const got = nextEvent(listener, 'wide');
    assert.equal((await server.trigger(hundred, 'wide', {})).status, 200);
    await got;

    const tooMany = [...hundred, unique('c100-')];
    // The SDK refuses client-side, like with Pusher...
    assert.throws(() => server.trigger(tooMany, 'wide', {}), /100 channels/);
    // ...and the server refuses what gets past it.
    const res = await outcome(server.post({ path: '/events', body: { name: 'wide', data: '{}', channels: tooMany } }));
    assert.equal(res.status, 400, JSON.stringify(res.body));
  });

  test('trigger with socket_id excludes that connection, on either gateway', async () => {
    const name = unique('exclude-');
    const excluded = await connect(gw2);
    const excludedChannel = await subscribe(excluded, name);
    const sameGateway = await subscribe(await connect(gw2), name);
    const otherGateway = await subscribe(await connect(gw1), name);
    const excludedGot = collect(excludedChannel, 'e');
    const got = [nextEvent(sameGateway, 'e'), nextEvent(otherGateway, 'e')];
    const res = await server.trigger(name, 'e', { n: 1 }, { socket_id: excluded.connection.socket_id });
    assert.equal(res.status, 200);
    for (const data of await Promise.all(got)) assert.deepEqual(data, { n: 1 });
    // A later event without exclusion reaches it: nothing was lost, only skipped.
    const next = nextEvent(excludedChannel, 'e2');
    await server.trigger(name, 'e2', { n: 2 });
    await next;
    assert.deepEqual(excludedGot, []);
  });

  test('an invalid socket_id is refused with 400', async () => {
    const res = await outcome(
      server.post({ path: '/events', body: { name: 'e', data: '{}', channels: ['c'], socket_id: 'nope' } }),
    );
    assert.equal(res.status, 400);
  });

  test('trigger with info=subscription_count answers the counts across both gateways', async () => {
    const [busy, empty] = [unique('counted-'), unique('empty-')];
    await subscribe(await connect(gw1), busy);
    await subscribe(await connect(gw2), busy);
    const res = await outcome(server.trigger([busy, empty], 'e', {}, { info: 'subscription_count' }));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, {
      channels: { [busy]: { subscription_count: 2 }, [empty]: { subscription_count: 0 } },
    });
  });

  test('triggerBatch delivers up to 10 events and refuses 11 with 400', async () => {
    const names = Array.from({ length: 10 }, (_, i) => unique(`batch${i}-`));
    const client = await connect(gw2);
    const channels = [];
    for (const name of names) channels.push(await subscribe(client, name));
    const got = channels.map((c, i) => nextEvent(c, `b${i}`, `batch event ${i}`));
    const batch = names.map((channel, i) => ({ channel, name: `b${i}`, data: { i } }));
    const res = await outcome(server.triggerBatch(batch));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const data = await Promise.all(got);
    assert.deepEqual(
      data.map((d) => d.i),
      [...Array(10).keys()],
    );

    const eleven = Array.from({ length: 11 }, (_, i) => ({ channel: names[0], name: `x${i}`, data: {} }));
    const refused = await outcome(server.triggerBatch(eleven));
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
  });

  test('triggerBatch with info answers per-event attributes', async () => {
    const name = unique('batch-info-');
    await subscribe(await connect(gw1), name);
    const res = await outcome(
      server.triggerBatch([
        { channel: name, name: 'e', data: {}, info: 'subscription_count' },
        { channel: unique('batch-nobody-'), name: 'e', data: {}, info: 'subscription_count' },
      ]),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, { batch: [{ subscription_count: 1 }, { subscription_count: 0 }] });
  });

  test('data over 10 KB is refused with 413; invalid names and bodies with 400', async () => {
    const big = await outcome(server.trigger(unique('big-'), 'e', 'x'.repeat(10 * 1024 + 1)));
    assert.equal(big.status, 413, JSON.stringify(big.body));
    const exactly = await outcome(server.trigger(unique('big-'), 'e', 'x'.repeat(10 * 1024)));
    assert.equal(exactly.status, 200, '10 KB exactly is fine');
    for (const body of [
      { name: 'e', data: '{}', channels: ['bad channel'] },
      { name: 'e', data: '{}', channels: [] },
      { name: 'e', data: '{}' },
      { data: '{}', channels: ['c'] },
      { name: 'e', channels: ['c'] },
      { name: 'x'.repeat(201), data: '{}', channels: ['c'] },
    ]) {
      const res = await outcome(server.post({ path: '/events', body }));
      assert.equal(res.status, 400, `${JSON.stringify(body).slice(0, 80)} → ${JSON.stringify(res.body)}`);
      assert.equal(typeof res.body.error?.message, 'string', JSON.stringify(res.body));
    }
  });

  test('a wrong secret or key is refused with 401, and an unknown app id answers the same (no oracle for app ids)', async () => {
    const wrongSecret = await outcome(sdk(gw1, { secret: 'not-the-secret' }).trigger('c', 'e', {}));
    assert.equal(wrongSecret.status, 401);
    const wrongKey = await outcome(sdk(gw2, { key: 'not-the-key' }).trigger('c', 'e', {}));
    assert.equal(wrongKey.status, 401);
    const get = await outcome(sdk(gw1, { secret: 'not-the-secret' }).get({ path: '/channels' }));
    assert.equal(get.status, 401);
    const unknownApp = await outcome(sdk(gw1, { appId: 'no-such-app' }).trigger('c', 'e', {}));
    assert.equal(unknownApp.status, 401);
    assert.deepEqual(unknownApp.body, wrongKey.body);
  });

  test('events triggered with the SDK carry Herald’s seq (ignored by pusher-js)', async () => {
    const name = unique('seq-');
    const raw = await openRaw(gw1);
    await raw.subscribe(name);
    await server.trigger(name, 'a', {});
    await server.trigger(name, 'b', {});
    const a = await raw.event('a', name);
    const b = await raw.event('b', name);
    assert.equal(b.seq, a.seq + 1, 'gap-free per-channel sequence');
  });
});

describe('HTTP API: channel queries', () => {
  let gw1, gw2, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  test('GET /channels with filter_by_prefix and info=subscription_count counts across gateways', async () => {
    const prefix = unique('room') + '-';
    const [one, two] = [`${prefix}1`, `${prefix}2`];
    await subscribe(await connect(gw1), one);
    await subscribe(await connect(gw2), one);
    await subscribe(await connect(gw2), two);
    await subscribe(await connect(gw1), unique('elsewhere-'));
    const res = await outcome(
      server.get({ path: '/channels', params: { filter_by_prefix: prefix, info: 'subscription_count' } }),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, {
      channels: { [one]: { subscription_count: 2 }, [two]: { subscription_count: 1 } },
    });
    // Without info: the occupied channels, attributes empty.
    const plain = await outcome(sdk(gw2).get({ path: '/channels', params: { filter_by_prefix: prefix } }));
    assert.deepEqual(plain.body, { channels: { [one]: {}, [two]: {} } });
  });

  test('GET /channels/{name} with info=subscription_count: one client on each gateway → 2', async () => {
    const name = unique('shown-');
    const a = await connect(gw1);
    await subscribe(a, name);
    await subscribe(await connect(gw2), name);
    for (const gateway of [gw1, gw2]) {
      const res = await outcome(sdk(gateway).get({ path: `/channels/${name}`, params: { info: 'subscription_count' } }));
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(res.body, { occupied: true, subscription_count: 2 });
    }
    // One leaves: the count drops.
    a.disconnect();
    await eventually(async () => {
      const res = await outcome(server.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } }));
      return res.body.subscription_count === 1;
    }, 'the count to drop to 1');
  });

  test('channel names with every character Pusher allows work in paths and filters', async () => {
    const prefix = `${unique('odd')}_=@,.;`;
    const name = `${prefix}-x`;
    await subscribe(await connect(gw2), name);
    const one = await outcome(server.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } }));
    assert.deepEqual(one.body, { occupied: true, subscription_count: 1 });
    const list = await outcome(server.get({ path: '/channels', params: { filter_by_prefix: prefix } }));
    assert.deepEqual(list.body, { channels: { [name]: {} } });
  });

  test('an unoccupied channel is {occupied: false}', async () => {
    const res = await outcome(server.get({ path: `/channels/${unique('nobody-')}` }));
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { occupied: false });
  });

  test('a private channel is counted too, and a channel left by everyone disappears from the list', async () => {
    const prefix = unique('private-q') + '-';
    const name = `${prefix}x`;
    const client = await connect(gw2, {
      channelAuthorization: {
        customHandler: (p, cb) => cb(null, server.authorizeChannel(p.socketId, p.channelName)),
      },
    });
    await subscribe(client, name);
    const res = await outcome(server.get({ path: '/channels', params: { filter_by_prefix: prefix, info: 'subscription_count' } }));
    assert.deepEqual(res.body, { channels: { [name]: { subscription_count: 1 } } });
    client.unsubscribe(name);
    await eventually(async () => {
      const after = await outcome(server.get({ path: '/channels', params: { filter_by_prefix: prefix } }));
      return JSON.stringify(after.body) === JSON.stringify({ channels: {} });
    }, 'the channel to leave the list');
  });

  test('bad queries are refused with 400', async () => {
    for (const [path, params] of [
      ['/channels', { info: 'user_count' }], // user_count needs filter_by_prefix=presence-
      ['/channels', { info: 'bogus' }],
      ['/channels/some-channel', { info: 'user_count' }], // not a presence channel
      ['/channels/some-channel/users', {}], // not a presence channel
      ['/channels/bad%20name', {}],
    ]) {
      const res = await outcome(server.get({ path, params }));
      assert.equal(res.status, 400, `${path} ${JSON.stringify(params)} → ${res.status} ${JSON.stringify(res.body)}`);
    }
  });
});
