"""VapiLink reads an untrusted peer's frames with caps checked before payloads, linearly, and
never lets a peer that stops reading block a send or close."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable

import gevent
import pytest
import websocket

import links.vapi
from links.errors import LinkFault, VapiLinkDead
from links.vapi import CLOSE_BUDGET_S, MAX_FRAGMENTS, MAX_MESSAGE_BYTES, SOCKET_TIMEOUT_S, Signal, VapiLink
from tests.links._peer import Peer, Request, accept_websocket, read_request, server_frame

pytestmark = pytest.mark.timeout(15)

BINARY, TEXT, CONT, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA
KIB, MIB = 1024, 1024 * 1024

Script = Callable[[Peer, socket.socket], None]


def scripted(script: Script, *, record: bool = True) -> Callable[[Peer, socket.socket, Request], None]:
    """A websocket peer: handshake, record what the client sends (unless not reading), run `script`."""

    def serve(peer: Peer, conn: socket.socket, request: Request) -> None:
        accept_websocket(conn, request)
        if record:
            peer.read_frames(conn)
        script(peer, conn)
        gevent.sleep(30)  # keep the socket open; the test ends it

    return serve


def sends(*frames: bytes) -> Script:
    def script(peer: Peer, conn: socket.socket) -> None:
        for frame in frames:
            conn.sendall(frame)

    return script


def fragments(opcode: int, message: bytes, size: int) -> list[bytes]:
    chunks = [message[i : i + size] for i in range(0, len(message), size)]
    last = len(chunks) - 1
    return [server_frame(opcode if i == 0 else CONT, c, fin=i == last) for i, c in enumerate(chunks)]


def refused(link: VapiLink, within_s: float = 2.0) -> VapiLinkDead:
    with gevent.Timeout(within_s), pytest.raises(VapiLinkDead) as caught:
        link.recv()
    return caught.value


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.005)
    return True


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- messages ----------------------------------------------------------------------------


def test_audio_text_and_pongs_come_back_typed(make_peer: Callable[..., Peer], open_link) -> None:
    peer = make_peer(scripted(sends(
        server_frame(BINARY, b"\x01\x02" * 320),
        server_frame(TEXT, '{"type":"hang","note":"é"}'.encode()),
        server_frame(PONG, b""),
        server_frame(TEXT, b"\xff not utf-8"),
    )))
    link = open_link(peer)
    assert link.recv() == b"\x01\x02" * 320
    assert link.recv() == '{"type":"hang","note":"é"}'
    assert link.recv() is Signal.PONG
    assert link.recv() == "\ufffd not utf-8"


def test_a_burst_of_audio_frames_is_taken_with_one_read(make_peer: Callable[..., Peer], open_link) -> None:
    burst = [os.urandom(640) for _ in range(5)]
    peer = make_peer(scripted(sends(b"".join(server_frame(BINARY, chunk) for chunk in burst))))
    link = open_link(peer)
    reads = 0

    class Counting:
        def __init__(self, real) -> None:
            self.real = real

        def recv_into(self, view: memoryview, drained: bool) -> int:
            nonlocal reads
            reads += 1
            return self.real.recv_into(view, drained)

    link._recv = Counting(link._recv)
    with gevent.Timeout(2):
        got = [link.recv()]
        assert link.buffered
        got += [link.recv() for _ in range(4)]
    assert got == burst
    assert reads == 1 and not link.buffered


def test_a_link_shut_down_in_another_greenlet_wakes_its_waiting_reader(
    make_peer: Callable[..., Peer], open_link
) -> None:
    # Reads wait with no timeout: the shutdown (how a lost link is severed) must end them.
    link = open_link(make_peer(scripted(lambda peer, conn: None)))
    gevent.spawn_later(0.05, link.shutdown)
    assert refused(link, within_s=1.0).fault is LinkFault.CLOSED


def test_a_900_kib_message_in_4_kib_fragments_is_reassembled(make_peer: Callable[..., Peer], open_link) -> None:
    audio = os.urandom(900 * KIB)
    text = ('{"type":"conversation-update","pad":"' + "ab" * (150 * KIB) + '"}').encode()
    peer = make_peer(scripted(sends(
        *fragments(BINARY, audio, 4 * KIB),
        server_frame(PING, b"mid"),
        *fragments(TEXT, text, 4 * KIB),
        server_frame(BINARY, b"after"),
    )))
    link = open_link(peer)
    assert link.recv() == audio
    assert link.recv() == text.decode()
    assert link.recv() == b"after"
    # A ping between messages was answered.
    assert eventually(lambda: (PONG, b"mid") in peer.frames)


def test_a_ping_inside_a_fragmented_message_is_answered_and_the_message_survives(
    make_peer: Callable[..., Peer], open_link
) -> None:
    first, second = server_frame(BINARY, b"a" * 10, fin=False), server_frame(CONT, b"b" * 10)
    peer = make_peer(scripted(sends(first, server_frame(PING, b"p"), server_frame(PONG, b""), second)))
    link = open_link(peer)
    assert link.recv() is Signal.PONG
    assert link.recv() == b"a" * 10 + b"b" * 10
    assert eventually(lambda: (PONG, b"p") in peer.frames)


def test_reads_survive_timeouts_in_the_middle_of_a_frame(
    make_peer: Callable[..., Peer], open_link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(links.vapi, "SOCKET_TIMEOUT_S", 0.05)
    payload = os.urandom(64 * KIB)
    wire = server_frame(BINARY, payload)

    def slowly(peer: Peer, conn: socket.socket) -> None:
        for piece in (wire[:1], wire[1:3], wire[3:5000], wire[5000:]):
            conn.sendall(piece)
            gevent.sleep(0.15)  # several read timeouts at each cut

    link = open_link(make_peer(scripted(slowly)))
    with gevent.Timeout(3.0):
        assert link.recv() == payload


def test_a_close_frame_is_answered_and_reported(make_peer: Callable[..., Peer], open_link) -> None:
    peer = make_peer(scripted(sends(server_frame(CLOSE, struct.pack("!H", 1000)))))
    link = open_link(peer)
    assert link.recv() is Signal.CLOSED
    assert peer.client_closed.wait(2) and peer.close_code() == 1000
    with pytest.raises(VapiLinkDead):
        link.recv()


def test_a_dropped_connection_is_a_dead_link(make_peer: Callable[..., Peer], open_link) -> None:
    def drop(peer: Peer, conn: socket.socket) -> None:
        conn.shutdown(socket.SHUT_RDWR)

    link = open_link(make_peer(scripted(drop, record=False)))
    assert refused(link).fault is LinkFault.CLOSED


# ---- caps ----------------------------------------------------------------------------------


def test_a_frame_declaring_50_mib_is_refused_from_its_header_alone(make_peer: Callable[..., Peer], open_link) -> None:
    # Only the header is sent: a reader that waited for the payload would never return.
    peer = make_peer(scripted(sends(server_frame(BINARY, length=50 * MIB))))
    link = open_link(peer)
    before = rss_bytes()
    started = time.monotonic()
    dead = refused(link)
    assert dead.fault is LinkFault.OVERSIZE
    assert time.monotonic() - started < 0.5
    assert rss_bytes() - before < 8 * MIB
    assert peer.client_closed.wait(2) and peer.close_code() == 1009


def test_a_4_mib_message_in_4_kib_fragments_is_refused_at_the_cap(make_peer: Callable[..., Peer], open_link) -> None:
    peer = make_peer(scripted(sends(*fragments(BINARY, b"\0" * (4 * MIB), 4 * KIB))))
    link = open_link(peer)
    dead = refused(link)
    assert dead.fault is LinkFault.OVERSIZE
    # Refused at the fragment that would cross the cap, not after reading the whole message
    # (reads take up to 16 KiB at a time).
    read = link._reader.bytes
    assert MAX_MESSAGE_BYTES - 4 * KIB < read <= MAX_MESSAGE_BYTES + 24 * KIB
    assert peer.client_closed.wait(2) and peer.close_code() == 1009


def test_endless_empty_fragments_are_refused_at_the_fragment_cap(make_peer: Callable[..., Peer], open_link) -> None:
    empty = server_frame(CONT, b"", fin=False)
    peer = make_peer(scripted(sends(server_frame(TEXT, b"{", fin=False), empty * (MAX_FRAGMENTS + 10))))
    link = open_link(peer)
    assert refused(link).fault is LinkFault.OVERSIZE
    assert peer.client_closed.wait(2) and peer.close_code() == 1009


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([server_frame(PING, b"x" * 126)], id="ping-over-125"),
        pytest.param([server_frame(PONG, b"x" * 200)], id="pong-over-125"),
        pytest.param([server_frame(CLOSE, struct.pack("!H", 1000) + b"x" * 130)], id="close-over-125"),
        pytest.param([server_frame(PING, b"x", fin=False)], id="fragmented-ping"),
        pytest.param([server_frame(BINARY, b"masked", masked=True)], id="masked-server-frame"),
        pytest.param([server_frame(BINARY, b"x", rsv=4)], id="rsv1-without-extension"),
        pytest.param([server_frame(0x3, b"x")], id="reserved-opcode"),
        pytest.param([server_frame(CONT, b"x")], id="continuation-without-start"),
        pytest.param([server_frame(BINARY, b"a", fin=False), server_frame(TEXT, b"b")], id="message-inside-message"),
        pytest.param([server_frame(CLOSE, b"\x03")], id="one-byte-close"),
    ],
)
def test_frames_rfc_6455_forbids_kill_the_link_as_protocol_errors(
    make_peer: Callable[..., Peer], open_link, frames: list[bytes]
) -> None:
    peer = make_peer(scripted(sends(*frames)))
    link = open_link(peer)
    assert refused(link).fault is LinkFault.PROTOCOL
    assert peer.client_closed.wait(2) and peer.close_code() == 1002


# ---- a peer that stops reading ---------------------------------------------------------------


def test_a_peer_that_never_reads_makes_a_send_fail_within_the_timeout(
    make_peer: Callable[..., Peer], open_link
) -> None:
    peer = make_peer(scripted(lambda peer, conn: None, record=False), rcvbuf=4 * KIB)
    link = open_link(peer)
    chunk = b"\0" * (64 * KIB)
    slowest = 0.0
    with gevent.Timeout(10.0), pytest.raises(VapiLinkDead) as caught:
        while True:  # until the socket buffers are full
            started = time.monotonic()
            try:
                link.send_audio(chunk)
            finally:
                slowest = max(slowest, time.monotonic() - started)
    assert caught.value.fault is LinkFault.TIMEOUT
    assert slowest < SOCKET_TIMEOUT_S + 0.3
    # Dead at once from now on: nothing waits on that socket again.
    started = time.monotonic()
    with pytest.raises(VapiLinkDead):
        link.send_text('{"type":"end-call"}')
    with pytest.raises(VapiLinkDead):
        link.ping()
    link.close(goodbye=True)
    assert time.monotonic() - started < 0.1


def test_close_is_bounded_when_the_peer_never_answers(make_peer: Callable[..., Peer], open_link) -> None:
    def stream_forever(peer: Peer, conn: socket.socket) -> None:
        # Audio and nothing else: no close frame, ever.
        while True:
            conn.sendall(server_frame(BINARY, b"\0" * 640))
            gevent.sleep(0.01)

    peer = make_peer(scripted(stream_forever))
    link = open_link(peer)
    assert type(link.recv()) is bytes
    started = time.monotonic()
    with gevent.Timeout(3.0):
        link.close(goodbye=True)
    assert time.monotonic() - started < CLOSE_BUDGET_S + 0.2
    assert link.dead
    assert peer.client_closed.wait(2)
    assert (TEXT, b'{"type":"end-call"}') in peer.frames and peer.close_code() == 1000


def test_close_says_goodbye_and_waits_for_the_peers_close(make_peer: Callable[..., Peer], open_link) -> None:
    def answer_close(peer: Peer, conn: socket.socket) -> None:
        assert peer.client_closed.wait(5)
        conn.sendall(server_frame(CLOSE, struct.pack("!H", 1000)))

    peer = make_peer(scripted(answer_close))
    link = open_link(peer)
    started = time.monotonic()
    link.close(goodbye=True)
    assert time.monotonic() - started < CLOSE_BUDGET_S
    assert [opcode for opcode, _ in peer.frames] == [TEXT, CLOSE]


# ---- TLS (wss://, VAPI's own transport) --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1, made for this run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def test_over_tls_silence_longer_than_the_read_timeout_is_not_a_dead_link(tls_context: ssl.SSLContext) -> None:
    # A TLS socket is read through gevent (it must decrypt), whose reads time out: silence
    # must stay silence, and what comes after it must arrive whole.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    burst = [os.urandom(640) for _ in range(3)]

    def serve() -> None:
        conn, _ = listener.accept()
        tls = tls_context.wrap_socket(conn, server_side=True)
        accept_websocket(tls, read_request(tls))
        gevent.sleep(0.3)  # several of the client's read timeouts
        tls.sendall(b"".join(server_frame(BINARY, chunk) for chunk in burst))
        gevent.sleep(5)

    server = gevent.spawn(serve)
    ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True,
                             sslopt={"cert_reqs": ssl.CERT_NONE, "check_hostname": False})
    try:
        ws.connect(f"wss://127.0.0.1:{listener.getsockname()[1]}/call-1/transport", timeout=2)
        ws.settimeout(0.05)
        link = VapiLink(ws)
        assert not link._recv.raw
        with gevent.Timeout(3):
            assert [link.recv() for _ in burst] == burst
    finally:
        ws.shutdown()
        server.kill()
        listener.close()
