// The auth service with unmodified pusher-js: the app's backend registers a
// user and asks for a session token; pusher-js sends it as a header to the
// auth service's `/pusher/auth` and `/pusher/user-auth` (its standard
// `channelAuthorization` / `userAuthentication` endpoints), which sign the
// Pusher way, so the gateway needs nothing else. A native client puts the
// token on the WebSocket URL instead (`?token=`), and is signed in at once.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  APP,
  basicAuth,
  closeAll,
  connect,
  dataOf,
  openRaw,
  port,
  ports,
  subscription,
  unique,
  withTimeout,
} from './helpers.mjs';

let authPort;
const authUrl = (path) => `http://127.0.0.1:${authPort}${path}`;

/** What the app's backend does: register the user, issue a session token. */
async function sessionToken(userId, name, grants) {
  const put = await fetch(authUrl(`/v1/apps/${APP.id}/users/${encodeURIComponent(userId)}`), {
    method: 'PUT',
    headers: { authorization: basicAuth(), 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  assert.ok(put.ok, `registering ${userId}: ${put.status} ${await put.text()}`);
  const res = await fetch(
    authUrl(`/v1/apps/${APP.id}/users/${encodeURIComponent(userId)}/session-tokens`),
    {
      method: 'POST',
      headers: { authorization: basicAuth(), 'content-type': 'application/json' },
      body: JSON.stringify({ grants }),
    },
  );
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).token;
}

/** pusher-js options pointing both authorizers at the auth service. */
function viaAuthService(token) {
  const headers = { Authorization: `Bearer ${token}` };
  return {
    channelAuthorization: { endpoint: authUrl('/pusher/auth'), transport: 'ajax', headers },
    userAuthentication: { endpoint: authUrl('/pusher/user-auth'), transport: 'ajax', headers },
  };
}

describe('the auth service as pusher-js auth endpoint', () => {
  let gw1;
  before(() => {
    ({ gateway1: gw1 } = ports());
    authPort = port('HERALD_AUTH_PORT');
  });
  afterEach(closeAll);
  after(closeAll);

  test('pusher-js joins a granted private and presence channel with the token as a header', async () => {
    const user = unique('alice-');
    const [priv, room] = [unique('private-js-'), unique('presence-js-')];
    const token = await sessionToken(user, 'Alice', ['private-js-*', 'presence-js-*']);
    const client = await connect(gw1, viaAuthService(token));

    const joined = await subscription(client, priv);
    assert.ok(joined.ok, `private: ${JSON.stringify(joined.status)}`);
    const present = await subscription(client, room);
    assert.ok(present.ok, `presence: ${JSON.stringify(present.status)}`);
    // channel_data came from the auth service: the token's user and profile.
    assert.equal(present.channel.members.me.id, user);
    assert.equal(present.channel.members.me.info.name, 'Alice');
    assert.equal(present.channel.members.count, 1);

    client.signin();
    await withTimeout(client.user.signinDonePromise, 'sign-in through /pusher/user-auth');
    assert.equal(client.user.user_data.id, user);
  });

  test('a channel the token does not grant is refused, and the others still work', async () => {
    const token = await sessionToken(unique('bob-'), 'Bob', ['private-mine-*']);
    const client = await connect(gw1, viaAuthService(token));
    const refused = await subscription(client, unique('private-theirs-'));
    assert.equal(refused.ok, false);
    assert.equal(refused.status.status, 403, JSON.stringify(refused.status));
    const mine = await subscription(client, unique('private-mine-'));
    assert.ok(mine.ok, JSON.stringify(mine.status));
  });

  test('the token of one connection is refused to a second connection', async () => {
    const token = await sessionToken(unique('carol-'), 'Carol', ['private-c-*']);
    const first = await connect(gw1, viaAuthService(token));
    assert.ok((await subscription(first, unique('private-c-'))).ok);
    // The same token from another socket (a replay, or a reconnect that did
    // not fetch a fresh token) is refused by the auth service.
    const second = await connect(gw1, viaAuthService(token));
    const replay = await subscription(second, unique('private-c-'));
    assert.equal(replay.ok, false);
    assert.equal(replay.status.status, 403, JSON.stringify(replay.status));
  });

  test('a session token on the WebSocket URL signs a native client in at once', async () => {
    const user = unique('dave-');
    const token = await sessionToken(user, 'Dave', []);
    const raw = await openRaw(gw1, {
      path: `/app/${APP.key}?protocol=7&token=${encodeURIComponent(token)}`,
    });
    const success = await raw.event('pusher:signin_success');
    assert.equal(JSON.parse(dataOf(success).user_data).id, user);
    // Once used, it opens no second connection.
    const again = await openRaw(gw1, {
      path: `/app/${APP.key}?protocol=7&token=${encodeURIComponent(token)}`,
    });
    const closed = await again.closed();
    assert.equal(closed.code, 4009);
  });
});
