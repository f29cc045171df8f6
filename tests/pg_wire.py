"""PostgreSQL wire protocol (v3) messages as plain data, for the pg test double and the recorded-answers test.

This module owns the byte layout of the messages dg-locust's pg path exchanges with CrateDB, in both directions:

- a frontend message is a dict such as ``{"type": "Parse", "name": "s1", "query": "...", "oids": [20, 701]}``;
  ``encode_frontend`` turns it into bytes (what a client sends), ``FrontendReader`` reads them back (what a server
  receives);
- a backend message is a dict such as ``{"type": "CommandComplete", "tag": "INSERT 0 1"}``; ``encode_backend``
  turns it into bytes (what a server sends), ``decode_backend`` reads them back (what a client receives).

The dicts are JSON-able, so the recording of a real node's answers (``tests/fixtures/cratedb-6.4.3/pg-probe.json``)
stores requests and answers in this form. Only the standard library is used.
"""

from __future__ import annotations

import struct
from typing import Any

PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Error and notice fields by their one-letter code (the ones CrateDB sends; others pass through by letter)
ERROR_FIELDS = {"S": "severity", "V": "severity_nonlocalized", "C": "sqlstate", "M": "message", "D": "detail",
                "H": "hint", "F": "file", "L": "line", "R": "routine", "W": "where"}  # fmt: skip

_FRONTEND_TAGS = {
    "Parse": b"P",
    "Bind": b"B",
    "Describe": b"D",
    "Execute": b"E",
    "Sync": b"S",
    "Flush": b"H",
    "Close": b"C",
    "Query": b"Q",
    "Password": b"p",
    "Terminate": b"X",
}
_FRONTEND_BY_TAG = {tag: name for name, tag in _FRONTEND_TAGS.items()}

_BACKEND_TAGS = {
    "Authentication": b"R",
    "ParameterStatus": b"S",
    "BackendKeyData": b"K",
    "ReadyForQuery": b"Z",
    "ParseComplete": b"1",
    "BindComplete": b"2",
    "CloseComplete": b"3",
    "NoData": b"n",
    "ParameterDescription": b"t",
    "RowDescription": b"T",
    "DataRow": b"D",
    "CommandComplete": b"C",
    "EmptyQueryResponse": b"I",
    "ErrorResponse": b"E",
    "NoticeResponse": b"N",
    "PortalSuspended": b"s",
}
_BACKEND_BY_TAG = {tag: name for name, tag in _BACKEND_TAGS.items()}


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _frame(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!I", len(payload) + 4) + payload


class _Cursor:
    """Reads the fields of one message's payload in order."""

    def __init__(self, payload: bytes):
        self.data = payload
        self.pos = 0

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return value

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return value

    def uint32(self) -> int:
        (value,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return value

    def cstr(self) -> str:
        end = self.data.index(b"\0", self.pos)
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def take(self, count: int) -> bytes:
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def byte(self) -> str:
        return self.take(1).decode()


# --- frontend: what a client sends ---


def encode_frontend(message: dict[str, Any]) -> bytes:
    """The bytes of one frontend message (parameters of Bind are str, bytes, or None for NULL)."""
    kind = message["type"]
    if kind == "Startup":
        params = {"user": message["user"], "database": message.get("database", "doc"), **message.get("options", {})}
        body = struct.pack("!I", PROTOCOL_V3) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
        return struct.pack("!I", len(body) + 4) + body
    if kind == "SSLRequest":
        return struct.pack("!II", 8, SSL_REQUEST_CODE)
    if kind == "GSSENCRequest":
        return struct.pack("!II", 8, GSSENC_REQUEST_CODE)
    tag = _FRONTEND_TAGS[kind]
    if kind == "Parse":
        oids = message.get("oids", [])
        payload = _cstr(message.get("name", "")) + _cstr(message["query"]) + struct.pack("!H", len(oids))
        payload += b"".join(struct.pack("!I", oid) for oid in oids)
    elif kind == "Bind":
        params = message.get("params", [])
        formats = message.get("formats", [])
        payload = _cstr(message.get("portal", "")) + _cstr(message.get("statement", ""))
        payload += struct.pack("!H", len(formats)) + b"".join(struct.pack("!H", f) for f in formats)
        payload += struct.pack("!H", len(params))
        for value in params:
            if value is None:
                payload += struct.pack("!i", -1)
            else:
                raw = value.encode() if isinstance(value, str) else bytes(value)
                payload += struct.pack("!I", len(raw)) + raw
        result_formats = message.get("result_formats", [])
        payload += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!H", f) for f in result_formats)
    elif kind in ("Describe", "Close"):
        payload = message.get("kind", "S").encode() + _cstr(message.get("name", ""))
    elif kind == "Execute":
        payload = _cstr(message.get("portal", "")) + struct.pack("!I", message.get("max_rows", 0))
    elif kind == "Query":
        payload = _cstr(message["sql"])
    elif kind == "Password":
        payload = _cstr(message["password"])
    else:  # Sync, Flush, Terminate
        payload = b""
    return _frame(tag, payload)


class FrontendReader:
    """Splits the bytes a server receives into frontend messages; the first one is untagged (startup or a request
    for TLS/GSS encryption). ``feed`` bytes, then take complete messages from ``messages()``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.started = False

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def messages(self):
        while True:
            message = self._next()
            if message is None:
                return
            yield message

    def _next(self) -> dict[str, Any] | None:
        buffer = self.buffer
        if not self.started:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("!I", buffer, 0)
            if len(buffer) < length:
                return None
            payload = bytes(buffer[4:length])
            del buffer[:length]
            return self._untagged(payload)
        if len(buffer) < 5:
            return None
        (length,) = struct.unpack_from("!I", buffer, 1)
        if len(buffer) < 1 + length:
            return None
        tag = bytes(buffer[:1])
        payload = bytes(buffer[5 : 1 + length])
        del buffer[: 1 + length]
        return decode_frontend(tag, payload)

    def _untagged(self, payload: bytes) -> dict[str, Any]:
        (code,) = struct.unpack_from("!I", payload, 0)
        if code == SSL_REQUEST_CODE:
            return {"type": "SSLRequest"}
        if code == GSSENC_REQUEST_CODE:
            return {"type": "GSSENCRequest"}
        if code == CANCEL_REQUEST_CODE:
            return {"type": "CancelRequest"}
        self.started = True
        parts = payload[4:].split(b"\0")
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}
        return {"type": "Startup", "protocol": code, "params": params}


def decode_frontend(tag: bytes, payload: bytes) -> dict[str, Any]:
    kind = _FRONTEND_BY_TAG.get(tag)
    cursor = _Cursor(payload)
    if kind == "Parse":
        name, query = cursor.cstr(), cursor.cstr()
        oids = [cursor.uint32() for _ in range(cursor.int16())]
        return {"type": kind, "name": name, "query": query, "oids": oids}
    if kind == "Bind":
        portal, statement = cursor.cstr(), cursor.cstr()
        formats = [cursor.int16() for _ in range(cursor.int16())]
        params: list[bytes | None] = []
        for _ in range(cursor.int16()):
            length = cursor.int32()
            params.append(None if length < 0 else cursor.take(length))
        result_formats = [cursor.int16() for _ in range(cursor.int16())]
        return {"type": kind, "portal": portal, "statement": statement, "formats": formats, "params": params,
                "result_formats": result_formats}  # fmt: skip
    if kind in ("Describe", "Close"):
        return {"type": kind, "kind": cursor.byte(), "name": cursor.cstr()}
    if kind == "Execute":
        return {"type": kind, "portal": cursor.cstr(), "max_rows": cursor.uint32()}
    if kind == "Query":
        return {"type": kind, "sql": cursor.cstr()}
    if kind == "Password":
        return {"type": kind, "password": payload.rstrip(b"\0").decode(errors="replace")}
    if kind is None:
        return {"type": "Unknown", "tag": tag.decode(errors="replace")}
    return {"type": kind}


# --- backend: what a server sends ---


def encode_backend(message: dict[str, Any]) -> bytes:
    kind = message["type"]
    if kind == "SSLAnswer":  # the one-byte answer to SSLRequest / GSSENCRequest: "N" (no) or "S" (yes)
        return message["answer"].encode()
    tag = _BACKEND_TAGS[kind]
    if kind == "Authentication":
        payload = struct.pack("!I", message["code"])
    elif kind == "ParameterStatus":
        payload = _cstr(message["name"]) + _cstr(message["value"])
    elif kind == "BackendKeyData":
        payload = struct.pack("!II", message["pid"], message["secret"])
    elif kind == "ReadyForQuery":
        payload = message["status"].encode()
    elif kind == "ParameterDescription":
        oids = message["oids"]
        payload = struct.pack("!H", len(oids)) + b"".join(struct.pack("!I", oid) for oid in oids)
    elif kind == "RowDescription":
        columns = message["columns"]
        payload = struct.pack("!H", len(columns))
        for column in columns:
            payload += _cstr(column["name"]) + struct.pack(
                "!IhIhih",
                column.get("table_oid", 0),
                column.get("attnum", 0),
                column["oid"],
                column.get("size", -1),
                column.get("modifier", -1),
                column.get("format", 0),
            )
    elif kind == "DataRow":
        values = message["values"]
        payload = struct.pack("!H", len(values))
        for value in values:
            if value is None:
                payload += struct.pack("!i", -1)
            else:
                raw = value.encode() if isinstance(value, str) else bytes(value)
                payload += struct.pack("!I", len(raw)) + raw
    elif kind == "CommandComplete":
        payload = _cstr(message["tag"])
    elif kind in ("ErrorResponse", "NoticeResponse"):
        payload = b"".join(code.encode() + _cstr(value) for code, value in message["fields"].items()) + b"\0"
    else:  # ParseComplete, BindComplete, CloseComplete, NoData, EmptyQueryResponse, PortalSuspended
        payload = b""
    return _frame(tag, payload)


def decode_backend(tag: bytes, payload: bytes) -> dict[str, Any]:
    kind = _BACKEND_BY_TAG.get(tag)
    cursor = _Cursor(payload)
    if kind == "Authentication":
        return {"type": kind, "code": cursor.uint32()}
    if kind == "ParameterStatus":
        return {"type": kind, "name": cursor.cstr(), "value": cursor.cstr()}
    if kind == "BackendKeyData":
        return {"type": kind, "pid": cursor.uint32(), "secret": cursor.uint32()}
    if kind == "ReadyForQuery":
        return {"type": kind, "status": cursor.byte()}
    if kind == "ParameterDescription":
        return {"type": kind, "oids": [cursor.uint32() for _ in range(cursor.int16())]}
    if kind == "RowDescription":
        columns = []
        for _ in range(cursor.int16()):
            name = cursor.cstr()
            table_oid, attnum, oid, size, modifier, fmt = struct.unpack_from("!IhIhih", payload, cursor.pos)
            cursor.pos += 18
            columns.append({"name": name, "table_oid": table_oid, "attnum": attnum, "oid": oid, "size": size,
                            "modifier": modifier, "format": fmt})  # fmt: skip
        return {"type": kind, "columns": columns}
    if kind == "DataRow":
        values: list[str | None] = []
        for _ in range(cursor.int16()):
            length = cursor.int32()
            values.append(None if length < 0 else cursor.take(length).decode(errors="replace"))
        return {"type": kind, "values": values}
    if kind == "CommandComplete":
        return {"type": kind, "tag": cursor.cstr()}
    if kind in ("ErrorResponse", "NoticeResponse"):
        fields = {}
        while cursor.pos < len(payload) and payload[cursor.pos] != 0:
            code = cursor.byte()
            fields[code] = cursor.cstr()
        return {"type": kind, "fields": fields}
    if kind is None:
        return {"type": "Unknown", "tag": tag.decode(errors="replace"), "payload": payload.hex()}
    return {"type": kind}


def split_backend(buffer: bytearray) -> list[dict[str, Any]]:
    """The complete backend messages at the start of ``buffer``, removed from it."""
    messages = []
    while len(buffer) >= 5:
        (length,) = struct.unpack_from("!I", buffer, 1)
        if len(buffer) < 1 + length:
            break
        messages.append(decode_backend(bytes(buffer[:1]), bytes(buffer[5 : 1 + length])))
        del buffer[: 1 + length]
    return messages
