#!/usr/bin/env python3
"""Herald with the official Pusher Python server SDK and the pysher client.

Run by `scripts/test py` against the stack it starts (two gateways on one
NATS server); reads the gateway ports from HERALD_GATEWAY_PORT and
HERALD_GATEWAY2_PORT. The Python SDK insists on a numeric app id, so the
stack configures an extra app for this check in HERALD_APPS:

    {"id": "123456", "key": "py-key", "secret": "py-secret",
     "enable_client_messages": true, "webhooks": [...]}

with a webhook for channels starting with `py-webhook-` to a receiver this
check runs on HERALD_PY_WEBHOOK_PORT.

Prints one line per check and a final "N passed, N failed" line; exits
non-zero when any check failed. Every wait is bounded, and absence
("nothing else arrived") is checked against a marker (a later event on the
same channel, or a ping answered on the same connection), never a bare sleep.
"""

import http.server
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid

import pusher
import pysher
from pysher.channel import Channel

HOST = "127.0.0.1"
APP_ID = "123456"
KEY = "py-key"
SECRET = "py-secret"
TIMEOUT = 10.0
# Pusher's close code (and pusher:error code) for a connection the server
# ends and that must not reconnect unchanged: terminate_connections, a bad
# sign-in (crates/herald-proto pusher.rs; `UNAUTHORIZED` in the gateway).
CLOSE_TERMINATED = 4009


def port(name):
    value = os.environ.get(name, "")
    if not value.isdigit():
        sys.exit(f"{name} must name the port of a running gateway (scripts/test sets it)")
    return int(value)


GATEWAY1 = port("HERALD_GATEWAY_PORT")
GATEWAY2 = port("HERALD_GATEWAY2_PORT")


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def sdk(gateway=GATEWAY1, secret=SECRET):
    """The Pusher server SDK pointed at a gateway: only host, port, ssl and
    the credentials differ from a Pusher Channels setup."""
    return pusher.Pusher(
        app_id=APP_ID, key=KEY, secret=secret, host=HOST, port=gateway, ssl=False, timeout=TIMEOUT
    )


def eventually(check, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Client(pysher.Pusher):
    """pysher, keeping every channel frame it receives (pysher drops frames for
    a channel it has not registered yet, and registers a channel only after
    sending the subscribe, so the reply could otherwise be missed)."""

    def __init__(self, gateway, **kwargs):
        self.frames = []
        self.lock = threading.Lock()
        super().__init__(
            KEY,
            custom_host=HOST,
            port=gateway,
            secure=False,
            log_level=logging.WARNING,
            daemon=True,
            **kwargs,
        )
        self.connection.bind("pusher:connection_established", self._established)
        self.connection_frames = []
        for event in ("pusher:error", "pusher:signin_success", "pusher:pong"):
            self.connection.bind(event, self._connection_frame, event)
        # The close as websocket-client reports it: (ws, code, reason). pysher
        # builds its WebSocketApp from `connection._on_close` when it
        # connects, so wrapping the attribute here sees every close.
        self.closes = []
        pysher_on_close = self.connection._on_close

        def on_close(*args):
            with self.lock:
                self.closes.append(tuple(args[1:3]) if len(args) >= 3 else (None, None))
            pysher_on_close(*args)

        self.connection._on_close = on_close

    def _established(self, data):
        with self.lock:
            self.connection_frames.append(("pusher:connection_established", data))

    def _connection_frame(self, data, event):
        with self.lock:
            self.connection_frames.append((event, data))

    def _connection_handler(self, event_name, data, channel_name):
        with self.lock:
            self.frames.append((event_name, channel_name, data))
        super()._connection_handler(event_name, data, channel_name)

    def wait_connected(self):
        self.connect()
        eventually(lambda: self.connection.state == "connected" and self.connection.socket_id, "pysher to connect")
        return self

    def frame(self, event, channel, what=None):
        def find():
            with self.lock:
                return next((f for f in self.frames if f[0] == event and f[1] == channel), None)

        return eventually(find, what or f"{event} on {channel}")

    def received(self, event, channel=None):
        with self.lock:
            return [f for f in self.frames if f[0] == event and (channel is None or f[1] == channel)]

    def connection_event(self, event, what=None):
        def find():
            with self.lock:
                return next((data for e, data in self.connection_frames if e == event), None)

        return eventually(find, what or event)

    def pong(self):
        """A marker: ping and wait for the pong. The gateway queues the pong
        behind every frame it queued for this socket before, so those frames
        have all been handled once this returns."""
        with self.lock:
            before = sum(1 for e, _ in self.connection_frames if e == "pusher:pong")
        self.connection.send_event("pusher:ping", {})

        def answered():
            with self.lock:
                return sum(1 for e, _ in self.connection_frames if e == "pusher:pong") > before

        eventually(answered, "pusher:pong")

    def closed(self, what="the connection to close"):
        """(code, reason) of the close, once the socket closed."""

        def find():
            with self.lock:
                return self.closes[0] if self.closes else None

        return eventually(find, what)

    def subscribed(self, channel, auth=None, channel_data=None):
        """Subscribe and wait for the server's answer; returns the pysher
        channel. With `channel_data` (a presence channel authorized by the
        app's server), the subscribe carries `auth` and `channel_data` as
        given: pysher itself sends channel_data only when it signs."""
        if channel_data is None:
            handle = self.subscribe(channel, auth=auth)
        else:
            handle = self.channels[channel] = Channel(channel, self.connection)
            self.connection.send_event(
                "pusher:subscribe", {"channel": channel, "auth": auth, "channel_data": channel_data}
            )

        def answer():
            with self.lock:
                return next(
                    (
                        f
                        for f in self.frames
                        if f[1] == channel
                        and f[0] in ("pusher_internal:subscription_succeeded", "pusher:subscription_error")
                    ),
                    None,
                )

        frame = eventually(answer, f"the subscription to {channel}")
        if frame[0] != "pusher_internal:subscription_succeeded":
            raise AssertionError(f"subscription to {channel} failed: {frame}")
        return handle


class Events:
    """Collects what a pysher channel binding receives."""

    def __init__(self, channel, event):
        self.got = []
        channel.bind(event, self.got.append)

    def wait(self, count=1, what="the event"):
        eventually(lambda: len(self.got) >= count, what)
        return self.got


clients = []


def client(gateway, **kwargs):
    c = Client(gateway, **kwargs)
    clients.append(c)
    return c.wait_connected()


def close_clients():
    # pysher's thread is a daemon and may take a while to notice the close;
    # the socket itself is closed at once.
    for c in clients:
        try:
            c.disconnect(timeout=0.1)
        except Exception:  # noqa: BLE001 - already gone
            pass
    clients.clear()


# --- webhook receiver -------------------------------------------------------

webhooks = []
webhooks_lock = threading.Lock()


class WebhookReceiver(http.server.BaseHTTPRequestHandler):
    """Keeps every webhook request: (X-Pusher-Key, X-Pusher-Signature, body)."""

    def do_POST(self):  # noqa: N802 - the http.server name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with webhooks_lock:
            webhooks.append(
                (self.headers.get("X-Pusher-Key"), self.headers.get("X-Pusher-Signature"), body.decode())
            )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def start_webhook_receiver():
    value = os.environ.get("HERALD_PY_WEBHOOK_PORT", "")
    if not value.isdigit():
        return None
    httpd = http.server.ThreadingHTTPServer((HOST, int(value)), WebhookReceiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


# --- checks -------------------------------------------------------------------

checks = []


def check(fn):
    checks.append(fn)
    return fn


@check
def sdk_trigger_to_a_public_channel_answers_200():
    assert sdk().trigger(unique("py-public-"), "greeting", {"hello": "world"}) == {}


@check
def pysher_connects_with_protocol_6_and_gets_a_socket_id():
    c = client(GATEWAY1)
    assert re.fullmatch(r"\d+\.\d+", c.connection.socket_id), c.connection.socket_id


@check
def pysher_on_gateway_2_receives_an_event_triggered_through_gateway_1():
    name = unique("py-public-")
    c = client(GATEWAY2)
    events = Events(c.subscribed(name), "news")
    sdk(GATEWAY1).trigger(name, "news", {"text": "héllo ✓", "n": 1})
    (data,) = events.wait(what="the event on pysher")
    assert json.loads(data) == {"text": "héllo ✓", "n": 1}, data


@check
def sdk_authenticate_signs_a_private_channel_for_pysher_which_then_receives():
    name = unique("private-py-")
    server = sdk()
    c = client(GATEWAY2)
    auth = server.authenticate(channel=name, socket_id=c.connection.socket_id)
    assert set(auth) == {"auth"} and auth["auth"].startswith(f"{KEY}:"), auth
    events = Events(c.subscribed(name, auth=auth["auth"]), "secret")
    server.trigger(name, "secret", {"for": "members"})
    (data,) = events.wait(what="the private event on pysher")
    assert json.loads(data) == {"for": "members"}, data


@check
def a_private_channel_signed_with_the_wrong_secret_is_refused_with_401():
    name = unique("private-py-")
    c = client(GATEWAY1)
    auth = sdk(secret="not-the-secret").authenticate(channel=name, socket_id=c.connection.socket_id)
    c.subscribe(name, auth=auth["auth"])
    _, _, data = c.frame("pusher:subscription_error", name)
    error = json.loads(data)
    assert error["status"] == 401 and error["type"] == "AuthError", error
    # The connection is still usable.
    c.subscribed(unique("py-after-error-"))


@check
def socket_id_exclusion_skips_that_pysher_connection():
    name = unique("py-exclude-")
    excluded, other = client(GATEWAY1), client(GATEWAY2)
    excluded_events = Events(excluded.subscribed(name), "e")
    other_events = Events(other.subscribed(name), "e")
    sdk().trigger(name, "e", {"n": 1}, socket_id=excluded.connection.socket_id)
    other_events.wait(what="the event on the other connection")
    # Marker: a later event on the same channel, for everyone; the excluded
    # one would have arrived before it.
    sdk().trigger(name, "e", {"n": 2})
    excluded_events.wait(what="the marker event on the excluded connection")
    assert [json.loads(d) for d in excluded_events.got] == [{"n": 2}], excluded_events.got


@check
def channel_info_counts_pysher_subscriptions_on_both_gateways():
    prefix = unique("py-count-")
    name = f"{prefix}room"
    client(GATEWAY1).subscribed(name)
    client(GATEWAY2).subscribed(name)
    info = sdk(GATEWAY2).channel_info(name, ["subscription_count"])
    assert info == {"occupied": True, "subscription_count": 2}, info
    listed = sdk().channels_info(prefix_filter=prefix, attributes=["subscription_count"])
    assert listed == {"channels": {name: {"subscription_count": 2}}}, listed


@check
def trigger_batch_delivers_every_event():
    names = [unique("py-batch-") for _ in range(3)]
    c = client(GATEWAY2)
    collected = [Events(c.subscribed(n), "b") for n in names]
    sdk().trigger_batch([{"channel": n, "name": "b", "data": {"i": i}} for i, n in enumerate(names)])
    for i, events in enumerate(collected):
        (data,) = events.wait(what=f"batch event {i}")
        assert json.loads(data) == {"i": i}, data


@check
def client_events_from_pysher_reach_the_other_gateway_not_the_sender():
    name = unique("private-py-chat-")
    server = sdk()
    sender, receiver, near = client(GATEWAY1), client(GATEWAY2), client(GATEWAY1)
    sender_channel = sender.subscribed(name, auth=server.authenticate(name, sender.connection.socket_id)["auth"])
    receiver_events = Events(
        receiver.subscribed(name, auth=server.authenticate(name, receiver.connection.socket_id)["auth"]),
        "client-typing",
    )
    near_events = Events(
        near.subscribed(name, auth=server.authenticate(name, near.connection.socket_id)["auth"]),
        "client-typing",
    )
    sender_events = Events(sender_channel, "client-typing")
    sender_channel.trigger("client-typing", {"typing": True})
    (data,) = receiver_events.wait(what="the client event on the other gateway")
    assert (json.loads(data) if isinstance(data, str) else data) == {"typing": True}, data
    # Marker: `near`, on the sender's gateway, has it too, so that gateway has
    # fanned it out; an echo would be queued on the sender before its pong.
    near_events.wait(what="the client event on the sender's gateway")
    sender.pong()
    assert sender_events.got == [], "not echoed to the sender"


@check
def presence_channel_with_sdk_signed_auth_members_users_and_user_count():
    room = unique("presence-py-")
    server = sdk()
    # Alice's pysher signs presence channels itself (it is given the secret).
    alice = client(GATEWAY1, secret=SECRET, user_data={"user_id": "alice", "user_info": {"name": "Alice"}})
    alice.subscribed(room)
    # Bob's pysher has no secret: the app's server signs with the SDK's
    # authenticate (socket id, channel, custom_data), as an auth endpoint does,
    # and Bob subscribes with exactly the auth and channel_data it returned.
    bob = client(GATEWAY2)
    signed = server.authenticate(room, bob.connection.socket_id, {"user_id": "bob", "user_info": {"lang": "py"}})
    assert set(signed) == {"auth", "channel_data"}, signed
    assert signed["auth"].startswith(f"{KEY}:"), signed
    assert json.loads(signed["channel_data"]) == {"user_id": "bob", "user_info": {"lang": "py"}}, signed
    bob.subscribed(room, auth=signed["auth"], channel_data=signed["channel_data"])
    _, _, data = bob.frame("pusher_internal:subscription_succeeded", room)
    presence = json.loads(data)["presence"]
    assert presence["count"] == 2 and sorted(presence["ids"]) == ["alice", "bob"], presence
    assert presence["hash"] == {"alice": {"name": "Alice"}, "bob": {"lang": "py"}}, presence
    _, _, added = alice.frame("pusher_internal:member_added", room, "member_added for bob")
    assert json.loads(added) == {"user_id": "bob", "user_info": {"lang": "py"}}, added
    users = server.users_info(room)
    assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"], users
    info = sdk(GATEWAY2).channel_info(room, ["user_count"])
    assert info == {"occupied": True, "user_count": 2}, info

    # The signature is checked: channel_data changed after signing, or an
    # authorization made for another socket, is refused.
    mallory = client(GATEWAY1)
    forged = server.authenticate(room, mallory.connection.socket_id, {"user_id": "mallory"})
    for i, data in enumerate(
        [
            {"channel": room, "auth": forged["auth"], "channel_data": json.dumps({"user_id": "admin"})},
            {"channel": room, "auth": signed["auth"], "channel_data": signed["channel_data"]},  # Bob's socket's
        ],
        start=1,
    ):
        mallory.connection.send_event("pusher:subscribe", data)
        eventually(
            lambda i=i: len(mallory.received("pusher:subscription_error", room)) >= i,
            f"subscription_error #{i} for {data}",
        )
    for _, _, error in mallory.received("pusher:subscription_error", room):
        assert json.loads(error)["status"] == 401, error
    assert len(server.users_info(room)["users"]) == 2, "no member was added by the refused ones"

    bob.disconnect(timeout=0.1)
    _, _, removed = alice.frame("pusher_internal:member_removed", room, "member_removed for bob")
    assert json.loads(removed)["user_id"] == "bob", removed


@check
def sign_in_with_authenticate_user_and_send_to_user():
    user = unique("py-user-")
    c = client(GATEWAY2)
    signed = sdk().authenticate_user(c.connection.socket_id, {"id": user, "user_info": {"lang": "py"}})
    c.connection.send_event("pusher:signin", {"auth": signed["auth"], "user_data": signed["user_data"]})
    success = c.connection_event("pusher:signin_success")
    assert json.loads(success)["user_data"] == signed["user_data"], success
    events = Events(c.subscribed(f"#server-to-user-{user}"), "note")
    sdk(GATEWAY1).send_to_user(user, "note", {"for": user})
    (data,) = events.wait(what="the event sent to the user")
    assert json.loads(data) == {"for": user}, data


def signed_in(gateway, user):
    """A pysher connection signed in as `user` (SDK authenticate_user)."""
    c = client(gateway)
    signed = sdk().authenticate_user(c.connection.socket_id, {"id": user})
    c.connection.send_event("pusher:signin", {"auth": signed["auth"], "user_data": signed["user_data"]})
    c.connection_event("pusher:signin_success")
    return c


@check
def terminate_user_connections_closes_the_users_connections_with_4009():
    # pusher-http-python posts this one without the /apps/{id} prefix; the
    # gateway accepts that form too.
    user = unique("py-term-")
    phone, laptop = signed_in(GATEWAY1, user), signed_in(GATEWAY2, user)
    other_user = unique("py-other-")
    other = signed_in(GATEWAY1, other_user)
    other_socket = other.connection.socket_id
    other_events = Events(other.subscribed(f"#server-to-user-{other_user}"), "still")

    answer = sdk(GATEWAY2).terminate_user_connections(user)
    assert answer == {"connections": 2}, answer
    for c, where in ((phone, "gateway 1"), (laptop, "gateway 2")):
        error = c.connection_event("pusher:error", f"the termination notice on {where}")
        payload = json.loads(error) if isinstance(error, str) else error
        assert payload["code"] == CLOSE_TERMINATED, payload
        # Then the server closes the socket with the same code (and the
        # notice's message as the reason), whatever pysher does meanwhile.
        code, reason = c.closed(f"the terminated connection on {where} to close")
        assert code == CLOSE_TERMINATED, f"{where}: closed with {code} {reason!r}"
        assert reason == payload["message"], f"{where}: close reason {reason!r}, notice {payload!r}"
    # (pysher's own thread logs "cannot join current thread" while it handles
    # the 4009; that is pysher's noise, not a failure.)

    # The other user is untouched: an event to them afterwards arrives, on
    # the same socket.
    sdk().send_to_user(other_user, "still", {"here": True})
    (data,) = other_events.wait(what="the event to the other user")
    assert json.loads(data) == {"here": True}, data
    assert other.connection.state == "connected" and other.connection.socket_id == other_socket
    assert other.closes == [], other.closes

    assert sdk().terminate_user_connections(unique("py-ghost-")) == {"connections": 0}


@check
def the_sdk_with_a_wrong_secret_is_refused_with_401():
    try:
        sdk(secret="not-the-secret").trigger("py-any", "e", {})
    except pusher.errors.PusherBadAuth:
        return
    raise AssertionError("expected PusherBadAuth (401)")


@check
def the_sdk_gets_400_for_an_invalid_request():
    try:
        # 11 events: over Pusher's batch limit of 10.
        sdk().trigger_batch([{"channel": "py-any", "name": f"e{i}", "data": "{}"} for i in range(11)])
    except pusher.errors.PusherBadRequest:
        return
    raise AssertionError("expected PusherBadRequest (400)")


@check
def the_sdks_validate_webhook_accepts_heralds_webhooks():
    if not os.environ.get("HERALD_PY_WEBHOOK_PORT", "").isdigit():
        raise AssertionError("HERALD_PY_WEBHOOK_PORT must name the receiver's port (scripts/test sets it)")
    name = unique("py-webhook-")
    c = client(GATEWAY1)
    c.subscribed(name)
    server = sdk()

    def events():
        out = []
        with webhooks_lock:
            requests = list(webhooks)
        for key, signature, body in requests:
            valid = server.validate_webhook(key, signature, body)
            assert valid is not None, f"validate_webhook refused {body}"
            out.extend(valid["events"])
        return out

    def seen(event):
        return any(e["name"] == event and e["channel"] == name for e in events())

    eventually(lambda: seen("channel_occupied"), "channel_occupied")
    c.unsubscribe(name)
    eventually(lambda: seen("channel_vacated"), "channel_vacated")
    key, signature, body = webhooks[0]
    assert server.validate_webhook(key, signature, body.replace('"events"', '"events" ')) is None


def main():
    start_webhook_receiver()
    passed = failed = 0
    for fn in checks:
        name = fn.__name__.replace("_", " ")
        started = time.monotonic()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - reported, then the next check runs
            failed += 1
            print(f"FAIL  {name}: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
        else:
            passed += 1
            print(f"ok    {name} ({time.monotonic() - started:.2f} s)", flush=True)
        finally:
            close_clients()
    print(f"python: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
