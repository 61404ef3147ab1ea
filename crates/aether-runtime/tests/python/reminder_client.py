"""Sets and reads Aether reminders in Python, from docs/reminders.md alone (nats-py, msgpack).

usage:
    reminder_client.py set NATS_URL EVENTS_STREAM TYPE ACTOR NAME DUE_MS COMMAND_JSON
        sets reminder NAME of actor ACTOR of type TYPE, due at DUE_MS (milliseconds since
        1970), delivering COMMAND_JSON encoded as MessagePack
    reminder_client.py every NATS_URL EVENTS_STREAM TYPE ACTOR NAME INTERVAL_MS COMMAND_JSON
        the same, repeating every INTERVAL_MS
    reminder_client.py get NATS_URL EVENTS_STREAM TYPE ACTOR NAME
        reads the reminder: its schedule, due time or interval, and command (as JSON)
    reminder_client.py cancel NATS_URL EVENTS_STREAM TYPE ACTOR NAME
        cancels the reminder and an unsettled firing of it (one purge); prints what was purged

Each mode prints one JSON line.
"""

import asyncio
import datetime
import json
import sys

import msgpack
import nats


def token(text: str) -> str:
    """One subject token: ASCII letters, digits and '-' kept, '_' doubled, any other byte of
    the UTF-8 encoding as '_' and two uppercase hex digits."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "-":
            out.append(c)
        elif c == "_":
            out.append("__")
        else:
            out.append("_%02X" % b)
    return "".join(out)


def subject(stream: str, kind: str, ty: str, actor: str, name: str) -> str:
    return f"ar.{stream}.{kind}.{token(ty)}.{token(actor)}.{token(name)}"


def rfc3339(millis: int) -> str:
    t = datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def set_reminder(js, stream, ty, actor, name, when, value, command) -> dict:
    headers = {
        "Nats-Schedule-Target": subject(stream, "f", ty, actor, name),
        "Nats-Schedule-Rollup": "sub",
    }
    if when == "at":
        headers["Nats-Schedule"] = f"@at {rfc3339(value)}"
        headers["Aether-Reminder-At"] = str(value)
    else:
        headers["Nats-Schedule"] = f"@every {value}ms"
        headers["Aether-Reminder-Every"] = str(value)
    s = subject(stream, "s", ty, actor, name)
    ack = await js.publish(s, msgpack.packb(command), headers=headers)
    return {"subject": s, "seq": ack.seq, "stream": ack.stream}


async def get_reminder(js, stream, ty, actor, name) -> dict:
    s = subject(stream, "s", ty, actor, name)
    msg = await js.get_last_msg(f"REMINDERS_{stream}", s)
    h = msg.headers or {}
    return {
        "subject": s,
        "schedule": h.get("Nats-Schedule"),
        "target": h.get("Nats-Schedule-Target"),
        "at": int(h["Aether-Reminder-At"]) if "Aether-Reminder-At" in h else None,
        "every": int(h["Aether-Reminder-Every"]) if "Aether-Reminder-Every" in h else None,
        "command": msgpack.unpackb(msg.data),
    }


async def cancel_reminder(nc, stream, ty, actor, name) -> dict:
    filt = f"ar.{stream}.*.{token(ty)}.{token(actor)}.{token(name)}"
    reply = await nc.request(
        f"$JS.API.STREAM.PURGE.REMINDERS_{stream}", json.dumps({"filter": filt}).encode(), timeout=5
    )
    answer = json.loads(reply.data)
    return {"filter": filt, "purged": answer.get("purged", 0), "success": answer.get("success")}


async def main(argv) -> None:
    mode, url, stream = argv[1], argv[2], argv[3]
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        if mode in ("set", "every"):
            ty, actor, name, value, command = argv[4], argv[5], argv[6], int(argv[7]), json.loads(argv[8])
            when = "at" if mode == "set" else "every"
            out = await set_reminder(js, stream, ty, actor, name, when, value, command)
        elif mode == "get":
            out = await get_reminder(js, stream, argv[4], argv[5], argv[6])
        elif mode == "cancel":
            out = await cancel_reminder(nc, stream, argv[4], argv[5], argv[6])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await nc.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
