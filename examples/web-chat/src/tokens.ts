// Session tokens from the example backend (`GET /token?user=`).
//
// A session token is single use: the first channel or user authorization
// made with it binds it to that socket, and any other socket showing it is
// refused. So each connection needs its own token, and pusher-js asks for
// headers synchronously (`headersProvider`), in the middle of a reconnect.
// Hence a spare: a token fetched ahead of time, handed to the next new
// socket and replaced at once. REST calls accept a token for its whole life,
// so they share one that is renewed before it expires.

interface Token { token: string; expires_at: number }

/** Renew a token this long before it expires (they live 15 minutes by default). */
const MARGIN_MS = 120_000;

export class Tokens {
  private spare?: Token;
  private refilling?: Promise<void>;
  private bound?: { socketId: string; token: string };
  private restToken?: Token;

  constructor(private readonly user: string) {}

  async start() {
    await this.refill();
    // Keep the spare fresh while the connection lives on.
    setInterval(() => this.refill(), 30_000);
  }

  private async fetch(): Promise<Token> {
    const res = await fetch(`/token?user=${encodeURIComponent(this.user)}`, { cache: 'no-store' });
    if (!res.ok) throw new Error(`GET /token: ${res.status}`);
    const t = await res.json();
    // expires_at: seconds since the epoch (as JWT's exp).
    return { token: t.token, expires_at: t.expires_at * 1000 };
  }

  private stale(t?: Token) {
    return !t || t.expires_at - Date.now() < MARGIN_MS;
  }

  /** Make sure a usable spare is there (`force`: replace it, e.g. after a refusal). */
  refill(force = false): Promise<void> {
    if (force) this.spare = undefined;
    if (!this.stale(this.spare)) return Promise.resolve();
    this.refilling ??= this.fetch()
      .then((t) => {
        this.spare = t;
      })
      .catch((err) => console.warn('token', err))
      .finally(() => {
        this.refilling = undefined;
      });
    return this.refilling;
  }

  /** The token of this socket: the one it was given, or the spare (then refilled). */
  forSocket(socketId: string | undefined): string {
    if (socketId && this.bound?.socketId === socketId) return this.bound.token;
    const token = this.spare?.token ?? this.bound?.token ?? '';
    if (socketId && this.spare) this.bound = { socketId, token };
    this.spare = undefined;
    this.refill();
    return token;
  }

  /** A token for REST calls. */
  async rest(): Promise<string> {
    if (this.stale(this.restToken)) this.restToken = await this.fetch();
    return this.restToken!.token;
  }
}
