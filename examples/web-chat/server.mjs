// The web chat's app backend: the part of a real app that holds the app
// secret. It registers the users alice and bob at Herald's auth service,
// creates their shared room and their DM once, hands out session tokens to
// the page (`GET /token?user=alice`), proxies the history and presence REST
// APIs (which send no CORS headers) under the page's own origin, and serves
// the built single-page app from dist/.
//
// No login: anyone who can reach this server may act as alice or bob. A real
// app hands a token only to the user its own session says is logged in.
//
// Settings (environment):
//   WEB_CHAT_HOST, WEB_CHAT_PORT   where to listen (127.0.0.1, 6005)
//   HERALD_APP_ID / _KEY / _SECRET the app (the development app by default)
//   HERALD_AUTH_URL, HERALD_HISTORY_URL, HERALD_PRESENCE_URL
//                                  the services, as this backend reaches them
//                                  (http://127.0.0.1:6002 / 6003 / 6004)
//   WEB_CHAT_PUBLIC_AUTH_URL       the auth service as the browser reaches it
//                                  (default: the page's host name with the
//                                  port of HERALD_AUTH_URL)
//   WEB_CHAT_GATEWAY_HOST, WEB_CHAT_GATEWAY_PORT
//                                  the gateway as the browser reaches it
//                                  (default: the page's host name, 6001)

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const env = process.env;
const HOST = env.WEB_CHAT_HOST ?? '127.0.0.1';
const PORT = Number(env.WEB_CHAT_PORT ?? 6005);
const APP = {
  id: env.HERALD_APP_ID ?? 'app-id',
  key: env.HERALD_APP_KEY ?? 'app-key',
  secret: env.HERALD_APP_SECRET ?? 'app-secret',
};
const AUTH = env.HERALD_AUTH_URL ?? 'http://127.0.0.1:6002';
const UPSTREAM = {
  history: env.HERALD_HISTORY_URL ?? 'http://127.0.0.1:6003',
  presence: env.HERALD_PRESENCE_URL ?? 'http://127.0.0.1:6004',
};
const DIST = env.WEB_CHAT_DIST ?? fileURLToPath(new URL('./dist/', import.meta.url));
const USERS = { alice: 'Alice', bob: 'Bob' };
const ROOM_NAME = 'Herald lounge';

const basic = `Basic ${Buffer.from(`${APP.key}:${APP.secret}`).toString('base64')}`;
const log = (...args) => console.log(new Date().toISOString(), ...args);

/** A JSON call to the auth service with the app's credentials. */
async function auth(method, path, body) {
  const res = await fetch(`${AUTH}${path}`, {
    method,
    headers: { authorization: basic, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

const app = `/v1/apps/${encodeURIComponent(APP.id)}`;

/**
 * Register the users, then find (or create) the shared room and the DM.
 * Idempotent, so a restarted backend finds what the last one made.
 */
async function setUp() {
  for (const [id, name] of Object.entries(USERS)) {
    await auth('PUT', `${app}/users/${id}`, { name });
  }
  const { rooms } = await auth('GET', `${app}/rooms?as_user=alice`);
  let room = rooms.find((r) => r.name === ROOM_NAME);
  if (!room) {
    room = await auth('POST', `${app}/rooms?as_user=alice`, { name: ROOM_NAME });
    log(`created the room ${room.channel} (code ${room.code})`);
  }
  await auth('POST', `${app}/rooms/join?as_user=bob`, { code: room.code });
  const dm = await auth('POST', `${app}/dms?as_user=alice`, { user_id: 'bob' });
  log(`users ${Object.keys(USERS).join(', ')}; room ${room.channel}; DM ${dm.channel}`);
}

/** setUp, retried until the auth service answers (it may start after us). */
const ready = (async () => {
  for (let delay = 500; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await setUp();
    } catch (err) {
      log(`set-up failed (${err.message}); retrying in ${delay} ms`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
})();

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return chunks.length ? Buffer.concat(chunks) : undefined;
}

/** `GET /token?user=`: a fresh session token (single use per connection). */
async function token(req, res, url) {
  const user = url.searchParams.get('user');
  if (!Object.hasOwn(USERS, user ?? '')) return send(res, 404, { error: { code: 'not_found', message: 'unknown user' } });
  await ready;
  // No grants: rooms and DMs are opened to the user by membership.
  const answer = await auth('POST', `${app}/users/${user}/session-tokens`, { grants: [] });
  send(res, 200, { user, name: USERS[user], ...answer });
}

/** `GET /config.json`: what the page needs to find Herald. */
function config(req, res) {
  const pageHost = (req.headers.host ?? '127.0.0.1').replace(/:\d+$/, '');
  const authPort = new URL(AUTH).port || '80';
  send(res, 200, {
    appId: APP.id,
    appKey: APP.key,
    wsHost: env.WEB_CHAT_GATEWAY_HOST ?? pageHost,
    wsPort: Number(env.WEB_CHAT_GATEWAY_PORT ?? 6001),
    authUrl: env.WEB_CHAT_PUBLIC_AUTH_URL ?? `http://${pageHost}:${authPort}`,
    users: USERS,
  });
}

/**
 * `/api/history/…` and `/api/presence/…` → the service's `/…`, with the
 * page's own `Authorization` (the user's session token: the services answer
 * with that user's view). Never the app's credentials.
 */
async function proxy(req, res, url, service) {
  const path = url.pathname.slice(`/api/${service}`.length) + url.search;
  if (!path.startsWith('/v1/')) return send(res, 404, { error: { code: 'not_found', message: 'not found' } });
  const headers = {};
  for (const h of ['authorization', 'content-type']) if (req.headers[h]) headers[h] = req.headers[h];
  const body = ['GET', 'HEAD'].includes(req.method) ? undefined : await readBody(req);
  const upstream = await fetch(`${UPSTREAM[service]}${path}`, {
    method: req.method,
    headers,
    body,
    signal: AbortSignal.timeout(15_000),
  });
  send(res, upstream.status, Buffer.from(await upstream.arrayBuffer()), upstream.headers.get('content-type') ?? 'application/json');
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.png': 'image/png' };

/** The built SPA; every unknown path gets index.html. */
async function staticFile(req, res, url) {
  const rel = normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, '');
  for (const file of [join(DIST, rel), join(DIST, 'index.html')]) {
    try {
      const body = await readFile(file);
      return send(res, 200, body, TYPES[extname(file)] ?? 'application/octet-stream');
    } catch {
      // next candidate
    }
  }
  send(res, 404, 'dist/ is missing: run `npm run build` in examples/web-chat', 'text/plain');
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (url.pathname === '/token') return await token(req, res, url);
    if (url.pathname === '/config.json') return config(req, res);
    if (url.pathname === '/healthz') return send(res, 200, { ok: true });
    if (url.pathname === '/readyz') {
      const done = await Promise.race([ready.then(() => true), new Promise((r) => setTimeout(r, 100, false))]);
      return send(res, done ? 200 : 503, { ready: done });
    }
    for (const service of Object.keys(UPSTREAM)) {
      if (url.pathname.startsWith(`/api/${service}/`)) return await proxy(req, res, url, service);
    }
    if (req.method === 'GET') return await staticFile(req, res, url);
    send(res, 405, { error: { code: 'method_not_allowed', message: 'method not allowed' } });
  } catch (err) {
    log(`${req.method} ${url.pathname}: ${err.message}`);
    if (!res.headersSent) send(res, 502, { error: { code: 'upstream', message: 'a Herald service did not answer' } });
  }
});

server.listen(PORT, HOST, () => log(`web chat on http://${HOST}:${PORT}/?user=alice and ?user=bob`));
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => server.close(() => process.exit(0)));
