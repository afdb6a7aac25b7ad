#!/usr/bin/env python3
"""Benchmark the region cluster on loopback (release build).

Reports:
  1. aggregate throughput of a 3-primary meridian cluster with the cluster-aware load
     generator (`redis-benchmark --cluster`), against a 3-primary redis-server cluster driven
     the same way and against 3 standalone redis-server instances (3 generators at once),
     all in the same run. Throughput is what the servers report processing
     (`total_commands_processed`) over a window while the load runs; the standalone and
     meridian figures are medians of alternating rounds. A third table splits the CPU per
     request between the servers and the load generators (from /proc), which share the
     machine's cores: it shows whether a ratio is the servers' doing or the generators'.
     Like for like, the meridian cluster has no replicas there (nor do
     the redis-server ones); the six-node cluster with a replica per primary is measured
     too, as its own column;
  2. resharding speed: keys/s moved by `redis-cli --cluster reshard` of 1000 slots;
  3. failover time: SIGKILL of a primary -> first write accepted by its promoted replica,
     against the target node-timeout + 2 s;
  4. in-region replication lag under load (target p99 < 10 ms): while redis-benchmark
     --cluster loads the meridian cluster, a probe SETs a fresh value on each primary in
     turn and, from the moment the primary acknowledged it, polls GET on that shard's
     replica (READONLY, one persistent connection) until the value is visible. The figure
     is an upper bound by at most one GET round trip.

Usage: bench/cluster.py [--requests N] [--keys N] [--node-timeout MS] [--meridian PATH]
                        [--only-lag] [--only-throughput] [--pipelines 1,16]
                        [--rounds N] [--warm S] [--window S]
"""
import argparse
import csv
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from compare import free_port, wait_port, stop, resp  # noqa: E402

SLOTS = ["0-5460", "5461-10922", "10923-16383"]


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def cmd(port, *args, timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(resp(*args))
        data = s.recv(1 << 20)
        return data.decode(errors="replace")


def start_meridian_cluster(path, node_timeout, tmp, io_threads, replicas=True):
    """Three primaries, each with a replica unless `replicas` is false."""
    n = 6 if replicas else 3
    ports = [free_port() for _ in range(n)]
    buses = [free_port() for _ in range(n)]
    procs = []
    for i in range(n):
        meet = ", ".join(f'"127.0.0.1:{ports[j]}@{buses[j]}"' for j in range(n) if j != i)
        role = f'slots = "{SLOTS[i]}"' if i < 3 else f'replicate = "127.0.0.1:{ports[i - 3]}"'
        conf = os.path.join(tmp, f"node-{i}.toml")
        with open(conf, "w") as f:
            f.write(f'bind = "127.0.0.1"\nport = {ports[i]}\nio-threads = {io_threads}\n[cluster]\nbus-port = {buses[i]}\n'
                    f'node-timeout-ms = {node_timeout}\nnodes-file = "{tmp}/nodes-{{port}}.json"\n'
                    f"meet = [{meet}]\n{role}\n")
        procs.append(subprocess.Popen([path, "--config", conf, "--log-level", "warn"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p, port in zip(procs, ports):
        wait_port(port, p)
    wait_cluster_ok(ports, n)
    return ports, procs


def wait_cluster_ok(ports, known, deadline_s=60):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            if all("cluster_state:ok" in cmd(p, "CLUSTER", "INFO")
                   and f"cluster_known_nodes:{known}" in cmd(p, "CLUSTER", "INFO") for p in ports):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("cluster did not converge")


def free_cluster_port():
    """A free port whose cluster bus port (port + 10000, fixed by redis-server) is free too."""
    while True:
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue


def start_redis_cluster(tmp):
    ports = [free_cluster_port() for _ in range(3)]
    procs = []
    for p in ports:
        d = os.path.join(tmp, f"redis-{p}")
        os.makedirs(d)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", f"{d}/nodes.conf", "--dir", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for pr, p in zip(procs, ports):
        wait_port(p, pr)
    subprocess.run(["redis-cli", "--cluster", "create"] + [f"127.0.0.1:{p}" for p in ports]
                   + ["--cluster-yes"], check=True, capture_output=True)
    wait_cluster_ok(ports, 3)
    return ports, procs


PIPELINE = 1


def bench(port, requests, cluster, clients=50, tests="set,get"):
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests, "-c", str(clients),
            "-n", str(requests), "-r", "100000", "--csv", "-q", "-P", str(PIPELINE)]
    if cluster:
        args.append("--cluster")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def commands_processed(ports):
    total = 0
    for p in ports:
        info = cmd(p, "INFO", "stats")
        total += int(info.split("total_commands_processed:")[1].split()[0])
    return total


def cpu_seconds(pid):
    """User + system CPU time of a process so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# CPU per request, (server ns, generator ns) per window: CPU[label][test] -> list of pairs.
CPU = {}


def served_rate(ports, gens, warm_s, window_s, pids=(), label=None, test=None):
    """Commands/s the servers on `ports` process together while every generator in `gens`
    runs: their `total_commands_processed` over a window after a warm-up, read from the
    servers themselves. Generators' own figures would not do for an aggregate: each times
    only itself (one that finishes early leaves its CPU to the others, and the sum of their
    rates then exceeds what ran at once), and `redis-benchmark --cluster` rounds its run time
    up to its 250 ms progress tick. The generators are stopped afterwards."""
    try:
        time.sleep(warm_s)
        t0, n0 = time.perf_counter(), commands_processed(ports)
        s0 = sum(cpu_seconds(p) for p in pids)
        g0 = sum(cpu_seconds(g.pid) for g in gens)
        time.sleep(window_s)
        t1, n1 = time.perf_counter(), commands_processed(ports)
        s1 = sum(cpu_seconds(p) for p in pids)
        g1 = sum(cpu_seconds(g.pid) for g in gens)
        if any(g.poll() is not None for g in gens):
            raise SystemExit("a load generator ended before the measurement window did")
        n = n1 - n0 - len(ports)  # minus the first INFO on each server
        if label and n > 0:
            CPU.setdefault(label, {}).setdefault(test, []).append(
                (1e9 * (s1 - s0) / n, 1e9 * (g1 - g0) / n))
        return n / (t1 - t0)
    finally:
        for g in gens:
            if g.poll() is None:
                g.terminate()
            g.communicate()


def aggregate(ports, targets, cluster, test, args, pids=(), label=None):
    """Rate of `test` with one generator per entry of `targets` (ports they connect to; 50
    clients split evenly among them: 16 each for three), measured at the servers `ports`
    (see `served_rate`); with `label`, the CPU per request of the servers (`pids`) and of
    the generators is recorded in `CPU`."""
    clients = max(1, 50 // len(targets))
    gens = [bench(t, 10**9, cluster, clients=clients, tests=test) for t in targets]
    return served_rate(ports, gens, args.warm, args.window, pids, label, test)


def rows(proc):
    out, _ = proc.communicate()
    r = {}
    for row in csv.reader(io.StringIO(out)):
        # Cluster mode prints the primaries first ("Master 0: …"): not CSV rows.
        if len(row) >= 7 and row[0] != "test":
            r[row[0].split()[0].upper()] = float(row[1])
    return r


class Conn:
    """One persistent RESP connection (for the probe: no reconnect per command)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    def call(self, *args):
        self.sock.sendall(resp(*args))
        line = self.f.readline()
        if not line:
            raise SystemExit("probe connection closed")
        if line[:1] == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            return self.f.read(n + 2)[:-2].decode()
        if line[:1] == b"-":
            raise SystemExit(f"probe: {line.decode().strip()}")
        return line[1:].strip().decode()

    def close(self):
        self.f.close()
        self.sock.close()


def key_in(slots, prefix):
    lo, hi = (int(x) for x in slots.split("-"))
    n = 0
    while not lo <= crc16(f"{prefix}:{n}".encode()) % 16384 <= hi:
        n += 1
    return f"{prefix}:{n}"


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, -(-len(v) * q // 100) - 1))]


def replication_lag(mports, requests):
    """Probe write -> replica visibility while redis-benchmark --cluster runs."""
    prim = [Conn(p) for p in mports[:3]]
    repl = [Conn(p) for p in mports[3:6]]
    for c in repl:
        c.call("READONLY")
    keys = [key_in(SLOTS[i], "lag") for i in range(3)]
    load = bench(mports[0], requests, True)
    lags = []
    timeouts = 0
    n = 0
    while load.poll() is None:
        i = n % 3
        n += 1
        val = f"v{n}"
        if prim[i].call("SET", keys[i], val) != "OK":
            raise SystemExit("probe SET refused")
        t0 = time.perf_counter()
        while repl[i].call("GET", keys[i]) != val:
            if time.perf_counter() - t0 > 10:
                timeouts += 1
                break
        else:
            lags.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.005)  # pacing: about 150 probes/s, not a synchronisation
    load_rows = rows(load)
    for c in prim + repl:
        c.close()
    return lags, timeouts, load_rows


def wait_replicas(mports, deadline_s=60):
    """Each replica has a live link to its primary."""
    end = time.time() + deadline_s
    while time.time() < end:
        if all("master_link_status:up" in cmd(p, "INFO", "replication") for p in mports[3:6]):
            return
        time.sleep(0.1)
    raise SystemExit("replicas did not connect")


def report_lag(mports, requests):
    lags, timeouts, load_rows = replication_lag(mports, requests)
    if not lags:
        print(f"replication lag: no probe completed ({timeouts} over 10 s)")
        return
    print(f"replication lag under load (write acked by the primary -> visible on its replica; "
          f"{len(lags)} probes, {timeouts} over 10 s; load SET {load_rows.get('SET', 0):,.0f} rps, "
          f"GET {load_rows.get('GET', 0):,.0f} rps): p50 {percentile(lags, 50):.2f} ms, "
          f"p99 {percentile(lags, 99):.2f} ms, max {max(lags):.2f} ms (target p99 < 10 ms)")


def throughput(args, tmp, procs, pipeline):
    """Print the throughput tables for one pipeline depth (see the module docs, item 1).

    The three standalone redis-servers and the three-primary meridian cluster run side by
    side and are measured in alternating rounds (the median is reported), so a change in the
    machine's speed during the run falls on both alike. The redis-server cluster and the
    six-node meridian cluster are one sample each, taken before and after."""
    global PIPELINE
    PIPELINE = pipeline
    tests = ("set", "get")

    def stopping(ps):
        for p in ps:
            stop(p)
            procs.remove(p)

    rports, rprocs = start_redis_cluster(tmp)
    procs += rprocs
    redis_cluster = {t: aggregate(rports, rports[:1], True, t, args, [p.pid for p in rprocs],
                                  "redis cluster") for t in tests}
    redis_cluster3 = {t: aggregate(rports, rports, True, t, args) for t in tests}
    stopping(rprocs)

    singles = []
    for _ in range(3):
        p = free_port()
        pr = subprocess.Popen(["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(p, pr)
        singles.append(p)
        procs.append(pr)
    sprocs = procs[-3:]
    # Like for like: three primaries and no replicas, as the redis-server cluster and the
    # standalone instances have none.
    mports, mprocs = start_meridian_cluster(args.meridian, args.node_timeout, tmp, args.io_threads,
                                            replicas=False)
    procs += mprocs
    samples = {k: {t: [] for t in tests} for k in ("standalone", "bare", "bare3")}
    for _ in range(args.rounds):
        for t in tests:
            samples["standalone"][t].append(aggregate(singles, singles, False, t, args,
                                                      [p.pid for p in sprocs], "standalone"))
            samples["bare"][t].append(aggregate(mports, mports[:1], True, t, args,
                                                [p.pid for p in mprocs], "meridian"))
            samples["bare3"][t].append(aggregate(mports, mports, True, t, args))
    stopping(sprocs + mprocs)
    med = {k: {t: statistics.median(v) for t, v in d.items()} for k, d in samples.items()}
    standalone, bare, bare3 = med["standalone"], med["bare"], med["bare3"]

    # The six-node cluster: a replica per primary, which the primaries stream every write to;
    # on 2 cores the replicas compete for CPU. Only the primaries' commands are counted.
    mports, mprocs = start_meridian_cluster(args.meridian, args.node_timeout, tmp, args.io_threads,
                                            replicas=True)
    procs += mprocs
    wait_replicas(mports)
    meridian = {t: aggregate(mports[:3], mports[:1], True, t, args) for t in tests}
    meridian3 = {t: aggregate(mports[:3], mports[:3], True, t, args) for t in tests}
    stopping(mprocs)

    print(f"-P {pipeline}: commands/s summed over the servers ({args.window:g} s window after "
          f"{args.warm:g} s of load; standalone and 3-primary meridian: median of {args.rounds} "
          f"alternating rounds, per-round ratios "
          + ", ".join(f"{t.upper()} " + "/".join(f"{b / a:.2f}" for a, b in zip(samples['standalone'][t], samples['bare'][t]))
                      for t in tests) + " with one generator)")
    for title, red, mer_bare, mer in (
            ("one cluster-aware generator (redis-benchmark --cluster, 50 clients)", redis_cluster, bare,
             meridian),
            ("three cluster-aware generators at once (as many as the standalone baseline)",
             redis_cluster3, bare3, meridian3)):
        print(f"-P {pipeline}, {title}:")
        print("| test | 3 standalone redis-server | redis-server cluster (3 primaries) "
              "| meridian, 3 primaries | vs standalone | vs redis cluster "
              "| meridian, 3 primaries + 3 replicas | vs standalone |")
        print("|---|---|---|---|---|---|---|---|")
        for t in tests:
            print(f"| {t.upper()} | {standalone[t]:,.0f} | {red[t]:,.0f} | {mer_bare[t]:,.0f} | "
                  f"{mer_bare[t] / standalone[t]:.2f} | {mer_bare[t] / red[t]:.2f} | "
                  f"{mer[t]:,.0f} | {mer[t] / standalone[t]:.2f} |")
    # Where the CPU goes (both share the machine's cores): the servers' own cost per
    # request, and the load generators'. On a small box the generators' share decides the
    # rate: the cluster-aware generator spends more per request than the plain one.
    print(f"-P {pipeline}, CPU per request in ns (median over rounds; servers summed / "
          f"generators summed; one generator for the clusters, three for the standalone servers):")
    print("| test | " + " | ".join(f"{k}: server / generator" for k in CPU) + " | meridian server vs standalone |")
    print("|---|" + "---|" * (len(CPU) + 1))
    for t in tests:
        med_cpu = {k: tuple(statistics.median(x[i] for x in CPU[k].get(t, [(0, 0)])) for i in (0, 1))
                   for k in CPU}
        ratio = (med_cpu["meridian"][0] / med_cpu["standalone"][0]
                 if "meridian" in med_cpu and med_cpu["standalone"][0] else float("nan"))
        print(f"| {t.upper()} | " + " | ".join(f"{a:,.0f} / {b:,.0f}" for a, b in med_cpu.values())
              + f" | {ratio:.2f} |")
    CPU.clear()


def main():
    ap = argparse.ArgumentParser()
    # Requests of the load the replication-lag probe runs under (throughput runs are timed
    # by window instead: --warm, --window).
    ap.add_argument("--requests", type=int, default=1500000)
    ap.add_argument("--keys", type=int, default=50000)
    ap.add_argument("--node-timeout", type=int, default=2000)
    ap.add_argument("--meridian", default="target/release/meridian")
    # One event loop per node, like redis-server: six nodes and the generator share 2 cores.
    ap.add_argument("--io-threads", type=int, default=1)
    ap.add_argument("--only-lag", action="store_true", help="only the replication-lag measurement")
    ap.add_argument("--pipelines", default="1,16", help="redis-benchmark -P values for the throughput runs")
    ap.add_argument("--only-throughput", action="store_true", help="stop after the throughput tables")
    ap.add_argument("--rounds", type=int, default=3, help="alternating standalone/meridian throughput rounds")
    ap.add_argument("--warm", type=float, default=1.0, help="seconds of load before a throughput window")
    ap.add_argument("--window", type=float, default=3.0, help="seconds a throughput window lasts")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    args.pipelines = [int(p) for p in args.pipelines.split(",")]
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    tmp = tempfile.mkdtemp(prefix="meridian-bench-cluster-")
    procs = []
    try:
        if args.only_lag:
            mports, mprocs = start_meridian_cluster(args.meridian, args.node_timeout, tmp, args.io_threads)
            procs += mprocs
            wait_replicas(mports)
            report_lag(mports, args.requests)
            return
        # 1. Throughput, without and with pipelining.
        for pipeline in args.pipelines:
            throughput(args, tmp, procs, pipeline)
        global PIPELINE
        PIPELINE = 1
        if args.only_throughput:
            return
        mports, mprocs = start_meridian_cluster(args.meridian, args.node_timeout, tmp, args.io_threads)
        procs += mprocs
        # 4 (run before the topology changes). Replication lag under load.
        wait_replicas(mports)
        report_lag(mports, args.requests)

        # 2. Resharding speed: keys in slots 0-999 (primary 0) move to primary 1.
        tags = []
        n = 0
        while len(tags) < 1000:
            t = f"t{n}"
            n += 1
            if crc16(t.encode()) % 16384 < 1000:
                tags.append(t)
        batch = [resp("SET", "{%s}:%d" % (tags[i % len(tags)], i), "x" * 32) for i in range(args.keys)]
        with socket.create_connection(("127.0.0.1", mports[0])) as s:
            s.settimeout(30)
            for off in range(0, len(batch), 1000):
                chunk = batch[off:off + 1000]
                s.sendall(b"".join(chunk))
                got = b""
                while got.count(b"\r\n") < len(chunk):
                    data = s.recv(1 << 20)
                    if not data:
                        raise SystemExit("load connection closed")
                    got += data
        before = int(cmd(mports[1], "DBSIZE").strip().lstrip(":"))
        src = cmd(mports[0], "CLUSTER", "MYID").split("\r\n")[1]
        dst = cmd(mports[1], "CLUSTER", "MYID").split("\r\n")[1]
        t0 = time.time()
        subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{mports[0]}", "--cluster-from", src,
                        "--cluster-to", dst, "--cluster-slots", "1000", "--cluster-yes",
                        "--cluster-pipeline", "100"], check=True, capture_output=True)
        dt = time.time() - t0
        moved = int(cmd(mports[1], "DBSIZE").strip().lstrip(":")) - before
        print(f"resharding: 1000 slots, {moved} keys moved in {dt:.2f} s "
              f"({moved / dt:,.0f} keys/s, {1000 / dt:,.0f} slots/s)")

        # 3. Failover: kill primary 2 (slots 10923-16383), poll writes at its replica.
        key = None
        for n in range(100000):
            k = f"fo:{n}"
            out = cmd(mports[2], "SET", k, "1")
            if out.startswith("+OK"):
                key = k
                break
        os.kill(mprocs[2].pid, signal.SIGKILL)
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                if cmd(mports[5], "SET", key, "2", timeout=1).startswith("+OK"):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        dt = time.time() - t0
        print(f"failover: kill -9 of a primary -> writes accepted by its replica in {dt:.2f} s "
              f"(node-timeout {args.node_timeout} ms; target < {args.node_timeout / 1000 + 2:.1f} s)")
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
