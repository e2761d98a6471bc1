"""Scripted loopback peers for the VAPI link, and the connector and links they are dialled with."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from links.vapi import VapiConnector, VapiLink
from tests.links._peer import Peer

API_KEY = "sk-test-untrusted-peer"


@pytest.fixture
def make_peer() -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(serve: Callable[..., None], **kw: object) -> Peer:
        peer = Peer(serve, **kw)  # type: ignore[arg-type]
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def connector_for(base_url: str, timeout_s: float = 2.0) -> VapiConnector:
    return VapiConnector(base_url=base_url, api_key=API_KEY, assistant_id="asst-1", timeout_s=timeout_s)


@pytest.fixture
def open_link() -> Iterator[Callable[[Peer], VapiLink]]:
    """Dial a peer's websocket as VAPI's own origin (so the key goes along), and clean up."""
    links: list[VapiLink] = []

    def dial(peer: Peer) -> VapiLink:
        link = connector_for(peer.http_url).connect(peer.ws_url())
        links.append(link)
        return link

    yield dial
    for link in links:
        link.shutdown()
