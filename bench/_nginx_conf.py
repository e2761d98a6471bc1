"""deploy/nginx.conf with loopback addresses put in: what the fleet soak and the topology tests run.

The shipped file is the one that runs: only its node lines and its `listen` change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEPLOY_CONF", "render"]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"

_UPSTREAM = re.compile(r"(upstream bridge \{)(.*?)(\n\})", re.S)
_NODE = re.compile(r"^([ \t]*)server \S+:\d+( [^;]*)?;\n", re.M)
_LISTEN = re.compile(r"^([ \t]*)listen 80;$", re.M)


def render(nodes: Sequence[str], port: int, text: str | None = None) -> str:
    """The shipped config with its node lines replaced by `nodes` ("host:port") and listening on 127.0.0.1:`port`.

    Each node keeps the shipped line's parameters (max_fails, fail_timeout), so what runs
    is the shipped upstream, only with other addresses. ValueError if the file no longer
    has the shape this relies on.
    """
    text = DEPLOY_CONF.read_text() if text is None else text
    upstream = _UPSTREAM.search(text)
    if not upstream:
        raise ValueError("deploy/nginx.conf has no `upstream bridge { ... }` block")
    body = upstream.group(2)
    shipped = list(_NODE.finditer(body))
    if len(shipped) < 2:
        raise ValueError("deploy/nginx.conf's upstream should show two or more nodes")
    indent, params = shipped[0].group(1), shipped[0].group(2) or ""
    lines = "".join(f"{indent}server {node}{params};\n" for node in nodes)
    body = body[: shipped[0].start()] + lines + _NODE.sub("", body[shipped[0].start():])
    text = text[: upstream.start(2)] + body + text[upstream.end(2):]
    text, listens = _LISTEN.subn(lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", text)
    if listens != 1:
        raise ValueError("deploy/nginx.conf should have one `listen 80;`")
    return text
