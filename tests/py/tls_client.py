#!/usr/bin/env python3
"""redis-py over TLS against a meridian with `tls-port` (run by tests/tls.rs).

    python3 tests/py/tls_client.py HOST:TLS_PORT CA_PEM CLIENT_PEM CLIENT_KEY_PEM

With the client certificate: PING, SET/GET, a pipeline of 200 INCRs, a 1 MiB value (many
TLS records each way), RESP3 (HELLO 3) and CLIENT INFO's laddr naming the TLS port. Then
without a certificate (`tls-auth-clients yes`): the connection is refused. Any mismatch
raises, so the exit status is non-zero; the last line on success is `OK tls`.
"""

import ssl
import sys

import redis


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main(argv):
    host, port = argv[1].rsplit(":", 1)
    port = int(port)
    ca, cert, key = argv[2], argv[3], argv[4]
    tls = dict(
        host=host,
        port=port,
        ssl=True,
        ssl_ca_certs=ca,
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_cert_reqs="required",
        ssl_check_hostname=True,
        socket_timeout=30,
    )
    r = redis.Redis(**tls)
    check(r.ping() is True, "PING over TLS")
    check(r.set("py:tls", "v1") is True, "SET over TLS")
    check(r.get("py:tls") == b"v1", "GET over TLS")
    p = r.pipeline(transaction=False)
    for _ in range(200):
        p.incr("py:tls:n")
    got = p.execute()
    check(got[-1] == 200, f"pipelined INCRs over TLS: {got[-3:]}")
    big = b"x" * (1 << 20)
    r.set("py:tls:big", big)
    check(r.get("py:tls:big") == big, "1 MiB value round trip over TLS")
    info = r.client_info()
    check(info["laddr"].endswith(f":{port}"), f"laddr names the TLS port: {info}")

    r3 = redis.Redis(protocol=3, **tls)
    check(r3.get("py:tls") == b"v1", "RESP3 over TLS")

    anon = dict(tls)
    del anon["ssl_certfile"]
    del anon["ssl_keyfile"]
    try:
        redis.Redis(**anon).ping()
    except (redis.exceptions.ConnectionError, ssl.SSLError, OSError):
        pass
    else:
        raise AssertionError("a client without a certificate was served")
    print("OK tls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
