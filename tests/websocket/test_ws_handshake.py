"""The opening handshake (RFC 6455 section 4.2): a valid request gets 101 with the
right Sec-WebSocket-Accept; an invalid one gets an HTTP error (section 4.2.1: 400,
section 4.4: an unsupported version names the supported one), and the server keeps
serving afterwards."""

from __future__ import annotations

import pytest
from wsraw import TEXT, RawWS, client_frame, handshake_request, http_exchange

RAW = "/echo/websocket"
SOCKJS = "/echo/000/handshake/websocket"


def still_serving(wsgw, path=RAW) -> None:
    with RawWS(wsgw.port, RAW) as raw:
        assert raw.status == 101
        raw.send(TEXT, b"alive")
        assert raw.recv_message() == (TEXT, b"alive")


def test_accept_key_of_the_rfc_example(wsgw):
    request = handshake_request(RAW, wsgw.port, key="dGhlIHNhbXBsZSBub25jZQ==")
    response = http_exchange(wsgw.port, request)
    assert response.status == 101
    assert response.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert response.header("Upgrade").lower() == "websocket"
    assert "upgrade" in response.header("Connection").lower()


def test_header_names_and_tokens_are_case_insensitive(wsgw):
    request = handshake_request(RAW, wsgw.port, headers={
        "Upgrade": None, "Connection": None,
        "upgrade": "WebSocket", "connection": "keep-alive, UPGRADE"})
    assert http_exchange(wsgw.port, request).status == 101


BAD = {
    "missing key": ({"Sec-WebSocket-Key": None}, "GET", (400,)),
    "key not base64": ({"Sec-WebSocket-Key": "not base64!"}, "GET", (400,)),
    "key of 15 bytes": ({"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAA"}, "GET", (400,)),
    "two keys": ({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: "
                                        "dGhlIHNhbXBsZSBub25jZQ=="}, "GET", (400,)),
    "missing version": ({"Sec-WebSocket-Version": None}, "GET", (400, 426)),
    "not an upgrade": ({"Upgrade": None, "Connection": None}, "GET", (400,)),
    "upgrade to something else": ({"Upgrade": "h2c"}, "GET", (400,)),
    "connection without upgrade": ({"Connection": "keep-alive"}, "GET", (400,)),
    "POST": ({}, "POST", (405,)),
    "PUT": ({}, "PUT", (405,)),
}


@pytest.mark.parametrize("path", [RAW, SOCKJS])
@pytest.mark.parametrize(("headers", "method", "statuses"), BAD.values(), ids=BAD.keys())
def test_bad_handshake_gets_an_http_error(wsgw, path, headers, method, statuses):
    response = http_exchange(wsgw.port, handshake_request(path, wsgw.port, headers, method=method))
    assert response.status in statuses, response
    if response.status == 405:
        assert response.header("Allow") == "GET"
    still_serving(wsgw)


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
@pytest.mark.parametrize("path", [RAW, SOCKJS])
def test_unsupported_version_names_the_supported_one(wsgw, path, version):
    """Section 4.4: the server answers with an error and a Sec-WebSocket-Version
    header listing the versions it supports."""
    request = handshake_request(path, wsgw.port, {"Sec-WebSocket-Version": version})
    response = http_exchange(wsgw.port, request)
    assert response.status in (400, 426), response
    assert response.header("Sec-WebSocket-Version") == "13", response
    still_serving(wsgw)


def test_unknown_extension_is_ignored(wsgw):
    offer = "x-webkit-deflate-frame, foo; bar=1"
    with RawWS(wsgw.port, RAW, headers={"Sec-WebSocket-Extensions": offer}) as raw:
        assert raw.status == 101
        assert raw.header("Sec-WebSocket-Extensions") is None
        raw.send(TEXT, b"ok")
        assert raw.recv_message() == (TEXT, b"ok")


def test_invalid_deflate_parameters_are_declined(wsgw):
    """RFC 7692 section 5: an offer the server cannot accept is declined, the
    connection still opens without the extension."""
    with RawWS(wsgw.port, RAW,
               headers={"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=8"}) as raw:
        assert raw.status == 101
        assert raw.header("Sec-WebSocket-Extensions") is None
    offer = "permessage-deflate; unknown_param, permessage-deflate"
    with RawWS(wsgw.port, RAW, headers={"Sec-WebSocket-Extensions": offer}) as raw:
        assert raw.status == 101
        assert raw.header("Sec-WebSocket-Extensions").startswith("permessage-deflate")


def test_frame_sent_right_after_the_handshake(wsgw):
    """A client that does not wait for the 101 before its first frame (in the same
    TCP segment as the request) is still served."""
    import socket

    with socket.create_connection(("127.0.0.1", wsgw.port), timeout=5) as sock:
        sock.sendall(handshake_request(RAW, wsgw.port) + client_frame(TEXT, b"eager"))
        data = b""
        while b"eager" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101")
        assert data.endswith(b"\x81\x05eager")
