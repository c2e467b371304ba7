// The web chat end to end, in headless Chromium (Debian's /usr/bin/chromium
// driven by playwright-core; never a downloaded browser): alice and bob, two
// browser contexts, against the stack scripts/test starts (its `web` stage).
//
// scripts/test passes the stack as HERALD_GATEWAY_PORT, HERALD_AUTH_PORT,
// HERALD_HISTORY_PORT, HERALD_PRESENCE_PORT, and, so that this test can run
// a gateway of its own on the same NATS (bob's, which it kills and
// restarts), HERALD_NATS_URL, HERALD_PREFIX, HERALD_APPS and
// HERALD_GATEWAY_BIN. The test starts the example backend itself on a free
// port. Screenshots go to target/web-chat-screenshots/ (WEB_CHAT_SCREENSHOTS).
//
// Every wait is for a condition, bounded; nothing is timed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';

const HOST = '127.0.0.1';
const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '../../..');
const SHOTS = process.env.WEB_CHAT_SCREENSHOTS ?? path.join(root, 'target/web-chat-screenshots');
const WAIT = 20_000;
const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} must be set (scripts/test web sets it)`);
  return v;
};

const children = [];
process.once('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function run(name, command, args, extraEnv) {
  const log = fs.openSync(path.join(SHOTS, `${name}.log`), 'a');
  const child = spawn(command, args, { env: { ...process.env, ...extraEnv }, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  child.exited = new Promise((resolve) => child.once('exit', resolve));
  children.push(child);
  return child;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Poll `check` until it is truthy, at most `ms`. */
async function eventually(check, what, ms = 60_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const ready = (port) => async () => (await fetch(`http://${HOST}:${port}/readyz`, { signal: AbortSignal.timeout(2000) })).status === 200;

/** Bob's gateway: on the stack's NATS and prefix, so it is one more gateway of that deployment. */
const gateway = {
  port: 0,
  child: undefined,
  async start() {
    this.child = run('gateway', env('HERALD_GATEWAY_BIN'), [], {
      NATS_URL: env('HERALD_NATS_URL'),
      HERALD_PREFIX: env('HERALD_PREFIX'),
      HERALD_APPS: env('HERALD_APPS'),
      HERALD_HOST: HOST,
      HERALD_PORT: String(this.port),
      HERALD_AUTH_JWKS_URL: `http://${HOST}:${env('HERALD_AUTH_PORT')}/.well-known/jwks.json`,
      RUST_LOG: 'warn',
    });
    await eventually(ready(this.port), `bob's gateway ready on port ${this.port}`);
  },
  /** SIGKILL: no goodbye to its sockets or to NATS. */
  async kill() {
    this.child.kill('SIGKILL');
    await this.child.exited;
  },
};

let browser, backendPort, alice, bob;

/** A page as `user`; `query` adds URL parameters. */
async function openPage(user, query = '') {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[${user}] page error: ${err.message}`));
  await page.goto(`http://${HOST}:${backendPort}/?user=${user}&debug=true${query}`);
  await connected(page);
  return page;
}

/** Wait for a condition evaluated in the page, saying what it was on failure. */
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 100 });
  } catch (err) {
    throw new Error(`timed out waiting for ${what}: ${err.message.split('\n')[0]}`);
  }
}

const connected = (page) =>
  until(page, 'the connection', () => document.querySelector('[data-testid=conn-state]')?.textContent === 'connected');

const conv = (page, key) => page.locator(`[data-testid="conv-${key}"]`);
const texts = (page) => page.$$eval('[data-testid=thread] [data-testid=message] [data-testid=text]', (els) => els.map((e) => e.textContent));
const lastTicks = (page) => page.$$eval('[data-testid=thread] [data-testid=ticks]', (els) => els.map((e) => e.dataset.status));

async function send(page, text) {
  await page.fill('#composer input', text);
  await page.click('[data-testid=send]');
}

/** The message `text` of this page's open thread has tick state `status`. */
const tickIs = (page, text, status) =>
  until(page, `"${text}" to be ${status}`, ([t, s]) =>
    [...document.querySelectorAll('[data-testid=message]')].some(
      (li) => li.querySelector('[data-testid=text]')?.textContent === t && li.querySelector('[data-testid=ticks]')?.dataset.status === s,
    ), [text, status]);

const unreadOf = (page, key) => conv(page, key).locator('[data-testid=unread]').textContent();

async function shot(name) {
  for (const [user, page] of [['alice', alice], ['bob', bob]]) {
    if (page && !page.isClosed()) await page.screenshot({ path: path.join(SHOTS, `${name}-${user}.png`) });
  }
}

/** Both pages' screenshots of a step as one picture (for the README). */
async function sideBySide(name, file) {
  const img = (user) => `data:image/png;base64,${fs.readFileSync(path.join(SHOTS, `${name}-${user}.png`)).toString('base64')}`;
  const page = await browser.newPage({ viewport: { width: 2010, height: 760 } });
  await page.setContent(`<body style="margin:0;display:flex;gap:10px;background:#889"><img src="${img('alice')}"><img src="${img('bob')}"></body>`);
  await page.screenshot({ path: file });
  await page.close();
}

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  assert.ok(fs.existsSync(path.join(here, '../dist/index.html')), 'dist/ is missing: npm run build');
  backendPort = await freePort();
  const svc = (name) => `http://${HOST}:${env(`HERALD_${name}_PORT`)}`;
  run('backend', process.execPath, [path.join(here, '../server.mjs')], {
    WEB_CHAT_PORT: String(backendPort),
    HERALD_AUTH_URL: svc('AUTH'),
    HERALD_HISTORY_URL: svc('HISTORY'),
    HERALD_PRESENCE_URL: svc('PRESENCE'),
    WEB_CHAT_GATEWAY_PORT: env('HERALD_GATEWAY_PORT'),
  });
  await eventually(ready(backendPort), 'the example backend');
  gateway.port = await freePort();
  await gateway.start();
  browser = await chromium.launch({
    executablePath: process.env.WEB_CHAT_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // Alice through the stack's gateway, bob through the test's own.
  alice = await openPage('alice');
  bob = await openPage('bob', `&gateway=${HOST}:${gateway.port}`);
});

after(async () => {
  // The raw frames each page still shows, for when a step failed.
  for (const [user, page] of [['alice', alice], ['bob', bob]]) {
    if (!page || page.isClosed()) continue;
    const frames = await page.$$eval('#frames li', (lis) => lis.map((li) => li.textContent)).catch(() => []);
    fs.writeFileSync(path.join(SHOTS, `frames-${user}.txt`), frames.join('\n'));
  }
  await browser?.close();
  for (const c of children) c.kill('SIGTERM');
  await Promise.all(children.map((c) => c.exited));
});

test('alice and bob chat in two browsers', async (t) => {
  await t.test('bob sees alice typing in their room, until presence says she stopped', async () => {
    await conv(alice, 'Herald lounge').click();
    await conv(bob, 'Herald lounge').click();
    await until(alice, 'bob online in the room', () => document.querySelector('#chat-status').textContent.includes('Bob'));
    await alice.type('#composer input', 'hel');
    await until(bob, 'the typing indicator', () => document.querySelector('[data-testid=typing]').textContent === 'Alice is typing…');
    await shot('1-typing');
    // Alice stays quiet: the presence service's herald:typing_stopped clears it.
    await until(bob, 'the typing indicator to go', () => document.querySelector('[data-testid=typing]').textContent === '');
    await until(bob, 'herald:typing_stopped for alice among the raw frames', () => [...document.querySelectorAll('#frames li')].some(
      (li) => /herald:typing_stopped.*presence-room-.*"user_id":"alice"/.test(li.textContent)));
    await alice.fill('#composer input', '');
  });

  await t.test('alice sees delivered ticks; bob\'s unread count rises while the DM is closed', async () => {
    await conv(alice, 'bob').click();
    await send(alice, 'hello bob');
    await send(alice, 'are you there?');
    await tickIs(alice, 'hello bob', 'delivered');
    await tickIs(alice, 'are you there?', 'delivered');
    await until(bob, 'unread 2', () => document.querySelector('[data-testid="conv-alice"] [data-testid=unread]').textContent === '2');
    assert.match(await conv(bob, 'alice').locator('[data-testid=preview]').textContent(), /Alice: are you there\?/);
    assert.deepEqual(await lastTicks(alice), ['delivered', 'delivered'], 'not read while bob has the DM closed');
    await shot('2-delivered-unread');
  });

  await t.test('bob opens the DM: unread clears, alice sees read ticks, bob answers', async () => {
    await conv(bob, 'alice').click();
    await until(bob, 'unread cleared', () => document.querySelector('[data-testid="conv-alice"] [data-testid=unread]').textContent === '');
    assert.deepEqual(await texts(bob), ['hello bob', 'are you there?']);
    await tickIs(alice, 'are you there?', 'read');
    await tickIs(alice, 'hello bob', 'read');
    await send(bob, 'hi alice');
    await until(alice, 'bob\'s answer', () => [...document.querySelectorAll('[data-testid=text]')].some((e) => e.textContent === 'hi alice'));
    // The inbox follows live: the preview is bob's answer.
    await until(alice, 'the preview of bob\'s answer', () => document.querySelector('[data-testid="conv-bob"] [data-testid=preview]').textContent === 'Bob: hi alice');
    await shot('3-read');
    await sideBySide('3-read', path.join(SHOTS, 'web-chat.png'));
  });

  await t.test('edit and delete reach the other side', async () => {
    const mine = alice.locator('[data-testid=message]', { hasText: 'are you there?' });
    await mine.locator('[data-testid=edit]').click();
    await alice.fill('#composer input', 'are you still there?');
    await alice.click('[data-testid=send]');
    await until(bob, 'the edit', () => [...document.querySelectorAll('[data-testid=message]')].some(
      (li) => li.textContent.includes('are you still there?') && li.querySelector('[data-testid=edited]')));
    await alice.locator('[data-testid=message]', { hasText: 'hello bob' }).locator('[data-testid=delete]').click();
    await until(bob, 'the delete', () => [...document.querySelectorAll('[data-testid=text]')].some((e) => e.textContent === 'message deleted'));
    assert.deepEqual(await texts(bob), ['message deleted', 'are you still there?', 'hi alice']);
  });

  await t.test('a refused send is shown as failed, with a retry', async () => {
    // Over the app's max_message_bytes (10 KB): herald:nack too_large.
    await send(alice, 'x'.repeat(11_000));
    await until(alice, 'the failed send', () => document.querySelector('[data-testid=ticks][data-status=failed]') && document.querySelector('[data-testid=retry]'));
    await shot('4-failed');
  });

  await t.test('bob\'s gateway restarts: he gets every message sent meanwhile, once, in order', async () => {
    const before = await texts(bob);
    await gateway.kill();
    await until(bob, 'bob disconnected', () => document.querySelector('[data-testid=conn-state]').textContent !== 'connected');
    const meanwhile = ['while you were away 1', 'while you were away 2', 'while you were away 3', 'while you were away 4', 'while you were away 5'];
    for (const text of meanwhile) {
      await send(alice, text);
      await tickIs(alice, text, 'sent'); // acknowledged: stored
    }
    await shot('5-disconnected');
    await gateway.start();
    await connected(bob);
    await eventually(async () => (await texts(bob)).length === before.length + meanwhile.length, 'bob to show the missed messages', WAIT);
    assert.deepEqual(await texts(bob), [...before, ...meanwhile], 'every message once, in order');
    // The debug panel shows herald-js's counters (refreshed every second).
    const resumed = async () => JSON.parse(await bob.textContent('[data-testid=debug-state]')).resumes >= 1;
    await eventually(resumed, 'the debug panel to count a resume (resume_from on the resubscribe)', WAIT);
    // Bob has the DM open: the replayed messages are read.
    await tickIs(alice, meanwhile.at(-1), 'read');
    // Nothing bob sent was refused (receipts before the sign-in would be).
    const nacks = await bob.$$eval('#frames li', (lis) => lis.map((li) => li.textContent).filter((t) => t.includes('herald:nack')));
    assert.deepEqual(nacks, [], 'no herald:nack on bob\'s connection');
    await shot('6-resumed');
  });

  await t.test('bob goes offline: alice sees his last-seen', async () => {
    await until(alice, 'bob online', () => document.querySelector('[data-testid=peer-status]').textContent === 'online');
    await bob.context().close();
    await until(alice, 'bob\'s last seen', () => /^last seen /.test(document.querySelector('[data-testid=peer-status]').textContent));
    assert.equal(await conv(alice, 'bob').locator('[data-testid=dot]').getAttribute('class'), 'dot ');
    await shot('7-last-seen');
  });

  await t.test('history loads older pages on scroll-up', async () => {
    // 45 messages by bob in the room, through the history REST API (as the app).
    const room = await alice.locator('[data-testid="conv-Herald lounge"]').getAttribute('data-channel');
    const basic = `Basic ${Buffer.from('app-key:app-secret').toString('base64')}`;
    const url = `http://${HOST}:${env('HERALD_HISTORY_PORT')}/v1/apps/app-id/channels/${encodeURIComponent(room)}/messages?as_user=bob`;
    let lastSeq;
    for (let i = 1; i <= 45; i++) {
      const text = `backlog ${i}`;
      const res = await fetch(url, {
        method: 'POST',
        headers: { authorization: basic, 'content-type': 'application/json' },
        body: JSON.stringify({ event: 'message', data: { text }, client_id: `backlog-${i}` }),
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      lastSeq = body.seq;
    }
    // Wait until the read model has them all (min_seq: read-your-writes), so
    // that the page's inbox does and nothing is replayed live: the thread
    // then opens with exactly one page.
    const projected = await fetch(`${url.split('?')[0]}?limit=1&min_seq=${lastSeq}`, { headers: { authorization: basic } });
    assert.equal(projected.status, 200, await projected.text());
    // A fresh page of alice's: the room's newest page only, then older on scroll.
    await alice.goto(`http://${HOST}:${backendPort}/?user=alice`);
    await connected(alice);
    await eventually(async () => (await unreadOf(alice, 'Herald lounge')) === '45', 'unread 45 in the room', WAIT);
    await conv(alice, 'Herald lounge').click();
    await until(alice, 'the first page', () => document.querySelectorAll('[data-testid=message]').length === 30);
    assert.equal(await alice.locator('[data-testid=older]').count(), 1);
    await eventually(async () => {
      await alice.$eval('#thread', (e) => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); });
      return (await texts(alice)).length === 45;
    }, 'the older page', WAIT);
    assert.deepEqual(await texts(alice), Array.from({ length: 45 }, (_, i) => `backlog ${i + 1}`));
    assert.equal(await unreadOf(alice, 'Herald lounge'), '');
    await alice.screenshot({ path: path.join(SHOTS, '8-history-alice.png') });
  });
});
