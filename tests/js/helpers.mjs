// Shared helpers of Herald's Pusher compatibility suite (tests/js/*.test.mjs).
//
// The suite runs against the stack scripts/test starts: two gateways, history
// and presence on one NATS server with one HERALD_PREFIX, and the app
// `app-id` / `app-key` / `app-secret` with client events enabled (10 per
// second per connection). scripts/test passes the ports as
//
//   HERALD_GATEWAY_PORT    gateway 1
//   HERALD_GATEWAY2_PORT   gateway 2
//   HERALD_HISTORY_PORT    history service
//   HERALD_PRESENCE_PORT   presence service
//
// Tests that kill and restart a gateway start their own nats-server and
// gateway processes (`privateStack`, from the binaries scripts/test built).
//
// Absence ("nothing else arrives") is checked against a marker, never a bare
// sleep: after the action that must have no effect, make something happen
// that is ordered after the unwanted frame would have been (an event on the
// same channel, a ping answered on the same connection, a member joining
// through the same presence pipeline), wait for it, then assert. `pong`
// and `raw.pong()` are such markers for one connection.
//
// Every wait is bounded (`withTimeout`) and every client or socket a test
// opens is registered here and closed by `closeAll()` (call it in `after` and
// `afterEach`), so a broken server makes the tests fail, never hang.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import PusherClient from 'pusher-js';
import PusherServer from 'pusher';
import nacl from 'tweetnacl';
import WebSocket from 'ws';

export const HOST = '127.0.0.1';
export const APP = { id: 'app-id', key: 'app-key', secret: 'app-secret' };
export const TIMEOUT_MS = 10_000;
/** A 32-byte master key for end-to-end encrypted channels (base64). */
export const ENCRYPTION_MASTER_KEY_BASE64 = Buffer.alloc(32, 7).toString('base64');

export { nacl, PusherClient, PusherServer, WebSocket };

/** The port of a running service, from the environment scripts/test sets. */
export function port(name) {
  const value = Number(process.env[name]);
  assert.ok(
    Number.isInteger(value) && value > 0,
    `${name} must name the port of a running service (scripts/test sets it)`,
  );
  return value;
}

/** Ports of the stack, read lazily (in `before`). */
export function ports() {
  return {
    gateway1: port('HERALD_GATEWAY_PORT'),
    gateway2: port('HERALD_GATEWAY2_PORT'),
  };
}

/** Basic credentials (key:secret) of the app, as the REST services take them. */
export function basicAuth(key = APP.key, secret = APP.secret) {
  return `Basic ${Buffer.from(`${key}:${secret}`).toString('base64')}`;
}

/**
 * GET a page of a channel's history from the history service:
 * `{status, body}`. `query` is appended as is (`?limit=10`); `authorization`
 * is the header to send (`null`: none).
 */
export async function historyPage(historyPort, channel, query = '', authorization = basicAuth()) {
  const headers = authorization === null ? {} : { authorization };
  const url =
    `http://${HOST}:${historyPort}/v1/apps/${encodeURIComponent(APP.id)}` +
    `/channels/${encodeURIComponent(channel)}/messages${query}`;
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
  return bodyOf(res);
}

/** A channel (or user) name no other test uses. */
export function unique(prefix) {
  return `${prefix}${randomUUID().slice(0, 8)}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolve `promise`, or reject after `ms` saying what we were waiting for. */
export function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `check` (sync or async) until it returns a truthy value. */
export async function eventually(check, what, ms = TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last?.message ?? JSON.stringify(last)})`);
    }
    await sleep(100);
  }
}

// --- cleanup ------------------------------------------------------------------

const opened = [];

/** Register something to close in `closeAll`. */
export function track(close) {
  opened.push(close);
}

/** Close every client and socket opened so far. */
export function closeAll() {
  for (const close of opened.splice(0)) {
    try {
      close();
    } catch {
      // already closed
    }
  }
}

// --- pusher-js ----------------------------------------------------------------

/**
 * A pusher-js client configured the way the README tells Pusher users to, not
 * yet connected (`connect()` waits for it).
 */
export function newClient(wsPort, options = {}) {
  const client = new PusherClient(options.key ?? APP.key, {
    wsHost: HOST,
    wsPort,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    enableStats: false,
    ...options,
  });
  track(() => client.disconnect());
  return client;
}

/** Wait until a pusher-js client's connection is in `state`. */
export function connectionState(client, state, what = `pusher-js connection ${state}`) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const check = ({ current }) => {
        if (current === state) {
          client.connection.unbind('state_change', check);
          resolve();
        } else if (state === 'connected' && (current === 'failed' || current === 'unavailable')) {
          reject(new Error(`pusher-js connection is ${current}`));
        }
      };
      client.connection.bind('state_change', check);
      check({ current: client.connection.state });
    }),
    what,
  );
}

/** A connected pusher-js client. */
export async function connect(wsPort, options = {}) {
  const client = newClient(wsPort, options);
  await connectionState(client, 'connected', `pusher-js to connect to port ${wsPort}`);
  return client;
}

/** The outcome of subscribing: `{ ok: true, channel, data }` or `{ ok: false, status }`. */
export function subscription(client, name) {
  const channel = client.subscribe(name);
  return withTimeout(
    new Promise((resolve) => {
      channel.bind('pusher:subscription_succeeded', (data) => resolve({ ok: true, channel, data }));
      channel.bind('pusher:subscription_error', (status) => resolve({ ok: false, channel, status }));
    }),
    `the subscription to ${name} to succeed or fail`,
  );
}

/** Subscribe a pusher-js client; resolve with the channel once it succeeded. */
export async function subscribe(client, name) {
  const result = await subscription(client, name);
  assert.ok(result.ok, `subscription to ${name} failed: ${JSON.stringify(result.status)}`);
  return result.channel;
}

/** The data of the next `event` on a pusher-js channel (or emitter). */
export function nextEvent(emitter, event, what = event) {
  return withTimeout(
    new Promise((resolve) => {
      const handler = (data) => {
        emitter.unbind(event, handler);
        resolve(data);
      };
      emitter.bind(event, handler);
    }),
    what,
  );
}

/** Everything `event` delivers on a pusher-js channel, from now on. */
export function collect(emitter, event) {
  const got = [];
  emitter.bind(event, (data) => got.push(data));
  return got;
}

/**
 * A marker for one pusher-js connection: send `pusher:ping` and wait for the
 * `pusher:pong`. The gateway answers frames in order and queues the pong
 * behind every frame it had queued for this socket, so anything it sent
 * before has been received once this resolves.
 */
export function pong(client, what = 'pusher:pong') {
  const got = withTimeout(
    new Promise((resolve) => {
      const handler = (message) => {
        if (message.event === 'pusher:pong') {
          client.connection.unbind('message', handler);
          resolve(message);
        }
      };
      client.connection.bind('message', handler);
    }),
    what,
  );
  assert.ok(client.connection.send_event('pusher:ping', {}), 'pusher-js sent the ping');
  return got;
}

/** Every frame the pusher-js connection receives, from now on. */
export function collectFrames(client) {
  const frames = [];
  client.connection.bind('message', (message) => frames.push(message));
  return frames;
}

/** The first frame in `frames` (now or later) matching `match`. */
export function frameIn(frames, match, what) {
  return eventually(() => frames.find(match), what);
}

/**
 * A `channelAuthorization.customHandler` that signs with the server SDK, the
 * way an app's auth endpoint does. `presenceData(channelName, socketId)` gives
 * `{user_id, user_info}` for presence channels.
 */
export function channelAuthorizer(sdk, presenceData) {
  return (params, callback) => {
    try {
      const data = params.channelName.startsWith('presence-')
        ? presenceData?.(params.channelName, params.socketId)
        : undefined;
      callback(null, sdk.authorizeChannel(params.socketId, params.channelName, data));
    } catch (err) {
      callback(err, null);
    }
  };
}

/** A `userAuthentication.customHandler` signing `user` with the server SDK. */
export function userAuthenticator(sdk, user) {
  return (params, callback) => {
    try {
      callback(null, sdk.authenticateUser(params.socketId, user));
    } catch (err) {
      callback(err, null);
    }
  };
}

/**
 * A pusher-js client signed in as `user` (`{id, user_info}`) and subscribed to
 * its `#server-to-user-<id>` channel.
 */
export async function signedIn(wsPort, sdk, user, options = {}) {
  const client = await connect(wsPort, {
    userAuthentication: { customHandler: userAuthenticator(sdk, user) },
    channelAuthorization: { customHandler: channelAuthorizer(sdk) },
    ...options,
  });
  client.signin();
  await withTimeout(client.user.signinDonePromise, `sign-in of ${user.id}`);
  assert.equal(client.user.user_data?.id, user.id, `signed in as ${user.id}`);
  await eventually(
    () => client.user.serverToUserChannel?.subscribed,
    `the #server-to-user-${user.id} subscription`,
  );
  return client;
}

// --- raw WebSocket ------------------------------------------------------------

/**
 * A raw WebSocket speaking the Pusher protocol, to see frames (and close
 * codes) exactly as the gateway sends them. `path` overrides the URL path and
 * query; `established: false` returns without waiting for
 * `pusher:connection_established`.
 */
export async function openRaw(wsPort, { path, established = true } = {}) {
  const url = `ws://${HOST}:${wsPort}${path ?? `/app/${APP.key}?protocol=7&client=js&version=8.6.0`}`;
  const ws = new WebSocket(url);
  track(() => ws.terminate());
  const received = [];
  const waiters = [];
  let closeResolve;
  const closed = new Promise((resolve) => {
    closeResolve = resolve;
  });
  ws.on('message', (raw) => {
    let frame;
    try {
      frame = JSON.parse(raw.toString());
    } catch {
      frame = { unparsed: raw.toString() };
    }
    received.push(frame);
    for (const waiter of [...waiters]) {
      if (waiter.match(frame)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(frame);
      }
    }
  });
  ws.on('close', (code, reason) => closeResolve({ code, reason: reason.toString() }));
  ws.on('error', () => {}); // reported by `opening` or by a waiter's timeout
  const socket = {
    ws,
    received,
    socketId: undefined,
    /** The first frame (already received or still to come) matching `match`. */
    next(match, what, ms = TIMEOUT_MS) {
      const seen = received.find(match);
      if (seen) return Promise.resolve(seen);
      return socket.upcoming(match, what, ms);
    },
    /** The first frame matching `match` received from now on. */
    upcoming(match, what, ms = TIMEOUT_MS) {
      return withTimeout(new Promise((resolve) => waiters.push({ match, resolve })), what, ms);
    },
    /** The first frame with this event (and channel, when given). */
    event(event, channel, what) {
      return socket.next(
        (f) => f.event === event && (channel === undefined || f.channel === channel),
        what ?? `${event}${channel ? ` on ${channel}` : ''}`,
      );
    },
    /** The frames with this event received so far. */
    all(event) {
      return received.filter((f) => f.event === event);
    },
    send(event, data, channel) {
      ws.send(JSON.stringify(channel === undefined ? { event, data } : { event, data, channel }));
    },
    sendText(text) {
      ws.send(text);
    },
    /** A marker: ping, and resolve with the pong (every earlier frame is in). */
    pong(what = 'pusher:pong on the raw socket') {
      const got = socket.upcoming((f) => f.event === 'pusher:pong', what);
      socket.send('pusher:ping', {});
      return got;
    },
    /** `{code, reason}` once the socket closed. */
    closed(what = 'the socket to close') {
      return withTimeout(closed, what);
    },
    /** Subscribe and wait for success (or fail with the error frame). */
    async subscribe(channel, extra = {}) {
      socket.send('pusher:subscribe', { channel, ...extra });
      const frame = await socket.upcoming(
        (f) =>
          f.channel === channel &&
          (f.event === 'pusher_internal:subscription_succeeded' || f.event === 'pusher:subscription_error'),
        `the raw subscription to ${channel}`,
      );
      assert.equal(frame.event, 'pusher_internal:subscription_succeeded', JSON.stringify(frame));
      return frame;
    },
  };
  const opening = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  await withTimeout(opening, `a raw WebSocket to port ${wsPort}`);
  if (established) {
    const frame = await socket.event('pusher:connection_established');
    socket.socketId = JSON.parse(frame.data).socket_id;
  }
  return socket;
}

/** Pusher frames carry `data` as a JSON string; parse it (or return it as is). */
export function dataOf(frame) {
  if (typeof frame.data !== 'string') return frame.data;
  try {
    return JSON.parse(frame.data);
  } catch {
    return frame.data;
  }
}

// --- server SDK ---------------------------------------------------------------

/** The pusher Node SDK pointed at a gateway, the way the README says. */
export function sdk(apiPort, options = {}) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: HOST,
    port: String(apiPort),
    useTLS: false,
    timeout: TIMEOUT_MS,
    ...options,
  });
}

/** `{status, body}` of an SDK response (parsed JSON body). */
export async function bodyOf(response) {
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) };
  } catch {
    return { status: response.status, body: text };
  }
}

/** `{status, body}` of an SDK call, whether it succeeded or was refused. */
export async function outcome(promise) {
  try {
    return await bodyOf(await promise);
  } catch (err) {
    if (err.status === undefined) throw err;
    let body = err.body;
    try {
      body = JSON.parse(err.body);
    } catch {
      // not JSON
    }
    return { status: err.status, body };
  }
}

/**
 * A request signed like the SDK signs its own (its `createSignedQueryString`),
 * for methods the SDK has no helper for (DELETE). `path` is relative to
 * `/apps/<id>`.
 */
export async function signedRequest(apiPort, method, path, body, secret = APP.secret) {
  const client = sdk(apiPort, { secret });
  const fullPath = `/apps/${APP.id}${path}`;
  const text = body === undefined ? undefined : JSON.stringify(body);
  const query = client.createSignedQueryString({ method, path: fullPath, body: text });
  const res = await fetch(`http://${HOST}:${apiPort}${fullPath}?${query}`, {
    method,
    body: text,
    headers: text ? { 'content-type': 'application/json' } : {},
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  return bodyOf(res);
}

// --- processes: a private nats-server and gateways a test may kill -------------

/**
 * A private nats-server (JetStream, its own store) and `gateways` gateway
 * processes on it, for tests that kill and restart a gateway: the stack of
 * scripts/test is shared with every other test and is never killed.
 * `gateways` is a list of extra environments, one per gateway. The gateway
 * binary is $HERALD_GATEWAY_BIN, else target/debug/herald-gateway (under
 * $CARGO_TARGET_DIR when set): the one scripts/test built or found;
 * nats-server is $HERALD_NATS_SERVER, else `nats-server` on the PATH.
 * Returns `{ natsPort, gateways: [{port, kill(), start(), restart()}], stop() }`;
 * call `stop()` in `after`. The app is APP, with client events and client
 * publishing on.
 */
export async function privateStack({ gateways = [{}], apps } = {}) {
  const { spawn } = await import('node:child_process');
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const root = new URL('../..', import.meta.url).pathname;
  const bin =
    process.env.HERALD_GATEWAY_BIN ??
    path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, 'target'), 'debug', 'herald-gateway');
  assert.ok(fs.existsSync(bin), `${bin} is missing (scripts/test builds it)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-stack-'));
  const children = new Set();
  const killAll = () => {
    for (const child of children) child.kill('SIGKILL');
  };
  process.once('exit', killAll);

  const run = (name, command, args, env) => {
    const log = fs.openSync(path.join(dir, `${name}.log`), 'a');
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    children.add(child);
    child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    child.exited.then(() => children.delete(child));
    child.once('error', () => {});
    return child;
  };
  const logTail = (name) => {
    try {
      return fs.readFileSync(path.join(dir, `${name}.log`), 'utf8').split('\n').slice(-20).join('\n');
    } catch {
      return '(no log)';
    }
  };

  const natsPort = await freePort();
  const nats = run('nats', process.env.HERALD_NATS_SERVER ?? 'nats-server', [
    '-js', '-a', HOST, '-p', String(natsPort), '-sd', path.join(dir, 'nats'),
  ]);
  await eventually(
    async () => {
      if (nats.exitCode !== null) throw new Error(`nats-server exited: ${logTail('nats')}`);
      return listening(natsPort);
    },
    `the private nats-server on port ${natsPort}`,
    60_000,
  );

  const prefix = `hjs${randomUUID().slice(0, 8)}`;
  const appList = apps ?? [
    { ...APP, enable_client_messages: true, enable_client_publish: true, client_publishes_per_second: 1000 },
  ];
  const common = {
    NATS_URL: `nats://${HOST}:${natsPort}`,
    HERALD_PREFIX: prefix,
    HERALD_APPS: JSON.stringify(appList),
    HERALD_HOST: HOST,
    HERALD_ACTIVITY_TIMEOUT_SECS: '4',
    RUST_LOG: process.env.RUST_LOG ?? 'warn',
  };

  const started = [];
  for (const [i, extra] of gateways.entries()) {
    const name = `gateway${i + 1}`;
    const gw = {
      name,
      port: await freePort(),
      process: undefined,
      /** Start the process and wait until it is ready. */
      async start() {
        assert.equal(gw.process, undefined, `${name} is running already`);
        const child = run(name, bin, [], { ...common, HERALD_PORT: String(gw.port), ...extra });
        gw.process = child;
        await eventually(
          async () => {
            if (child.exitCode !== null || child.signalCode !== null) {
              throw new Error(`${name} exited: ${logTail(name)}`);
            }
            const res = await fetch(`http://${HOST}:${gw.port}/readyz`, { signal: AbortSignal.timeout(2000) });
            return res.status === 200;
          },
          `${name} (${bin}) ready on port ${gw.port}`,
          60_000,
        );
      },
      /** SIGKILL it (no goodbye to anyone) and wait until it is gone. */
      async kill() {
        const child = gw.process;
        if (!child) return;
        gw.process = undefined;
        child.kill('SIGKILL');
        await withTimeout(child.exited, `${name} to exit`);
      },
      async restart() {
        await gw.kill();
        await gw.start();
      },
    };
    started.push(gw);
  }
  const stack = {
    natsPort,
    prefix,
    gateways: started,
    async stop() {
      process.removeListener('exit', killAll);
      for (const gw of started) await gw.kill().catch(() => {});
      nats.kill('SIGKILL');
      await nats.exited;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(started.map((gw) => gw.start()));
  } catch (err) {
    await stack.stop();
    throw err;
  }
  return stack;
}

/** A TCP port nothing listens on right now. */
export async function freePort() {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port: free } = server.address();
      server.close(() => resolve(free));
    });
  });
}

/** Whether something accepts TCP connections on HOST:port. */
export async function listening(tcpPort) {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const socket = net.connect(tcpPort, HOST);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
