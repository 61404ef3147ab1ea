"""A cluster member written in Python from docs/cluster.md alone (nats-py, msgpack, xxhash).

usage: py_node.py NATS_URL CLUSTER NODE_ID ACTOR_ID...

It joins the cluster as the doc says (a liveness key with a TTL, renewed by revision-checked
writes, and a record),
waits until the leader's shard map gives it shards, checks the map, routes the given actor ids
through it, tries to publish a map fenced by a stale lease revision (which the server must
refuse), prints one JSON line with what it saw, and exits without leaving, so that its liveness
key expires, the leader marks its record failed, and the cluster reports it failed.
"""

import asyncio
import json
import sys
import time
import uuid

import msgpack
import nats
import xxhash
from nats.js.errors import APIError, KeyNotFoundError

TTL = "5s"  # this node's failure timeout, as a Nats-TTL header value (room for a loaded machine)


async def main(url: str, cluster: str, node_id: str, actors: list) -> dict:
    nc = await nats.connect(servers=[url])
    js = nc.jetstream()
    bucket = f"aether-cluster-{cluster}"
    kv = await js.key_value(bucket)

    # config: {shard_count}, written by the first node.
    shard_count = msgpack.unpackb((await kv.get("config")).value)["shard_count"]

    # Join: create alive.<id> expecting an empty subject, with the failure timeout as TTL...
    incarnation = str(uuid.uuid4())
    alive = {"incarnation": incarnation, "load": 0}
    alive_subject = f"$KV.{bucket}.alive.{node_id}"
    headers = {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-TTL": TTL}
    alive_revision = (
        await js.publish(alive_subject, msgpack.packb(alive), headers=headers)
    ).seq

    # ...then nodes.<id>, expecting an empty subject, without a TTL.
    record = {
        "id": node_id,
        "metadata": {"lang": "python"},
        "capacity": 1,
        "load": 0,
        "status": "active",
        "started_at_ms": int(time.time() * 1000),
        "version": "py-node/1",
        "shard_count": shard_count,
        "incarnation": incarnation,
    }
    subject = f"$KV.{bucket}.nodes.{node_id}"
    headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
    await js.publish(subject, msgpack.packb(record), headers=headers)

    # Heartbeat: renew alive.<id> (expecting our last revision) until the leader's map names us.
    deadline = time.monotonic() + 30
    shard_map = None
    while time.monotonic() < deadline:
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(alive_revision),
            "Nats-TTL": TTL,
        }
        alive_revision = (
            await js.publish(alive_subject, msgpack.packb(alive), headers=headers)
        ).seq
        try:
            shard_map = msgpack.unpackb((await kv.get("shardmap")).value)
        except KeyNotFoundError:
            shard_map = None
        if shard_map and node_id in shard_map["nodes"]:
            break
        await asyncio.sleep(0.3)
    else:
        raise SystemExit(f"no shard map naming {node_id} within 30 s: {shard_map}")

    # The map, checked as the doc says.
    nodes, owners = shard_map["nodes"], shard_map["owners"]
    assert shard_map["shard_count"] == shard_count, shard_map
    assert len(owners) == shard_count, len(owners)
    assert all(0 <= i < len(nodes) for i in owners)

    # Members: every nodes.* key holding a record (markers and garbage are skipped).
    members = []
    for key in await kv.keys():
        if not key.startswith("nodes."):
            continue
        try:
            rec = msgpack.unpackb((await kv.get(key)).value)
        except Exception:
            continue
        if isinstance(rec, dict) and rec.get("id") == key[len("nodes."):]:
            members.append(rec["id"])

    # The leader: term is the lease's `term`, or the entry's revision when absent.
    lease_entry = await kv.get("leader")
    lease = msgpack.unpackb(lease_entry.value)
    term = lease.get("term") or lease_entry.revision

    # Routing: owner = nodes[owners[xxh3_64(id) % shard_count]].
    routes = {
        a: nodes[owners[xxhash.xxh3_64_intdigest(a.encode("utf-8")) % shard_count]]
        for a in actors
    }

    # A map fenced by a lease revision that is not the lease's last one must be refused.
    forged = dict(shard_map, epoch=shard_map["epoch"] + 1000, leader=node_id)
    fence = {
        "Nats-Expected-Last-Subject-Sequence": "1",
        "Nats-Expected-Last-Subject-Sequence-Subject": f"$KV.{bucket}.leader",
    }
    try:
        await js.publish(f"$KV.{bucket}.shardmap", msgpack.packb(forged), headers=fence)
        refused = None
    except APIError as e:
        refused = e.err_code

    await nc.close()
    return {
        "shard_count": shard_count,
        "epoch": shard_map["epoch"],
        "term": shard_map["term"],
        "map_leader": shard_map["leader"],
        "lease_node": lease["node"],
        "lease_term": term,
        "members": sorted(members),
        "routes": routes,
        "forged_map_refused_with": refused,
    }


if __name__ == "__main__":
    url, cluster, node_id, *actors = sys.argv[1:]
    print(json.dumps(asyncio.run(main(url, cluster, node_id, actors))))
