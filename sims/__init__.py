"""Simulators for the other side of both wires: a VAPI assistant and a Twilio caller.

They speak the real protocols over loopback sockets and encode their own JSON (they never
import `protocols/`), so integration tests and the demo exercise the bridge as deployed.
"""
