"""Pure wire codecs: Twilio Media Streams, TwiML and webhook signatures; VAPI's websocket transport.

Nothing here touches sockets, clocks or loggers: each module turns frames into frozen
dataclasses and back, raising `protocols.errors.ProtocolError` for input that breaks the protocol.
"""
