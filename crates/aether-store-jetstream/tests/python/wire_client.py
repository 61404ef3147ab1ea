"""Writes and reads Aether events in Python, from docs/nats-layout.md alone (nats-py, msgpack).

usage:
    wire_client.py write NATS_URL STREAM SUBJECT ACTOR_ID
        appends versions 1, 2 and 3 of ACTOR_ID to SUBJECT, as a store would (schema version `sv`
        2, nil and absent)
    wire_client.py read NATS_URL STREAM SUBJECT
        reads every event on SUBJECT (direct gets, in stream order), with its schema version
        `sv` (absent or nil: 1) and its `Aether-Schema-Version` header (null when absent)

The stream and subject are given (the doc says how they are formed; the caller knows them). Each
mode prints one JSON line: what it wrote, or what it read.
"""

import asyncio
import json
import sys
import time
import uuid

import msgpack
import nats
from nats.js.errors import NotFoundError


ABSENT = object()  # a key left out of the body


def time_json(ts: msgpack.Timestamp) -> dict:
    return {"seconds": ts.seconds, "nanos": ts.nanoseconds}


async def write(js, stream: str, subject: str, actor: str) -> dict:
    # (type, schema version, time, payload, meta, unknown keys): every timestamp form, optional
    # fields absent and nil, the id as a string in both cases, keys a later version might add.
    plan = [
        (
            "OrderPlaced",
            2,  # `sv` a uint: the payload's shape changed once
            msgpack.Timestamp.from_unix_nano(time.time_ns()),  # the 64-bit form
            {"customer": "kunde-ü", "items": 3, "total": 99.5},
            {"correlation_id": "py-checkout-1", "causation_id": "py-cmd-1", "source": "python"},
            {"specversion": "1.0", "x-trace": [1, {"deep": None}, b"\x00"]},
        ),
        (
            "ItemAdded",
            None,  # `sv` nil: 1
            msgpack.Timestamp(1_700_000_000, 0),  # the 32-bit form
            ["sku-1", 2, None, True, -7, "🚀"],
            None,  # meta: nil
            {},
        ),
        (
            "OrderNoted",
            ABSENT,  # no `sv`: 1
            msgpack.Timestamp(-1, 500_000_000),  # before 1970: the 96-bit form
            None,  # the nil payload: `data` nil
            {},  # meta: empty
            {},
        ),
    ]
    expected_last = 0  # no message on the subject yet
    written = []
    for version, (event_type, schema, ts, payload, meta, unknown) in enumerate(plan, start=1):
        event_id = uuid.uuid4()
        # The body may carry the id as a string, in any case.
        id_text = str(event_id).upper() if version == 2 else str(event_id)
        body = {"id": id_text, "type": event_type, "actor": actor, "v": version}
        if schema is not ABSENT:
            body["sv"] = schema  # right after `v`, where Aether puts it
        body["time"] = ts
        body.update(unknown)
        body["data"] = None if payload is None else msgpack.packb(payload)
        body["meta"] = meta
        headers = {
            "Aether-Version": str(version),
            "Aether-Event-Type": event_type,
            "Nats-Expected-Last-Subject-Sequence": str(expected_last),
        }
        # Like the store: the header only for a schema version other than 1.
        if schema not in (ABSENT, None, 1):
            headers["Aether-Schema-Version"] = str(schema)
        # `Nats-Msg-Id` is optional on single appends (Aether writes none by default): written
        # on odd versions only, so the reader meets both forms.
        if version % 2 == 1:
            headers["Nats-Msg-Id"] = str(event_id)
        ack = await js.publish(subject, msgpack.packb(body), stream=stream, headers=headers)
        expected_last = ack.seq
        written.append(
            {
                "id": str(event_id),
                "type": event_type,
                "v": version,
                "sv": 1 if schema in (ABSENT, None) else schema,
                "time": time_json(ts),
                "data": payload,
                "meta": meta or {},
                "seq": ack.seq,
            }
        )
    return {"written": written}


def decode(raw: bytes, headers: dict) -> dict:
    body = msgpack.unpackb(raw)  # str stays str, bin becomes bytes, time a Timestamp
    if not isinstance(body, dict):
        raise ValueError(f"not a map: {body!r}")
    event_id = body["id"]
    if isinstance(event_id, bytes):
        id_form = "bin16" if len(event_id) == 16 else f"bin{len(event_id)}"
        event_id = uuid.UUID(bytes=event_id)
    else:
        id_form = "str"
        event_id = uuid.UUID(event_id)
    ts = body["time"]
    if not isinstance(ts, msgpack.Timestamp):
        raise ValueError(f"time is not a timestamp: {ts!r}")
    sv = body.get("sv")  # absent or nil: 1
    if sv is None:
        sv = 1
    elif isinstance(sv, bool) or not isinstance(sv, int) or not 1 <= sv <= 2**32 - 1:
        raise ValueError(f"sv is not a schema version: {sv!r}")
    data = body.get("data")
    payload = None if data is None else msgpack.unpackb(data)
    meta = body.get("meta") or {}
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"meta entry {key!r}: {value!r}")
    headers = headers or {}
    return {
        "id": str(event_id),
        "id_form": id_form,
        "type": body["type"],
        "actor": body["actor"],
        "v": body["v"],
        "sv": sv,
        "sv_header": headers.get("Aether-Schema-Version"),
        "time": time_json(ts),
        "data": payload,
        "meta": meta,
        "keys": list(body.keys()),
        # `Nats-Msg-Id` is optional; when present it is the event id.
        "headers_agree": headers.get("Nats-Msg-Id", str(event_id)) == str(event_id)
        and headers.get("Aether-Version") == str(body["v"])
        and headers.get("Aether-Event-Type") == body["type"]
        # `Aether-Schema-Version` absent: 1.
        and headers.get("Aether-Schema-Version", "1") == str(sv),
    }


async def read(js, stream: str, subject: str) -> dict:
    events = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            break
        events.append(decode(msg.data, msg.headers))
        seq = msg.seq + 1
    return {"read": events}


async def main(mode: str, url: str, stream: str, subject: str, rest: list) -> dict:
    nc = await nats.connect(servers=[url])
    try:
        js = nc.jetstream()
        if mode == "write":
            return await write(js, stream, subject, rest[0])
        if mode == "read":
            return await read(js, stream, subject)
        raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await nc.close()


if __name__ == "__main__":
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    result = asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
    print(json.dumps(result))
