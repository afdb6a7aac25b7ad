#!/usr/bin/env python3
"""Three-region replication benchmark (issue 5, Performance).

Starts three `meridian` processes (release build) on loopback, replicating over QUIC with an
injected one-way delay on every link (default 50 ms, `delay-ms` in each peer's config), plus
one standalone `meridian` without replication, and reports:

  * local p50/p99 latency of SET and INCR from one client (Python socket loop, one request
    in flight) with replication running and on the standalone node, and their ratio;
  * convergence time from a write at A to visibility at B and at C (p50/p99 over N writes;
    B and C are polled in a tight loop);
  * sustained replicated deltas/s over one link: a pipeline of INCRs on distinct keys into A,
    timed until B's DBSIZE shows them all;
  * bytes on the wire per delta (A's `INFO crdt` peer_b bytes_sent / deltas in that phase).

Repair mode (`--repair`, issue 20: "repair costs what diverged, once"): two regions, no
injected delay unless `--delay-ms` is given. Preloads `--repair-keys` keys (SET, 100-byte
values) at A and waits until B holds them, cuts the link both ways (`MERIDIAN LINK DOWN`),
writes `--repair-writes` SETs at A over those keys in a pipelined burst (key i % keys, so
each key is overwritten several times and the burst overflows the logs; plus
`--repair-writes-b` SETs at B on keys of its own), heals (`LINK UP`) and reports: bytes per
direction after the heal (`INFO crdt` peer bytes_sent, and its anti-entropy part
ae_bytes_sent), the diverged data (key + value bytes of the keys that differ), heal time
(until both regions return the same value for every sampled key; deadline 120 s) and until
the counters settle, and each region's RSS (VmRSS) before the burst, before the heal and
after it settled. `--values random` (default) writes incompressible values; `--values text`
padded text, which the link's LZ4 compression (`[replication] compression`) shrinks.

Clustered mode (`--clustered`, issue 20 "Benchmark"): the topology of
examples/clustered-regions on free ports (configs generated like its start.sh, in a temp
dir): region a = 3 primaries + 3 replicas, b = 2 primaries + 2 replicas, c = one node, peers
named by `seeds` (node mode, src/region_link_nodes.rs), certificates by `meridian certs`,
`--delay-ms` (default 50; 0 = plain loopback) injected one-way on every peer (node mode
honours `delay-ms` since de850cb; older binaries ignore it: check the p50). Waits until both clusters are ok, replicas linked and every primary's links
connected (restart handshake done), then:
  * convergence: per origin region, `--conv-writes` SETs on keys spread over the slots, each
    at its owner node; the owner node of the key in each other region is polled (GET, one in
    flight per node, a tight loop from 3 ms before the injected delay, unless `--poll-us`)
    until it returns the value: p50/p99 per (from, to) pair;
  * deltas/s: `--burst` INCRs on distinct keys, pipelined into all of a's primaries at once
    (one connection each), timed until the DBSIZE sum of b's primaries and c's DBSIZE show
    them all (a→b and a→c separately; bytes per delta from a's primaries' peer bytes_sent);
  * then a correctness check: each node's DBSIZE equals the number of written keys of its
    slots (replicas: their primary's), every INCR key reads 1 at its owner in every region,
    `repl_refused_not_served` is 0 everywhere; problems are printed and the exit status is 1.
`--shape both` (the default) repeats it all with region a as a single node for comparison.

Usage: cargo build --release && python3 bench/regions.py [--delay-ms 50] [--ops 60000]
       [--conv-writes 200] [--burst 200000]
       python3 bench/regions.py --repair [--repair-keys 200000] [--repair-writes 600000]
       python3 bench/regions.py --clustered [--delay-ms 50] [--shape both|cluster|single]
       [--conv-writes 200]
       [--burst 200000] [--poll-us 0] [--keep-logs]
       (binary: $MERIDIAN_BIN, else $CARGO_TARGET_DIR/release/meridian, else target/release)
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# MERIDIAN_BIN picks a binary explicitly; otherwise the release build under CARGO_TARGET_DIR
# (default: ./target).
BIN = os.environ.get("MERIDIAN_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "meridian"
)
NAMES = ["a", "b", "c"]


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """Minimal RESP2 client: enough for simple replies, integers, bulk strings."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Parse position in `buf`: replies are consumed by moving it, not by re-slicing the
        # buffer (which made parsing a 10 k-reply pipeline quadratic in Python).
        self.buf = b""
        self.pos = 0

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line, self.pos = self.buf[self.pos : i], i + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = self.buf[self.pos : self.pos + n]
        self.pos += n + 2
        return data

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def cmd(self, *args):
        self.sock.sendall(resp(*args))
        return self.reply()

    def info(self, section):
        text = self.cmd("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k] = v
        return out


def wait_for(what, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError(what)


class Node:
    def __init__(self, args, log):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [BIN, "--port", str(self.port), "--log-level", "warn"] + args,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError("meridian exited: %s" % self.proc.returncode)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for("meridian on port %d" % self.port, up)

    def conn(self):
        return Conn(self.port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def latency(nodes, ops, block=1000):
    """p50/p99 (µs) of SET and INCR on each node, one request in flight, distinct keys.

    The nodes are measured in alternating blocks of `block` requests, so that every node
    sees the same background load (the machine is shared): comparing a node measured now
    with one measured ten seconds later mostly compares the neighbours' activity."""
    conns = [n.conn() for n in nodes]
    out = [{} for _ in nodes]
    for name, mk in (
        ("SET", lambda i: resp("SET", "lat:s:%d" % i, "v")),
        ("INCR", lambda i: resp("INCR", "lat:i:%d" % (i % 1000))),
    ):
        for c in conns:
            for i in range(min(2000, ops)):  # warm-up
                c.sock.sendall(mk(i))
                c.reply()
        samples = [[] for _ in nodes]
        for n, start in enumerate(range(0, ops, block)):
            # Alternate which node goes first: the work one block leaves behind (A's
            # replication of its writes) then falls on each node's blocks alike.
            order = list(zip(conns, samples))
            if n % 2:
                order.reverse()
            for c, s in order:
                for i in range(start, min(ops, start + block)):
                    req = mk(i)
                    t0 = time.perf_counter_ns()
                    c.sock.sendall(req)
                    c.reply()
                    s.append((time.perf_counter_ns() - t0) / 1000.0)
        for o, s in zip(out, samples):
            o[name] = (pct(s, 50), pct(s, 99))
    return out


def convergence(a, b, c, writes):
    """ms from SET at A (reply received) until B, resp. C, returns the value.

    B and C are polled every ~0.25 ms rather than in a tight loop (a figure at most that
    much late): a busy poller keeps both nodes' client threads busy and takes the CPU their
    replication threads need on a 2-core machine."""
    ca, cb, cc = a.conn(), b.conn(), c.conn()
    to_b, to_c = [], []
    for i in range(writes):
        key = "conv:%d" % i
        val = b"v%d" % i
        ca.cmd("SET", key, val)
        t0 = time.perf_counter()
        tb = tc = None
        deadline = t0 + 30
        while tb is None or tc is None:
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError("write %d never reached B and C" % i)
            if tb is None and cb.cmd("GET", key) == val:
                tb = time.perf_counter() - t0
            if tc is None and cc.cmd("GET", key) == val:
                tc = time.perf_counter() - t0
            time.sleep(0.0002)
        to_b.append(tb * 1000)
        to_c.append(tc * 1000)
    return to_b, to_c


def throughput(a, b, burst):
    """Pipeline `burst` INCRs on distinct keys into A; time until B's DBSIZE has them all."""
    ca, cb = a.conn(), b.conn()
    base_b = cb.cmd("DBSIZE")
    info0 = ca.info("crdt")
    sent0 = int(dict(kv.split("=") for kv in info0["peer_b"].split(","))["bytes_sent"])
    deltas0 = int(info0["repl_deltas_sent"])
    shard_drops0 = int(info0["deltas_dropped_from_log"])
    link_drops0 = int(info0.get("repl_deltas_abandoned", 0))
    chunk = 10000
    # Requests are encoded before the clock starts: the figure is about the servers.
    payloads = [
        (min(chunk, burst - start), b"".join(resp("INCR", "tp:%d" % k) for k in range(start, min(start + chunk, burst))))
        for start in range(0, burst, chunk)
    ]
    # A sender thread writes the pipeline while this thread counts the replies (each INCR
    # reply is one `:n\r\n` line) with bytes.count: parsing 200 k replies one by one in
    # Python made the client, not the servers, the bottleneck (~180 k/s), so the figure was
    # the client's rate.
    def send_all():
        for _, payload in payloads:
            ca.sock.sendall(payload)

    sender = threading.Thread(target=send_all)
    t0 = time.perf_counter()
    sender.start()
    got = ca.buf[ca.pos :].count(b"\r\n")
    ca.buf, ca.pos = b"", 0
    tail = b""
    while got < burst:
        chunk = ca.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        if chunk.startswith(b"\n") and tail == b"\r":
            got += 1
        got += chunk.count(b"\r\n")
        tail = chunk[-1:]
        if chunk.startswith(b"-") or b"\n-" in chunk:
            raise RuntimeError("error reply during the burst")
    sender.join()
    t_local = time.perf_counter() - t0
    want = base_b + burst
    deadline = time.monotonic() + 300
    # Poll every 0.5 ms rather than in a tight loop: a busy poller takes most of one of the
    # machine's two cores away from the servers being measured.
    while cb.cmd("DBSIZE") < want:
        if time.monotonic() > deadline:
            raise TimeoutError("B never saw all %d keys" % burst)
        time.sleep(0.0005)
    t_b = time.perf_counter() - t0

    # A's link counters are published together (every 100 ms): once a sample shows B has
    # acknowledged everything, its bytes_sent covers the whole burst.
    def settled():
        p = dict(kv.split("=") for kv in ca.info("crdt")["peer_b"].split(","))
        return p["backlog_deltas"] == "0"

    wait_for("A's backlog to B drains", settled)
    info1 = ca.info("crdt")
    peer_b = dict(kv.split("=") for kv in info1["peer_b"].split(","))
    sent = int(peer_b["bytes_sent"]) - sent0
    deltas = int(info1["repl_deltas_sent"]) - deltas0
    return {
        "local_s": t_local,
        "visible_s": t_b,
        "rate": burst / t_b,
        "bytes_per_delta": sent / burst,
        "deltas_sent_all_links": deltas,
        "resent": int(info1["repl_deltas_resent"]),
        "ae_rounds": int(info1["repl_ae_rounds"]) - int(info0["repl_ae_rounds"]),
        "shard_drops": int(info1["deltas_dropped_from_log"]) - shard_drops0,
        "link_drops": int(info1.get("repl_deltas_abandoned", 0)) - link_drops0,
        "ae_shipped": int(info1["repl_ae_entries_shipped"]) - int(info0["repl_ae_entries_shipped"]),
    }


def start_regions(names, args, tmp, log):
    """Start one meridian per region name, full mesh over QUIC on loopback; returns the
    nodes once every link is connected."""
    nodes = []
    certs = os.path.join(tmp, "certs")
    subprocess.run(
        [BIN, "certs", "--out", certs, "--regions", ",".join(names)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    udp = [free_port(socket.SOCK_DGRAM) for _ in names]
    for i, r in enumerate(names):
        peers = "\n".join(
            '  { region = "%s", region-id = %d, addr = "127.0.0.1:%d", delay-ms = %d },'
            % (names[j], j, udp[j], args.delay_ms)
            for j in range(len(names))
            if j != i
        )
        cfg = (
            'region = "%s"\nregion-id = %d\n\n[replication]\nlisten = "127.0.0.1:%d"\n'
            'ca-cert = "%s/ca.pem"\ncert = "%s/%s.pem"\nkey = "%s/%s-key.pem"\n'
            "peers = [\n%s\n]\n" % (r, i, udp[i], certs, certs, r, certs, r, peers)
        )
        if args.ae_interval_ms:
            cfg += "anti-entropy-interval-ms = %d\n" % args.ae_interval_ms
        if args.flush_interval_ms:
            cfg += "flush-interval-ms = %d\n" % args.flush_interval_ms
        if args.compression:
            cfg += 'compression = "%s"\n' % args.compression
        path = os.path.join(tmp, "%s.toml" % r)
        with open(path, "w") as f:
            f.write(cfg)
        nodes.append(Node(["--config", path, "--io-threads", str(args.io_threads)], log))

    def links_up():
        return all(
            all("connected=1" in v for k, v in n.conn().info("crdt").items() if k.startswith("peer_"))
            for n in nodes
        )

    wait_for("all links connected", links_up)
    return nodes


def peer_counters(conn, peer):
    info = conn.info("crdt")
    p = dict(kv.split("=") for kv in info["peer_%s" % peer].split(","))
    return {
        "sent": int(p["bytes_sent"]),
        "ae": int(p["ae_bytes_sent"]),
        "backlog": int(p["backlog_deltas"]),
        "shipped": int(info["repl_ae_entries_shipped"]),
        "rounds": int(info["repl_ae_rounds"]),
        "abandoned": int(info.get("repl_deltas_abandoned", 0)),
        "shard_drops": int(info["deltas_dropped_from_log"]),
        "sent_deltas": int(info["repl_deltas_sent"]),
    }


def rss_mb(node):
    with open("/proc/%d/status" % node.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pipeline(conn, reqs, chunk=10000):
    """Send requests in chunks of `chunk`, reading every reply (errors raise)."""
    for start in range(0, len(reqs), chunk):
        part = reqs[start : start + chunk]
        conn.sock.sendall(b"".join(part))
        for _ in part:
            conn.reply()


VALUE_KIND = "random"


def value(tag, i, n):
    """A value of `n` bytes for write `i`: random bytes (`--values random`, the default:
    compression gains nothing on them) or a padded text (`--values text`: compresses well,
    as JSON or session blobs often do)."""
    v = b"%s:%d:" % (tag, i)
    if VALUE_KIND == "random":
        return v + os.urandom(max(0, n - len(v)))
    return v + b"x" * max(0, n - len(v))


def repair(a, b, args):
    """Issue 20: bytes, heal time and RSS of a repair after a partition (see module doc)."""
    ca, cb = a.conn(), b.conn()
    keys = args.repair_keys
    vb = args.value_bytes
    key = lambda i: b"rk:%08d" % i
    pipeline(ca, [resp("SET", key(i), value(b"p", i, vb)) for i in range(keys)])
    wait_for("B holds the preload", lambda: cb.cmd("DBSIZE") >= keys, timeout=300)
    wait_for("A's backlog drains", lambda: peer_counters(ca, "b")["backlog"] == 0, timeout=300)
    time.sleep(1.0)
    rss0 = (rss_mb(a), rss_mb(b))
    ca.cmd("MERIDIAN", "LINK", "DOWN", "b")
    cb.cmd("MERIDIAN", "LINK", "DOWN", "a")
    time.sleep(0.2)
    c0 = (peer_counters(ca, "b"), peer_counters(cb, "a"))
    # The burst at A: overwrite the preloaded keys in turn (the last write of key i is the
    # one with the greatest j ≡ i mod keys). Pipelined as fast as A takes them.
    t0 = time.perf_counter()
    w = args.repair_writes
    for start in range(0, w, 50000):
        pipeline(ca, [resp("SET", key(j % keys), value(b"a", j, vb)) for j in range(start, min(w, start + 50000))])
    t_burst = time.perf_counter() - t0
    wb = args.repair_writes_b
    if wb:
        pipeline(cb, [resp("SET", b"rb:%08d" % j, value(b"b", j, vb)) for j in range(wb)])
    changed_a = min(w, keys)
    diverged = changed_a * (len(key(0)) + vb) + wb * (len(b"rb:%08d" % 0) + vb)
    time.sleep(1.0)
    rss1 = (rss_mb(a), rss_mb(b))
    sample = sorted(random.Random(7).sample(range(keys), min(keys, args.repair_sample)))
    sample_keys = [key(i) for i in sample] + [b"rb:%08d" % j for j in range(0, wb, max(1, wb // 200))]
    ca.cmd("MERIDIAN", "LINK", "UP", "b")
    cb.cmd("MERIDIAN", "LINK", "UP", "a")
    t0 = time.perf_counter()
    stale_at = {}
    heal = None
    deadline = t0 + 120
    pending = list(sample_keys)
    while pending and time.perf_counter() < deadline:
        ca.sock.sendall(b"".join(resp("GET", k) for k in pending))
        va = [ca.reply() for _ in pending]
        cb.sock.sendall(b"".join(resp("GET", k) for k in pending))
        vbv = [cb.reply() for _ in pending]
        now = time.perf_counter() - t0
        still = []
        for k, x, y in zip(pending, va, vbv):
            if x != y:
                still.append(k)
            else:
                stale_at[k] = now
        pending = still
        if not pending:
            heal = now
            break
        time.sleep(0.01)
    # Settled: no counter moved for 2 s (A and B both idle on the link).
    last, quiet_since = None, time.perf_counter()
    while time.perf_counter() < deadline + 60:
        cur = (peer_counters(ca, "b"), peer_counters(cb, "a"))
        snap = tuple((c["sent"], c["backlog"]) for c in cur)
        if snap != last:
            last, quiet_since = snap, time.perf_counter()
        elif time.perf_counter() - quiet_since >= 2.0 and all(c["backlog"] == 0 for c in cur):
            break
        time.sleep(0.1)
    settled = quiet_since - t0
    c1 = (peer_counters(ca, "b"), peer_counters(cb, "a"))
    time.sleep(1.0)
    rss2 = (rss_mb(a), rss_mb(b))
    dbs = (ca.cmd("DBSIZE"), cb.cmd("DBSIZE"))
    after = sorted(stale_at.values())
    out = {
        "burst_s": t_burst,
        "diverged": diverged,
        "a_to_b": c1[0]["sent"] - c0[0]["sent"],
        "b_to_a": c1[1]["sent"] - c0[1]["sent"],
        "ae_a_to_b": c1[0]["ae"] - c0[0]["ae"],
        "ae_b_to_a": c1[1]["ae"] - c0[1]["ae"],
        "shipped_a": c1[0]["shipped"] - c0[0]["shipped"],
        "shipped_b": c1[1]["shipped"] - c0[1]["shipped"],
        "rounds": (c1[0]["rounds"] - c0[0]["rounds"], c1[1]["rounds"] - c0[1]["rounds"]),
        "abandoned_a": c1[0]["abandoned"] - c0[0]["abandoned"],
        "shard_drops_a": c1[0]["shard_drops"] - c0[0]["shard_drops"],
        "deltas_sent_a": c1[0]["sent_deltas"] - c0[0]["sent_deltas"],
        "heal_s": heal,
        "stale_1s": sum(1 for k in sample_keys if stale_at.get(k, 1e9) > 1.0) / max(1, len(sample_keys)),
        "heal_p50_s": pct(after, 50) if after else None,
        "settled_s": settled,
        "rss": (rss0, rss1, rss2),
        "dbsize": dbs,
        "sampled": len(sample_keys),
    }
    return out


def repair_main(args):
    tmp = tempfile.mkdtemp(prefix="meridian-bench-")
    log = open(os.path.join(tmp, "servers.log"), "wb")
    nodes = []
    try:
        nodes.extend(start_regions(["a", "b"], args, tmp, log))
        a, b = nodes
        print("meridian repair benchmark: two regions, loopback, one-way delay %d ms, %d keys "
              "preloaded (%d-byte %s values), link cut, %d SETs at A (%d at B), healed; %d cores"
              % (args.delay_ms, args.repair_keys, args.value_bytes, args.values, args.repair_writes,
                 args.repair_writes_b, os.cpu_count()), flush=True)
        r = repair(a, b, args)
        mb = lambda x: "%.1f MB" % (x / 1e6)
        (ra0, rb0), (ra1, rb1), (ra2, rb2) = r["rss"]
        rows = [
            ("diverged data (key + value)", mb(r["diverged"]), "burst took %.2f s at A" % r["burst_s"]),
            ("bytes A→B after heal", mb(r["a_to_b"]),
             "x%.2f of diverged; anti-entropy %s; %d deltas sent"
             % (r["a_to_b"] / max(1, r["diverged"]), mb(r["ae_a_to_b"]), r["deltas_sent_a"])),
            ("bytes B→A after heal", mb(r["b_to_a"]), "anti-entropy %s" % mb(r["ae_b_to_a"])),
            ("total / diverged", "%.2f" % ((r["a_to_b"] + r["b_to_a"]) / max(1, r["diverged"])), "target ≤ 1.2"),
            ("anti-entropy entries shipped", "%d / %d" % (r["shipped_a"], r["shipped_b"]),
             "by A / by B; rounds %d / %d" % r["rounds"]),
            ("deltas dropped at A", "%d / %d" % (r["shard_drops_a"], r["abandoned_a"]), "shard logs / link log"),
            ("heal time (all sampled equal)", "%s" % ("%.2f s" % r["heal_s"] if r["heal_s"] is not None else "not healed in 120 s"),
             "%d sampled keys; p50 %.2f s; %.0f %% still stale after 1 s"
             % (r["sampled"], r["heal_p50_s"] or -1, 100 * r["stale_1s"])),
            ("counters settled", "%.2f s" % r["settled_s"], "DBSIZE A %d, B %d" % r["dbsize"]),
            ("RSS A (MB)", "%.0f → %.0f → %.0f" % (ra0, ra1, ra2), "before burst → before heal → after heal"),
            ("RSS B (MB)", "%.0f → %.0f → %.0f" % (rb0, rb1, rb2), "before burst → before heal → after heal"),
        ]
        w0 = max(len(x[0]) for x in rows)
        w1 = max(len(x[1]) for x in rows)
        print("%s  %s  %s" % ("metric".ljust(w0), "value".rjust(w1), "notes"))
        print("-" * (w0 + w1 + 40))
        for x in rows:
            print("%s  %s  %s" % (x[0].ljust(w0), x[1].rjust(w1), x[2]))
    finally:
        for n in nodes:
            n.stop()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Clustered regions (issue 20, "Benchmark"): the topology of examples/clustered-regions.

A_SLOTS = [(0, 5460), (5461, 10922), (10923, 16383)]
B_SLOTS = [(0, 8191), (8192, 16383)]

_CRC_TABLE = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x1021) if _c & 0x8000 else (_c << 1)
    _CRC_TABLE.append(_c & 0xFFFF)


def key_slot(key):
    """Redis Cluster hash slot: CRC16-XMODEM of the key (or its {hash tag}) mod 16384."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1 : e]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc % 16384


class CNode:
    """One process of a clustered deployment."""

    def __init__(self, region, rid, slots=None, replica_of=None):
        self.region, self.rid = region, rid
        self.slots, self.replica_of = slots, replica_of
        self.port, self.bus, self.udp = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
        self.proc = None

    @property
    def primary(self):
        return self.replica_of is None

    def label(self):
        return "%s:%d" % (self.region, self.port)


class Deployment:
    """Regions a, b, c as in examples/clustered-regions/start.sh (a: 3 primaries + 3
    replicas, b: 2 + 2, c: one node; `single_a` makes a one node), on free ports, peers
    named by `seeds` (node mode), `delay-ms` on every peer (node mode honours it since
    de850cb; it delays the frames to every node of the peer region)."""

    def __init__(self, tmp, args, log, single_a=False):
        self.tmp, self.log = tmp, log
        certs = os.path.join(tmp, "certs")
        subprocess.run([BIN, "certs", "--out", certs, "--regions", "a,b,c"], check=True,
                       stdout=subprocess.DEVNULL)
        self.regions = {}
        for name, rid, shape in (("a", 0, None if single_a else A_SLOTS), ("b", 1, B_SLOTS),
                                 ("c", 2, None)):
            if shape is None:
                self.regions[name] = [CNode(name, rid)]
                continue
            prim = [CNode(name, rid, slots=s) for s in shape]
            self.regions[name] = prim + [CNode(name, rid, replica_of=p) for p in prim]
        self.nodes = [n for ns in self.regions.values() for n in ns]
        # Seeds of a region: its first two primaries' UDP endpoints (start.sh does the same).
        seeds = {r: [n.udp for n in ns if n.primary][:2] for r, ns in self.regions.items()}
        rids = {r: ns[0].rid for r, ns in self.regions.items()}
        for n in self.nodes:
            peers = ", ".join(
                '{ region = "%s", region-id = %d, seeds = [%s], delay-ms = %d }'
                % (r, rids[r], ", ".join('"127.0.0.1:%d"' % u for u in seeds[r]), args.delay_ms)
                for r in self.regions if r != n.region)
            cfg = ('region = "%s"\nregion-id = %d\nbind = "127.0.0.1"\nport = %d\n\n'
                   '[replication]\nlisten = "127.0.0.1:%d"\nca-cert = "%s/ca.pem"\n'
                   'cert = "%s/%s.pem"\nkey = "%s/%s-key.pem"\npeers = [%s]\n'
                   % (n.region, n.rid, n.port, n.udp, certs, certs, n.region, certs, n.region,
                      peers))
            if args.thread_priority:
                cfg += 'thread-priority = "%s"\n' % args.thread_priority
            if args.compression:
                cfg += 'compression = "%s"\n' % args.compression
            members = self.regions[n.region]
            if len(members) > 1:
                meet = ", ".join('"127.0.0.1:%d@%d"' % (m.port, m.bus) for m in members if m is not n)
                role = ('slots = "%d-%d"' % n.slots if n.primary
                        else 'replicate = "127.0.0.1:%d"' % n.replica_of.port)
                cfg += ('\n[cluster]\nbus-port = %d\nannounce-ip = "127.0.0.1"\n'
                        'node-timeout-ms = 5000\nnodes-file = "%s/nodes-{port}.json"\n'
                        'meet = [%s]\n%s\n' % (n.bus, tmp, meet, role))
            path = os.path.join(tmp, "node-%d.toml" % n.port)
            with open(path, "w") as f:
                f.write(cfg)
            n.proc = subprocess.Popen(
                [BIN, "--config", path, "--log-level", "warn", "--io-threads", str(args.io_threads)],
                stdout=subprocess.DEVNULL, stderr=log)
        self.conns = {}
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def conn(self, port):
        c = self.conns.get(port)
        if c is None:
            c = self.conns[port] = Conn(port)
        return c

    def primaries(self, region):
        return [n for n in self.regions[region] if n.primary]

    def _alive(self):
        for n in self.nodes:
            if n.proc.poll() is not None:
                raise RuntimeError("%s exited: %s" % (n.label(), n.proc.returncode))

    def _wait_ready(self):
        def listening():
            self._alive()
            for n in self.nodes:
                try:
                    socket.create_connection(("127.0.0.1", n.port), timeout=0.2).close()
                except OSError:
                    return False
            return True

        wait_for("every node listening", listening)
        for r, ns in self.regions.items():
            if len(ns) == 1:
                continue
            want = "cluster_known_nodes:%d" % len(ns)

            def ok():
                self._alive()
                for n in ns:
                    info = self.conn(n.port).cmd("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or want not in info:
                        return False
                return True

            wait_for("region %s cluster_state:ok" % r, ok, timeout=90)

            def replicas_up():
                return all("master_link_status:up" in self.conn(n.port).cmd("INFO", "replication").decode()
                           for n in ns if not n.primary)

            wait_for("region %s replicas linked" % r, replicas_up, timeout=90)

        # Every primary: restart handshake done with every peer region and every peer
        # region connected.
        def links():
            self._alive()
            for n in self.nodes:
                if not n.primary:
                    continue
                info = self.conn(n.port).info("crdt")
                if info.get("repl_restart_handshake_done") != "1":
                    return False
                for k, v in info.items():
                    if k.startswith("peer_") and "connected=1" not in v:
                        return False
            return True

        wait_for("every primary's links connected and handshake done", links, timeout=90)
        # The slot → owner map each region's primaries actually serve (CLUSTER SLOTS).
        self.owner = {}
        for r, ns in self.regions.items():
            if len(ns) == 1:
                self.owner[r] = [ns[0]] * 16384
                continue
            by_port = {n.port: n for n in ns}
            m = [None] * 16384
            for row in self.conn(ns[0].port).cmd("CLUSTER", "SLOTS"):
                lo, hi, master = row[0], row[1], row[2]
                for s in range(lo, hi + 1):
                    m[s] = by_port[master[1]]
            if any(x is None for x in m):
                raise RuntimeError("region %s does not cover every slot" % r)
            self.owner[r] = m

    def owner_of(self, region, key):
        return self.owner[region][key_slot(key)]

    def stop(self):
        for c in self.conns.values():
            try:
                c.sock.close()
            except OSError:
                pass
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
        for n in self.nodes:
            if n.proc is not None:
                n.proc.wait()


def clustered_convergence(dep, writes, poll_s, delay_ms, prefix=b"cv"):
    """Per origin region: `writes` SETs, each at the key's owner node, then the owner node
    in each other region is polled (GET, one in flight per node) until it returns the value.
    Returns {(from, to): [ms]} and the keys written."""
    out = {}
    keys = []
    names = list(dep.regions)
    for origin in names:
        others = [r for r in names if r != origin]
        for r in others:
            out[(origin, r)] = []
        for i in range(writes):
            key = b"%s:%s:%d" % (prefix, origin.encode(), i)
            val = b"%s%d" % (origin.encode(), i)
            keys.append(key)
            dep.conn(dep.owner_of(origin, key).port).cmd("SET", key, val)
            t0 = time.perf_counter()
            pending = {r: dep.conn(dep.owner_of(r, key).port) for r in others}
            req = resp("GET", key)
            deadline = t0 + 30
            # No region can have it before the injected delay: polling starts 3 ms before.
            pause = t0 + max(0.0, delay_ms - 3) / 1000.0 - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            while pending:
                if time.perf_counter() > deadline:
                    raise TimeoutError("%r written at %s never reached %s" % (key, origin, sorted(pending)))
                for c in pending.values():
                    c.sock.sendall(req)
                for r, c in list(pending.items()):
                    if c.reply() == val:
                        out[(origin, r)].append((time.perf_counter() - t0) * 1000)
                        del pending[r]
                if pending and poll_s:
                    time.sleep(poll_s)
    return out, keys


def _peer_bytes(dep, region, peer):
    total = 0
    for n in dep.primaries(region):
        v = dep.conn(n.port).info("crdt").get("peer_%s" % peer, "")
        total += int(dict(kv.split("=", 1) for kv in v.split(",") if "=" in kv).get("bytes_sent", 0))
    return total


def clustered_throughput(dep, burst, tag):
    """Pipeline `burst` INCRs on distinct keys into all of region a's primaries at once
    (one connection each, all sending together); time until the DBSIZE sums of region b's
    primaries and of c show them all."""
    keys = [b"tp%s:%d" % (tag, k) for k in range(burst)]
    groups = {}
    for k in keys:
        groups.setdefault(dep.owner_of("a", k).port, []).append(k)
    chunk = 10000
    payloads = {
        port: [(min(chunk, len(ks) - s), b"".join(resp("INCR", k) for k in ks[s : s + chunk]))
               for s in range(0, len(ks), chunk)]
        for port, ks in groups.items()
    }
    watch = {r: [dep.conn(n.port) for n in dep.primaries(r)] for r in ("b", "c")}
    base = {r: sum(c.cmd("DBSIZE") for c in cs) for r, cs in watch.items()}
    bytes0 = {r: _peer_bytes(dep, "a", r) for r in ("b", "c")}
    # Own connections for the burst (replies are counted, not parsed: see `throughput`).
    conns = {port: Conn(port) for port in groups}
    errors = []

    def send_all(c, parts):
        for _, payload in parts:
            c.sock.sendall(payload)

    def count_all(c, n):
        got, tail = 0, b""
        while got < n:
            data = c.sock.recv(1 << 20)
            if not data:
                errors.append("connection closed")
                return
            if data.startswith(b"\n") and tail == b"\r":
                got += 1
            got += data.count(b"\r\n")
            tail = data[-1:]
            if data.startswith(b"-") or b"\n-" in data:
                errors.append(data[:200])
                return

    threads = []
    for port, parts in payloads.items():
        threads.append(threading.Thread(target=send_all, args=(conns[port], parts)))
        threads.append(threading.Thread(target=count_all, args=(conns[port], len(groups[port]))))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_local = time.perf_counter() - t0
    if errors:
        raise RuntimeError("error during the burst: %r" % errors[0])
    seen = {}
    deadline = time.monotonic() + 300
    while len(seen) < len(watch):
        for r, cs in watch.items():
            if r not in seen and sum(c.cmd("DBSIZE") for c in cs) >= base[r] + burst:
                seen[r] = time.perf_counter() - t0
        if time.monotonic() > deadline:
            raise TimeoutError("regions %s never saw all %d keys" % (sorted(set(watch) - set(seen)), burst))
        time.sleep(0.0005)
    for c in conns.values():
        c.sock.close()
    time.sleep(0.3)
    bytes1 = {r: _peer_bytes(dep, "a", r) for r in ("b", "c")}
    return {
        "local_s": t_local,
        "visible_s": seen,
        "rate": {r: burst / s for r, s in seen.items()},
        "bytes_per_delta": {r: (bytes1[r] - bytes0[r]) / float(burst) for r in ("b", "c")},
        "per_primary": {port: len(ks) for port, ks in groups.items()},
        "keys": keys,
    }


def _get_all(dep, region, keys):
    """GET every key at its owner node in `region` (pipelined per node)."""
    by = {}
    for k in keys:
        by.setdefault(dep.owner_of(region, k).port, []).append(k)
    out = {}
    for port, ks in by.items():
        c = dep.conn(port)
        for s in range(0, len(ks), 10000):
            part = ks[s : s + 10000]
            c.sock.sendall(b"".join(resp("GET", k) for k in part))
            for k in part:
                out[k] = c.reply()
    return out


def clustered_check(dep, conv_keys, tp_keys):
    """Correctness after the measurements: every key on its owner only (DBSIZE per node =
    keys of its slots; replicas = their primary), every INCR key reads 1 everywhere, no
    delta refused as not served. Returns a list of problems (empty: none found)."""
    problems = []
    everything = conv_keys + tp_keys
    slots = [key_slot(k) for k in everything]
    for r, ns in dep.regions.items():
        for n in ns:
            src = n if n.primary else n.replica_of
            if len(ns) == 1:
                want = len(everything)
            else:
                lo, hi = src.slots
                want = sum(1 for s in slots if lo <= s <= hi)
            got = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = dep.conn(n.port).cmd("DBSIZE")
                if got == want:
                    break
                time.sleep(0.1)
            if got != want:
                problems.append("%s%s DBSIZE %d, keys of its slots written %d"
                                % (n.label(), "" if n.primary else " (replica)", got, want))
            refused = int(dep.conn(n.port).info("crdt").get("repl_refused_not_served", 0))
            if refused:
                problems.append("%s repl_refused_not_served=%d" % (n.label(), refused))
        vals = _get_all(dep, r, tp_keys)
        bad = [(k, v) for k, v in vals.items() if v != b"1"]
        if bad:
            problems.append("region %s: %d of %d INCR keys not 1 (e.g. %r)"
                            % (r, len(bad), len(tp_keys), bad[:3]))
    return problems


def clustered_run(args, single_a):
    tmp = tempfile.mkdtemp(prefix="meridian-bench-cr-")
    log = open(os.path.join(tmp, "servers.log"), "wb")
    dep = None
    shape = ("a = 1 node" if single_a else "a = 3 primaries + 3 replicas") + \
        ", b = 2 primaries + 2 replicas, c = 1 node"
    try:
        t0 = time.perf_counter()
        dep = Deployment(tmp, args, log, single_a=single_a)
        print("\n%s (%d processes; ready in %.1f s)" % (shape, len(dep.nodes), time.perf_counter() - t0),
              flush=True)
        probe = dep.conn(dep.nodes[0].port)
        for i in range(200):
            k = b"slot:%d" % i
            if probe.cmd("CLUSTER", "KEYSLOT", k) != key_slot(k):
                raise RuntimeError("bench key_slot disagrees with CLUSTER KEYSLOT on %r" % k)
        _, warm_keys = clustered_convergence(dep, 10, args.poll_us / 1e6, args.delay_ms, b"warm")
        conv, conv_keys = clustered_convergence(dep, args.conv_writes, args.poll_us / 1e6,
                                                args.delay_ms)
        conv_keys = warm_keys + conv_keys
        tp = clustered_throughput(dep, args.burst, b"1" if single_a else b"3")
        problems = clustered_check(dep, conv_keys, tp["keys"])
        rows = []
        for (src, dst), s in sorted(conv.items()):
            rows.append(("convergence %s→%s p50 / p99 (ms)" % (src, dst),
                         "%.2f / %.2f" % (pct(s, 50), pct(s, 99)),
                         "%d writes, max %.2f" % (len(s), max(s))))
        for r in ("b", "c"):
            rows.append(("replicated deltas/s a→%s" % r, "%.0f" % tp["rate"][r],
                         "%d INCRs into a's %d primar%s at once, all visible in %s after %.2f s "
                         "(a ingested in %.2f s); %.1f B/delta on the wire"
                         % (args.burst, len(tp["per_primary"]), "y" if len(tp["per_primary"]) == 1 else "ies",
                            r, tp["visible_s"][r], tp["local_s"], tp["bytes_per_delta"][r])))
        rows.append(("correctness check", "ok" if not problems else "%d problems" % len(problems),
                     "keys only on their slots' owners (and replicas), INCRs exact, none refused"))
        w0 = max(len(x[0]) for x in rows)
        w1 = max(len(x[1]) for x in rows)
        print("%s  %s  %s" % ("metric".ljust(w0), "value".rjust(w1), "notes"))
        print("-" * (w0 + w1 + 40))
        for x in rows:
            print("%s  %s  %s" % (x[0].ljust(w0), x[1].rjust(w1), x[2]), flush=True)
        for p in problems:
            print("  PROBLEM: %s" % p, flush=True)
        return not problems
    finally:
        if dep is not None:
            dep.stop()
        log.close()
        if args.keep_logs:
            print("  servers' log kept: %s/servers.log" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def clustered_main(args):
    print("meridian clustered-regions benchmark: loopback, one-way delay %d ms on every link, "
          "io-threads %d, thread-priority %s, %d cores, %d writes per origin region, burst %d"
          % (args.delay_ms, args.io_threads, args.thread_priority or "default", os.cpu_count(),
             args.conv_writes, args.burst), flush=True)
    ok = True
    if args.shape in ("cluster", "both"):
        ok &= clustered_run(args, single_a=False)
    if args.shape in ("single", "both"):
        ok &= clustered_run(args, single_a=True)
    if not ok:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--ops", type=int, default=60000)
    ap.add_argument("--conv-writes", type=int, default=200)
    ap.add_argument("--burst", type=int, default=200000)
    ap.add_argument("--io-threads", type=int, default=1)
    ap.add_argument("--ae-interval-ms", type=int, default=0,
                    help="anti-entropy interval of the regions (0: the default, 30 s); a short "
                    "one makes rounds overlap every phase")
    ap.add_argument("--flush-interval-ms", type=int, default=0,
                    help="regions' flush-interval-ms (0: the default)")
    ap.add_argument("--repair", action="store_true",
                    help="run only the repair measurement (two regions, see the module doc)")
    ap.add_argument("--repair-keys", type=int, default=200000)
    ap.add_argument("--repair-writes", type=int, default=600000)
    ap.add_argument("--repair-writes-b", type=int, default=0)
    ap.add_argument("--repair-sample", type=int, default=2000)
    ap.add_argument("--values", choices=["random", "text"], default="random",
                    help="value bytes: random (incompressible) or padded text")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--clustered", action="store_true",
                    help="run only the clustered-regions measurement (the topology of "
                    "examples/clustered-regions, see the module doc)")
    ap.add_argument("--shape", choices=("cluster", "single", "both"), default="both",
                    help="--clustered: region a as 3 primaries + 3 replicas, as one node, or both")
    ap.add_argument("--poll-us", type=float, default=0,
                    help="--clustered: pause between convergence polls (0: a tight loop)")
    ap.add_argument("--thread-priority", default="",
                    help="--clustered: nodes' replication thread-priority (background or normal; "
                    "default: the server's default, background)")
    ap.add_argument("--compression", choices=["lz4", "none"], default="",
                    help="[replication] compression of every region (default: the server's, lz4)")
    ap.add_argument("--keep-logs", action="store_true",
                    help="--clustered: keep the servers' log (temp dir) for inspection")
    args = ap.parse_args()
    global VALUE_KIND
    VALUE_KIND = args.values
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if args.repair:
        return repair_main(args)
    if args.clustered:
        return clustered_main(args)

    tmp = tempfile.mkdtemp(prefix="meridian-bench-")
    log = open(os.path.join(tmp, "servers.log"), "wb")
    nodes = []
    try:
        nodes.extend(start_regions(NAMES, args, tmp, log))
        a, b, c = nodes

        print("meridian three-region benchmark: loopback, one-way delay %d ms on every link, "
              "io-threads %d, %d cores" % (args.delay_ms, args.io_threads, os.cpu_count()),
              flush=True)

        standalone = Node(["--io-threads", str(args.io_threads)], log)
        nodes.append(standalone)
        lat_repl, lat_alone = latency([a, standalone], args.ops)
        standalone.stop()

        to_b, to_c = convergence(a, b, c, args.conv_writes)
        tp = throughput(a, b, args.burst)

        rows = []
        for op in ("SET", "INCR"):
            (r50, r99), (s50, s99) = lat_repl[op], lat_alone[op]
            rows.append(("local %s p50 (µs)" % op, "%.1f" % r50, "%.1f standalone (x%.2f)" % (s50, r50 / s50)))
            rows.append(("local %s p99 (µs)" % op, "%.1f" % r99, "%.1f standalone (x%.2f)" % (s99, r99 / s99)))
        for name, s in (("B", to_b), ("C", to_c)):
            rows.append(("convergence A→%s p50 (ms)" % name, "%.2f" % pct(s, 50), "%d writes" % len(s)))
            rows.append(("convergence A→%s p99 (ms)" % name, "%.2f" % pct(s, 99), "delay %d ms" % args.delay_ms))
        rows.append(("replicated deltas/s A→B", "%.0f" % tp["rate"],
                     "%d INCRs, visible at B after %.2f s (A ingested in %.2f s)"
                     % (args.burst, tp["visible_s"], tp["local_s"])))
        rows.append(("bytes on the wire per delta", "%.1f" % tp["bytes_per_delta"],
                     "A peer_b bytes_sent / %d; resent total %d" % (args.burst, tp["resent"])))
        rows.append(("anti-entropy during the burst", "%d" % tp["ae_rounds"],
                     "rounds completed by A; %d entries shipped by A; deltas dropped at A's "
                     "bounds: %d shard logs, %d link logs" % (tp["ae_shipped"], tp["shard_drops"], tp["link_drops"])))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        print("%s  %s  %s" % ("metric".ljust(w0), "value".rjust(w1), "notes"))
        print("-" * (w0 + w1 + 40))
        for r in rows:
            print("%s  %s  %s" % (r[0].ljust(w0), r[1].rjust(w1), r[2]))
    finally:
        for n in nodes:
            n.stop()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
