"""I/O to the outside world that actors drive: the VAPI REST API and its call socket.

Foreign exceptions are translated here, once, into this package's own errors.
"""
