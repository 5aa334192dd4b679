"""The channels protocol against a model, property-based: random sequences of commands
(``auth`` with good, expired, forged and malformed tokens; subscribe with and without
``since``; unsubscribe; publish, within and over ``max_data_size``; presence; history;
message; ping; unknown ops, commands that are not objects, ids of every type), each
sequence on a fresh connection of a running gateway, on an anonymous endpoint and on
one that wants ``auth`` first. Every frame the gateway sends is the one docs/channels.md
describes, in order: the reply to each command (or the ``error`` frame of a command
without an id), a publication on a subscribed channel before the reply to its publish,
the ``connected`` frame, and the close 4001 after a refused token. Then the gateway's
log is clean. Hypothesis prints the failing sequence and a ``@reproduce_failure`` blob.

The model is written here from the docs (and, where they are silent, from what the
gateway does and says in docs/channels.md): the order of the checks of one command
(name, fields, state, permission) is the order in which their errors are given."""

from __future__ import annotations

import fnmatch
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import websocket as wsclient
from support import assert_clean_log, config_gateway, log_mark

SECRET = "a-test-secret-long-enough-for-hs256-0123456789abcdef"
HISTORY = 10
SMALL = 16


@pytest.fixture(scope="module")
def gw():
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[auth]
jwt_secret = "{SECRET}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/members"
mode = "channels"
anonymous = false
auth_timeout = 30

[[namespace]]
name = ""
publish = "open"
history_size = {HISTORY}
presence = true

[[namespace]]
name = "tok"
subscribe = "token"
publish = "token"

[[namespace]]
name = "small"
publish = "open"
max_data_size = {SMALL}

[[namespace]]
name = "ro"
"""
    with config_gateway(config) as proc:
        yield proc


# -- matching frames -----------------------------------------------------------------------


class Any_:
    """Matches any value of ``kind`` (a non-empty one, for strings)."""

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def matches(self, value: Any) -> bool:
        return (isinstance(value, self.kind) and not isinstance(value, bool)
                and (value != "" if self.kind is str else True))

    def __repr__(self) -> str:
        return f"<any {self.kind.__name__}>"


class Bind:
    """Matches anything the first time, then only that value (an epoch, say)."""

    def __init__(self, slot: dict, key: str, kind: type = str) -> None:
        self.slot, self.key, self.kind = slot, key, kind

    def matches(self, value: Any) -> bool:
        if self.key not in self.slot:
            if not Any_(self.kind).matches(value):
                return False
            self.slot[self.key] = value
        return self.slot[self.key] == value

    def __repr__(self) -> str:
        return f"<{self.key}={self.slot.get(self.key, '?')}>"


def matches(expected: Any, got: Any) -> bool:
    if isinstance(expected, (Any_, Bind, _Clients)):
        return expected.matches(got)
    if isinstance(expected, dict):
        return (isinstance(got, dict) and set(expected) == set(got)
                and all(matches(v, got[k]) for k, v in expected.items()))
    if isinstance(expected, list):
        return isinstance(got, list) and len(expected) == len(got) and all(map(matches, expected, got))
    return type(expected) is type(got) and expected == got


ERROR_MESSAGE = Any_(str)


# -- the model -------------------------------------------------------------------------------


@dataclass
class Channel:
    name: str
    ns: str
    offset: int = 0
    values: dict = field(default_factory=dict)  # "epoch" once seen
    history: list = field(default_factory=list)  # (offset, data) of the kept publications


NAMESPACES = {"": {"subscribe": "open", "publish": "open", "history": True},
              "tok": {"subscribe": "token", "publish": "token", "history": False},
              "small": {"subscribe": "open", "publish": "open", "history": False},
              "ro": {"subscribe": "open", "publish": "none", "history": False}}
BAD_NAMES = ["", "a b", "x" * 256, "news\n", "caf\u00e9", 5, None, ["a"]]


class Model:
    """What one connection should see, command by command."""

    def __init__(self, anonymous: bool, uid: str) -> None:
        self.anonymous = anonymous
        self.uid = uid
        self.conn: dict = {}  # "conn" once seen
        self.claims: dict | None = None
        self.user: str | None = None
        self.closed = False
        self.channels = {(ns, s): Channel(f"{ns}:{uid}-{s}" if ns else f"{uid}-{s}", ns)
                         for ns in NAMESPACES for s in "ab"}
        self.subscribed: dict[str, str | None] = {}  # channel name -> user when subscribed

    def welcome(self) -> list:
        return [{"type": "connected", "conn": Bind(self.conn, "conn"), "user": self.user}]

    def reply(self, rid: Any, result: Any = None, error: str | None = None) -> list:
        if error is not None:
            body = {"code": error, "message": ERROR_MESSAGE}
            return [{"type": "error", "error": body} if rid is None else {"type": "reply", "id": rid, "error": body}]
        return [] if rid is None else [{"type": "reply", "id": rid, "result": result}]

    def channel(self, cmd: dict) -> Channel | None:
        name = cmd.get("channel")
        return next((c for c in self.channels.values() if c.name == name), None)

    def allowed(self, action: str, ch: Channel) -> bool:
        rule = NAMESPACES[ch.ns][action]
        if rule == "open":
            return True
        if rule == "token" and self.claims is not None:
            patterns = self.claims.get("channels" if action == "subscribe" else "publish")
            patterns = [patterns] if isinstance(patterns, str) else patterns
            return isinstance(patterns, list) and any(fnmatch.fnmatchcase(ch.name, p) for p in patterns)
        return False

    def position(self, ch: Channel) -> tuple[Any, Any]:
        if NAMESPACES[ch.ns]["history"]:
            return ch.offset, Bind(ch.values, "epoch")
        return Any_(int), Any_(str)

    def step(self, raw: str, cmd: Any) -> list:
        """The frames ``raw`` gets; sets ``closed`` when it ends the connection."""
        if not isinstance(cmd, dict):  # not JSON, or not an object
            return self.reply(None, error="bad_request")
        rid = cmd.get("id")
        if rid is not None and (not isinstance(rid, (int, str))):
            return self.reply(None, error="bad_request")
        op = cmd.get("op")
        if op == "auth":
            return self.auth(cmd, rid)
        if self.claims is None and not self.anonymous:
            return self.reply(rid, error="unauthorized")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return self.reply(rid, error="unknown_op")
        return handler(cmd, rid)

    def auth(self, cmd: dict, rid: Any) -> list:
        if self.claims is not None:
            return self.reply(rid, error="bad_request")
        claims = verify(cmd.get("token"))
        if claims is None:
            self.closed = True
            return self.reply(rid, error="unauthorized")
        self.claims, self.user = claims, claims.get("sub")
        frames = self.reply(rid, {"conn": Bind(self.conn, "conn"), "user": self.user})
        return frames if self.anonymous else frames + self.welcome()

    def op_ping(self, cmd: dict, rid: Any) -> list:
        return self.reply(rid, {"pong": True})

    def op_subscribe(self, cmd: dict, rid: Any) -> list:
        ch = self.channel(cmd)
        if ch is None:
            return self.reply(rid, error="bad_channel")
        since = cmd.get("since")
        if since is not None and not (isinstance(since, dict) and isinstance(since.get("offset"), int)
                                      and not isinstance(since.get("offset"), bool)
                                      and isinstance(since.get("epoch"), str)):
            return self.reply(rid, error="bad_request")
        if ch.name in self.subscribed:
            return self.reply(rid, error="already_subscribed")
        if not self.allowed("subscribe", ch):
            return self.reply(rid, error="forbidden")
        self.subscribed[ch.name] = self.user
        offset, epoch = self.position(ch)
        recovered, publications = True, []
        if since is not None:  # drawn only for a channel with history, at or before its offset
            kept = [p for p in ch.history if p[0] > since["offset"]]
            recovered = since["epoch"] == ch.values.get("epoch") and len(kept) == ch.offset - since["offset"]
            if recovered:
                publications = [{"offset": o, "data": d, "time": Any_(float)} for o, d in kept]
        return self.reply(rid, {"channel": ch.name, "offset": offset, "epoch": epoch, "recovered": recovered,
                                "publications": publications, "recoverable": NAMESPACES[ch.ns]["history"]})

    def op_unsubscribe(self, cmd: dict, rid: Any) -> list:
        ch = self.channel(cmd)
        if ch is None:
            return self.reply(rid, error="bad_channel")
        return self.reply(rid, {"unsubscribed": self.subscribed.pop(ch.name, False) is not False})

    def op_publish(self, cmd: dict, rid: Any) -> list:
        ch = self.channel(cmd)
        if ch is None:
            return self.reply(rid, error="bad_channel")
        if "data" not in cmd:
            return self.reply(rid, error="bad_request")
        size = len(json.dumps(cmd["data"], ensure_ascii=False, separators=(",", ":")).encode())
        if size > (SMALL if ch.ns == "small" else 65536):
            return self.reply(rid, error="too_large")
        if not self.allowed("publish", ch):
            return self.reply(rid, error="forbidden")
        if NAMESPACES[ch.ns]["history"]:
            ch.offset += 1
            ch.history = [*ch.history, (ch.offset, cmd["data"])][-HISTORY:]
            offset, epoch = self.position(ch)
        else:  # the message and the reply carry the same position
            slot: dict = {}
            offset, epoch = Bind(slot, "offset", int), Bind(slot, "epoch")
        frames = []
        if ch.name in self.subscribed:
            frames.append({"type": "message", "channel": ch.name, "offset": offset, "epoch": epoch,
                           "data": cmd["data"]})
        return frames + self.reply(rid, {"channel": ch.name, "offset": offset, "epoch": epoch})

    def op_presence(self, cmd: dict, rid: Any) -> list:
        ch = self.channel(cmd)
        if ch is None:
            return self.reply(rid, error="bad_channel")
        if ch.name not in self.subscribed:
            return self.reply(rid, error="not_subscribed")
        if ch.ns != "":
            return self.reply(rid, error="not_enabled")
        return self.reply(rid, {"channel": ch.name, "clients": _Clients(self.conn, self.subscribed[ch.name])})

    def op_history(self, cmd: dict, rid: Any) -> list:
        ch = self.channel(cmd)
        if ch is None:
            return self.reply(rid, error="bad_channel")
        if ch.name not in self.subscribed:
            return self.reply(rid, error="not_subscribed")
        if not NAMESPACES[ch.ns]["history"]:
            return self.reply(rid, error="not_enabled")
        limit = cmd.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            return self.reply(rid, error="bad_request")
        kept = ch.history if limit is None else ch.history[len(ch.history) - limit:] if limit else []
        return self.reply(rid, {"channel": ch.name, "offset": ch.offset, "epoch": Bind(ch.values, "epoch"),
                                "recovered": True,
                                "publications": [{"offset": o, "data": d, "time": Any_(float)} for o, d in kept]})

    def op_message(self, cmd: dict, rid: Any) -> list:
        if "data" not in cmd:
            return self.reply(rid, error="bad_request")
        return self.reply(rid, error="not_enabled")  # no application output on this gateway


class _Clients:
    """The presence list of a channel only this connection uses: itself, with the user
    it had when it subscribed."""

    def __init__(self, conn: dict, user: str | None) -> None:
        self.conn, self.user = conn, user

    def matches(self, value: Any) -> bool:
        conn = self.conn.get("conn")
        return value == {conn: {"conn": conn, "user": self.user}}

    def __repr__(self) -> str:
        return f"<presence of {self.conn.get('conn')} as {self.user}>"


def verify(token: Any) -> dict | None:
    """The claims of a token this gateway accepts (HS256, ``exp`` required and in the
    future, 5 s of leeway), or None."""
    if not isinstance(token, str) or not token:
        return None
    try:
        return jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]}, leeway=5)
    except jwt.PyJWTError:
        return None


# -- commands --------------------------------------------------------------------------------


_patterns = st.sampled_from([None, [], "tok:*", ["tok:*"], ["tok:{uid}-a"], ["other:*"], 5])


@st.composite
def token(draw) -> Any:
    kind = draw(st.sampled_from(["good", "good", "good", "expired", "forged", "garbage", "missing", "number"]))
    if kind in ("missing", "number"):
        return {"missing": None, "number": 42}[kind]
    if kind == "garbage":
        return draw(st.sampled_from(["x", "a.b.c", "", "eyJhbGciOiJub25lIn0.e30."]))
    claims: dict = {"exp": int(time.time()) + (-60 if kind == "expired" else 300)}
    if draw(st.booleans()):
        claims["sub"] = draw(st.sampled_from(["alice", "bob"]))
    for claim in ("channels", "publish"):
        pattern = draw(_patterns)
        if pattern is not None:
            claims[claim] = pattern
    secret = SECRET if kind != "forged" else SECRET + "-not"
    return {"claims": claims, "secret": secret}


_data = st.recursive(st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | st.text(max_size=24),
                     lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(st.text(max_size=4), children, max_size=3), max_leaves=6)
_slot = st.tuples(st.sampled_from(list(NAMESPACES)), st.sampled_from("ab"))
# Mostly one channel with history, so that sequences meet it again and again.
_channel = st.one_of(st.just(("", "a")), st.just(("", "a")), _slot, _slot,
                     st.sampled_from(BAD_NAMES).map(lambda n: ("bad", n)))


@st.composite
def command(draw) -> tuple[str, Any]:
    """(kind, spec): a spec is turned into the command once the connection's names are known."""
    op = draw(st.sampled_from(["auth", "subscribe", "subscribe", "unsubscribe", "publish", "publish", "publish",
                               "presence", "history", "history", "message", "ping", "bogus", "raw"]))
    if op == "raw":
        return "raw", draw(st.sampled_from(["not json", "[1,2]", '"op"', "null", "{", '{"op": "ping",}']))
    spec: dict = {"op": op}
    if op == "bogus":
        spec["op"] = draw(st.sampled_from(["bogus", "PING", "_auth", "__init__", 5, None, ["ping"]]))
    if op == "auth":
        spec["token"] = draw(token())
    if op in ("subscribe", "unsubscribe", "publish", "presence", "history"):
        # Mostly the channel with history that the lead subscribes to.
        spec["channel"] = draw(st.just(("", "a")) if draw(st.integers(0, 2)) else _channel)
    if op in ("publish", "message") and draw(st.integers(0, 5)):
        spec["data"] = draw(_data)
    if op == "subscribe" and draw(st.integers(0, 3)) == 0:
        spec["since"] = draw(st.sampled_from(["valid", "valid", "wrong epoch", "bad"]))
    if op == "history" and draw(st.integers(0, 3)):
        spec["limit"] = draw(st.sampled_from([0, 0, 1, 2, 3, 20, 0, 1, -1, 1.5, "2", True]))
    spec["id"] = draw(st.sampled_from(["int"] * 6 + ["str"] * 2 + ["absent"] * 2 + ["float", "list"]))
    return "command", spec


@st.composite
def scenario(draw) -> tuple[bool, list]:
    """An endpoint (anonymous, or auth first) and the commands: often starting with a
    good token and a subscription to the channel with history, so that sequences get
    past the first refusals."""
    anonymous = draw(st.sampled_from([True, True, False]))
    lead = []
    if draw(st.booleans()):
        claims = {"exp": int(time.time()) + 300, "sub": "carol", "channels": ["tok:*"], "publish": ["tok:{uid}-a"]}
        lead.append(("command", {"op": "auth", "token": {"claims": claims, "secret": SECRET}, "id": "int"}))
    if draw(st.booleans()):
        lead.append(("command", {"op": "subscribe", "channel": ("", "a"), "id": "int"}))
    return anonymous, lead + draw(st.lists(command(), min_size=1, max_size=14))


def realize(model: Model, n: int, kind: str, spec: Any) -> tuple[str, Any]:
    """The text to send, and what the gateway parses it as."""
    if kind == "raw":
        try:
            return spec, json.loads(spec)
        except ValueError:
            return spec, None
    cmd: dict = {"op": spec["op"]}
    if "token" in spec:
        t = spec["token"]
        if isinstance(t, dict):
            claims = {k: ([p.format(uid=model.uid) for p in v] if isinstance(v, list) else v)
                      for k, v in t["claims"].items()}
            t = jwt.encode(claims, t["secret"], algorithm="HS256")
        if t is not None:
            cmd["token"] = t
    if "channel" in spec:
        where, name = spec["channel"]
        cmd["channel"] = name if where == "bad" else model.channels[(where, name)].name
    if "data" in spec:
        cmd["data"] = spec["data"]
    if "since" in spec:
        ch = model.channel(cmd)
        if spec["since"] == "bad" or ch is None or ch.ns != "" or "epoch" not in ch.values:
            cmd["since"] = {"offset": "1", "epoch": "e"} if spec["since"] == "bad" else {"offset": 0, "epoch": "0"}
        else:
            epoch = ch.values["epoch"] if spec["since"] == "valid" else "not" + ch.values["epoch"]
            cmd["since"] = {"offset": max(0, ch.offset - 2), "epoch": epoch}
    if "limit" in spec:
        cmd["limit"] = spec["limit"]
    cmd["id"] = {"int": n, "str": f"r{n}", "absent": None, "float": n + 0.5, "list": [n]}[spec["id"]]
    if cmd["id"] is None:
        del cmd["id"]
    return json.dumps(cmd), cmd


# -- the property ------------------------------------------------------------------------------


def read(ws: wsclient.WebSocket) -> Any:
    """The next frame: a JSON object, or ("closed", code)."""
    try:
        opcode, data = ws.recv_data()
    except wsclient.WebSocketConnectionClosedException:
        return ("closed", None)
    if opcode == wsclient.ABNF.OPCODE_CLOSE:
        return ("closed", int.from_bytes(data[:2], "big") if len(data) >= 2 else None)
    return json.loads(data)


def test_every_frame_is_the_documented_one(gw):
    mark = log_mark(gw)

    @settings(max_examples=200, deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
    @given(scenario=scenario())
    def check(scenario):
        anonymous, commands = scenario
        model = Model(anonymous, uuid.uuid4().hex[:8])  # channels of its own
        ws = wsclient.create_connection(gw.ws_url + ("/ch" if anonymous else "/members") + "/websocket",
                                        timeout=5, skip_utf8_validation=False)
        try:
            expected = model.welcome() if anonymous else []
            sent = []
            for n, (kind, spec) in enumerate(commands):
                if model.closed:
                    break
                text, cmd = realize(model, n, kind, spec)
                ws.send(text)
                sent.append(text)
                expected += [(text, frame) for frame in model.step(text, cmd)]
                # Checked as they come, so that bound values (conn, epochs) are known to
                # the next command's model.
                while expected:
                    item = expected.pop(0)
                    want = item[1] if isinstance(item, tuple) else item
                    got = read(ws)
                    assert matches(want, got), f"after {sent}:\nexpected {want}\ngot      {got}"
            if model.closed:
                got = read(ws)
                assert got == ("closed", 4001), f"after {sent}: expected the close 4001, got {got}"
                return
            # The marker: nothing else came before the answer to a ping sent last.
            ws.send(json.dumps({"op": "ping", "id": "marker"}))
            want = {"type": "reply", "id": "marker",
                    "result": {"pong": True}} if anonymous or model.claims else {
                "type": "reply", "id": "marker", "error": {"code": "unauthorized", "message": ERROR_MESSAGE}}
            got = read(ws)
            assert matches(want, got), f"after {sent}:\nexpected the marker {want}\ngot {got}"
        finally:
            ws.close()

    check()
    assert_clean_log(gw, mark)
