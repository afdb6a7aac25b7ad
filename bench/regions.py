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
after it settled.

Usage: cargo build --release && python3 bench/regions.py [--delay-ms 50] [--ops 60000]
       [--conv-writes 200] [--burst 200000]
       python3 bench/regions.py --repair [--repair-keys 200000] [--repair-writes 600000]
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


def value(tag, i, n):
    v = b"%s:%d:" % (tag, i)
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
              "preloaded (%d-byte values), link cut, %d SETs at A (%d at B), healed; %d cores"
              % (args.delay_ms, args.repair_keys, args.value_bytes, args.repair_writes,
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
    ap.add_argument("--value-bytes", type=int, default=100)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if args.repair:
        return repair_main(args)

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
