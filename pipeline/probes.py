"""Wire-level probes: does a server of the right kind answer on this port?

Each probe speaks the first message of the server's own protocol over a plain
socket and returns a short description of what answered (or raises
``ProbeError``). They need no client library, so ``scripts/stack.py`` can tell
"our Kafka is up" from "something else holds port 9092".
"""

from __future__ import annotations

import socket
import struct


class ProbeError(Exception):
    """Nothing answered, or what answered is not the server we expected."""


def _exchange(host: str, port: int, payload: bytes, timeout: float, want: int) -> bytes:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            data = b""
            while len(data) < want:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError as exc:
        raise ProbeError(f"{host}:{port}: {exc}") from exc


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProbeError("connection closed mid-response")
        data += chunk
    return data


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def probe_kafka(host: str, port: int, timeout: float = 2.0) -> str:
    """ApiVersions v3; returns the cluster's finalized metadata.version level."""
    client_id = b"herald-probe"
    # Request header v2: api_key, api_version, correlation_id, client_id, tagged fields.
    header = struct.pack(">hhih", 18, 3, 7, len(client_id)) + client_id + b"\x00"
    # ApiVersionsRequest v3 body: client_software_name, client_software_version (compact strings).
    body = bytes([len(b"herald") + 1]) + b"herald" + bytes([len(b"1") + 1]) + b"1" + b"\x00"
    request = header + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _read_exact(sock, 4))
            response = _read_exact(sock, size)
    except (OSError, struct.error) as exc:
        raise ProbeError(f"kafka {host}:{port}: {exc}") from exc
    correlation_id, error_code = struct.unpack(">ih", response[:6])
    if correlation_id != 7 or error_code != 0:
        raise ProbeError(f"kafka {host}:{port}: not a Kafka ApiVersions answer")
    pos = 6
    count, pos = _uvarint(response, pos)
    for _ in range(count - 1):
        pos += 6  # api_key, min_version, max_version
        tags, pos = _uvarint(response, pos)
        assert tags == 0
    pos += 4  # throttle_time_ms
    level = None
    tag_count, pos = _uvarint(response, pos)
    for _ in range(tag_count):
        tag, pos = _uvarint(response, pos)
        size, pos = _uvarint(response, pos)
        if tag == 2:  # FinalizedFeatures
            sub = response[pos : pos + size]
            n, sp = _uvarint(sub, 0)
            for _ in range(n - 1):
                name_len, sp = _uvarint(sub, sp)
                name = sub[sp : sp + name_len - 1].decode()
                sp += name_len - 1
                max_level, _min_level = struct.unpack(">hh", sub[sp : sp + 4])
                sp += 4
                _, sp = _uvarint(sub, sp)
                if name == "metadata.version":
                    level = max_level
        pos += size
    return f"kafka metadata.version={level}" if level is not None else "kafka"


def probe_cassandra(host: str, port: int, timeout: float = 2.0) -> str:
    """A native-protocol v4 OPTIONS frame; returns the CQL version it supports."""
    frame = bytes([0x04, 0x00, 0x00, 0x01, 0x05]) + struct.pack(">i", 0)
    data = _exchange(host, port, frame, timeout, 9)
    if len(data) < 9 or data[0] != 0x84 or data[4] != 0x06:
        raise ProbeError(f"cassandra {host}:{port}: not a CQL SUPPORTED answer")
    marker = data.find(b"CQL_VERSION")
    if marker < 0:
        return "cassandra"
    # [string list]: count (short) then [string]s; take the first.
    pos = marker + len("CQL_VERSION") + 2
    (length,) = struct.unpack(">h", data[pos : pos + 2])
    return f"cassandra cql={data[pos + 2 : pos + 2 + length].decode()}"


def probe_redis(host: str, port: int, timeout: float = 2.0) -> str:
    data = _exchange(host, port, b"PING\r\n", timeout, 5)
    if data.startswith(b"+PONG") or data.startswith(b"-NOAUTH"):
        return "redis"
    raise ProbeError(f"redis {host}:{port}: answered {data[:20]!r}, not PONG")


def probe_postgres(host: str, port: int, timeout: float = 2.0) -> str:
    """An SSLRequest: a PostgreSQL server answers with exactly 'S' or 'N'."""
    data = _exchange(host, port, struct.pack(">ii", 8, 80877103), timeout, 1)
    if data in (b"S", b"N"):
        return "postgres"
    raise ProbeError(f"postgres {host}:{port}: answered {data[:20]!r}, not S/N")
