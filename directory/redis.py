"""The call directory in Redis, for nodes on several machines (REDIS_URL).

Keys (all under one prefix, each with an expiry so a dead node's entries age out):

| key | value | expiry |
|---|---|---|
| `<p>:admitted:<CallSid>` | the webhook node's id | the ticket's TTL |
| `<p>:claim:<CallSid>` | the owner node's id | the lease, refreshed by the owner's heartbeat |
| `<p>:outcome:<CallSid>` | the outcome | OUTCOME_KEPT_S |
| `<p>:node:<node>` | JSON: the node's live-call snapshots | the heartbeat TTL |
| `<p>:nodes` | sorted set: node -> last heartbeat time | pruned by each heartbeat |
| `<p>:commands:<node>` | list of JSON commands | the command TTL |
| `<p>:moving:<CallSid>` | JSON: the call's hand-off (calls/handoff.py) | the hand-off's TTL |

A claim is one Lua script, so it is atomic in Redis: it refuses an ended or already
claimed call, and otherwise sets the claim and deletes the admission (a ticket is good
for one stream). A node waits for its commands with BLPOP. Every call has a socket
timeout; any Redis error becomes DirectoryUnavailable. redis-py's sockets yield to other
greenlets under gevent's monkey-patching.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis

from calls.directory import ALREADY_STREAMING, ENDED, NOT_ADMITTED, OUTCOME_KEPT_S, DirectoryUnavailable, NodeView
from calls.handoff import Handoff
from calls.outcome import Outcome

__all__ = ["RedisDirectory"]

_PREFIX: Final = "bridge"
# KEYS: outcome, claim, admitted. ARGV: node id, lease in ms.
_CLAIM: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'ended' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'claimed' end
if redis.call('EXISTS', KEYS[3]) == 0 then return 'none' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return 'ok'
"""
_CLAIM_ANSWERS: Final = {"ended": ENDED, "claimed": ALREADY_STREAMING, "none": NOT_ADMITTED, "ok": None}
# KEYS: moving. GET and DEL in one step (GETDEL needs Redis 6.2): of two takers, one gets it.
_TAKE: Final = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
"""
# KEYS: the claims a node lists in its heartbeat. ARGV: node id, lease in ms. Renews only
# what that node still holds: a call it has just handed off may be another node's now.
_RENEW: Final = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 0
"""
# The longest a BLPOP waits; its client's socket timeout is this plus the usual one.
_MAX_BLOCK_S: Final = 5.0


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisDirectory:
    """A CallDirectory over Redis; `timeout_s` bounds every command (connecting included)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, clock: Callable[[], float] = time.time,
                 prefix: str = _PREFIX) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._clock = clock
        self._p = prefix
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True,
        )
        # BLPOP holds its connection while it waits: a client (and pool) of its own, whose
        # socket timeout outlasts the longest wait.
        self._blocker = redis.Redis.from_url(
            url, socket_timeout=timeout_s + _MAX_BLOCK_S, socket_connect_timeout=timeout_s, decode_responses=True,
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._take = self._redis.register_script(_TAKE)
        self._renew = self._redis.register_script(_RENEW)

    def __repr__(self) -> str:
        # The URL may hold a password.
        return "RedisDirectory(url=***)"

    @property
    def shared(self) -> bool:
        return True

    def _key(self, kind: str, name: str) -> str:
        return f"{self._p}:{kind}:{name}"

    def _do(self, what: str, operation: Callable[[], Any]) -> Any:
        try:
            return operation()
        except redis.RedisError as exc:
            # The message names the error's class only: redis-py's text may quote the URL.
            raise DirectoryUnavailable(f"redis {what} failed: {type(exc).__name__}") from None

    def admit(self, call_sid: str, node_id: str, ttl_s: float) -> None:
        self._do("admit", lambda: self._redis.set(self._key("admitted", call_sid), node_id, px=_ms(ttl_s)))

    def refusal(self, call_sid: str) -> str | None:
        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._key("outcome", call_sid))
            pipe.exists(self._key("claim", call_sid))
            pipe.exists(self._key("admitted", call_sid))
            return list(pipe.execute())

        ended, claimed, admitted = self._do("refusal", read)
        if ended:
            return ENDED
        if claimed:
            return ALREADY_STREAMING
        return None if admitted else NOT_ADMITTED

    def claim(self, call_sid: str, node_id: str, lease_s: float) -> str | None:
        keys = [self._key("outcome", call_sid), self._key("claim", call_sid), self._key("admitted", call_sid)]
        answer = self._do("claim", lambda: self._claim(keys=keys, args=[node_id, _ms(lease_s)]))
        return _CLAIM_ANSWERS.get(str(answer), NOT_ADMITTED)

    def finish(self, call_sid: str, outcome: Outcome) -> None:
        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(self._key("outcome", call_sid), outcome.value, px=_ms(OUTCOME_KEPT_S))
            pipe.delete(self._key("claim", call_sid), self._key("admitted", call_sid), self._key("moving", call_sid))
            pipe.execute()

        self._do("finish", write)

    def outcome(self, call_sid: str) -> Outcome | None:
        value = self._do("outcome", lambda: self._redis.get(self._key("outcome", call_sid)))
        try:
            return None if value is None else Outcome(value)
        except ValueError:
            return None

    def owner(self, call_sid: str) -> str | None:
        value = self._do("owner", lambda: self._redis.get(self._key("claim", call_sid)))
        return None if value is None else str(value)

    def heartbeat(self, node_id: str, calls: Sequence[dict[str, Any]], ttl_s: float, *, draining: bool = False) -> None:
        now = self._clock()
        view = json.dumps({"at": now, "calls": list(calls), "draining": draining}, separators=(",", ":"))

        def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            claims = [self._key("claim", str(call.get("call_sid"))) for call in calls]
            if claims:
                self._renew(keys=claims, args=[node_id, _ms(ttl_s)], client=pipe)
            pipe.set(self._key("node", node_id), view, px=_ms(ttl_s))
            pipe.zadd(self._key("nodes", "all"), {node_id: now})
            pipe.zremrangebyscore(self._key("nodes", "all"), "-inf", now - OUTCOME_KEPT_S)
            pipe.execute()

        self._do("heartbeat", write)

    def nodes(self) -> list[NodeView]:
        def read() -> list[tuple[str, str | None]]:
            names = [str(n) for n in self._redis.zrange(self._key("nodes", "all"), 0, -1)]
            if not names:
                return []
            values = self._redis.mget([self._key("node", name) for name in names])
            return [(name, None if value is None else str(value)) for name, value in zip(names, values, strict=True)]

        views = []
        for name, raw in self._do("nodes", read):
            if raw is None:
                continue  # its heartbeat expired: a dead node's calls age out
            try:
                data = json.loads(raw)
                views.append(NodeView(name, float(data["at"]), list(data["calls"]), data.get("draining") is True))
            except (ValueError, KeyError, TypeError):
                continue
        return views

    def send_command(self, node_id: str, command: dict[str, Any], ttl_s: float) -> None:
        key = self._key("commands", node_id)

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(key, json.dumps(command, separators=(",", ":")))
            pipe.pexpire(key, _ms(ttl_s))
            pipe.execute()

        self._do("send_command", write)

    def take_commands(self, node_id: str, wait_s: float) -> list[dict[str, Any]]:
        key = self._key("commands", node_id)
        wait_s = min(wait_s, _MAX_BLOCK_S)

        def read() -> list[str]:
            # BLPOP's timeout 0 would wait forever; no wait is a plain LPOP.
            first = self._blocker.blpop([key], timeout=wait_s) if wait_s > 0 else None
            rest = self._blocker.lpop(key, 100)
            texts = [first[1]] if first is not None else []
            if isinstance(rest, list):
                texts.extend(rest)
            return [str(text) for text in texts]

        commands = []
        for text in self._do("take_commands", read):
            try:
                parsed = json.loads(text)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                commands.append(parsed)
        return commands

    def mark_moving(self, call_sid: str, handoff: Handoff, ttl_s: float) -> None:
        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(self._key("moving", call_sid), handoff.to_json(), px=_ms(ttl_s))
            pipe.delete(self._key("claim", call_sid))
            pipe.execute()

        self._do("mark_moving", write)

    def moving(self, call_sid: str) -> Handoff | None:
        value = self._do("moving", lambda: self._redis.get(self._key("moving", call_sid)))
        return None if value is None else Handoff.from_json(str(value))

    def take_moving(self, call_sid: str, node_id: str) -> Handoff | None:
        value = self._do("take_moving", lambda: self._take(keys=[self._key("moving", call_sid)]))
        return None if value is None else Handoff.from_json(str(value))

    def close(self) -> None:
        self._redis.close()
        self._blocker.close()
