#!/usr/bin/env python3
"""Benchmark meridian against redis-server in the same run, on loopback.

Starts both servers (redis-server with persistence off), runs redis-benchmark for
SET/GET/INCR/SADD/HSET/LPUSH/RPOP/LRANGE 0 99 with -c 50 (plain and -P 16), prints
requests/s and p99 for both and the ratio, then measures RSS growth per key after loading 1M
100-byte strings and 1M counters, and per element after pushing 1M 8-byte values into one
list, into a fresh instance of each server.

Sorted sets: ZADD, ZINCRBY and ZRANGE 0 9 as redis-benchmark custom commands on one set of
1000 members (preloaded; the members are m:__rand_int__ under -r 1000, so ZADD updates and
ZINCRBY increments members of that set and it stays at 1000), same rounds and -c 50; and the
RSS growth per member after ZADD of 1M members (member:%08d, score i) into 100 sets of 10k
members (big sets in either server: Redis' skiplist encoding; one key of 1M members would
pass the most state one key may hold, what one replication frame carries).

Usage: bench/compare.py [--requests N] [--rounds N] [--keys N] [--meridian PATH]
                        [--skip-memory] [--skip-throughput] [--password PW] [--tls]
--password: both servers require it (requirepass) and redis-benchmark authenticates (-a), to
measure what authentication costs. --tls: both servers serve only TLS, with a CA and
certificates made by openssl in a temporary folder (client certificates required, Redis'
default), and redis-benchmark connects with --tls.
Each test runs on the two servers in turn, --rounds times (median reported); -P 16 runs
5x the requests, so a test lasts about a second rather than a noisy fifth of one.
Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools) and a release
build of meridian (cargo build --release).
"""
import argparse
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time

# lrange_100 is LRANGE mylist 0 99 (redis-benchmark pushes the list first); rpop pops what
# lpush pushed in the same round.
TESTS = "set,get,incr,sadd,hset,lpush,rpop,lrange_100"
# Sorted-set custom commands: (name, arguments) on one preloaded set of ZSET_MEMBERS members.
ZSET_MEMBERS = 1000
# The memory figure's members are spread over this many sorted sets.
ZSET_KEYS = 100
ZSET_TESTS = [
    ("ZADD", ["ZADD", "zbench", "__rand_int__", "m:__rand_int__"]),
    ("ZINCRBY", ["ZINCRBY", "zbench", "1", "m:__rand_int__"]),
    ("ZRANGE", ["ZRANGE", "zbench", "0", "9"]),
]
# Server and benchmark arguments of the mode being measured (--password, --tls).
MODE = {"server": [], "bench": []}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, deadline_s=20):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def start_redis(port):
    p = subprocess.Popen(
        ["redis-server", *server_port_args(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "",
         *MODE["server"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p


def start_meridian(path, port):
    extra = os.environ.get("MERIDIAN_ARGS", "").split()
    p = subprocess.Popen([path, *server_port_args(port), "--log-level", "warn", *MODE["server"],
                          *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p


def server_port_args(port):
    if MODE.get("tls"):
        return ["--port", "0", "--tls-port", str(port)]
    return ["--port", str(port)]


def make_certs(folder):
    """A CA, a server and a client certificate (openssl), as tests/tls.rs makes with rcgen."""
    def run(*a):
        subprocess.run(["openssl", *a], cwd=folder, capture_output=True, check=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=bench-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-copy_extensions", "copy")
    f = lambda n: os.path.join(folder, n)
    MODE["tls"] = True
    MODE["server"] += ["--tls-cert-file", f("server.crt"), "--tls-key-file", f("server.key"),
                       "--tls-ca-cert-file", f("ca.crt")]
    MODE["bench"] += ["--tls", "--cacert", f("ca.crt"), "--cert", f("client.crt"),
                      "--key", f("client.key")]


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_benchmark(port, requests, pipeline, tests=TESTS):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests, "-c", "50",
           "-n", str(requests), "-r", "100000", "--csv", "-q", *MODE["bench"]]
    if pipeline > 1:
        cmd += ["-P", str(pipeline)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = {}
    for row in csv.reader(io.StringIO(out)):
        if not row or row[0] == "test":
            continue
        name = row[0].split()[0].upper()
        rows[name] = (float(row[1]), float(row[6]))  # rps, p99 ms
    return rows


def run_custom(port, requests, pipeline, args):
    """redis-benchmark of one custom command (members drawn from ZSET_MEMBERS names)."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50",
           "-n", str(requests), "-r", str(ZSET_MEMBERS), "--csv", "-q", *MODE["bench"]]
    if pipeline > 1:
        cmd += ["-P", str(pipeline)]
    out = subprocess.run(cmd + args, capture_output=True, text=True, check=True).stdout
    for row in csv.reader(io.StringIO(out)):
        if row and row[0] != "test":
            return float(row[1]), float(row[6])  # rps, p99 ms
    raise SystemExit(f"no result from redis-benchmark {' '.join(args)}")


def preload_zset(port):
    # The very names redis-benchmark draws: m: and __rand_int__'s 12 zero-padded digits.
    payload = b"".join(resp("ZADD", "zbench", i, f"m:{i:012d}") for i in range(ZSET_MEMBERS))
    load(port, payload)


def zset_throughput(meridian, requests, rounds):
    p16 = requests * 5
    print(f"\n# sorted sets: custom commands on one {ZSET_MEMBERS}-member set, -c 50 -r {ZSET_MEMBERS},"
          f" -n {requests} (-P 16: -n {p16}), median of {rounds} rounds")
    print(f"{'test':<8}{'P':>4}{'redis rps':>14}{'meridian rps':>14}{'ratio':>8}{'redis p99':>11}{'meridian p99':>14}")
    for pipeline in (1, 16):
        n = p16 if pipeline > 1 else requests
        rport, mport = free_port(), free_port()
        r, m = start_redis(rport), start_meridian(meridian, mport)
        runs = {name: ([], []) for name, _ in ZSET_TESTS}
        try:
            preload_zset(rport)
            preload_zset(mport)
            turn = 0
            for _ in range(rounds):
                for name, args in ZSET_TESTS:
                    order = [(0, rport), (1, mport)] if turn % 2 == 0 else [(1, mport), (0, rport)]
                    turn += 1
                    for who, port in order:
                        runs[name][who].append(run_custom(port, n, pipeline, args))
        finally:
            stop(r)
            stop(m)
        for name, (rr, mm) in runs.items():
            (r_rps, r_p99), (m_rps, m_p99) = median(rr), median(mm)
            print(f"{name:<8}{pipeline:>4}{r_rps:>14.0f}{m_rps:>14.0f}{m_rps / r_rps:>8.2f}{r_p99:>10.3f}ms{m_p99:>12.3f}ms")


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def load(port, payload):
    subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=payload,
                   capture_output=True, check=True)


def settle_rss(pid):
    # RSS is sampled after the load finished and the server went idle.
    last = rss_bytes(pid)
    for _ in range(20):
        time.sleep(0.1)
        now = rss_bytes(pid)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def memory_per_key(start, n):
    value = b"x" * 100
    strings = b"".join(resp("SET", f"key:{i:08d}", value) for i in range(n))
    counters = b"".join(resp("INCR", f"ctr:{i:08d}") for i in range(n))
    # n members over ZSET_KEYS sorted sets, loaded in ZADDs of 100 members.
    zset = b"".join(
        resp("ZADD", f"zmem:{(i // 100) % ZSET_KEYS:03d}",
             *[x for j in range(i, min(i + 100, n)) for x in (j, f"member:{j:08d}")])
        for i in range(0, n, 100))
    result = {}
    for label, payload in (("string", strings), ("counter", counters), ("zmember", zset)):
        port = free_port()
        p = start(port)
        try:
            subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, check=True)
            before = settle_rss(p.pid)
            load(port, payload)
            after = settle_rss(p.pid)
            dbsize = int(subprocess.run(["redis-cli", "-p", str(port), "DBSIZE"], capture_output=True,
                                        text=True, check=True).stdout.strip())
            used = subprocess.run(["redis-cli", "-p", str(port), "INFO", "memory"], capture_output=True,
                                  text=True, check=True).stdout
            used_memory = next(int(l.split(":")[1]) for l in used.splitlines() if l.startswith("used_memory:"))
            want = min(ZSET_KEYS, (n + 99) // 100) if label == "zmember" else n
            if dbsize != want:
                raise SystemExit(f"{label}: expected {want} keys, server holds {dbsize}")
            if label == "zmember":
                card = sum(int(subprocess.run(["redis-cli", "-p", str(port), "ZCARD", f"zmem:{k:03d}"],
                                              capture_output=True, text=True, check=True).stdout.strip())
                           for k in range(want))
                if card != n:
                    raise SystemExit(f"zmember: expected {n} members, server holds {card}")
            result[label] = ((after - before) / n, used_memory, after)
        finally:
            stop(p)
    return result


def memory_per_element(start, n):
    """RSS growth per list element after RPUSHing n 8-byte values into one list (100 per
    command), and used_memory, RSS."""
    cmds = []
    for i in range(0, n, 100):
        cmds.append(resp("RPUSH", "biglist", *(f"{j:08d}" for j in range(i, min(i + 100, n)))))
    payload = b"".join(cmds)
    port = free_port()
    p = start(port)
    try:
        subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, check=True)
        before = settle_rss(p.pid)
        load(port, payload)
        after = settle_rss(p.pid)
        llen = int(subprocess.run(["redis-cli", "-p", str(port), "LLEN", "biglist"], capture_output=True,
                                  text=True, check=True).stdout.strip())
        used = subprocess.run(["redis-cli", "-p", str(port), "INFO", "memory"], capture_output=True,
                              text=True, check=True).stdout
        used_memory = next(int(l.split(":")[1]) for l in used.splitlines() if l.startswith("used_memory:"))
        if llen != n:
            raise SystemExit(f"list: expected {n} elements, server holds {llen}")
        return ((after - before) / n, used_memory, after)
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--keys", type=int, default=1000000)
    ap.add_argument("--meridian", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "meridian"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--password", default=None)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install -y redis-server redis-tools")
    if args.password:
        MODE["server"] += ["--requirepass", args.password]
        MODE["bench"] += ["-a", args.password]
    if args.tls:
        import tempfile
        make_certs(tempfile.mkdtemp(prefix="meridian-bench-tls-"))
        # The memory figures load over plain redis-cli: not measured in TLS mode.
        args.skip_memory = True
    if args.password and not args.skip_memory:
        raise SystemExit("--password measures throughput only: add --skip-memory")
    meridian = os.path.abspath(args.meridian)
    if not os.path.exists(meridian):
        raise SystemExit(f"{meridian} missing: cargo build --release")

    if not args.skip_throughput:
        throughput(meridian, args.requests, args.rounds)
        zset_throughput(meridian, args.requests, args.rounds)
    if args.skip_memory:
        return
    print(f"\n# memory: RSS growth per key after {args.keys} SET key:%08d <100 B> / INCR ctr:%08d,"
          f" per member after ZADD of {args.keys} member:%08d into {ZSET_KEYS} sorted sets")
    red = memory_per_key(start_redis, args.keys)
    mer = memory_per_key(lambda port: start_meridian(meridian, port), args.keys)
    print(f"{'kind':<9}{'redis B/key':>12}{'meridian B/key':>16}{'ratio':>8}{'meridian used_memory/RSS':>27}")
    for kind in ("string", "counter", "zmember"):
        rb, mb = red[kind][0], mer[kind][0]
        print(f"{kind:<9}{rb:>12.0f}{mb:>16.0f}{mb / rb:>8.2f}{mer[kind][1] / mer[kind][2]:>27.2f}")
    print(f"\n# memory: RSS growth per list element after RPUSH biglist of {args.keys} 8-byte values (100 per command)")
    rl = memory_per_element(start_redis, args.keys)
    ml = memory_per_element(lambda port: start_meridian(meridian, port), args.keys)
    print(f"{'kind':<9}{'redis B/elem':>13}{'meridian B/elem':>17}{'ratio':>8}{'meridian used_memory/RSS':>27}")
    print(f"{'list':<9}{rl[0]:>13.1f}{ml[0]:>17.1f}{ml[0] / rl[0]:>8.2f}{ml[1] / ml[2]:>27.2f}")


def throughput(meridian, requests, rounds):
    p16 = requests * 5
    mode = ", ".join(m for m, on in (("TLS", MODE.get("tls")), ("password", "-a" in MODE["bench"])) if on)
    print(f"# throughput{' (' + mode + ')' if mode else ''}: redis-benchmark -t <test> -c 50 -r 100000, -n {requests} (-P 16: -n {p16}),")
    print(f"# each test on both servers in turn (who goes first alternates), median of {rounds} rounds")
    print(f"{'test':<8}{'P':>4}{'redis rps':>14}{'meridian rps':>14}{'ratio':>8}{'redis p99':>11}{'meridian p99':>14}")
    for pipeline in (1, 16):
        n = p16 if pipeline > 1 else requests
        rport, mport = free_port(), free_port()
        r, m = start_redis(rport), start_meridian(meridian, mport)
        runs = {t: ([], []) for t in TESTS.upper().split(",")}
        try:
            turn = 0
            for _ in range(rounds):
                for t in TESTS.split(","):
                    # Alternate who goes first, so neither always gets the warmer machine.
                    order = [(0, rport), (1, mport)] if turn % 2 == 0 else [(1, mport), (0, rport)]
                    turn += 1
                    for who, port in order:
                        runs[t.upper()][who].append(run_benchmark(port, n, pipeline, t)[t.upper()])
        finally:
            stop(r)
            stop(m)
        for t, (rr, mm) in runs.items():
            (r_rps, r_p99), (m_rps, m_p99) = median(rr), median(mm)
            print(f"{t:<8}{pipeline:>4}{r_rps:>14.0f}{m_rps:>14.0f}{m_rps / r_rps:>8.2f}{r_p99:>10.3f}ms{m_p99:>12.3f}ms")


def median(rows):
    """Median requests/s and median p99 of a test's rounds."""
    rps = sorted(r for r, _ in rows)
    p99 = sorted(p for _, p in rows)
    return rps[len(rps) // 2], p99[len(p99) // 2]

if __name__ == "__main__":
    sys.exit(main())
