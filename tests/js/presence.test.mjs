// Pusher compatibility: presence channels across two gateways, through the
// presence service. pusher-js clients authorized with a customHandler signing
// `{user_id, user_info}` with the SDK's authorizeChannel; member lists,
// member_added / member_removed (first device in, last device out), and the
// HTTP API's users and user_count.

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
  frameIn,
  nextEvent,
  openRaw,
  outcome,
  ports,
  sdk,
  signedIn,
  subscribe,
  subscription,
  unique,
  withTimeout,
} from './helpers.mjs';

/** The members of a pusher-js presence channel, as {id: info}. */
function membersOf(channel) {
  const members = {};
  channel.members.each((member) => {
    members[member.id] = member.info;
  });
  return members;
}

/**
 * The member events a pusher-js client receives on `room`, in arrival order,
 * as frames (pusher-js itself drops a member_removed for a member it no
 * longer has, which would hide a duplicate).
 */
function memberLog(client, room) {
  const log = [];
  client.connection.bind('message', (frame) => {
    if (frame.channel !== room) return;
    if (frame.event === 'pusher_internal:member_added') {
      log.push({ op: 'added', id: frame.data.user_id, info: frame.data.user_info });
    } else if (frame.event === 'pusher_internal:member_removed') {
      log.push({ op: 'removed', id: frame.data.user_id });
    }
  });
  return log;
}

const opId = (e) => `${e.op} ${e.id}`;

describe('presence channels', () => {
  let gw1, gw2, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  /** A pusher-js client on `gateway` that joins presence channels as `user`. */
  function member(gateway, user) {
    return connect(gateway, {
      channelAuthorization: {
        customHandler: channelAuthorizer(server, () => ({ user_id: user.id, user_info: user.info })),
      },
    });
  }

  /**
   * A marker for absence checks on a presence channel: a new member joins on
   * `gateway` and its member_added reaches the observer's `log`. Presence
   * facts are folded in the order the gateways wrote them, so an unwanted
   * member event caused by anything done before this join has arrived by then.
   */
  async function markerMember(gateway, room, log) {
    const id = unique('marker-');
    const client = await member(gateway, { id, info: {} });
    await subscribe(client, room);
    await eventually(() => log.some((e) => e.op === 'added' && e.id === id), `member_added for the marker ${id}`);
    return { id, client };
  }

  /** The marker leaves; resolves once its member_removed is in `log`. */
  async function leaveMarker(marker, log) {
    marker.client.disconnect();
    await eventually(
      () => log.some((e) => e.op === 'removed' && e.id === marker.id),
      `member_removed for the marker ${marker.id}`,
    );
  }

  test('members, member_added and member_removed across gateways; a second device is invisible to others', async () => {
    const room = unique('presence-room-');
    const alice = { id: unique('alice-'), info: { name: 'Alice' } };
    const bob = { id: unique('bob-'), info: { name: 'Bob', emoji: '✓' } };

    // Alice joins first, on gateway 1: she is alone. She observes everything
    // after, as one log of member events in the order they arrived.
    const aliceClient = await member(gw1, alice);
    const aliceSocket = aliceClient.connection.socket_id;
    const aliceResult = await subscription(aliceClient, room);
    assert.ok(aliceResult.ok, JSON.stringify(aliceResult.status));
    const aliceChannel = aliceResult.channel;
    assert.equal(aliceResult.data.count, 1, 'subscription_succeeded: members.count');
    assert.equal(aliceChannel.members.count, 1);
    assert.equal(aliceChannel.members.me.id, alice.id);
    assert.deepEqual(aliceChannel.members.me.info, alice.info);
    const log = memberLog(aliceClient, room);
    const aliceStillThere = () => {
      assert.equal(aliceClient.connection.state, 'connected', 'the observer is still connected');
      assert.equal(aliceClient.connection.socket_id, aliceSocket, 'on the same socket (no reconnect)');
    };

    // Bob joins on gateway 2: he sees both; Alice sees him arrive.
    const bobClient = await member(gw2, bob);
    const bobChannel = await subscribe(bobClient, room);
    assert.equal(bobChannel.members.count, 2);
    assert.deepEqual(membersOf(bobChannel), { [alice.id]: alice.info, [bob.id]: bob.info });
    await eventually(() => log.length === 1, 'member_added for Bob on Alice’s side');
    assert.deepEqual(log[0], { op: 'added', id: bob.id, info: bob.info });
    assert.equal(aliceChannel.members.count, 2);

    // Bob's second device, on gateway 1: same member, no member_added. The
    // marker joins (and leaves) after the phone's subscription succeeded, so
    // a member_added for the phone would have reached Alice before it.
    const bobPhone = await member(gw1, bob);
    const bobPhoneChannel = await subscribe(bobPhone, room);
    assert.equal(bobPhoneChannel.members.count, 2);
    assert.deepEqual(membersOf(bobPhoneChannel), { [alice.id]: alice.info, [bob.id]: bob.info });
    const marker1 = await markerMember(gw1, room, log);
    await leaveMarker(marker1, log);
    assert.deepEqual(
      log.map(opId),
      [`added ${bob.id}`, `added ${marker1.id}`, `removed ${marker1.id}`],
      'a second connection of a member is not a new member',
    );
    aliceStillThere();

    // The HTTP API sees two users (three subscriptions).
    const users = await outcome(server.get({ path: `/channels/${room}/users` }));
    assert.equal(users.status, 200, JSON.stringify(users.body));
    assert.deepEqual(
      users.body.users.map((u) => u.id).sort(),
      [alice.id, bob.id].sort(),
    );
    const info = await outcome(
      sdk(gw2).get({ path: `/channels/${room}`, params: { info: 'user_count,subscription_count' } }),
    );
    assert.deepEqual(info.body, { occupied: true, user_count: 2, subscription_count: 3 });
    const published = await outcome(server.trigger(room, 'hello', {}, { info: 'user_count,subscription_count' }));
    assert.deepEqual(published.body, { channels: { [room]: { user_count: 2, subscription_count: 3 } } });

    // The second device leaves: Bob is still there. Once gateway 1 no longer
    // counts the phone's subscription it has handled the close (and sent the
    // phone's presence delete); a marker member joining on that gateway after
    // is ordered behind it, so a member_removed for Bob would arrive first.
    bobPhone.disconnect();
    await eventually(async () => {
      const res = await outcome(server.get({ path: `/channels/${room}`, params: { info: 'subscription_count' } }));
      return res.body.subscription_count === 2;
    }, 'gateway 1 to drop the phone’s subscription');
    const marker2 = await markerMember(gw1, room, log);
    assert.deepEqual(
      log.slice(3).map(opId),
      [`added ${marker2.id}`],
      'closing one of two connections is not a leave',
    );
    aliceStillThere();
    assert.deepEqual(membersOf(aliceChannel), { [alice.id]: alice.info, [bob.id]: bob.info, [marker2.id]: {} });

    // Bob's last device leaves: member_removed, exactly once (checked against
    // the marker leaving after it).
    bobClient.disconnect();
    await eventually(() => log.length === 5, 'member_removed for Bob');
    assert.deepEqual(log[4], { op: 'removed', id: bob.id });
    await leaveMarker(marker2, log);
    assert.deepEqual(
      log.slice(3).map(opId),
      [`added ${marker2.id}`, `removed ${bob.id}`, `removed ${marker2.id}`],
      'Bob left once, when his last device left',
    );
    aliceStillThere();
    assert.equal(aliceChannel.members.count, 1);
    await eventually(async () => {
      const res = await outcome(server.get({ path: `/channels/${room}/users` }));
      return res.body.users?.length === 1 && res.body.users[0].id === alice.id;
    }, 'the users list to shrink to Alice');
  });

  test('unsubscribing (not disconnecting) also makes the member leave', async () => {
    const room = unique('presence-unsub-');
    const carol = { id: unique('carol-'), info: {} };
    const dave = { id: unique('dave-'), info: { n: 1 } };
    const carolChannel = await subscribe(await member(gw2, carol), room);
    const removed = collect(carolChannel, 'pusher:member_removed');
    const daveClient = await member(gw1, dave);
    await subscribe(daveClient, room);
    await eventually(() => carolChannel.members.count === 2, 'Dave to join');
    daveClient.unsubscribe(room);
    await eventually(() => removed.length === 1, 'member_removed after unsubscribe');
    assert.equal(removed[0].id, dave.id);
  });

  test('GET /channels?filter_by_prefix=presence-…&info=user_count counts users', async () => {
    const prefix = unique('presence-count') + '-';
    const [r1, r2] = [`${prefix}1`, `${prefix}2`];
    const erin = { id: unique('erin-'), info: {} };
    const frank = { id: unique('frank-'), info: {} };
    await subscribe(await member(gw1, erin), r1);
    await subscribe(await member(gw2, frank), r1);
    await subscribe(await member(gw2, erin), r1); // erin's second device
    await subscribe(await member(gw1, frank), r2);
    const res = await outcome(
      server.get({ path: '/channels', params: { filter_by_prefix: prefix, info: 'user_count,subscription_count' } }),
    );
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, {
      channels: {
        [r1]: { user_count: 2, subscription_count: 3 },
        [r2]: { user_count: 1, subscription_count: 1 },
      },
    });
    const onlyUsers = await outcome(
      sdk(gw2).get({ path: '/channels', params: { filter_by_prefix: prefix, info: 'user_count' } }),
    );
    assert.deepEqual(onlyUsers.body, { channels: { [r1]: { user_count: 2 }, [r2]: { user_count: 1 } } });
  });

  test('client events on a presence channel carry the sender’s user_id', async () => {
    const room = unique('presence-chat-');
    const gina = { id: unique('gina-'), info: {} };
    const hank = { id: unique('hank-'), info: {} };
    const ginaChannel = await subscribe(await member(gw1, gina), room);
    const hankChannel = await subscribe(await member(gw2, hank), room);
    const got = withTimeout(
      new Promise((resolve) => hankChannel.bind('client-typing', (data, metadata) => resolve({ data, metadata }))),
      'the client event with metadata',
    );
    ginaChannel.trigger('client-typing', { typing: true });
    const { data, metadata } = await got;
    assert.deepEqual(data, { typing: true });
    assert.equal(metadata?.user_id, gina.id, 'pusher-js hands user_id to the callback');
  });

  test('server-triggered events reach presence members', async () => {
    const room = unique('presence-news-');
    const ivy = { id: unique('ivy-'), info: {} };
    const channel = await subscribe(await member(gw2, ivy), room);
    const got = nextEvent(channel, 'announcement');
    await server.trigger(room, 'announcement', { hello: 'members' });
    assert.deepEqual(await got, { hello: 'members' });
  });

  test('the raw subscription_succeeded carries Pusher’s presence hash {ids, hash, count}', async () => {
    const room = unique('presence-raw-');
    const jack = { id: unique('jack-'), info: { role: 'admin' } };
    await subscribe(await member(gw1, jack), room);
    const raw = await openRaw(gw2);
    const channelData = JSON.stringify({ user_id: 'raw-user', user_info: { raw: true } });
    const { auth } = server.authorizeChannel(raw.socketId, room, JSON.parse(channelData));
    raw.send('pusher:subscribe', { channel: room, auth, channel_data: channelData });
    const frame = await raw.event('pusher_internal:subscription_succeeded', room);
    assert.equal(typeof frame.data, 'string');
    const { presence } = dataOf(frame);
    assert.equal(presence.count, 2);
    assert.deepEqual([...presence.ids].sort(), [jack.id, 'raw-user'].sort());
    assert.deepEqual(presence.hash[jack.id], jack.info);
    assert.deepEqual(presence.hash['raw-user'], { raw: true });
  });

  test('a presence subscription without channel_data or with a bad signature is refused (raw)', async () => {
    const room = unique('presence-bad-');
    const raw = await openRaw(gw1);
    const channelData = JSON.stringify({ user_id: 'u1' });
    const { auth } = server.authorizeChannel(raw.socketId, room, { user_id: 'u1' });
    raw.send('pusher:subscribe', { channel: room, auth });
    const missing = await raw.event('pusher:subscription_error', room);
    assert.equal(dataOf(missing).status, 401);
    // channel_data changed after signing.
    raw.send('pusher:subscribe', { channel: room, auth, channel_data: JSON.stringify({ user_id: 'admin' }) });
    await raw.next(() => raw.all('pusher:subscription_error').length === 2, 'a second subscription_error');
    assert.equal(dataOf(raw.all('pusher:subscription_error')[1]).type, 'AuthError');
    // The right one works.
    await raw.subscribe(room, { auth, channel_data: channelData });
  });

  test('a server-side subscription (Herald extension) joins a signed-in user as a member', async () => {
    const room = unique('presence-server-');
    const kate = { id: unique('kate-'), info: { name: 'Kate' } };
    const liam = { id: unique('liam-'), info: {} };
    const liamChannel = await subscribe(await member(gw2, liam), room);
    const added = collect(liamChannel, 'pusher:member_added');
    const kateClient = await signedIn(gw1, server, { id: kate.id, user_info: kate.info });
    const frames = collectFrames(kateClient);
    const res = await outcome(server.post({ path: `/users/${kate.id}/subscriptions`, body: { channels: [room] } }));
    assert.deepEqual(res.body, { connections: 1 });
    const frame = await frameIn(
      frames,
      (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === room,
      'the server-made presence subscription',
    );
    assert.equal(frame.data.presence.count, 2);
    await eventually(() => added.length === 1, 'member_added for the server-subscribed user');
    assert.equal(added[0].id, kate.id);
    assert.deepEqual(added[0].info, kate.info, 'user_info from the sign-in');
  });
});
