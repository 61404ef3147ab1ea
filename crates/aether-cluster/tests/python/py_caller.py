"""A caller written in Python from docs/cluster.md ("Call and answer") alone.

usage: py_caller.py NATS_URL CLUSTER ACTOR_ID COMMAND_ID

It reads the cluster's shard count and map from its KV bucket, finds the owner of ACTOR_ID
(xxh3_64 of the id modulo the shard count), sends it a `Deposit(5)` call for the `account` actor
type with COMMAND_ID, then the same call again (a retry), then a `Withdraw(1000000)` that the
actor refuses, re-sending on `not_owner` / `moving` / timeouts, and prints one JSON line with
the decoded answers.
"""

import asyncio
import json
import sys

import msgpack
import nats
import xxhash


async def call(nc, kv, cluster, shard_count, actor, command_id, command):
    for _ in range(100):
        shard_map = msgpack.unpackb((await kv.get("shardmap")).value)
        shard = xxhash.xxh3_64_intdigest(actor.encode()) % shard_count
        owner = shard_map["nodes"][shard_map["owners"][shard]]
        body = {
            "type": "account",
            "actor": actor,
            "id": command_id,
            "epoch": shard_map["epoch"],
            "cmd": msgpack.packb(command),
        }
        try:
            reply = await nc.request(
                f"aether-cluster.{cluster}.call.{owner}", msgpack.packb(body), timeout=2
            )
        except Exception:  # no responders, timeout: ask again with the same id
            await asyncio.sleep(0.1)
            continue
        answer = msgpack.unpackb(reply.data)
        if answer["status"] in ("not_owner", "moving"):
            await asyncio.sleep(0.05)
            continue
        out = {"status": answer["status"], "owner": owner, "epoch": answer["epoch"]}
        if "version" in answer:
            out["version"] = answer["version"]
        if "events" in answer:
            out["events"] = msgpack.unpackb(answer["events"])
        if "error" in answer:
            out["error"] = msgpack.unpackb(answer["error"])
        return out
    raise RuntimeError("no node served the call")


async def main(url, cluster, actor, command_id):
    nc = await nats.connect(servers=[url])
    kv = await nc.jetstream().key_value(f"aether-cluster-{cluster}")
    shard_count = msgpack.unpackb((await kv.get("config")).value)["shard_count"]
    first = await call(nc, kv, cluster, shard_count, actor, command_id, {"Deposit": 5})
    again = await call(nc, kv, cluster, shard_count, actor, command_id, {"Deposit": 5})
    refused = await call(nc, kv, cluster, shard_count, actor, command_id + "-w", {"Withdraw": 1000000})
    await nc.close()
    return {"first": first, "again": again, "refused": refused}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
