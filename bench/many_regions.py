#!/usr/bin/env python3
"""Many-region convergence benchmark (issue 20, "Many regions").

For each region count N (default 3, 8, 16, 32) starts N single-node `meridian` regions (release
build) on loopback in a full mesh, replicating over QUIC with an injected one-way delay on
every link (`delay-ms` in each peer's config, default 50 ms), and reports the convergence
time from a write at region 0 (its reply received) until each other region returns it:

  * p50 / p99 / max over every (write, region) pair;
  * p99 of "all regions have it" (the slowest region per write);
  * the links' resends and anti-entropy rounds completed during the measurement (`INFO crdt`,
    summed over regions; measuring starts after the start-up rounds every region runs with
    every peer).

Region 0 writes one key at a time; the next write starts once every region has the previous
one. A region cannot have a write before the injected delay, so polling starts 3 ms before
it: the poller then sends one GET to every region that still lacks the value, reads the
replies, and records the time of the reply (so a figure is late by at most one polling round:
about 0.05 ms per region polled, plus a 0.2 ms pause between rounds).

With `--load R`, every region also takes R writes/s of its own (INCR on its own keys, sent by a
separate process in pipelines every 10 ms) during the measurement, so every link carries
deltas both ways, as in an active-active deployment. Note that the machine's work grows as
N² (each write is merged by N-1 regions), so on a small machine the loaded figures at high N
measure the CPU as much as the protocol.

Usage: cargo build --release && python3 bench/many_regions.py [--regions 3,8,16,32]
       [--delay-ms 50] [--writes 200] [--load 0] [--io-threads 1]
       (binary: $MERIDIAN_BIN, else $CARGO_TARGET_DIR/release/meridian, else target/release)
"""

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# The shared RESP client and helpers of the three-region benchmark (same folder).
from regions import BIN, ROOT, Conn, free_port, pct, resp, wait_for  # noqa: E402,F401


def peer_fields(value):
    return dict(kv.split("=", 1) for kv in value.split(",") if "=" in kv)


class Mesh:
    """N regions r0..r{N-1} in a full mesh on loopback."""

    def __init__(self, n, tmp, args, log):
        self.names = ["r%d" % i for i in range(n)]
        self.procs = []
        certs = os.path.join(tmp, "certs")
        subprocess.run(
            [BIN, "certs", "--out", certs, "--regions", ",".join(self.names)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        udp = [free_port(socket.SOCK_DGRAM) for _ in range(n)]
        self.ports = [free_port() for _ in range(n)]
        for i, r in enumerate(self.names):
            peers = "\n".join(
                '  { region = "%s", region-id = %d, addr = "127.0.0.1:%d", delay-ms = %d },'
                % (self.names[j], j, udp[j], args.delay_ms)
                for j in range(n)
                if j != i
            )
            cfg = (
                'region = "%s"\nregion-id = %d\n\n[replication]\nlisten = "127.0.0.1:%d"\n'
                'ca-cert = "%s/ca.pem"\ncert = "%s/%s.pem"\nkey = "%s/%s-key.pem"\n'
                "peers = [\n%s\n]\n" % (r, i, udp[i], certs, certs, r, certs, r, peers)
            )
            if args.thread_priority:
                cfg += 'thread-priority = "%s"\n' % args.thread_priority
            path = os.path.join(tmp, "%s.toml" % r)
            with open(path, "w") as f:
                f.write(cfg)
            self.procs.append(
                subprocess.Popen(
                    [BIN, "--config", path, "--port", str(self.ports[i]), "--log-level", "warn",
                     "--io-threads", str(args.io_threads)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )

        def up(i):
            if self.procs[i].poll() is not None:
                raise RuntimeError("region %d exited: %s" % (i, self.procs[i].returncode))
            try:
                socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.2).close()
                return True
            except OSError:
                return False

        for i in range(n):
            wait_for("region %d listening" % i, lambda: up(i), timeout=120)
        self.conns = [Conn(p) for p in self.ports]

        def ready():
            for c in self.conns:
                info = c.info("crdt")
                if info.get("repl_restart_handshake_done") != "1":
                    return False
                for k, v in info.items():
                    if k.startswith("peer_") and peer_fields(v).get("connected") != "1":
                        return False
            return True

        wait_for("every link connected and every handshake done", ready, timeout=120)

        # A region starts with a new incarnation, so it repairs by anti-entropy with every peer
        # once at start: measure after those rounds, not during them.
        def start_rounds_done():
            return all(int(c.info("crdt")["repl_ae_rounds"]) >= n - 1 for c in self.conns)

        try:
            wait_for("start-up anti-entropy rounds", start_rounds_done, timeout=120)
        except TimeoutError:
            print("  (r%d: start-up anti-entropy rounds not all done after 120 s)" % n,
                  flush=True)

    def totals(self):
        """Resends and anti-entropy counters, summed over the regions."""
        out = {"resent": 0, "ae_rounds": 0, "ae_shipped": 0}
        for c in self.conns:
            info = c.info("crdt")
            out["resent"] += int(info["repl_deltas_resent"])
            out["ae_rounds"] += int(info["repl_ae_rounds"])
            out["ae_shipped"] += int(info["repl_ae_entries_shipped"])
        return out

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()


def load_worker(ports, rate, stop):
    """Every region takes `rate` INCRs/s on its own keys, in pipelines every 10 ms."""
    conns = [Conn(p) for p in ports]
    per_tick = max(1, rate // 100)
    tick = per_tick / float(rate)
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        for i, c in enumerate(conns):
            c.sock.sendall(b"".join(resp("INCR", "load:%d:%d" % (i, (n + k) % 1000))
                                    for k in range(per_tick)))
        for c in conns:
            for _ in range(per_tick):
                c.reply()
        n += per_tick
        next_at += tick
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()


def measure(mesh, writes, delay_ms):
    """Per write at region 0: ms until each other region returns it."""
    writer = mesh.conns[0]
    others = list(enumerate(mesh.conns))[1:]
    each, slowest = [], []
    for w in range(writes):
        key = "conv:%d" % w
        val = b"v%d" % w
        writer.cmd("SET", key, val)
        t0 = time.perf_counter()
        pending = dict(others)
        start = t0 + max(0.0, delay_ms - 3) / 1000.0
        pause = start - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        deadline = t0 + 30
        req = resp("GET", key)
        last = 0.0
        while pending:
            if time.perf_counter() > deadline:
                raise TimeoutError("write %d never reached regions %s" % (w, sorted(pending)))
            for c in pending.values():
                c.sock.sendall(req)
            for i, c in list(pending.items()):
                if c.reply() == val:
                    ms = (time.perf_counter() - t0) * 1000
                    each.append(ms)
                    last = max(last, ms)
                    del pending[i]
            if pending:
                time.sleep(0.0002)
        slowest.append(last)
    return each, slowest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--regions", default="3,8,16,32",
                    help="comma-separated region counts to measure, one mesh each")
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--load", type=int, default=0,
                    help="background writes/s taken by every region during the measurement")
    ap.add_argument("--io-threads", type=int, default=1)
    ap.add_argument("--thread-priority", default="",
                    help="regions' replication thread-priority (background or normal; default: "
                    "the server's default, background)")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    counts = [int(x) for x in args.regions.split(",") if x]

    print("meridian many-region benchmark: loopback full mesh, one-way delay %d ms on every "
          "link, %d writes at r0, background load %d writes/s per region, io-threads %d, "
          "%d cores" % (args.delay_ms, args.writes, args.load, args.io_threads, os.cpu_count()),
          flush=True)
    header = ("regions", "p50 ms", "p99 ms", "max ms", "all p99 ms", "resent", "ae rounds")
    print("%7s %8s %8s %8s %10s %7s %9s" % header, flush=True)
    for n in counts:
        tmp = tempfile.mkdtemp(prefix="meridian-many-")
        log = open(os.path.join(tmp, "servers.log"), "wb")
        mesh = None
        loader = None
        stop = multiprocessing.Event()
        try:
            mesh = Mesh(n, tmp, args, log)
            if args.load:
                loader = multiprocessing.Process(
                    target=load_worker, args=(mesh.ports, args.load, stop), daemon=True)
                loader.start()
                time.sleep(1.0)  # let the load reach its rate before measuring
            measure(mesh, 10, args.delay_ms)  # warm-up
            before = mesh.totals()
            each, slowest = measure(mesh, args.writes, args.delay_ms)
            after = mesh.totals()
            print("%7d %8.2f %8.2f %8.2f %10.2f %7d %9d" % (
                n, pct(each, 50), pct(each, 99), max(each), pct(slowest, 99),
                after["resent"] - before["resent"], after["ae_rounds"] - before["ae_rounds"]),
                flush=True)
        finally:
            stop.set()
            if loader is not None:
                loader.join(5)
                if loader.is_alive():
                    loader.terminate()
            if mesh is not None:
                mesh.stop()
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
