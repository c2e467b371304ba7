/**
 * herald-js: Herald's extensions of the Pusher protocol for an unmodified
 * pusher-js 8.
 *
 * `herald(pusher)` attaches to a pusher-js instance (wrapping a few methods
 * of that instance and of the objects it owns; nothing global, no patched
 * files) and gives it:
 *
 * - resume after every reconnect: the last `seq` seen of each channel is
 *   sent as `resume_from` in the `pusher:subscribe` pusher-js sends when it
 *   resubscribes, so the server replays what was missed;
 * - de-duplication: a durable event whose `seq` is not above the last one
 *   seen of its channel never reaches the app (nor `bind_global`, nor
 *   `connection.bind('message')`);
 * - continuity checks with `prev_seq` (`herald:gap` on the channel);
 * - `channel.publish(event, data)`: `herald:publish` with a `client_id`,
 *   resolved with the `herald:ack`, rejected with the `herald:nack`, re-sent
 *   with the same `client_id` after a reconnect (the server stores it once);
 * - `channel.markDelivered(seq)` / `channel.markRead(seq)`: receipts.
 *
 * Everything else is pusher-js's own API.
 */

import type Pusher from 'pusher-js';
import type { Channel } from 'pusher-js';

// --- public types ----------------------------------------------------------------

/** Why the server could not replay a channel from the position asked. */
export type ResumeFailedReason =
  | 'retention'
  | 'too_far_behind'
  | 'unknown_position'
  | 'unavailable'
  | (string & {});

/** Data of `herald:resume_failed` (bound on the channel). */
export interface ResumeFailed {
  channel: string;
  /** Oldest seq the server still has of the channel (0: none / unknown). */
  oldest_seq: number;
  reason: ResumeFailedReason;
  /**
   * Added by herald-js: the position the subscribe asked to resume from. The
   * app can reload what lies between it and now from the history API.
   */
  resume_from?: number;
}

/** What a durable event's second callback argument carries. */
export interface EventMeta {
  /** The user who published it (client events and `herald:publish`). */
  user_id?: string;
  /** The stored event's id. */
  id?: string;
  /** Its position in the channel (strictly increasing). */
  seq?: number;
  /** The seq of the channel's previous event, when the server knows it. */
  prev_seq?: number;
  /** When it was stored, in ms since the epoch. */
  ts?: number;
}

/** `herald:ack`: the publish is stored. */
export interface PublishAck {
  client_id: string;
  channel: string;
  id: string;
  seq: number;
  ts: number;
}

/** Codes a publish is rejected with: the server's nack codes and herald-js's own. */
export type PublishErrorCode =
  | 'not_subscribed'
  | 'not_allowed'
  | 'invalid'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  /** herald-js: no ack within the timeout. */
  | 'timeout'
  /** herald-js: the app unsubscribed from the channel. */
  | 'unsubscribed'
  /** herald-js: `detach()` was called. */
  | 'detached'
  | (string & {});

/** A rejected publish (`herald:nack`, or one of herald-js's own codes). */
export class HeraldPublishError extends Error {
  readonly code: PublishErrorCode;
  readonly clientId: string;
  readonly channel: string;
  constructor(code: PublishErrorCode, message: string, clientId: string, channel: string) {
    super(`${code}: ${message}`);
    this.name = 'HeraldPublishError';
    this.code = code;
    this.clientId = clientId;
    this.channel = channel;
  }
}

/** A break in a channel's chain of `prev_seq` (`herald:gap`). */
export interface Gap {
  channel: string;
  /** The event that does not follow on from the last one seen. */
  seq: number;
  /** Its `prev_seq`. */
  prev_seq: number;
  /** The last seq seen before it. */
  last_seq: number;
}

/** A durable event dropped because its seq was already seen. */
export interface Duplicate {
  channel: string;
  event: string;
  seq: number;
  last_seq: number;
}

export interface PublishOptions {
  /**
   * The `client_id` to publish with (default: a fresh random UUID). Publishing
   * again with the same id (after a rejection by timeout, say) is
   * idempotent: the server stores it once and acknowledges the original.
   */
  clientId?: string;
  /** Overrides `HeraldOptions.publishTimeoutMs` for this publish. */
  timeoutMs?: number;
}

export interface SubscribeOptions {
  /**
   * Resume from this seq on the first subscribe too (a position the app kept,
   * e.g. the last seq of the history page it rendered): the server replays
   * every event after it, or says `herald:resume_failed`.
   */
  resumeFrom?: number;
}

export interface HeraldOptions {
  /**
   * How long a publish waits for its ack before it is rejected with code
   * `timeout`, in ms (default 30000; 0: no limit). The time spent
   * disconnected counts.
   */
  publishTimeoutMs?: number;
  /**
   * Retry a publish refused with `unavailable` (the server could not store
   * it) after a backoff, and at once after a reconnect (default true).
   */
  retryUnavailable?: boolean;
  /** First backoff after `unavailable`, in ms (default 250); doubled each time. */
  retryInitialMs?: number;
  /** Longest backoff, in ms (default 8000). */
  retryMaxMs?: number;
  /** Check `prev_seq` continuity and report `herald:gap` (default true). */
  checkContinuity?: boolean;
  /**
   * After a reconnect with a resume, while publishes sent before it are
   * still unacknowledged, the channel's replayed events are held until
   * their acks arrive (so that the app's own message, stored before the
   * connection dropped, is not handed to it as someone else's); at most this
   * long, in ms (default 5000).
   */
  holdReplayMs?: number;
  /** Makes `client_id`s (default `crypto.randomUUID()`). */
  generateId?: () => string;
}

/** Counters, for tests and monitoring. */
export interface HeraldStats {
  /** Subscribes sent with `resume_from`. */
  resumes: number;
  /** `herald:resume_failed` received. */
  resumeFailures: number;
  /** Durable events dropped as already seen. */
  duplicates: number;
  /** The app's own publishes dropped when they came back in a replay. */
  ownEchoes: number;
  /** Breaks of the `prev_seq` chain. */
  gaps: number;
  /** `herald:publish` frames sent (retries included). */
  publishesSent: number;
  /** Publishes acknowledged. */
  acks: number;
  /** Publishes re-sent (after a reconnect or an `unavailable`). */
  retries: number;
}

/** The methods herald-js adds to a pusher-js channel. */
export interface HeraldChannelMethods {
  /**
   * Store an event on this (private or presence) channel: resolves with the
   * ack, rejects with a `HeraldPublishError`. Sent once the channel is
   * subscribed; re-sent after a reconnect until acknowledged.
   */
  publish(event: string, data: unknown, options?: PublishOptions): Promise<PublishAck>;
  /**
   * Say every event up to `seq` was delivered to this user (`herald:delivered`).
   * Returns whether a receipt was sent now; one made while the channel is not
   * subscribed is sent after it is. Only a seq above the last one marked is
   * sent.
   */
  markDelivered(seq: number): boolean;
  /** As `markDelivered`, for `herald:read`. */
  markRead(seq: number): boolean;
  /** The last seq seen of this channel. */
  lastSeq(): number | undefined;
}

/** A pusher-js channel with herald-js's methods. */
export type HeraldChannel = Channel & HeraldChannelMethods;

export type HeraldEvent = 'resume' | 'resume_failed' | 'duplicate' | 'gap' | 'nack';

/** What `herald(pusher)` returns. */
export interface Herald {
  readonly pusher: Pusher;
  /** `pusher.subscribe(name)`, returning the channel with herald-js's methods. */
  subscribe(name: string, options?: SubscribeOptions): HeraldChannel;
  /** A channel pusher-js knows, with herald-js's methods. */
  channel(name: string): HeraldChannel | undefined;
  /** The last seq seen of a channel. */
  lastSeq(name: string): number | undefined;
  /**
   * Set the position of a channel (`undefined`: forget it). The next
   * subscribe (on reconnect) resumes from there, and events at or below it
   * are dropped as already seen.
   */
  setLastSeq(name: string, seq: number | undefined): void;
  /** Publishes not yet acknowledged (of one channel, or all). */
  pending(name?: string): number;
  stats(): HeraldStats;
  /**
   * Listen to herald-js's own events: `resume` ({channel, resume_from}),
   * `resume_failed` (ResumeFailed), `duplicate` (Duplicate), `gap` (Gap),
   * `nack` (a nack no publish of this client is waiting for, e.g. a
   * refused receipt: {client_id, code, message}).
   */
  bind(event: HeraldEvent, callback: (data: any) => void): Herald;
  unbind(event: HeraldEvent, callback?: (data: any) => void): Herald;
  /** Undo every wrapping; pending publishes are rejected with `detached`. */
  detach(): void;
}

// --- pusher-js internals (8.x), structurally ------------------------------------

type Fn = (...args: any[]) => any;

interface PusherEvent {
  event: string;
  channel?: string;
  data?: any;
  user_id?: string;
}

interface Emitting {
  emit: Fn;
}

interface TransportConnectionLike extends Emitting {}

interface ConnectionLike {
  transport?: TransportConnectionLike | null;
}

interface ConnectionManagerLike extends Emitting {
  state: string;
  socket_id?: string;
  connection: ConnectionLike | null;
  setConnection?: (connection: ConnectionLike) => void;
  bind: Fn;
  unbind: Fn;
}

interface ChannelLike extends Emitting {
  name: string;
  subscribed: boolean;
  subscriptionPending: boolean;
  [key: string]: any;
}

interface PusherLike {
  connection: ConnectionManagerLike;
  channels: {
    channels: Record<string, ChannelLike>;
    add: (name: string, pusher: unknown) => ChannelLike;
    find: (name: string) => ChannelLike | undefined;
  };
  send_event: (name: string, data: any, channel?: string) => boolean;
  subscribe: (name: string) => ChannelLike;
  unsubscribe: (name: string) => void;
}

/** The fields of a frame as the server sent it (pusher-js keeps only some). */
interface RawFrame {
  event?: unknown;
  channel?: unknown;
  id?: unknown;
  seq?: unknown;
  prev_seq?: unknown;
  ts?: unknown;
  user_id?: unknown;
  client_id?: unknown;
}

interface DurableFrame extends RawFrame {
  event: string;
  channel: string;
  seq: number;
}

// --- state ---------------------------------------------------------------------------

interface Pending {
  clientId: string;
  channel: string;
  event: string;
  data: unknown;
  resolve: (ack: PublishAck) => void;
  reject: (err: HeraldPublishError) => void;
  promise: Promise<PublishAck>;
  /** socket_id it was last sent on (undefined: never sent). */
  sentOn?: string;
  attempts: number;
  timeout?: ReturnType<typeof setTimeout>;
  backoff?: ReturnType<typeof setTimeout>;
}

interface Hold {
  waiting: Set<string>;
  frames: Array<{ event: PusherEvent; raw: DurableFrame }>;
  timer: ReturnType<typeof setTimeout>;
}

type ReceiptKind = 'delivered' | 'read';

interface ChannelState {
  /** Last seq seen (delivered to the app, or an own publish that came back). */
  lastSeq?: number;
  /** Seqs of own acknowledged publishes above lastSeq (not echoed live). */
  ownSeqs: Set<number>;
  /** The resume_from of the last subscribe sent. */
  sentResumeFrom?: number;
  hold?: Hold;
  /** Highest receipt seq the app marked, and the highest sent. */
  receiptWanted: Partial<Record<ReceiptKind, number>>;
  receiptSent: Partial<Record<ReceiptKind, number>>;
}

const MAX_OWN_CLIENT_IDS = 1024;

const attached = new WeakMap<object, Herald>();

function isDurable(raw: RawFrame | undefined): raw is DurableFrame {
  return (
    raw !== undefined &&
    typeof raw.event === 'string' &&
    typeof raw.channel === 'string' &&
    typeof raw.seq === 'number' &&
    Number.isFinite(raw.seq) &&
    !raw.event.startsWith('pusher')
  );
}

function metaOf(raw: DurableFrame): EventMeta {
  const meta: EventMeta = { seq: raw.seq };
  if (typeof raw.id === 'string') meta.id = raw.id;
  if (typeof raw.prev_seq === 'number') meta.prev_seq = raw.prev_seq;
  if (typeof raw.ts === 'number') meta.ts = raw.ts;
  if (typeof raw.user_id === 'string') meta.user_id = raw.user_id;
  return meta;
}

function defaultId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  throw new Error('herald-js: crypto.randomUUID is not available; pass options.generateId');
}

function isSeq(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0;
}

// --- herald ---------------------------------------------------------------------------

/**
 * Attach herald-js to a pusher-js 8 instance (before or after it connected).
 * Attaching twice returns the same object.
 */
export function herald(pusherInstance: Pusher, options: HeraldOptions = {}): Herald {
  const existing = attached.get(pusherInstance as object);
  if (existing) return existing;

  const pusher = pusherInstance as unknown as PusherLike;
  const manager = pusher.connection;
  if (
    !manager ||
    typeof manager.emit !== 'function' ||
    typeof manager.setConnection !== 'function' ||
    !pusher.channels ||
    typeof pusher.channels.add !== 'function' ||
    typeof pusher.send_event !== 'function'
  ) {
    throw new Error('herald-js: this does not look like a pusher-js 8 instance');
  }

  const opts = {
    publishTimeoutMs: options.publishTimeoutMs ?? 30_000,
    retryUnavailable: options.retryUnavailable ?? true,
    retryInitialMs: options.retryInitialMs ?? 250,
    retryMaxMs: options.retryMaxMs ?? 8_000,
    checkContinuity: options.checkContinuity ?? true,
    holdReplayMs: options.holdReplayMs ?? 5_000,
    generateId: options.generateId ?? defaultId,
  };

  const states = new Map<string, ChannelState>();
  const pending = new Map<string, Pending>();
  /** client_ids of own acknowledged publishes → their seq (bounded). */
  const ownClientIds = new Map<string, number>();
  const listeners = new Map<HeraldEvent, Set<(data: any) => void>>();
  const restore: Array<() => void> = [];
  const stats: HeraldStats = {
    resumes: 0,
    resumeFailures: 0,
    duplicates: 0,
    ownEchoes: 0,
    gaps: 0,
    publishesSent: 0,
    acks: 0,
    retries: 0,
  };
  let detached = false;
  /** The raw frame being dispatched (pusher-js's decoding drops seq & co). */
  let current: RawFrame | undefined;

  const stateOf = (name: string): ChannelState => {
    let st = states.get(name);
    if (!st) {
      st = { ownSeqs: new Set(), receiptWanted: {}, receiptSent: {} };
      states.set(name, st);
    }
    return st;
  };

  const fire = (event: HeraldEvent, data: unknown) => {
    for (const cb of [...(listeners.get(event) ?? [])]) {
      try {
        cb(data);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  };

  const socketId = () => manager.socket_id;
  const channelObj = (name: string) => pusher.channels.find(name);
  const isLive = (name: string) => {
    const ch = channelObj(name);
    return manager.state === 'connected' && !!manager.connection && !!ch && ch.subscribed;
  };

  /** Where a subscribe should resume from. */
  const resumePosition = (st: ChannelState): number | undefined => {
    if (st.lastSeq !== undefined) return st.lastSeq;
    // Nothing seen but own publishes: from the first of them.
    if (st.ownSeqs.size > 0) return Math.min(...st.ownSeqs);
    return undefined;
  };

  const advance = (st: ChannelState, seq: number) => {
    st.lastSeq = seq;
    for (const own of st.ownSeqs) if (own <= seq) st.ownSeqs.delete(own);
  };

  const inFlight = (name: string) => {
    for (const p of pending.values()) if (p.channel === name && p.sentOn !== undefined) return true;
    return false;
  };

  const checkGap = (st: ChannelState, raw: DurableFrame) => {
    if (!opts.checkContinuity || st.lastSeq === undefined || typeof raw.prev_seq !== 'number') return;
    if (raw.prev_seq === st.lastSeq) return;
    // The previous event is an own publish (never echoed to this socket).
    if (raw.prev_seq > st.lastSeq && (st.ownSeqs.has(raw.prev_seq) || inFlight(raw.channel))) return;
    stats.gaps += 1;
    const gap: Gap = { channel: raw.channel, seq: raw.seq, prev_seq: raw.prev_seq, last_seq: st.lastSeq };
    channelObj(raw.channel)?.emit('herald:gap', gap);
    fire('gap', gap);
  };

  /** Should this durable event reach the app? Updates the channel's position. */
  const admit = (event: PusherEvent, raw: DurableFrame): boolean => {
    const st = stateOf(raw.channel);
    const seq = raw.seq;
    const own =
      st.ownSeqs.has(seq) || (typeof raw.client_id === 'string' && ownClientIds.get(raw.client_id) === seq);
    if (st.lastSeq !== undefined && seq <= st.lastSeq) {
      if (!own) {
        stats.duplicates += 1;
        fire('duplicate', { channel: raw.channel, event: event.event, seq, last_seq: st.lastSeq } as Duplicate);
      }
      return false;
    }
    checkGap(st, raw);
    advance(st, seq);
    if (own) {
      // The app's own publish, replayed on a resume: it has the ack.
      stats.ownEchoes += 1;
      return false;
    }
    return true;
  };

  // --- dispatch ------------------------------------------------------------------

  const origManagerEmit = manager.emit;

  const forward = (event: PusherEvent, raw: RawFrame | undefined) => {
    const prev = current;
    current = raw;
    try {
      return origManagerEmit.call(manager, 'message', event);
    } finally {
      current = prev;
    }
  };

  const releaseHold = (name: string) => {
    const st = states.get(name);
    const hold = st?.hold;
    if (!st || !hold) return;
    clearTimeout(hold.timer);
    st.hold = undefined;
    for (const { event, raw } of hold.frames) {
      if (admit(event, raw)) forward(event, raw);
    }
  };

  const dropHold = (st: ChannelState) => {
    if (!st.hold) return;
    clearTimeout(st.hold.timer);
    // The frames come again: the next subscribe resumes from before them.
    st.hold = undefined;
  };

  const unblock = (p: Pending) => {
    const st = states.get(p.channel);
    if (st?.hold && st.hold.waiting.delete(p.clientId) && st.hold.waiting.size === 0) {
      releaseHold(p.channel);
    }
  };

  const settle = (p: Pending) => {
    pending.delete(p.clientId);
    if (p.timeout) clearTimeout(p.timeout);
    if (p.backoff) clearTimeout(p.backoff);
    p.timeout = p.backoff = undefined;
    unblock(p);
  };

  const fail = (p: Pending, code: PublishErrorCode, message: string) => {
    settle(p);
    p.reject(new HeraldPublishError(code, message, p.clientId, p.channel));
  };

  const send = (p: Pending) => {
    if (detached || !pending.has(p.clientId) || p.backoff || !isLive(p.channel)) return;
    const sid = socketId();
    if (p.sentOn !== undefined && p.sentOn === sid) return;
    const sent = pusher.send_event('herald:publish', {
      channel: p.channel,
      event: p.event,
      data: p.data,
      client_id: p.clientId,
    });
    if (sent) {
      if (p.attempts > 0) stats.retries += 1;
      p.attempts += 1;
      p.sentOn = sid;
      stats.publishesSent += 1;
    }
  };

  const onAck = (data: any) => {
    if (!data || typeof data.client_id !== 'string' || !isSeq(data.seq)) return;
    const ack: PublishAck = {
      client_id: data.client_id,
      channel: data.channel,
      id: data.id,
      seq: data.seq,
      ts: data.ts,
    };
    const p = pending.get(ack.client_id);
    const name = p?.channel ?? (typeof ack.channel === 'string' ? ack.channel : undefined);
    if (name !== undefined) {
      const st = stateOf(name);
      if (st.lastSeq === undefined || ack.seq > st.lastSeq) st.ownSeqs.add(ack.seq);
    }
    ownClientIds.set(ack.client_id, ack.seq);
    if (ownClientIds.size > MAX_OWN_CLIENT_IDS) {
      ownClientIds.delete(ownClientIds.keys().next().value as string);
    }
    if (p) {
      stats.acks += 1;
      settle(p);
      p.resolve(ack);
    }
  };

  const onNack = (data: any) => {
    const clientId = typeof data?.client_id === 'string' ? data.client_id : '';
    const p = clientId ? pending.get(clientId) : undefined;
    if (!p) {
      fire('nack', data);
      return;
    }
    const code = String(data.code ?? 'unknown');
    const message = String(data.message ?? '');
    if (code === 'unavailable' && opts.retryUnavailable) {
      // Not stored this time: try again after a backoff (or at once after a
      // reconnect, when the channel is subscribed again).
      unblock(p);
      const delay = Math.min(opts.retryMaxMs, opts.retryInitialMs * 2 ** Math.max(0, p.attempts - 1));
      p.sentOn = undefined;
      if (p.backoff) clearTimeout(p.backoff);
      p.backoff = setTimeout(() => {
        p.backoff = undefined;
        send(p);
      }, delay * (0.75 + Math.random() * 0.5));
      return;
    }
    fail(p, code, message);
  };

  const sendReceipts = (name: string) => {
    const st = states.get(name);
    if (!st || !isLive(name)) return false;
    let sent = false;
    for (const kind of ['delivered', 'read'] as const) {
      const want = st.receiptWanted[kind];
      if (want === undefined || (st.receiptSent[kind] ?? 0) >= want) continue;
      if (pusher.send_event(`herald:${kind}`, { channel: name, seq: want })) {
        st.receiptSent[kind] = want;
        sent = true;
      }
    }
    return sent;
  };

  const onSubscribed = (name: string) => {
    const st = states.get(name);
    const sid = socketId();
    const resent = [...pending.values()].filter((p) => p.channel === name);
    if (st && st.sentResumeFrom !== undefined) {
      // Publishes sent on an earlier socket may be stored already and come
      // back in the replay before their acks: hold the replay until then.
      const waiting = new Set(
        resent.filter((p) => p.sentOn !== undefined && p.sentOn !== sid).map((p) => p.clientId),
      );
      if (waiting.size > 0) {
        dropHold(st);
        st.hold = { waiting, frames: [], timer: setTimeout(() => releaseHold(name), opts.holdReplayMs) };
      }
    }
    for (const p of resent) {
      if (p.backoff) {
        clearTimeout(p.backoff);
        p.backoff = undefined;
      }
      send(p);
    }
    sendReceipts(name);
  };

  const onResumeFailed = (name: string, data: any) => {
    const st = stateOf(name);
    stats.resumeFailures += 1;
    if (data && typeof data === 'object' && st.sentResumeFrom !== undefined && data.resume_from === undefined) {
      data.resume_from = st.sentResumeFrom;
    }
    // No replay follows and the subscription is live: start afresh from
    // whatever comes next (a position beyond the channel would otherwise
    // drop every live event as "already seen").
    st.lastSeq = undefined;
    st.ownSeqs.clear();
    releaseHold(name);
    fire('resume_failed', data);
  };

  const handleMessage = (event: PusherEvent, raw: RawFrame | undefined) => {
    const name = event.channel;
    if (name !== undefined && isDurable(raw)) {
      const st = stateOf(name);
      if (st.hold) {
        st.hold.frames.push({ event, raw });
        return manager;
      }
      if (!admit(event, raw)) return manager;
      return forward(event, raw);
    }
    switch (event.event) {
      case 'herald:ack':
        onAck(event.data);
        break;
      case 'herald:nack':
        onNack(event.data);
        break;
      case 'herald:resume_failed':
        if (name !== undefined) onResumeFailed(name, event.data);
        break;
      case 'pusher_internal:subscription_succeeded': {
        const result = forward(event, raw);
        if (name !== undefined) onSubscribed(name);
        return result;
      }
    }
    return forward(event, raw);
  };

  manager.emit = function (this: unknown, name: string, arg?: any) {
    if (detached || name !== 'message' || !arg || typeof arg.event !== 'string') {
      return origManagerEmit.apply(this, arguments as unknown as any[]);
    }
    const raw = current && current.event === arg.event && current.channel === arg.channel ? current : undefined;
    return handleMessage(arg as PusherEvent, raw);
  };
  restore.push(() => {
    manager.emit = origManagerEmit;
  });

  // --- raw frames: the transport of every connection -------------------------------

  const hooked = new WeakSet<object>();
  const hookTransport = (transport: TransportConnectionLike | null | undefined) => {
    if (!transport || hooked.has(transport)) return;
    hooked.add(transport);
    const origEmit = transport.emit;
    transport.emit = function (this: unknown, name: string, arg?: any) {
      if (detached || name !== 'message' || !arg || typeof arg.data !== 'string') {
        return origEmit.apply(this, arguments as unknown as any[]);
      }
      let raw: RawFrame | undefined;
      try {
        const parsed = JSON.parse(arg.data);
        raw = parsed && typeof parsed === 'object' ? parsed : undefined;
      } catch {
        raw = undefined;
      }
      const prev = current;
      current = raw;
      try {
        return origEmit.apply(this, arguments as unknown as any[]);
      } finally {
        current = prev;
      }
    };
    restore.push(() => {
      transport.emit = origEmit;
    });
  };

  const origSetConnection = manager.setConnection!;
  manager.setConnection = function (this: unknown, connection: ConnectionLike) {
    if (!detached) hookTransport(connection?.transport);
    return origSetConnection.call(this, connection);
  };
  restore.push(() => {
    manager.setConnection = origSetConnection;
  });
  hookTransport(manager.connection?.transport);

  // --- subscribe: resume_from ------------------------------------------------------

  const origSendEvent = pusher.send_event;
  pusher.send_event = function (this: unknown, name: string, data: any, channel?: string) {
    if (!detached && name === 'pusher:subscribe' && data && typeof data.channel === 'string') {
      const st = states.get(data.channel);
      if (st) {
        dropHold(st);
        const position = resumePosition(st);
        if (position !== undefined && data.resume_from === undefined) {
          data = { ...data, resume_from: position };
          stats.resumes += 1;
          fire('resume', { channel: data.channel, resume_from: position });
        }
        st.sentResumeFrom = isSeq(data.resume_from) ? data.resume_from : undefined;
      }
    }
    return origSendEvent.call(this, name, data, channel);
  };
  restore.push(() => {
    pusher.send_event = origSendEvent;
  });

  // --- channels: methods and metadata ---------------------------------------------

  const enhance = (ch: ChannelLike): HeraldChannel => {
    if (!ch || ch.__herald === api) return ch as unknown as HeraldChannel;
    const name = ch.name;
    const origEmit = ch.emit;
    ch.emit = function (this: unknown, eventName: string, data?: any, metadata?: any) {
      const raw = current;
      if (!detached && isDurable(raw) && raw.channel === name && raw.event === eventName) {
        metadata = { ...(metadata ?? {}), ...metaOf(raw) };
      }
      return origEmit.call(this, eventName, data, metadata);
    };
    const methods: HeraldChannelMethods = {
      publish(event, data, publishOptions = {}) {
        const clientId = publishOptions.clientId ?? opts.generateId();
        const already = pending.get(clientId);
        if (already) return already.promise;
        if (detached) {
          return Promise.reject(new HeraldPublishError('detached', 'herald-js was detached', clientId, name));
        }
        if (channelObj(name) !== ch) {
          return Promise.reject(
            new HeraldPublishError('unsubscribed', `not subscribed to ${name}`, clientId, name),
          );
        }
        let resolve!: (ack: PublishAck) => void;
        let reject!: (err: HeraldPublishError) => void;
        const promise = new Promise<PublishAck>((res, rej) => {
          resolve = res;
          reject = rej;
        });
        const p: Pending = { clientId, channel: name, event, data, resolve, reject, promise, attempts: 0 };
        pending.set(clientId, p);
        const timeoutMs = publishOptions.timeoutMs ?? opts.publishTimeoutMs;
        if (timeoutMs > 0) {
          p.timeout = setTimeout(
            () => fail(p, 'timeout', `no herald:ack within ${timeoutMs} ms`),
            timeoutMs,
          );
        }
        send(p);
        return promise;
      },
      markDelivered(seq) {
        return mark(name, 'delivered', seq);
      },
      markRead(seq) {
        return mark(name, 'read', seq);
      },
      lastSeq() {
        return states.get(name)?.lastSeq;
      },
    };
    Object.assign(ch, methods);
    Object.defineProperty(ch, '__herald', { value: api, configurable: true, enumerable: false });
    restore.push(() => {
      ch.emit = origEmit;
    });
    return ch as unknown as HeraldChannel;
  };

  const mark = (name: string, kind: ReceiptKind, seq: number): boolean => {
    if (!isSeq(seq) || seq === 0) throw new TypeError(`herald-js: ${kind} needs a positive integer seq`);
    if (detached) return false;
    const st = stateOf(name);
    if ((st.receiptWanted[kind] ?? 0) >= seq) return false;
    st.receiptWanted[kind] = seq;
    return sendReceipts(name);
  };

  const origAdd = pusher.channels.add;
  pusher.channels.add = function (this: unknown, name: string, owner: unknown) {
    const ch = origAdd.call(this, name, owner);
    return detached ? ch : (enhance(ch) as unknown as ChannelLike);
  };
  restore.push(() => {
    pusher.channels.add = origAdd;
  });

  const origUnsubscribe = pusher.unsubscribe;
  pusher.unsubscribe = function (this: unknown, name: string) {
    const result = origUnsubscribe.call(this, name);
    if (!detached && !channelObj(name)) {
      const st = states.get(name);
      if (st) dropHold(st);
      states.delete(name);
      for (const p of [...pending.values()]) {
        if (p.channel === name) fail(p, 'unsubscribed', `unsubscribed from ${name}`);
      }
    }
    return result;
  };
  restore.push(() => {
    pusher.unsubscribe = origUnsubscribe;
  });

  const onStateChange = ({ current: state }: { current: string }) => {
    if (state === 'connected') return;
    for (const st of states.values()) dropHold(st);
  };
  manager.bind('state_change', onStateChange);
  restore.push(() => manager.unbind('state_change', onStateChange));

  // --- the API ------------------------------------------------------------------------

  const api: Herald = {
    pusher: pusherInstance,
    subscribe(name, subscribeOptions = {}) {
      if (subscribeOptions.resumeFrom !== undefined) {
        if (!isSeq(subscribeOptions.resumeFrom)) {
          throw new TypeError('herald-js: resumeFrom must be a non-negative integer');
        }
        api.setLastSeq(name, subscribeOptions.resumeFrom);
      }
      return enhance(pusher.subscribe(name));
    },
    channel(name) {
      const ch = channelObj(name);
      return ch ? enhance(ch) : undefined;
    },
    lastSeq(name) {
      return states.get(name)?.lastSeq;
    },
    setLastSeq(name, seq) {
      if (seq !== undefined && !isSeq(seq)) throw new TypeError('herald-js: a seq is a non-negative integer');
      const st = stateOf(name);
      st.lastSeq = seq;
      if (seq === undefined) st.ownSeqs.clear();
      else for (const own of st.ownSeqs) if (own <= seq) st.ownSeqs.delete(own);
    },
    pending(name) {
      let n = 0;
      for (const p of pending.values()) if (name === undefined || p.channel === name) n += 1;
      return n;
    },
    stats() {
      return { ...stats };
    },
    bind(event, callback) {
      let set = listeners.get(event);
      if (!set) listeners.set(event, (set = new Set()));
      set.add(callback);
      return api;
    },
    unbind(event, callback) {
      if (callback) listeners.get(event)?.delete(callback);
      else listeners.delete(event);
      return api;
    },
    detach() {
      if (detached) return;
      for (const p of [...pending.values()]) fail(p, 'detached', 'herald-js was detached');
      for (const st of states.values()) dropHold(st);
      detached = true;
      for (const undo of restore.splice(0).reverse()) undo();
      attached.delete(pusherInstance as object);
    },
  };

  for (const name of Object.keys(pusher.channels.channels ?? {})) {
    const ch = pusher.channels.channels[name];
    if (ch) enhance(ch);
  }
  attached.set(pusherInstance as object, api);
  return api;
}

export default herald;
