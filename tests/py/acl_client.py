#!/usr/bin/env python3
"""redis-py against a meridian started with `--requirepass sekret` (run by tests/acl.rs).

    python3 tests/py/acl_client.py HOST:PORT

AUTH with a password and with a user (RESP2), HELLO 3 AUTH (RESP3), redis-py's own
exceptions for NOAUTH, WRONGPASS and NOPERM (command and key), %R~ and %W~ patterns, and
the ACL log through redis-py's `acl_log`. Any mismatch raises, so the exit status is
non-zero; the last line on success is `OK acl`.
"""

import sys

import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect(exc, fn, text):
    try:
        fn()
    except exc as e:
        check(text in str(e), f"{exc.__name__}: {e!r} lacks {text!r}")
        return
    raise AssertionError(f"{text!r} expected, nothing raised")


def main(argv):
    host, port = argv[1].rsplit(":", 1)
    port = int(port)
    anon = redis.Redis(host=host, port=port)
    expect(AuthenticationError, lambda: anon.get("k"), "Authentication required")
    expect(
        AuthenticationError,
        lambda: redis.Redis(host=host, port=port, password="bad").ping(),
        "invalid username-password pair",
    )
    admin = redis.Redis(host=host, port=port, password="sekret", decode_responses=True)
    check(admin.ping(), "PING as default")
    admin.acl_setuser(
        "py",
        enabled=True,
        passwords=["+pypw"],
        keys=["app:*"],
        commands=["+@read", "+@write", "-@dangerous"],
    )
    admin.execute_command("ACL", "SETUSER", "py", "%R~ro:*", "%W~wo:*")
    user = admin.acl_getuser("py")
    check("~app:*" in user["keys"] and "%R~ro:*" in user["keys"], f"GETUSER keys: {user}")
    for proto in (2, 3):
        py = redis.Redis(
            host=host,
            port=port,
            username="py",
            password="pypw",
            protocol=proto,
            decode_responses=True,
        )
        py.set("app:1", f"v{proto}")
        check(py.get("app:1") == f"v{proto}", "read back")
        expect(NoPermissionError, lambda: py.get("other"), "No permissions to access a key")
        expect(NoPermissionError, lambda: py.flushall(), "has no permissions to run the 'flushall' command")
        py.get("ro:1")
        expect(NoPermissionError, lambda: py.set("ro:1", "x"), "No permissions to access a key")
        py.set("wo:1", "x")
        expect(NoPermissionError, lambda: py.get("wo:1"), "No permissions to access a key")
        expect(
            NoPermissionError,
            lambda: py.execute_command("MERIDIAN", "MERGE", "app:1", "x"),
            "'meridian|merge' command",
        )
    log = admin.acl_log(count=5)
    check(log and log[0]["username"] == "py", f"ACL LOG: {log}")
    reasons = {e["reason"] for e in log}
    check({"key", "command"} <= reasons, f"reasons {reasons}")
    expect(ResponseError, lambda: admin.acl_deluser("default"), "cannot be removed")
    print("OK acl")


if __name__ == "__main__":
    main(sys.argv)
