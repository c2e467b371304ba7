// Pusher compatibility: user authentication (`pusher.signin()` with a
// userAuthentication customHandler signing with the SDK's authenticateUser),
// events sent to users (`sendToUser`) on every gateway, and
// `terminateUserConnections`.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeAll,
  collect,
  connect,
  connectionState,
  dataOf,
  eventually,
  nextEvent,
  openRaw,
  outcome,
  pong,
  ports,
  sdk,
  signedIn,
  unique,
  userAuthenticator,
} from './helpers.mjs';

/** Sign a raw socket in as `user` with the SDK; resolve with the success frame. */
async function rawSignIn(raw, server, user) {
  const { auth, user_data } = server.authenticateUser(raw.socketId, user);
  raw.send('pusher:signin', { auth, user_data });
  const frame = await raw.event('pusher:signin_success');
  assert.equal(dataOf(frame).user_data, user_data);
  return frame;
}

describe('user authentication and events to users', () => {
  let gw1, gw2, server;
  before(() => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
  });
  afterEach(closeAll);
  after(closeAll);

  test('pusher.signin() with an SDK-signed user succeeds and keeps user_data', async () => {
    const user = { id: unique('alice-'), user_info: { name: 'Alice' }, watchlist: [] };
    const client = await signedIn(gw1, server, user);
    assert.deepEqual(client.user.user_data, user);
    assert.equal(client.connection.state, 'connected');
  });

  test('sendToUser reaches every connection of the user on both gateways, and no one else', async () => {
    const id = unique('alice-');
    const phone = await signedIn(gw1, server, { id, user_info: { device: 'phone' } });
    const laptop = await signedIn(gw2, server, { id, user_info: { device: 'laptop' } });
    const bob = await signedIn(gw2, server, { id: unique('bob-') });
    const notSignedIn = await connect(gw1);
    const bobGot = collect(bob.user, 'note');
    const anonGot = [];
    notSignedIn.bind_global((event, data) => anonGot.push({ event, data }));

    const onPhone = nextEvent(phone.user, 'note', 'the user event on gateway 1');
    const onLaptop = nextEvent(laptop.user, 'note', 'the user event on gateway 2');
    const res = await server.sendToUser(id, 'note', { text: 'for alice only' });
    assert.equal(res.status, 200);
    assert.deepEqual(await onPhone, { text: 'for alice only' });
    assert.deepEqual(await onLaptop, { text: 'for alice only' });
    // Markers: each gateway has delivered the event to Alice's device there;
    // pongs to Bob (gateway 2) and the anonymous client (gateway 1) come
    // behind anything queued for them.
    await pong(bob);
    await pong(notSignedIn);
    assert.deepEqual(bobGot, []);
    assert.deepEqual(anonGot.filter((e) => !e.event.startsWith('pusher:')), [], 'no event reached a client not signed in');
  });

  test('sendToUser through the other gateway and to a user with no connection both answer 200', async () => {
    const id = unique('carol-');
    const client = await signedIn(gw1, server, { id });
    const got = nextEvent(client.user, 'hello');
    const res = await sdk(gw2).sendToUser(id, 'hello', 'plain string');
    assert.equal(res.status, 200);
    assert.equal(await got, 'plain string');
    assert.equal((await sdk(gw2).sendToUser(unique('nobody-'), 'hello', {})).status, 200);
  });

  test('the user event frame is on #server-to-user-<id>, data a JSON string (raw)', async () => {
    const id = unique('dave-');
    const raw = await openRaw(gw2);
    await rawSignIn(raw, server, { id });
    await raw.subscribe(`#server-to-user-${id}`);
    await server.sendToUser(id, 'memo', { n: 1 });
    const frame = await raw.event('memo');
    assert.equal(frame.channel, `#server-to-user-${id}`);
    assert.equal(typeof frame.data, 'string');
    assert.deepEqual(JSON.parse(frame.data), { n: 1 });
  });

  test('terminateUserConnections closes every connection of the user on both gateways (4009), not others', async () => {
    const id = unique('erin-');
    const a1 = await signedIn(gw1, server, { id });
    const a2 = await signedIn(gw2, server, { id });
    const raw = await openRaw(gw2);
    await rawSignIn(raw, server, { id });
    const otherId = unique('frank-');
    const other = await signedIn(gw1, server, { id: otherId });
    const otherSocket = other.connection.socket_id;
    const errors = [];
    a1.connection.bind('error', (err) => errors.push(err));

    const res = await outcome(server.terminateUserConnections(id));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.connections, 3, JSON.stringify(res.body));

    // Raw: a pusher:error 4009 then the close code 4009.
    const { code } = await raw.closed('the raw connection to be terminated');
    assert.equal(code, 4009);
    assert.equal(dataOf(raw.all('pusher:error')[0]).code, 4009);
    // pusher-js: 4009 means "do not reconnect unchanged", so it ends disconnected.
    await connectionState(a1, 'disconnected', 'pusher-js on gateway 1 to be disconnected');
    await connectionState(a2, 'disconnected', 'pusher-js on gateway 2 to be disconnected');
    assert.ok(
      errors.some((e) => e?.error?.data?.code === 4009 || e?.data?.code === 4009),
      `pusher-js reported 4009: ${JSON.stringify(errors)}`,
    );
    // The other user is untouched: the terminate was acted on before the API
    // answered; an event to them afterwards arrives on the same socket.
    const got = nextEvent(other.user, 'still');
    await server.sendToUser(otherId, 'still', { here: true });
    assert.deepEqual(await got, { here: true });
    assert.equal(other.connection.state, 'connected');
    assert.equal(other.connection.socket_id, otherSocket, 'not reconnected');
  });

  test('terminateUserConnections for a user with no connection answers 0 connections', async () => {
    const res = await outcome(server.terminateUserConnections(unique('ghost-')));
    assert.equal(res.status, 200);
    assert.equal(res.body.connections, 0);
  });

  test('a sign-in signed with the wrong secret is refused with 4009 and the socket closed', async () => {
    const wrong = sdk(gw1, { secret: 'not-the-secret' });
    const raw = await openRaw(gw1);
    const { auth, user_data } = wrong.authenticateUser(raw.socketId, { id: 'mallory' });
    raw.send('pusher:signin', { auth, user_data });
    const error = await raw.event('pusher:error');
    assert.equal(dataOf(error).code, 4009);
    assert.equal((await raw.closed()).code, 4009);

    // pusher-js: the connection is closed with 4009 and not reconnected.
    const client = await connect(gw2, {
      userAuthentication: { customHandler: userAuthenticator(wrong, { id: 'mallory' }) },
    });
    client.signin();
    await connectionState(client, 'disconnected', 'pusher-js to be disconnected after a refused sign-in');
  });

  test('a sign-in for another socket id, or with user_data edited after signing, is refused', async () => {
    const other = await openRaw(gw1);
    const raw = await openRaw(gw1);
    const forOther = server.authenticateUser(other.socketId, { id: 'mallory' });
    raw.send('pusher:signin', forOther);
    assert.equal(dataOf(await raw.event('pusher:error')).code, 4009);

    const raw2 = await openRaw(gw2);
    const signed = server.authenticateUser(raw2.socketId, { id: 'mallory' });
    raw2.send('pusher:signin', { auth: signed.auth, user_data: JSON.stringify({ id: 'admin' }) });
    assert.equal(dataOf(await raw2.event('pusher:error')).code, 4009);
  });

  test('#server-to-user-<id> cannot be subscribed without signing in as that user', async () => {
    const raw = await openRaw(gw1);
    raw.send('pusher:subscribe', { channel: '#server-to-user-someone' });
    const error = await raw.event('pusher:subscription_error');
    assert.equal(error.channel, '#server-to-user-someone');
    assert.equal(dataOf(error).type, 'AuthError');

    await rawSignIn(raw, server, { id: unique('me-') });
    raw.send('pusher:subscribe', { channel: '#server-to-user-someone-else' });
    await raw.next(
      (f) => f.event === 'pusher:subscription_error' && f.channel === '#server-to-user-someone-else',
      'a subscription_error for somebody else’s user channel',
    );
  });

  test('the SDK with a wrong secret cannot send to users or terminate them (401)', async () => {
    const wrong = sdk(gw1, { secret: 'not-the-secret' });
    assert.equal((await outcome(wrong.sendToUser('anyone', 'e', {}))).status, 401);
    assert.equal((await outcome(wrong.terminateUserConnections('anyone'))).status, 401);
  });

  test('a second sign-in on the same connection is refused without closing it', async () => {
    const raw = await openRaw(gw2);
    await rawSignIn(raw, server, { id: unique('twice-') });
    const again = server.authenticateUser(raw.socketId, { id: unique('other-') });
    raw.send('pusher:signin', again);
    const error = await raw.event('pusher:error');
    assert.ok(dataOf(error).message);
    raw.send('pusher:ping', {});
    await raw.event('pusher:pong');
    await eventually(() => raw.ws.readyState === raw.ws.OPEN, 'the socket to stay open');
  });
});
