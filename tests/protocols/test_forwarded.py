import pytest

from protocols.forwarded import client_address

PROXY = "10.0.0.2"


def test_without_trusted_proxies_the_header_is_ignored():
    # Anyone can send X-Forwarded-For: believing it by default would let a client name any source.
    assert client_address(PROXY, "203.0.113.9", 0) == PROXY


def test_one_trusted_proxy_gives_the_address_it_saw():
    assert client_address(PROXY, "203.0.113.9", 1) == "203.0.113.9"


def test_what_the_client_wrote_left_of_our_proxies_is_not_believed():
    # The client sent "X-Forwarded-For: 1.2.3.4"; nginx appended the address it really came from.
    assert client_address(PROXY, "1.2.3.4, 203.0.113.9", 1) == "203.0.113.9"
    assert client_address(PROXY, "1.2.3.4, 203.0.113.9, 10.0.0.1", 2) == "203.0.113.9"


@pytest.mark.parametrize(("header", "trusted"), [
    (None, 1),
    ("", 1),
    ("203.0.113.9", 2),  # two proxies trusted, one entry: it did not come through both
    ("not-an-address", 1),
    ("203.0.113.9" + ", 198.51.100.1" * 200, 1),  # longer than any our proxies make
])
def test_a_request_not_vouched_for_by_every_trusted_proxy_keeps_the_socket_address(header, trusted):
    assert client_address(PROXY, header, trusted) == PROXY


def test_ipv6_entries_are_normalised():
    assert client_address(PROXY, "2001:DB8::1", 1) == "2001:db8::1"
