// Herald's reference web chat. The connection is an unmodified pusher-js with
// herald-js beside it (resume after reconnect, acknowledged publish,
// receipts); everything else is Herald's REST APIs: the auth service for
// rooms and DMs (directly, it allows browsers), history and presence through
// the example backend's same-origin proxy (they send no CORS headers).
//
// URL parameters: ?user=alice|bob, ?debug=true (connection state and raw
// frames), ?gateway=host:port (connect through another gateway than the
// backend's default, e.g. a second one of a scaled-out deployment).

import Pusher from 'pusher-js';
import { herald, type HeraldChannel, type EventMeta } from 'herald-js';
import { Tokens } from './tokens';

interface Config {
  appId: string;
  appKey: string;
  wsHost: string;
  wsPort: number;
  authUrl: string;
  users: Record<string, string>;
}
interface Room { id: string; name: string; code: string; channel: string; owner: string }
interface Msg {
  id?: string;
  clientId?: string;
  seq?: number;
  author: string;
  text: string;
  ts: number;
  edited: boolean;
  deleted: boolean;
  status: 'sending' | 'sent' | 'failed';
  error?: string;
}
interface Conv {
  channel: string;
  title: string;
  peer?: string; // DMs: the other user
  room?: Room;
  unread: number;
  preview: string;
  lastActivity: number;
  memberCount: number;
  msgs: Msg[];
  loaded: boolean; // the newest history page is in
  nextBefore: number | null;
  loading: boolean;
  readUpTo: number; // highest seq this page marked read
  cursors: Map<string, { delivered: number; read: number }>; // other members' receipts
  typing: Map<string, ReturnType<typeof setTimeout>>;
  ch?: HeraldChannel;
}

const params = new URLSearchParams(location.search);
const me = params.get('user') ?? 'alice';
const debug = params.get('debug') === 'true';
const PAGE = 30;
const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

const cfg: Config = await (await fetch('/config.json')).json();
const tokens = new Tokens(me);
await tokens.start();
const appPath = `/v1/apps/${encodeURIComponent(cfg.appId)}`;
const name = (user: string) => cfg.users[user] ?? user;
$('me').textContent = `signed in as ${name(me)}`;
document.title = `${name(me)} · Herald chat`;

// --- REST --------------------------------------------------------------------

/** A JSON call with the user's session token (REST accepts it for its whole life). */
async function api(base: string, path: string, init: RequestInit = {}) {
  const res = await fetch(`${base}${path}`, {
    ...init,
    headers: {
      authorization: `Bearer ${await tokens.rest()}`,
      ...(init.body ? { 'content-type': 'application/json' } : {}),
    },
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body?.error?.message ?? `${res.status}`);
  return body;
}
const history = (path: string, init?: RequestInit) => api('/api/history', appPath + path, init);
const presence = (path: string) => api('/api/presence', appPath + path);
const authApi = (path: string, init?: RequestInit) => api(cfg.authUrl, appPath + path, init);
const chPath = (c: string) => `/channels/${encodeURIComponent(c)}`;

/** Message data is `{text}`; history gives it as JSON text, previews cut to 200 characters. */
function textOf(data: unknown): string {
  if (typeof data !== 'string') return String((data as { text?: unknown })?.text ?? '');
  try {
    return textOf(JSON.parse(data));
  } catch {
    return data.replace(/^\{"text":"/, '');
  }
}

// --- state -------------------------------------------------------------------

const convs = new Map<string, Conv>();
let open: Conv | undefined;
let editing: Msg | undefined;
const online = new Map<string, Set<string>>(); // user → presence channels they are in
const lastSeen = new Map<string, { online: boolean; last_seen: number | null }>();

function conv(channel: string): Conv {
  let c = convs.get(channel);
  if (!c) {
    c = {
      channel, title: channel, unread: 0, preview: '', lastActivity: 0, memberCount: 0, msgs: [],
      loaded: false, nextBefore: null, loading: false, readUpTo: 0, cursors: new Map(), typing: new Map(),
    };
    convs.set(channel, c);
  }
  return c;
}

/** Add or update a message (matched by id, or by client id while unacknowledged), keeping seq order. */
function upsert(c: Conv, m: Msg) {
  const old = c.msgs.find((x) => (m.id && x.id === m.id) || (m.clientId && x.clientId === m.clientId));
  if (old) Object.assign(old, m);
  else c.msgs.push(m);
  // Unacknowledged sends (no seq yet) stay last, in the order they were made.
  c.msgs.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || a.ts - b.ts);
}

// --- the connection: pusher-js + herald-js -----------------------------------

if (debug) recordFrames();
const gateway = params.get('gateway')?.split(':');
const authHeaders = () => ({ Authorization: `Bearer ${tokens.forSocket(pusher.connection.socket_id)}` });
const pusher = new Pusher(cfg.appKey, {
  wsHost: gateway?.[0] ?? cfg.wsHost,
  wsPort: Number(gateway?.[1] ?? cfg.wsPort),
  forceTLS: false,
  enabledTransports: ['ws'],
  cluster: 'mt1', // required by pusher-js, ignored by Herald
  enableStats: false,
  // A session token is single use: the first authorization binds it to its
  // socket, so every new connection (a reconnect too) gets a fresh one.
  channelAuthorization: { endpoint: `${cfg.authUrl}/pusher/auth`, transport: 'ajax', headersProvider: authHeaders },
  userAuthentication: { endpoint: `${cfg.authUrl}/pusher/user-auth`, transport: 'ajax', headersProvider: authHeaders },
});
const h = herald(pusher);
// Signed in, receipts on DMs (private channels) carry the user.
pusher.signin();
pusher.connection.bind('state_change', ({ current }: { current: string }) => {
  $('conn').textContent = current;
  $('conn').className = `conn ${current}`;
  renderDebug();
});

// Receipts on DMs (private channels) need a signed-in socket: the gateway
// refuses them until the sign-in is through, and after a reconnect the
// resubscribe and its replay can come before it. So they wait for it.
const heldReceipts = new Map<Conv, { delivered?: number; read?: number }>();
const signedIn = () => (pusher.user as { user_data?: { id?: string } }).user_data?.id === me;
function sendReceipt(c: Conv, kind: 'delivered' | 'read', seq: number) {
  if (!c.ch) return;
  if (!signedIn()) {
    const held = heldReceipts.get(c) ?? {};
    held[kind] = Math.max(held[kind] ?? 0, seq);
    heldReceipts.set(c, held);
    return;
  }
  if (kind === 'read') c.ch.markRead(seq);
  else c.ch.markDelivered(seq);
}
pusher.connection.bind('message', (m: { event: string }) => {
  if (m.event !== 'pusher:signin_success') return;
  // pusher-js's own handler (bound first) has stored the user by now.
  for (const [c, held] of heldReceipts) {
    if (held.delivered) sendReceipt(c, 'delivered', held.delivered);
    if (held.read) sendReceipt(c, 'read', held.read);
  }
  heldReceipts.clear();
});

function subscribe(c: Conv, resumeFrom?: number) {
  if (c.ch) return;
  // Resuming from the inbox's last message: nothing between that read and
  // the subscription is missed.
  const ch = h.subscribe(c.channel, resumeFrom ? { resumeFrom } : {});
  c.ch = ch;
  ch.bind('pusher:subscription_error', async (status: unknown) => {
    // Most likely a token refused (used or expired): retry with a fresh one.
    console.warn('subscription error', c.channel, status);
    await tokens.refill(true);
    setTimeout(() => ch.subscribe(), 1000);
  });
  ch.bind('message', (data: unknown, meta: EventMeta) => {
    if (meta.seq === undefined) return;
    const author = meta.user_id ?? '';
    upsert(c, { id: meta.id, seq: meta.seq, author, text: textOf(data), ts: meta.ts ?? Date.now(), edited: false, deleted: false, status: 'sent' });
    stopTyping(c, author);
    if (author !== me) sendReceipt(c, 'delivered', meta.seq);
    if (c === open && document.visibilityState === 'visible') markRead(c);
    if (c === open) renderThread(true);
    refreshInbox(meta.seq);
  });
  ch.bind('herald:message_edited', (data: { id: string; data: unknown }) => {
    const m = c.msgs.find((x) => x.id === data.id);
    if (m) Object.assign(m, { text: textOf(data.data), edited: true });
    if (c === open) renderThread();
    refreshInbox();
  });
  ch.bind('herald:message_deleted', (data: { id: string }) => {
    const m = c.msgs.find((x) => x.id === data.id);
    if (m) Object.assign(m, { text: '', deleted: true });
    if (c === open) renderThread();
    refreshInbox();
  });
  for (const kind of ['delivered', 'read'] as const) {
    ch.bind(`herald:${kind}`, (data: { user_id: string; seq: number }) => {
      if (data.user_id === me) return;
      receipt(c, data.user_id, kind, data.seq);
      if (c === open) renderThread();
    });
  }
  ch.bind('herald:resume_failed', () => {
    // The server could not replay what we missed: reload from history.
    c.loaded = false;
    if (c === open) openConv(c);
    refreshInbox();
  });
  ch.bind('client-typing', (data: { typing?: boolean }, meta?: { user_id?: string }) => {
    const user = meta?.user_id ?? c.peer;
    if (!user || user === me) return;
    if (data?.typing === false) return stopTyping(c, user);
    clearTimeout(c.typing.get(user));
    // Presence channels get herald:typing_stopped from the server after 3 s
    // of silence; this timer covers DMs (private channels) and lost events.
    c.typing.set(user, setTimeout(() => stopTyping(c, user), 5000));
    if (c === open) renderTyping();
  });
  ch.bind('herald:typing_stopped', (data: { user_id: string }) => stopTyping(c, data.user_id));
  // Presence (rooms): who is online.
  ch.bind('pusher:subscription_succeeded', (members?: { each?: (f: (m: { id: string }) => void) => void }) => {
    if (!members?.each) return;
    for (const set of online.values()) set.delete(c.channel);
    members.each((m) => setOnline(m.id, c.channel, true));
  });
  ch.bind('pusher:member_added', (m: { id: string }) => setOnline(m.id, c.channel, true));
  ch.bind('pusher:member_removed', (m: { id: string }) => setOnline(m.id, c.channel, false));
  ch.bind('herald:member_joined', () => refreshInbox());
  ch.bind('herald:member_left', () => refreshInbox());
}

function receipt(c: Conv, user: string, kind: 'delivered' | 'read', seq: number) {
  const cur = c.cursors.get(user) ?? { delivered: 0, read: 0 };
  cur[kind] = Math.max(cur[kind], seq);
  if (kind === 'read') cur.delivered = Math.max(cur.delivered, seq); // read implies delivered
  c.cursors.set(user, cur);
}

function markRead(c: Conv) {
  const seq = Math.max(0, ...c.msgs.map((m) => m.seq ?? 0));
  if (seq > c.readUpTo && c.ch) {
    c.readUpTo = seq;
    sendReceipt(c, 'read', seq);
  }
  c.unread = 0;
  renderInbox();
}

function stopTyping(c: Conv, user: string) {
  clearTimeout(c.typing.get(user));
  if (c.typing.delete(user) && c === open) renderTyping();
}

function setOnline(user: string, channel: string, isOnline: boolean) {
  if (user === me) return;
  const set = online.get(user) ?? new Set<string>();
  if (isOnline) set.add(channel);
  else set.delete(channel);
  online.set(user, set);
  fetchPresence(user);
  renderInbox();
  renderHead();
}

/** Last seen comes from the presence service (a leave may take a moment to show there). */
async function fetchPresence(user: string, tries = 5) {
  try {
    const p = await presence(`/users/${encodeURIComponent(user)}/presence`);
    lastSeen.set(user, p);
    const expected = (online.get(user)?.size ?? 0) > 0;
    if (p.online !== expected && tries > 1) setTimeout(() => fetchPresence(user, tries - 1), 1000);
  } catch (err) {
    console.warn('presence', err);
  }
  renderInbox();
  renderHead();
}
const isOnline = (user: string) => (online.get(user)?.size ?? 0) > 0 || (lastSeen.get(user)?.online ?? false);

// --- inbox ---------------------------------------------------------------------

let inboxTimer: ReturnType<typeof setTimeout> | undefined;
let inboxMinSeq = 0;

/** Reload the inbox soon (debounced), once the read model has applied minSeq. */
function refreshInbox(minSeq = 0) {
  inboxMinSeq = Math.max(inboxMinSeq, minSeq);
  clearTimeout(inboxTimer);
  inboxTimer = setTimeout(() => loadInbox().catch((e) => console.warn('inbox', e)), 150);
}

async function loadInbox(first = false) {
  const minSeq = inboxMinSeq;
  const [rooms, dms, inbox] = await Promise.all([
    authApi('/rooms'),
    authApi('/dms'),
    history(`/users/${encodeURIComponent(me)}/inbox?limit=200${minSeq ? `&min_seq=${minSeq}` : ''}`),
  ]);
  for (const r of rooms.rooms as Room[]) Object.assign(conv(r.channel), { room: r, title: r.name });
  for (const d of dms.dms as { channel: string; user_id: string }[]) {
    Object.assign(conv(d.channel), { peer: d.user_id, title: name(d.user_id) });
  }
  for (const e of inbox.channels) {
    const c = conv(e.channel);
    const last = e.last_message;
    // What this page has marked read is read, even before the read model says so.
    c.unread = c === open || (last && last.seq <= c.readUpTo) ? 0 : e.unread;
    c.memberCount = e.member_count;
    c.lastActivity = e.last_activity;
    c.preview = last ? `${last.author === me ? 'You' : name(last.author ?? '')}: ${textOf(last.data)}` : '';
    if (first) subscribe(c, last?.seq);
  }
  for (const c of convs.values()) {
    subscribe(c);
    if (c.peer && !lastSeen.has(c.peer)) fetchPresence(c.peer);
  }
  renderInbox();
}

function renderInbox() {
  const list = [...convs.values()].sort((a, b) => b.lastActivity - a.lastActivity || a.title.localeCompare(b.title));
  $('inbox').replaceChildren(
    ...list.map((c) => {
      const li = el('li', { class: c === open ? 'open' : '', 'data-channel': c.channel, 'data-testid': `conv-${c.peer ?? c.title}` });
      const dot = el('span', { class: `dot ${c.peer ? (isOnline(c.peer) ? 'online' : '') : 'room'}`, 'data-testid': 'dot' });
      li.append(dot, el('span', { class: 'title' }, c.title), el('span', { class: 'badge', 'data-testid': 'unread' }, c.unread ? String(c.unread) : ''));
      li.append(el('span', { class: 'preview', 'data-testid': 'preview' }, c.preview));
      li.onclick = () => openConv(c);
      return li;
    }),
  );
}

// --- a conversation --------------------------------------------------------------

async function openConv(c: Conv) {
  open = c;
  editing = undefined;
  $('chat').hidden = false;
  $('empty').hidden = true;
  renderInbox();
  renderHead();
  renderTyping();
  if (!c.loaded) {
    c.loaded = true;
    c.nextBefore = null;
    await loadPage(c);
    await loadReceipts(c);
  }
  renderThread(true);
  markRead(c);
}

/** One page of history: the newest, or the one before `nextBefore`. */
async function loadPage(c: Conv, older = false) {
  if (c.loading) return;
  c.loading = true;
  try {
    const page = await history(`${chPath(c.channel)}/messages?limit=${PAGE}${older && c.nextBefore ? `&before=${c.nextBefore}` : ''}`);
    for (const m of page.messages) {
      if (m.event !== 'message') continue;
      upsert(c, { id: m.id, seq: m.seq, author: m.author ?? '', text: m.deleted ? '' : textOf(m.data), ts: m.ts, edited: m.edited_at != null, deleted: m.deleted, status: 'sent' });
    }
    c.nextBefore = page.next_before;
  } finally {
    c.loading = false;
  }
}

/** Ticks of messages from history: the receipts of my newest one (cursors only move forward). */
async function loadReceipts(c: Conv) {
  const mine = [...c.msgs].reverse().find((m) => m.author === me && m.id && m.seq);
  if (!mine) return;
  const r = await history(`${chPath(c.channel)}/messages/${encodeURIComponent(mine.id!)}/receipts`);
  for (const m of r.members) {
    if (m.delivered) receipt(c, m.user_id, 'delivered', r.seq);
    if (m.read) receipt(c, m.user_id, 'read', r.seq);
  }
}

/** Older messages when the thread is scrolled to its top. */
$('thread').addEventListener('scroll', async () => {
  const c = open;
  const thread = $('thread');
  if (!c || thread.scrollTop > 40 || !c.nextBefore || c.loading) return;
  const fromBottom = thread.scrollHeight - thread.scrollTop;
  await loadPage(c, true);
  renderThread();
  thread.scrollTop = thread.scrollHeight - fromBottom; // keep the view where it was
});

function renderHead() {
  const c = open;
  if (!c) return;
  $('chat-title').textContent = c.title;
  let status = '';
  if (c.peer) {
    const p = lastSeen.get(c.peer);
    status = isOnline(c.peer) ? 'online' : p?.last_seen ? `last seen ${new Date(p.last_seen).toLocaleTimeString()}` : 'offline';
  } else if (c.room) {
    const here = [...online].filter(([, set]) => set.has(c.channel)).map(([u]) => name(u));
    status = `code ${c.room.code} · ${c.memberCount} members · online: ${[name(me), ...here].join(', ')}`;
  }
  $('chat-status').textContent = status;
}

function renderTyping() {
  const users = open ? [...open.typing.keys()].map(name) : [];
  $('typing').textContent = users.length ? `${users.join(', ')} ${users.length > 1 ? 'are' : 'is'} typing…` : '';
}

/** The tick state of my message: sent, delivered (to every other member) or read. */
function tickOf(c: Conv, m: Msg): string {
  if (m.status !== 'sent' || m.seq === undefined) return m.status;
  const others = [...c.cursors.entries()].filter(([u]) => u !== me).map(([, v]) => v);
  const need = Math.max(1, c.peer ? 1 : c.memberCount - 1);
  if (others.filter((v) => v.read >= m.seq!).length >= need) return 'read';
  if (others.filter((v) => v.delivered >= m.seq!).length >= need) return 'delivered';
  return 'sent';
}
const TICKS: Record<string, string> = { sending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '⚠ not sent' };

function renderThread(toBottom = false) {
  const c = open;
  if (!c) return;
  const thread = $('thread');
  const atBottom = toBottom || thread.scrollHeight - thread.scrollTop - thread.clientHeight < 30;
  const items = c.msgs.map((m) => {
    const mine = m.author === me;
    const li = el('li', { class: `${mine ? 'mine' : ''} ${m.deleted ? 'deleted' : ''}`, 'data-testid': 'message', 'data-seq': String(m.seq ?? ''), 'data-author': m.author });
    if (!mine && !c.peer) li.append(el('div', { class: 'meta' }, name(m.author)));
    li.append(el('div', { class: 'text', 'data-testid': 'text' }, m.deleted ? 'message deleted' : m.text));
    const meta = el('div', { class: 'meta' }, new Date(m.ts).toLocaleTimeString());
    if (m.edited && !m.deleted) meta.append(el('span', { 'data-testid': 'edited' }, '(edited)'));
    if (mine && !m.deleted) {
      const tick = tickOf(c, m);
      meta.append(el('span', { class: `ticks ${tick}`, 'data-testid': 'ticks', 'data-status': tick, title: m.error ?? tick }, TICKS[tick]));
      if (tick === 'failed') meta.append(button('retry', () => publish(c, m)));
      if (m.id) meta.append(button('edit', () => startEdit(m)), button('delete', () => remove(c, m)));
    }
    li.append(meta);
    return li;
  });
  if (c.nextBefore) items.unshift(el('li', { class: 'older-marker', 'data-testid': 'older' }, 'scroll up for older messages'));
  thread.replaceChildren(...items);
  if (atBottom) thread.scrollTop = thread.scrollHeight;
}

// --- sending, editing, deleting ---------------------------------------------------

/** Publish over the WebSocket; the ack (or nack) settles the optimistic message. */
async function publish(c: Conv, m: Msg) {
  Object.assign(m, { status: 'sending', error: undefined });
  renderThread(true);
  try {
    // The same client id on a retry: the server stores it once.
    const ack = await c.ch!.publish('message', { text: m.text }, { clientId: m.clientId });
    Object.assign(m, { id: ack.id, seq: ack.seq, ts: ack.ts, status: 'sent' });
    upsert(c, m);
    refreshInbox(ack.seq);
  } catch (err) {
    Object.assign(m, { status: 'failed', error: (err as Error).message });
  }
  if (c === open) renderThread();
}

$('composer').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = ($('composer') as HTMLFormElement).elements.namedItem('text') as HTMLInputElement;
  const text = input.value.trim();
  const c = open;
  if (!text || !c) return;
  input.value = '';
  c.ch?.trigger('client-typing', { typing: false });
  lastTyping = 0;
  if (editing) {
    const m = editing;
    stopEdit();
    await history(`${chPath(c.channel)}/messages/${encodeURIComponent(m.id!)}`, { method: 'PATCH', body: JSON.stringify({ data: { text } }) })
      .then(() => Object.assign(m, { text, edited: true }))
      .catch((err) => alert(`edit failed: ${err.message}`));
    renderThread();
    return;
  }
  const m: Msg = { clientId: crypto.randomUUID(), author: me, text, ts: Date.now(), edited: false, deleted: false, status: 'sending' };
  upsert(c, m);
  await publish(c, m);
});

function startEdit(m: Msg) {
  editing = m;
  const input = ($('composer') as HTMLFormElement).elements.namedItem('text') as HTMLInputElement;
  input.value = m.text;
  input.focus();
  $('cancel-edit').hidden = false;
}
function stopEdit() {
  editing = undefined;
  $('cancel-edit').hidden = true;
}
$('cancel-edit').onclick = () => {
  stopEdit();
  (($('composer') as HTMLFormElement).elements.namedItem('text') as HTMLInputElement).value = '';
};

async function remove(c: Conv, m: Msg) {
  try {
    await history(`${chPath(c.channel)}/messages/${encodeURIComponent(m.id!)}`, { method: 'DELETE' });
    Object.assign(m, { text: '', deleted: true });
  } catch (err) {
    alert(`delete failed: ${(err as Error).message}`);
  }
  renderThread();
}

// Typing: at most one client-typing every 2 s (client events are rate limited).
let lastTyping = 0;
$('composer').addEventListener('input', (e) => {
  if (!open?.ch || editing) return;
  if (!(e.target as HTMLInputElement).value) {
    // Cleared: stop at once rather than when the timeout runs out.
    if (lastTyping) open.ch.trigger('client-typing', { typing: false });
    lastTyping = 0;
    return;
  }
  if (Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  open.ch.trigger('client-typing', { typing: true });
});

// --- rooms: create, join by code ---------------------------------------------------

function roomForm(id: string, call: (value: string) => Promise<Room>) {
  const form = $(id) as HTMLFormElement;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = form.querySelector('input')!;
    $('side-error').textContent = '';
    try {
      const room = await call(input.value.trim());
      input.value = '';
      const c = conv(room.channel);
      Object.assign(c, { room, title: room.name });
      subscribe(c);
      await loadInbox();
      openConv(c);
    } catch (err) {
      $('side-error').textContent = (err as Error).message;
    }
  });
}
roomForm('new-room', (name) => authApi('/rooms', { method: 'POST', body: JSON.stringify({ name }) }));
roomForm('join-room', (code) => authApi('/rooms/join', { method: 'POST', body: JSON.stringify({ code }) }));

// --- debug panel ---------------------------------------------------------------

/** Every frame of every WebSocket pusher-js opens (it looks up window.WebSocket when connecting). */
function recordFrames() {
  $('debug').hidden = false;
  const Native = window.WebSocket;
  const frames = $('frames');
  const add = (dir: string, text: string) => {
    frames.append(el('li', { class: dir }, `${new Date().toISOString().slice(11, 23)} ${dir === 'in' ? '←' : '→'} ${text}`));
    while (frames.childElementCount > 300) frames.firstElementChild!.remove();
    frames.scrollTop = frames.scrollHeight;
  };
  class Recorded extends Native {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols);
      add('out', `open ${url}`);
      this.addEventListener('message', (e) => add('in', String(e.data)));
      this.addEventListener('close', (e) => add('in', `closed ${e.code}`));
    }
    send(data: string) {
      add('out', data);
      super.send(data);
    }
  }
  window.WebSocket = Recorded;
  setInterval(renderDebug, 1000);
}

function renderDebug() {
  if (!debug) return;
  $('debug-state').textContent = JSON.stringify(
    { state: pusher.connection.state, socket_id: pusher.connection.socket_id, pending: h.pending(), ...h.stats() },
    null,
    1,
  );
}

// --- helpers -----------------------------------------------------------------

function el(tag: string, attrs: Record<string, string> = {}, text?: string) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function button(label: string, onClick: () => void) {
  const b = el('button', { type: 'button', 'data-testid': label }, label);
  b.onclick = onClick;
  return b;
}

document.addEventListener('visibilitychange', () => open && document.visibilityState === 'visible' && markRead(open));
// Rooms and DMs others opened with us, and the presence of DM peers who share
// no room with us (no presence channel tells us about them).
setInterval(() => {
  refreshInbox();
  for (const c of convs.values()) if (c.peer) fetchPresence(c.peer, 1);
}, 30_000);
await loadInbox(true);
if (!convs.size) $('empty').textContent = 'No conversation yet: create a room, or join one by its code.';
