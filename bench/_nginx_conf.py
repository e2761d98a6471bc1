"""deploy/nginx.conf with loopback addresses put in: what the fleet soak and the topology tests run.

The shipped file is the one that runs: only its node lines and its `listen` change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEPLOY_CONF", "render", "without_pass_on"]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"

_UPSTREAM = re.compile(r"^(upstream \w+ \{)(.*?\n)(\})", re.S | re.M)
_NODE = re.compile(r"^([ \t]*)server \S+:\d+( [^;]*)?;\n", re.M)
_LISTEN = re.compile(r"^([ \t]*)listen 80;$", re.M)
_PASS_ON_MAP = re.compile(r"^(map \$uri \$bridge_pass_on \{)(.*?\n)(\})", re.S | re.M)


def render(nodes: Sequence[str], port: int, text: str | None = None) -> str:
    """The shipped config with its node lines replaced by `nodes` ("host:port") and listening on 127.0.0.1:`port`.

    Every upstream group gets the same nodes (`bridge`, and `bridge_new_calls` for passing a
    busy node's new calls on). Each node keeps the shipped line's parameters (max_fails,
    fail_timeout), so what runs is the shipped upstreams, only with other addresses.
    ValueError if the file no longer has the shape this relies on.
    """
    text = DEPLOY_CONF.read_text() if text is None else text
    if not _UPSTREAM.search(text):
        raise ValueError("deploy/nginx.conf has no `upstream bridge { ... }` block")
    text = _UPSTREAM.sub(lambda group: group.group(1) + _nodes(group.group(2), nodes) + group.group(3), text)
    text, listens = _LISTEN.subn(lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", text)
    if listens != 1:
        raise ValueError("deploy/nginx.conf should have one `listen 80;`")
    return text


def _nodes(body: str, nodes: Sequence[str]) -> str:
    """An upstream block's body with its node lines replaced by `nodes`, with the first shipped line's parameters."""
    shipped = list(_NODE.finditer(body))
    if len(shipped) < 2:
        raise ValueError("each of deploy/nginx.conf's upstreams should show two or more nodes")
    indent, params = shipped[0].group(1), shipped[0].group(2) or ""
    lines = "".join(f"{indent}server {node}{params};\n" for node in nodes)
    return body[: shipped[0].start()] + lines + _NODE.sub("", body[shipped[0].start():])


def without_pass_on(text: str) -> str:
    """`text` (a rendered config) with X-Bridge-Pass-On never sent: a busy node answers the
    fallback and takes every media socket, as before nodes passed calls on (bench.soak)."""
    found = _PASS_ON_MAP.search(text)
    if not found:
        raise ValueError("deploy/nginx.conf has no `map $uri $bridge_pass_on { ... }`")
    return text[: found.start(2)] + "\n    default \"\";\n" + text[found.end(2):]

