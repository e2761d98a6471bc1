"""The stream ticket: sealed so that only the fleet can read or make one, bound to its call, expiring."""

from __future__ import annotations

import base64

import pytest

from protocols.ticket import (
    RELAY_TOKEN_TTL_S,
    TicketError,
    TicketSealer,
    relay_socket_url,
    ticket_from_parameters,
    ticket_key,
    ticket_parameters,
)
from protocols.twiml import MAX_PARAMETER_CHARS, connect_stream_twiml

CALL_SID = "CA" + "ab" * 16
OTHER_SID = "CA" + "cd" * 16
URL = "wss://phone-call-websocket.aws-us-west-2-backend-production3.vapi.ai/7420f27a-30fd-4f49-a995-5549ae7cc00d/transport"
NOW = 1_800_000_000.0


def sealer(ttl_s: float = 30.0, **key: str | None) -> TicketSealer:
    return TicketSealer(ticket_key(fleet_secret=key.get("fleet_secret"), auth_token=key.get("auth_token") or "tok"),
                        ttl_s=ttl_s)


def test_a_ticket_opens_on_any_node_with_the_same_key_and_gives_back_what_was_sealed():
    text = sealer().seal(call_sid=CALL_SID, node_id="node-a", now=NOW, vapi_call_id="7420f27a", vapi_websocket_url=URL)
    ticket = sealer().open(text, call_sid=CALL_SID, now=NOW + 5)
    assert ticket.call_sid == CALL_SID and ticket.node_id == "node-a" and ticket.issued_at == NOW
    assert ticket.vapi_call_id == "7420f27a" and ticket.vapi_websocket_url == URL and ticket.has_vapi_call
    assert len(ticket.nonce) >= 16


def test_the_secret_url_is_not_readable_in_the_ticket_nor_shown_by_its_repr():
    text = sealer().seal(call_sid=CALL_SID, node_id="node-a", now=NOW, vapi_call_id="x", vapi_websocket_url=URL)
    raw = base64.urlsafe_b64decode(text)
    assert b"vapi.ai" not in raw and b"7420f27a" not in raw and CALL_SID.encode() not in raw
    assert URL not in repr(sealer().open(text, call_sid=CALL_SID, now=NOW))


def test_a_ticket_without_a_vapi_call_says_so():
    ticket = sealer().open(sealer().seal(call_sid=CALL_SID, node_id="n", now=NOW), call_sid=CALL_SID, now=NOW)
    assert not ticket.has_vapi_call and ticket.vapi_websocket_url is None


def test_each_ticket_is_different_even_for_the_same_call_and_time():
    one = sealer().seal(call_sid=CALL_SID, node_id="n", now=NOW)
    two = sealer().seal(call_sid=CALL_SID, node_id="n", now=NOW)
    assert one != two
    assert sealer().open(one, call_sid=CALL_SID, now=NOW).nonce != sealer().open(two, call_sid=CALL_SID, now=NOW).nonce


@pytest.mark.parametrize(
    ("other", "same"),
    [
        ({"auth_token": "tok"}, True),
        ({"auth_token": "another token"}, False),
        ({"fleet_secret": "s3cret", "auth_token": "tok"}, False),
    ],
)
def test_the_key_comes_from_the_fleet_secret_or_else_the_twilio_token(other, same):
    text = sealer().seal(call_sid=CALL_SID, node_id="n", now=NOW)
    if same:
        assert sealer(**other).open(text, call_sid=CALL_SID, now=NOW).call_sid == CALL_SID
    else:
        with pytest.raises(TicketError) as refused:
            sealer(**other).open(text, call_sid=CALL_SID, now=NOW)
        assert refused.value.kind == "bad_ticket"


def test_with_a_fleet_secret_the_twilio_token_does_not_matter():
    text = sealer(fleet_secret="s3cret", auth_token="a").seal(call_sid=CALL_SID, node_id="n", now=NOW)
    assert sealer(fleet_secret="s3cret", auth_token="b").open(text, call_sid=CALL_SID, now=NOW)


def test_the_key_is_not_the_token_itself():
    assert base64.urlsafe_b64decode(ticket_key(fleet_secret=None, auth_token="tok")) != b"tok".ljust(32, b"\0")
    assert ticket_key(fleet_secret=None, auth_token="tok") != ticket_key(fleet_secret="tok", auth_token="x")


def test_a_ticket_for_another_call_is_refused():
    text = sealer().seal(call_sid=CALL_SID, node_id="n", now=NOW)
    with pytest.raises(TicketError) as refused:
        sealer().open(text, call_sid=OTHER_SID, now=NOW)
    assert refused.value.kind == "ticket_for_another_call"


def test_a_ticket_expires_after_its_ttl_and_is_refused_from_the_future():
    text = sealer(ttl_s=30).seal(call_sid=CALL_SID, node_id="n", now=NOW)
    assert sealer(ttl_s=30).open(text, call_sid=CALL_SID, now=NOW + 29)
    for when in (NOW + 31, NOW - 120):
        with pytest.raises(TicketError) as refused:
            sealer(ttl_s=30).open(text, call_sid=CALL_SID, now=when)
        assert refused.value.kind == "ticket_expired"


@pytest.mark.parametrize("tamper", ["flip", "truncate", "garbage", "empty", "not ascii"])
def test_an_altered_or_invented_ticket_is_refused(tamper):
    text = sealer().seal(call_sid=CALL_SID, node_id="n", now=NOW, vapi_call_id="x", vapi_websocket_url=URL)
    forged = {
        "flip": text[:40] + ("A" if text[40] != "A" else "B") + text[41:],
        "truncate": text[:-10],
        "garbage": "guessed",
        "empty": "",
        "not ascii": "tické" + text,
    }[tamper]
    with pytest.raises(TicketError) as refused:
        sealer().open(forged, call_sid=CALL_SID, now=NOW)
    assert refused.value.kind == "bad_ticket"
    assert "guessed" not in str(refused.value)


def test_a_long_ticket_travels_in_several_parameters_each_under_twilios_limit():
    text = sealer().seal(call_sid=CALL_SID, node_id="node-" + "x" * 60, now=NOW, vapi_call_id="x" * 36,
                         vapi_websocket_url=URL)
    parameters = ticket_parameters(text)
    assert len(parameters) >= 2 and list(parameters)[:2] == ["ticket", "ticket1"]
    assert all(len(name) + len(value) < MAX_PARAMETER_CHARS for name, value in parameters.items())
    # The TwiML builder accepts them, and Twilio's customParameters give them back.
    assert "ticket1" in connect_stream_twiml(action_url="https://x/a", stream_url="wss://x/media/s",
                                             parameters=parameters)
    assert ticket_from_parameters({"callSid": CALL_SID, **parameters}) == text
    assert ticket_from_parameters({"callSid": CALL_SID}) == ""



# ---- the relay: the webhook node's URL in the ticket, and the token that opens its relay ----


def test_the_ticket_carries_the_webhook_nodes_relay_url_with_its_vapi_call_only():
    relayed = sealer().seal(call_sid=CALL_SID, node_id="node-a", now=NOW, vapi_call_id="v", vapi_websocket_url=URL,
                            relay_url="http://10.0.0.7:3000")
    assert sealer().open(relayed, call_sid=CALL_SID, now=NOW).relay_url == "http://10.0.0.7:3000"
    assert b"10.0.0.7" not in base64.urlsafe_b64decode(relayed)
    # No VAPI call, nothing to relay: the URL is not read back.
    bare = sealer().seal(call_sid=CALL_SID, node_id="node-a", now=NOW, relay_url="http://10.0.0.7:3000")
    assert sealer().open(bare, call_sid=CALL_SID, now=NOW).relay_url is None


def test_a_relay_token_opens_the_relay_of_its_call_on_any_node_with_the_fleets_key_until_it_expires():
    token = sealer(fleet_secret="s3cret").relay_token(CALL_SID, now=NOW)
    other_node = sealer(fleet_secret="s3cret")
    assert other_node.relay_refusal(token, call_sid=CALL_SID, now=NOW + 1) is None
    assert other_node.relay_refusal(token, call_sid=CALL_SID, now=NOW + RELAY_TOKEN_TTL_S + 1) == "relay_token_expired"
    assert other_node.relay_refusal(token, call_sid=OTHER_SID, now=NOW + 1) == "bad_relay_token"
    assert sealer(fleet_secret="another").relay_refusal(token, call_sid=CALL_SID, now=NOW + 1) == "bad_relay_token"


def test_a_relay_token_is_not_a_ticket_and_cannot_be_stretched_or_forged():
    key_holder = sealer()
    token = key_holder.relay_token(CALL_SID, now=NOW)
    expires, _, mac = token.partition(".")
    later = f"{int(expires) + 3600}.{mac}"  # the expiry moved: the MAC no longer matches
    for forged in (later, "", ".", mac, f"{expires}.", f"{expires}.{mac[:-1]}", f"-1.{mac}", f"{expires}.{mac}x"):
        assert key_holder.relay_refusal(forged, call_sid=CALL_SID, now=NOW) == "bad_relay_token", forged
    # Different labels: a ticket is not a relay token, and the token's key is not the ticket's.
    ticket = key_holder.seal(call_sid=CALL_SID, node_id="a", now=NOW)
    assert key_holder.relay_refusal(ticket, call_sid=CALL_SID, now=NOW) == "bad_relay_token"
    with pytest.raises(TicketError):
        key_holder.open(token, call_sid=CALL_SID, now=NOW)


def test_a_token_stamped_far_in_the_future_is_refused():
    token = sealer().relay_token(CALL_SID, now=NOW + 3600)
    assert sealer().relay_refusal(token, call_sid=CALL_SID, now=NOW) == "relay_token_expired"


def test_the_relay_url_is_the_nodes_url_as_a_websocket_url():
    assert relay_socket_url("http://10.0.0.7:3000/", CALL_SID) == f"ws://10.0.0.7:3000/relay/vapi/{CALL_SID}"
    assert relay_socket_url("https://node-a.internal", CALL_SID) == f"wss://node-a.internal/relay/vapi/{CALL_SID}"
