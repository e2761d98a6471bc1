"""Parking for the relay, in one process with a shared directory: the webhook's node opens the
VAPI socket at once and puts its relay URL in the ticket, unless it is draining (its
listener is about to close, so no other node could reach its relay)."""

from __future__ import annotations

import time

import pytest

from protocols.ticket import TicketSealer, ticket_from_parameters, ticket_key
from tests.integration.conftest import AUTH_TOKEN


@pytest.fixture
def server_env(tmp_path) -> dict[str, str]:
    return {"DIRECTORY_PATH": str(tmp_path / "directory.db")}


def ticket_of(caller):
    sealer = TicketSealer(ticket_key(fleet_secret=None, auth_token=AUTH_TOKEN), ttl_s=30)
    return sealer.open(ticket_from_parameters(caller.custom_parameters), call_sid=caller.call_sid, now=time.time())


def test_a_fleet_node_parks_the_vapi_socket_and_names_its_relay_in_the_ticket(bridge, make_caller, vapi_sim):
    caller = make_caller()
    assert caller.post_webhook()[0] == 200
    assert ticket_of(caller).relay_url == f"http://127.0.0.1:{bridge.port}"
    assert vapi_sim.calls[-1].connected.wait(5)  # parked
    caller.connect()
    caller.start_stream()
    assert caller.wait_for_audio(800, timeout_s=5)  # the stream landed here: the parked socket itself
    assert len(vapi_sim.calls) == 1
    caller.send_stop()


def test_a_draining_node_parks_nothing_and_names_no_relay(bridge, make_caller, vapi_sim):
    bridge.fleet.draining = True
    caller = make_caller()
    assert caller.post_webhook()[0] == 200
    ticket = ticket_of(caller)
    assert ticket.has_vapi_call and ticket.relay_url is None
    assert not vapi_sim.calls[-1].connected.wait(0.5)  # the stream's node will open it
