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

Usage: cargo build --release && python3 bench/regions.py [--delay-ms 50] [--ops 60000]
       [--conv-writes 200] [--burst 200000]
       (binary: $MERIDIAN_BIN, else $CARGO_TARGET_DIR/release/meridian, else target/release)
"""

import argparse
import os
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
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")

    tmp = tempfile.mkdtemp(prefix="meridian-bench-")
    log = open(os.path.join(tmp, "servers.log"), "wb")
    nodes = []
    try:
        certs = os.path.join(tmp, "certs")
        subprocess.run(
            [BIN, "certs", "--out", certs, "--regions", ",".join(NAMES)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        udp = [free_port(socket.SOCK_DGRAM) for _ in NAMES]
        for i, r in enumerate(NAMES):
            peers = "\n".join(
                '  { region = "%s", region-id = %d, addr = "127.0.0.1:%d", delay-ms = %d },'
                % (NAMES[j], j, udp[j], args.delay_ms)
                for j in range(3)
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
        a, b, c = nodes

        def links_up():
            return all(
                all("connected=1" in v for k, v in n.conn().info("crdt").items() if k.startswith("peer_"))
                for n in nodes
            )

        wait_for("all links connected", links_up)

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
