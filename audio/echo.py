"""Echo of the assistant in the caller's audio: found, tracked and removed (work in progress)."""

from __future__ import annotations

__all__ = ["MAX_DELAY_MS"]

# Echo comes back 40-300 ms after the audio was due to play (network both ways, Twilio's
# and the handset's jitter buffers, the room); the search covers that with room to spare.
MAX_DELAY_MS = 400
