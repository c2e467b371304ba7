// Webhooks and watchlists with the official libraries: the `pusher` Node
// SDK's `webhook(...)` validates Herald's webhooks (`isValid()`,
// `getEvents()`), and pusher-js's `user.watchlist` hears `online` and
// `offline` for a user on the other gateway.
//
// scripts/test configures the development app's webhook for channels
// starting with `webhook-` to http://127.0.0.1:$HERALD_WEBHOOK_PORT/webhooks;
// this file runs the receiver.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  HOST,
  closeAll,
  connect,
  eventually,
  port,
  ports,
  sdk,
  subscribe,
  unique,
  userAuthenticator,
  withTimeout,
} from './helpers.mjs';

describe('webhooks and watchlists', () => {
  let gw1, gw2, server, receiver;
  /** Every request the receiver got: `{headers, rawBody}`. */
  const requests = [];

  before(async () => {
    ({ gateway1: gw1, gateway2: gw2 } = ports());
    server = sdk(gw1);
    receiver = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        requests.push({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
        res.writeHead(200).end();
      });
    });
    await new Promise((resolve) => receiver.listen(port('HERALD_WEBHOOK_PORT'), HOST, resolve));
  });
  afterEach(closeAll);
  after(async () => {
    closeAll();
    await new Promise((resolve) => receiver.close(resolve));
  });

  /** Every event of every valid webhook so far (invalid ones fail the test). */
  function events() {
    return requests.flatMap((request) => {
      const webhook = server.webhook(request);
      assert.ok(webhook.isValid(), `a webhook failed the SDK's validation: ${request.rawBody}`);
      return webhook.getEvents();
    });
  }

  test("the pusher SDK validates Herald's webhooks and reads their events", async () => {
    const channel = unique('webhook-js-');
    const a = await connect(gw1);
    const b = await connect(gw2);
    await subscribe(a, channel);
    await subscribe(b, channel);
    await eventually(
      () => events().some((e) => e.name === 'channel_occupied' && e.channel === channel),
      'channel_occupied',
    );
    a.unsubscribe(channel);
    b.unsubscribe(channel);
    await eventually(
      () => events().some((e) => e.name === 'channel_vacated' && e.channel === channel),
      'channel_vacated',
    );
    const mine = events().filter((e) => e.channel === channel);
    // At least once: count by id.
    const ids = (name) => new Set(mine.filter((e) => e.name === name).map((e) => e.id));
    assert.equal(ids('channel_occupied').size, 1);
    assert.equal(ids('channel_vacated').size, 1);

    // A body changed after signing is refused by the SDK.
    const [first] = requests;
    const tampered = { headers: first.headers, rawBody: first.rawBody.replace('"events"', '"events" ') };
    assert.equal(server.webhook(tampered).isValid(), false);
  });

  test('pusher-js user.watchlist sees a user come online and go offline on the other gateway', async () => {
    const watched = unique('watched-');
    const watcher = await connect(gw1, {
      userAuthentication: {
        customHandler: userAuthenticator(server, { id: unique('watcher-'), watchlist: [watched] }),
      },
    });
    const seen = [];
    watcher.user.watchlist.bind('online', (e) => seen.push(['online', e.user_ids]));
    watcher.user.watchlist.bind('offline', (e) => seen.push(['offline', e.user_ids]));
    watcher.signin();
    await withTimeout(watcher.user.signinDonePromise, 'the watcher signs in');

    const other = await connect(gw2, {
      userAuthentication: { customHandler: userAuthenticator(server, { id: watched }) },
    });
    other.signin();
    await withTimeout(other.user.signinDonePromise, 'the watched user signs in');
    await eventually(() => seen.some(([n]) => n === 'online'), 'online');
    other.disconnect();
    await eventually(() => seen.some(([n]) => n === 'offline'), 'offline');
    assert.deepEqual(seen, [
      ['online', [watched]],
      ['offline', [watched]],
    ]);
  });
});
