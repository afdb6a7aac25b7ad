"""redis-py (protocol=3) against meridian's pub/sub: subscribe, psubscribe, receive pushes
while running ordinary commands on the same connection (RESP3 allows it), unsubscribe."""
import sys
import time

import redis

host, port = sys.argv[1].split(":")
r = redis.Redis(host=host, port=int(port), protocol=3, decode_responses=True)
p = r.pubsub()
p.subscribe("news")
p.psubscribe("n*")


def next_message(kind):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = p.get_message(timeout=1.0)
        if m is not None and m["type"] == kind:
            return m
    raise AssertionError(f"no {kind} within the deadline")


next_message("subscribe")
next_message("psubscribe")
assert r.pubsub_numsub("news") == [("news", 1)], r.pubsub_numsub("news")
assert r.pubsub_numpat() == 1
assert r.publish("news", "hello") == 2
m = next_message("message")
assert (m["channel"], m["data"]) == ("news", "hello"), m
m = next_message("pmessage")
assert (m["pattern"], m["channel"], m["data"]) == ("n*", "news", "hello"), m
p.unsubscribe("news")
next_message("unsubscribe")
assert r.pubsub_channels() == [], r.pubsub_channels()
p.close()
print("OK pubsub")
