#!/usr/bin/env python3
"""Benchmark the Kafka invalidation stream on loopback with a real broker (tansu).

Reports:
  1. sustained invalidations applied per second by one node: N records are produced first,
     then a fresh consumer drains them; the rate is taken between the first and the last
     record applied (broker fetch included, group join excluded);
  2. apply lag p50/p99 (record timestamp -> applied, from the node's histogram) while a
     producer paces RATE records/s for SECONDS seconds;
  3. client-facing SET/GET p99 (redis-benchmark -c 50) while the paced stream runs, against
     the same stream sent to a topic the node does not consume (broker and producer share
     the cores either way), plus idle figures for meridian and redis-server (same run).

Usage: bench/kafka.py [--records N] [--rate R] [--seconds S] [--meridian PATH]
Needs: tansu on PATH (cargo install tansu --locked --features dynostore,libsql), redis-server
and redis-benchmark, a release build of meridian, and the confluent-kafka Python package
(installed with pip when missing).
"""
import argparse
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from compare import free_port, wait_port, start_redis, stop  # noqa: E402

try:
    from confluent_kafka import Producer
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "confluent-kafka"], check=True)
    from confluent_kafka import Producer


def start_tansu(port):
    url = f"tcp://127.0.0.1:{port}"
    p = subprocess.Popen(["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p, 60)
    return p


def create_topic(port, name, partitions):
    end = time.time() + 60
    while time.time() < end:
        r = subprocess.run(["tansu", "topic", "create", name, "--partitions", str(partitions),
                            "--broker", f"tcp://127.0.0.1:{port}"], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"cannot create topic {name}")


def start_meridian(path, port, brokers, topic, group):
    p = subprocess.Popen([path, "--port", str(port), "--log-level", "warn",
                          "--kafka-brokers", brokers, "--kafka-topic", topic,
                          "--kafka-group", group],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p


def info(port, field):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$13\r\ninvalidations\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n" in data:
                header, _, rest = data.partition(b"\r\n")
                if header.startswith(b"$") and len(rest) >= int(header[1:]):
                    break
    for line in data.decode().split("\r\n"):
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise SystemExit(f"INFO has no {field}")


def produce(brokers, topic, n, rate=None, seconds=None):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "queue.buffering.max.messages": 1000000})
    sent = 0
    start = time.time()
    while True:
        if rate is None:
            if sent >= n:
                break
        else:
            if time.time() - start >= seconds:
                break
            due = int((time.time() - start) * rate)
            if sent >= due:
                time.sleep(0.001)
                continue
        key = f"key:{sent % 100000}"
        while True:
            try:
                p.produce(topic, key=key, value=b'{"version":%d}' % (sent + 1))
                break
            except BufferError:
                p.poll(0.01)
        sent += 1
        if sent % 1000 == 0:
            p.poll(0)
    p.flush(60)
    return sent


def bench_clients(port, requests):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-c", "50",
           "-n", str(requests), "-r", "100000", "--csv", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = {}
    for row in csv.reader(io.StringIO(out)):
        if row and row[0] != "test":
            rows[row[0].split()[0].upper()] = (float(row[1]), float(row[6]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--meridian", default="target/release/meridian")
    args = ap.parse_args()
    for tool in ("tansu", "redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    kport = free_port()
    broker = start_tansu(kport)
    brokers = f"127.0.0.1:{kport}"
    procs = [broker]
    try:
        # 1. Sustained apply rate: the stream is produced first, then drained.
        create_topic(kport, "drain", 4)
        produce(brokers, "drain", args.records)
        mport = free_port()
        m = start_meridian(args.meridian, mport, brokers, "drain", "bench-drain")
        procs.append(m)
        end = time.time() + 300
        first = None
        while time.time() < end:
            n = info(mport, "kafka_records_applied")
            if n > 0 and first is None:
                first = (time.time(), n)
            if n >= args.records:
                break
            time.sleep(0.01)
        last = (time.time(), info(mport, "kafka_records_applied"))
        rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-6)
        print(f"sustained apply: {last[1]} records, {rate:,.0f} invalidations/s on one node")
        stop(m)
        procs.remove(m)

        # 2 and 3. Paced stream: apply lag, and client latency idle vs under the stream.
        create_topic(kport, "paced", 4)
        mport = free_port()
        m = start_meridian(args.meridian, mport, brokers, "paced", "bench-paced")
        procs.append(m)
        rport = free_port()
        r = start_redis(rport)
        procs.append(r)
        # Let the consumer join its group before timing anything.
        produce(brokers, "paced", 10)
        end = time.time() + 60
        while info(mport, "kafka_records_applied") < 10 and time.time() < end:
            time.sleep(0.05)
        redis_idle = bench_clients(rport, args.requests)
        idle = bench_clients(mport, args.requests)

        def paced(topic):
            out = {}
            t = threading.Thread(target=lambda: out.update(
                sent=produce(brokers, topic, 0, args.rate, args.seconds)))
            t.start()
            return t, out

        # Lag, with nothing else running.
        subprocess.run(["redis-cli", "-p", str(mport), "CONFIG", "RESETSTAT"], check=True,
                       capture_output=True)
        before = info(mport, "kafka_records_applied")
        t, out = paced("paced")
        t.join()
        end = time.time() + 60
        while info(mport, "kafka_records_applied") < before + out["sent"] and time.time() < end:
            time.sleep(0.05)
        p50 = info(mport, "kafka_apply_latency_p50_ms")
        p99 = info(mport, "kafka_apply_latency_p99_ms")
        print(f"apply lag at {args.rate}/s for {args.seconds}s ({out['sent']} records): "
              f"p50 {p50} ms, p99 {p99} ms")

        # Client latency. Broker and producer share the 2 cores with the server, so the fair
        # baseline is the same stream going to a topic this node does not consume.
        create_topic(kport, "elsewhere", 4)
        t, _ = paced("elsewhere")
        time.sleep(1)
        baseline = bench_clients(mport, args.requests)
        t.join()
        t, _ = paced("paced")
        time.sleep(1)
        busy = bench_clients(mport, args.requests)
        t.join()
        print("| test | redis idle p99 | meridian idle p99 | meridian p99, stream not consumed "
              "| meridian p99, stream consumed | consumed / not consumed |")
        print("|---|---|---|---|---|---|")
        for name in ("SET", "GET"):
            ratio = busy[name][1] / baseline[name][1] if baseline[name][1] else float("nan")
            print(f"| {name} | {redis_idle[name][1]:.3f} ms | {idle[name][1]:.3f} ms | "
                  f"{baseline[name][1]:.3f} ms | {busy[name][1]:.3f} ms | {ratio:.2f} |")
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    main()
