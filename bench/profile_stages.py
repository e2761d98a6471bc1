"""Where the server's CPU goes, by stage of the media path, from a py-spy raw profile.

    py-spy record --nonblocking -r 200 -d 15 -f raw -p SERVER_PID -o profiles/x.raw
    python -m bench.profile_stages profiles/x.raw --cpu 92 --calls 100

`--cpu` is the server's CPU over the profile (percent of one core, as bench.load prints
it) and `--calls` the calls it carried: together they turn each stage's share of the
samples into microseconds of CPU per call per second, and per 20 ms frame period.
A sample belongs to the first stage of WHOLE found anywhere in its stack (a socket's
read or write path, whatever the leaf), else to the stage of the frame nearest its leaf
that matches one of LEAF. py-spy leaves idle time out, so shares are of busy time.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence

__all__ = ["main", "stage_of"]

# (stage name, substrings of a stack or frame that put a sample in that stage)
Stages = tuple[tuple[str, tuple[str, ...]], ...]

WHOLE: Stages = (
    ("VAPI socket write + mask", ("VapiLink._send", "VapiLink.send_audio")),
    ("Twilio socket write", ("TwilioSocket._send_frame", "TwilioSocket.send_text", "TwilioSocket.send_media")),
    ("VAPI socket read", ("VapiLink.recv",)),
    ("Twilio socket read + unmask", ("TwilioSocket.receive",)),
)
LEAF: Stages = (
    ("resampling", ("audio/resample.py",)),
    ("mu-law", ("audio/mulaw.py",)),
    ("VAD and levels", ("audio/vad.py", "audio/signals.py")),
    ("echo canceller", ("audio/echo.py",)),
    ("base64", ("base64", "binascii")),
    ("JSON", ("json/",)),
    ("metrics", ("prometheus_client",)),
    ("logging", ("structlog", "logging/")),
    ("Twilio message parse/encode", ("protocols/twilio.py",)),
    ("playback, stream clock, uplink buffer", ("media/",)),
    ("actor hops (tell, mailbox, dispatch)", ("pykka/", "gevent/queue", "ChildTable.tell", "CallActor._tell",
                                              "tell_bounded", "supervision/", "actors/messages", "<string>")),
    ("actor handlers (own code)", ("actors/",)),
    ("web media reader (own code)", ("web/media.py",)),
    # A send whose callers py-spy lost (a greenlet's stack read mid-switch): one of the
    # two socket writes above, which one the sample cannot tell.
    ("socket write, caller not sampled", ("SocketMixin.send ",)),
    ("event loop (gevent hub)", ("gevent/",)),
)


def stage_of(stack: str) -> str:
    for name, keys in WHOLE:
        if any(key in stack for key in keys):
            return name
    for frame in reversed(stack.split(";")):
        for name, keys in LEAF:
            if any(key in frame for key in keys):
                return name
    return "other"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_stages")
    parser.add_argument("raw")
    parser.add_argument("--cpu", type=float, required=True, help="server CPU, percent of one core")
    parser.add_argument("--calls", type=int, required=True)
    args = parser.parse_args(argv)
    counts: collections.Counter[str] = collections.Counter()
    with open(args.raw) as lines:
        for line in lines:
            stack, _, samples = line.rstrip("\n").rpartition(" ")
            if stack:
                counts[stage_of(stack)] += int(samples)
    total = sum(counts.values())
    per_call_s = args.cpu / 100 / args.calls * 1e6
    print(f"{total} samples; {per_call_s:.0f} µs of CPU per call per second in all")
    print("| stage | share | µs per call per second | µs per 20 ms frame period |")
    print("|---|---|---|---|")
    for name, n in counts.most_common():
        share = n / total
        print(f"| {name} | {share * 100:.1f} % | {share * per_call_s:.0f} | {share * per_call_s / 50:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
