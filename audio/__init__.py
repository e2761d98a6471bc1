"""Pure audio code: G.711 mu-law, streaming resamplers, voice activity detection, test signals.

Nothing here does I/O, logging or touches gevent, pykka, flask or structlog.
"""
