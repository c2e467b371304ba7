// Herald's extensions of the Pusher HTTP API, used from the pusher Node SDK
// (its signed `post` helper; DELETE signed the same way) with pusher-js
// clients:
//
// * server-side subscriptions: POST / DELETE /apps/{id}/users/{user}/subscriptions
//   with {"channels": [...]} subscribes / unsubscribes every connection the
//   user has signed in on, on every gateway; answered {"connections": n};
//   clients get pusher_internal:subscription_succeeded / herald:unsubscribed;
// * de-duplicated fan-out: "deduplicate": true in an events body delivers a
//   multi-channel event once to a connection subscribed to several of them.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeAll,
  collectFrames,
  connect,
  dataOf,
  eventually,
  frameIn,
  openRaw,
  outcome,
  pong,
  ports,
  sdk,
  signedIn,
  signedRequest,
  subscribe,
  unique,
  withTimeout,
} from './helpers.mjs';

const framesOf = (frames, event, channel) =>
  frames.filter((f) => f.event === event && (channel === undefined || f.channel === channel));

describe('Herald extension: server-side subscriptions', () => {
  let gw1, gw2, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  test('POST subscribes every signed-in connection of the user, on both gateways', async () => {
    const user = unique('alice-');
    const [news, team] = [unique('news-'), unique('private-team-')];
    const phone = await signedIn(gw1, server, { id: user });
    const laptop = await signedIn(gw2, server, { id: user });
    const bob = await signedIn(gw2, server, { id: unique('bob-') });
    const phoneFrames = collectFrames(phone);
    const laptopFrames = collectFrames(laptop);
    const bobFrames = collectFrames(bob);

    const res = await outcome(server.post({ path: `/users/${user}/subscriptions`, body: { channels: [news, team] } }));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, { connections: 2 });

    for (const [frames, who] of [
      [phoneFrames, 'phone'],
      [laptopFrames, 'laptop'],
    ]) {
      for (const channel of [news, team]) {
        await frameIn(
          frames,
          (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === channel,
          `subscription_succeeded for ${channel} on the ${who}`,
        );
      }
    }

    // Events on those channels reach both devices: pusher-js hands them to
    // bind_global (and to connection 'message' with the channel name).
    const phoneGlobal = [];
    phone.bind_global((event, data) => phoneGlobal.push({ event, data }));
    await server.trigger(team, 'memo', { text: 'team only' });
    for (const [frames, who] of [
      [phoneFrames, 'phone'],
      [laptopFrames, 'laptop'],
    ]) {
      const frame = await frameIn(frames, (f) => f.event === 'memo' && f.channel === team, `memo on the ${who}`);
      assert.deepEqual(frame.data, { text: 'team only' });
    }
    await eventually(() => phoneGlobal.some((e) => e.event === 'memo'), 'memo through bind_global');
    // Marker: the laptop, on Bob's gateway, has the memo; Bob's pong after
    // that comes behind anything the gateway had queued for him.
    await pong(bob);
    assert.deepEqual(framesOf(bobFrames, 'memo'), [], 'another user is not subscribed');
    assert.deepEqual(framesOf(bobFrames, 'pusher_internal:subscription_succeeded', team), []);

    // Occupancy counts the server-made subscriptions.
    const count = await outcome(server.get({ path: `/channels/${team}`, params: { info: 'subscription_count' } }));
    assert.deepEqual(count.body, { occupied: true, subscription_count: 2 });
  });

  test('a channel object made by the app before the POST gets pusher:subscription_succeeded and events', async () => {
    const user = unique('carol-');
    const name = unique('feed-');
    const client = await signedIn(gw2, server, { id: user });
    // pusher-js routes frames to a channel object it knows; `channels.add`
    // makes one without sending a subscribe.
    const channel = client.channels.add(name, client);
    const succeeded = new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
    const event = new Promise((resolve) => channel.bind('item', resolve));
    await outcome(server.post({ path: `/users/${user}/subscriptions`, body: { channels: [name] } }));
    await eventually(() => channel.subscribed, 'pusher-js to mark the channel subscribed');
    await withTimeout(succeeded, 'pusher:subscription_succeeded on the channel object');
    await server.trigger(name, 'item', { n: 1 });
    assert.deepEqual(await withTimeout(event, 'the event on the channel object'), { n: 1 });
  });

  test('DELETE unsubscribes them (herald:unsubscribed) and later events no longer arrive', async () => {
    const user = unique('dave-');
    const [gone, kept] = [unique('gone-'), unique('kept-')];
    const a = await signedIn(gw1, server, { id: user });
    const b = await signedIn(gw2, server, { id: user });
    const aFrames = collectFrames(a);
    const bFrames = collectFrames(b);
    await outcome(server.post({ path: `/users/${user}/subscriptions`, body: { channels: [gone, kept] } }));
    for (const frames of [aFrames, bFrames]) {
      await frameIn(
        frames,
        (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === kept,
        'the subscriptions',
      );
    }

    const observers = [await openRaw(gw1), await openRaw(gw2)];
    for (const observer of observers) await observer.subscribe(gone);
    const res = await signedRequest(gw2, 'DELETE', `/users/${user}/subscriptions`, { channels: [gone] });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, { connections: 2 });
    for (const frames of [aFrames, bFrames]) {
      const frame = await frameIn(frames, (f) => f.event === 'herald:unsubscribed' && f.channel === gone, 'herald:unsubscribed');
      assert.deepEqual(dataOf(frame), {});
    }
    await server.trigger(gone, 'after', { n: 1 });
    await server.trigger(kept, 'after', { n: 2 });
    for (const frames of [aFrames, bFrames]) {
      await frameIn(frames, (f) => f.event === 'after' && f.channel === kept, 'the event on the kept channel');
    }
    // Marker: observers still on `gone` on both gateways got the event, so
    // each gateway has fanned it out; the clients' pongs come after.
    for (const observer of observers) await observer.event('after', gone);
    await pong(a);
    await pong(b);
    assert.deepEqual(framesOf(aFrames, 'after', gone), []);
    assert.deepEqual(framesOf(bFrames, 'after', gone), []);
  });

  test('a user with no connection: {connections: 0}; a client subscribe still works alongside', async () => {
    const res = await outcome(
      server.post({ path: `/users/${unique('ghost-')}/subscriptions`, body: { channels: ['anything'] } }),
    );
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { connections: 0 });

    // A connection subscribed by itself and by the server gets the event once.
    const user = unique('erin-');
    const name = unique('both-ways-');
    const client = await signedIn(gw1, server, { id: user });
    await subscribe(client, name);
    const frames = collectFrames(client);
    await outcome(server.post({ path: `/users/${user}/subscriptions`, body: { channels: [name] } }));
    await frameIn(frames, (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === name, 'success');
    await server.trigger(name, 'once', {});
    await frameIn(frames, (f) => f.event === 'once', 'the event');
    // Marker: a later event on the same channel; a second copy would be first.
    await server.trigger(name, 'marker', {});
    await frameIn(frames, (f) => f.event === 'marker', 'the marker event');
    assert.equal(framesOf(frames, 'once').length, 1);
  });

  test('bad requests are refused: 400 for bodies and channel names, 401 for a bad signature', async () => {
    const path = `/users/${unique('x-')}/subscriptions`;
    for (const body of [{ channels: [] }, { channels: ['bad name'] }, { nope: 1 }, { channels: 'not-a-list' }]) {
      const res = await outcome(server.post({ path, body }));
      assert.equal(res.status, 400, `${JSON.stringify(body)} → ${JSON.stringify(res.body)}`);
    }
    const tooMany = Array.from({ length: 101 }, (_, i) => `c${i}`);
    assert.equal((await outcome(server.post({ path, body: { channels: tooMany } }))).status, 400);
    const wrong = await outcome(sdk(gw1, { secret: 'not-the-secret' }).post({ path, body: { channels: ['c'] } }));
    assert.equal(wrong.status, 401);
    const wrongDelete = await signedRequest(gw1, 'DELETE', path, { channels: ['c'] }, 'not-the-secret');
    assert.equal(wrongDelete.status, 401);
  });
});

describe('Herald extension: de-duplicated fan-out', () => {
  let gw1, gw2, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  test('"deduplicate": true delivers a multi-channel event once to a client on both channels', async () => {
    const [a, b] = [unique('dedupe-a-'), unique('dedupe-b-')];
    const both1 = await connect(gw1);
    const both2 = await connect(gw2);
    const onlyB = await connect(gw2);
    for (const client of [both1, both2]) {
      await subscribe(client, a);
      await subscribe(client, b);
    }
    await subscribe(onlyB, b);
    const counts = new Map();
    for (const [name, client] of [
      ['both1', both1],
      ['both2', both2],
      ['onlyB', onlyB],
    ]) {
      counts.set(name, []);
      client.bind_global((event, data) => counts.get(name).push({ event, data }));
    }

    const res = await outcome(
      server.post({ path: '/events', body: { name: 'once', channels: [a, b], data: '{"n":1}', deduplicate: true } }),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    await eventually(
      () => [...counts.values()].every((got) => got.some((e) => e.event === 'once')),
      'the event on every client',
    );
    // Marker: a plain event on both channels after it; a second copy through
    // either channel would arrive before that channel's marker.
    await server.trigger([a, b], 'marker1', {});
    const subscribedTo = { both1: 2, both2: 2, onlyB: 1 };
    await eventually(
      () => [...counts].every(([name, got]) => got.filter((e) => e.event === 'marker1').length === subscribedTo[name]),
      'the marker on every channel of every client',
    );
    for (const [name, got] of counts) {
      assert.deepEqual(
        got.filter((e) => e.event === 'once').map((e) => e.data),
        [{ n: 1 }],
        `${name} got it exactly once`,
      );
    }

    // Without the flag, Pusher's semantics: once per channel.
    await server.trigger([a, b], 'twice', { n: 2 });
    await eventually(
      () => counts.get('both1').filter((e) => e.event === 'twice').length === 2,
      'the plain multi-channel event twice',
    );
    await eventually(() => counts.get('both2').filter((e) => e.event === 'twice').length === 2, 'twice on gateway 2');
    await server.trigger(b, 'marker2', {});
    await eventually(() => counts.get('onlyB').some((e) => e.event === 'marker2'), 'the marker on b');
    assert.equal(counts.get('onlyB').filter((e) => e.event === 'twice').length, 1);
  });
});
