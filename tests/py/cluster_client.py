#!/usr/bin/env python3
"""redis-py's RedisCluster against a running meridian cluster (run by tests/cluster.rs).

    python3 tests/py/cluster_client.py HOST:PORT [HOST:PORT ...]

Writes and reads one key in every one of the 16384 hash slots (pipelined), runs INCR, SADD,
HSET, hash-tagged MSET/MGET/DEL and a mixed pipeline on keys spread over every primary, and
reads writes back from each shard's replica after READONLY. Any mismatch
raises, so the exit status is non-zero; the last line on success is `OK <summary>`.
"""

import sys
import time

from redis import Redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

SLOTS = 16384
DEADLINE_S = 30.0


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def one_key_per_slot(prefix):
    """A key for every hash slot: `prefix:<n>` for increasing n until each slot has one."""
    keys = [None] * SLOTS
    missing = SLOTS
    n = 0
    while missing:
        k = f"{prefix}:{n}"
        s = key_slot(k.encode())
        if keys[s] is None:
            keys[s] = k
            missing -= 1
        n += 1
    return keys


def chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    startup = []
    for a in argv[1:]:
        host, _, port = a.rpartition(":")
        startup.append(ClusterNode(host, int(port)))
    rc = RedisCluster(startup_nodes=startup, decode_responses=True, socket_timeout=30)

    primaries = rc.get_primaries()
    replicas = rc.get_replicas()
    check(len(primaries) == 3, f"3 primaries, got {[n.name for n in primaries]}")
    check(len(replicas) == 3, f"3 replicas, got {[n.name for n in replicas]}")

    # One key in every slot, written and read back through pipelines (grouped by node).
    keys = one_key_per_slot("py")
    owners = set()
    for part in chunks(list(enumerate(keys)), 1024):
        p = rc.pipeline()
        for slot, k in part:
            p.set(k, f"v{slot}")
        check(all(r is True for r in p.execute()), "pipelined SETs acknowledged")
    for part in chunks(list(enumerate(keys)), 1024):
        p = rc.pipeline()
        for _, k in part:
            p.get(k)
        got = p.execute()
        for (slot, k), v in zip(part, got):
            check(v == f"v{slot}", f"GET {k} (slot {slot}) = {v!r}")
    for slot in range(0, SLOTS, 97):
        owners.add(rc.get_node_from_key(keys[slot]).name)
    check(len(owners) == 3, f"keys land on every primary: {owners}")

    # Plain (non-pipelined) commands of each type, spread over the shards.
    for slot in range(0, SLOTS, 257):
        k = keys[slot]
        check(rc.get(k) == f"v{slot}", f"GET {k}")
        c = f"{k}:ctr"
        check(rc.incr(c) == 1, f"INCR {c}")
        check(rc.incrby(c, 41) == 42, f"INCRBY {c}")
        s = f"{k}:set"
        check(rc.sadd(s, "a", "b", "c") == 3, f"SADD {s}")
        check(rc.smembers(s) == {"a", "b", "c"}, f"SMEMBERS {s}")
        h = f"{k}:hash"
        check(rc.hset(h, mapping={"f1": "x", "f2": "y"}) == 2, f"HSET {h}")
        check(rc.hgetall(h) == {"f1": "x", "f2": "y"}, f"HGETALL {h}")

    # Hash tags: multi-key commands on one slot, for a tag on each primary.
    tags = {}
    n = 0
    while len(tags) < 3:
        tag = f"tag{n}"
        node = rc.get_node_from_key(f"{{{tag}}}").name
        tags.setdefault(node, tag)
        n += 1
    for tag in tags.values():
        ks = [f"{{{tag}}}:k{i}" for i in range(10)]
        check(rc.mset({k: str(i) for i, k in enumerate(ks)}) is True, f"MSET {{{tag}}}")
        check(rc.mget(ks) == [str(i) for i in range(10)], f"MGET {{{tag}}}")
        check(rc.exists(*ks) == 10, f"EXISTS {{{tag}}}")
        check(rc.delete(*ks[:5]) == 5, f"DEL {{{tag}}}")
        check(rc.mget(ks) == [None] * 5 + [str(i) for i in range(5, 10)], "MGET after DEL")

    # A mixed pipeline over keys of every shard.
    p = rc.pipeline()
    mixed = [keys[s] for s in (0, 5000, 9000, 16383)]
    for k in mixed:
        p.set(f"{k}:p", "1")
        p.incr(f"{k}:p")
        p.get(f"{k}:p")
    out = p.execute()
    check(out == [True, 2, "2"] * len(mixed), f"mixed pipeline {out}")

    # Each shard's replica serves READONLY reads once it has the write.
    for slot in (0, 8000, 16000):
        k = keys[slot]
        replica = [n for n in rc.nodes_manager.slots_cache[slot] if n.server_type == "replica"]
        check(len(replica) == 1, f"slot {slot} has one replica")
        conn = Redis(
            host=replica[0].host,
            port=replica[0].port,
            decode_responses=True,
            single_connection_client=True,
            socket_timeout=30,
        )
        check(conn.execute_command("READONLY") in (True, "OK"), "READONLY")
        deadline = time.monotonic() + DEADLINE_S
        while conn.get(k) != f"v{slot}":
            check(time.monotonic() < deadline, f"replica {replica[0].name} never had {k}")
            time.sleep(0.05)
        conn.close()
    rc.close()
    print(f"OK {SLOTS} slots over {len(owners)} primaries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
