"""Pure per-call media state machines: stream clock, playback tracking, uplink replay.

No actors, no sockets, no logging: the actors call these and act on what they return.
"""
