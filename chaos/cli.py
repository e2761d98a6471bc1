"""`python run.py chaos ...`: the admin API's chaos from a shell.

    python run.py chaos list
    python run.py chaos inject CA... vapi blackhole
    python run.py chaos inject --all twilio kill      (every live call)

The token comes from --token or ADMIN_TOKEN; the server from --server (default
http://127.0.0.1:3000). Any node of a fleet lists every node's calls and passes a fault
on to the node that holds the call.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from chaos.faults import ACTORS, FAULTS

__all__ = ["main"]


def _request(
    server: str, token: str, method: str, path: str, body: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    """The answer's status and its JSON (its text when it is not JSON): Any, as json.loads gives it."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - operator-given URL
        server.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - operator-given URL
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode("utf-8", "replace").strip()


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """The CLI; run.py passes its arguments and environment (only settings/run.py read it)."""
    environ = env
    parser = argparse.ArgumentParser(prog="run.py chaos", description="Inject faults into live calls.")
    parser.add_argument("--server", default="http://127.0.0.1:3000")
    parser.add_argument("--token", default=environ.get("ADMIN_TOKEN"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="live calls and their actor trees")
    inject = sub.add_parser("inject", help="inject one fault")
    inject.add_argument("call_sid", nargs="?", help="the call (omit with --all)")
    inject.add_argument("actor", choices=ACTORS)
    inject.add_argument("fault", choices=FAULTS)
    inject.add_argument("--all", action="store_true", help="into every live call")
    args = parser.parse_args(argv)
    if not args.token:
        print("an admin token is needed: --token or ADMIN_TOKEN", file=sys.stderr)
        return 2
    try:
        status, calls = _request(args.server, args.token, "GET", "/admin/calls")
    except OSError as exc:
        print(f"cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"GET /admin/calls answered {status}: {calls}", file=sys.stderr)
        return 1
    if args.command == "list":
        for call in calls["calls"]:
            actors = "  ".join(f"{name}:{a['state']}/{a['restarts']}" for name, a in sorted(call["actors"].items()))
            print(f"{call['call_sid']}  {call.get('node', '-')}  {actors}")
        print(f"{len(calls['calls'])} live call(s)")
        return 0
    targets = [c["call_sid"] for c in calls["calls"]] if args.all else [args.call_sid]
    if not targets or targets == [None]:
        print("name a call SID, or use --all", file=sys.stderr)
        return 2
    failed = 0
    for call_sid in targets:
        status, answer = _request(
            args.server, args.token, "POST", f"/admin/calls/{call_sid}/chaos",
            {"actor": args.actor, "fault": args.fault},
        )
        ok = status == 202
        failed += not ok
        where = f"on {answer.get('node')}" if ok and isinstance(answer, dict) else ""
        print(f"{call_sid}  {args.actor}/{args.fault}  {f'injected {where}'.strip() if ok else f'{status}: {answer}'}")
    return 1 if failed else 0
