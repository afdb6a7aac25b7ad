//! The wire protocol: malformed RESP → `-ERR Protocol error: ...` and that connection closes
//! while other clients keep working; bulk arguments beyond proto-max-bulk-len; inline
//! commands; partial frames; pipelining 10 000 commands in one write with replies in order;
//! unknown-command and arity error texts.

mod common;

use common::*;
use std::io::Write;

#[test]
fn malformed_resp_closes_only_that_connection() {
    let s = Server::start();
    let mut bystander = s.conn();
    q::<()>(&mut bystander, &["SET", "k", "v"]);
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n$abc\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*abc\r\n", "ERR Protocol error: invalid multibulk length"),
        (
            b"*1\r\n+PING\r\n",
            "ERR Protocol error: expected '$', got '+'",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n$-1\r\n",
            "ERR Protocol error: invalid bulk length",
        ),
        (b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
        (
            b"SET k \"unterminated\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
        (
            b"ECHO 'x\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n$3\r\nabcd\r\n",
            "ERR Protocol error: expected CRLF after bulk argument",
        ),
    ];
    for (bytes, expected) in cases {
        let mut raw = s.raw();
        raw.send(bytes);
        assert_eq!(raw.read(), Resp::err(expected), "reply to {bytes:?}");
        raw.assert_closed();
        // Everyone else is unaffected.
        assert_eq!(q::<String>(&mut bystander, &["GET", "k"]), "v");
    }
    // Valid requests before the bad one in the same write are answered first.
    let mut raw = s.raw();
    raw.send(b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$x\r\n");
    assert_eq!(raw.read(), Resp::Simple("PONG".into()));
    assert_eq!(raw.read(), Resp::Simple("PONG".into()));
    assert_eq!(
        raw.read(),
        Resp::err("ERR Protocol error: invalid bulk length")
    );
    raw.assert_closed();
    assert_eq!(q::<String>(&mut bystander, &["GET", "k"]), "v");
}

#[test]
fn oversized_requests_are_refused() {
    let s = Server::start_with(&["--proto-max-bulk-len", "2mb"]);
    let mut c = s.conn();
    let cfg: std::collections::HashMap<String, String> =
        q(&mut c, &["CONFIG", "GET", "proto-max-bulk-len"]);
    assert_eq!(cfg["proto-max-bulk-len"], (2u64 << 20).to_string());
    q::<()>(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "1mb"]);

    // Exactly the limit is fine.
    let limit = 1 << 20;
    let payload = vec![b'z'; limit];
    let mut raw = s.raw();
    assert_eq!(
        raw.cmd(&[&b"ECHO"[..], &payload]),
        Resp::Bulk(payload.clone())
    );
    // One byte more is a protocol error, announced before the payload is even sent.
    raw.send(format!("*2\r\n$4\r\nECHO\r\n${}\r\n", limit + 1).as_bytes());
    assert_eq!(
        raw.read(),
        Resp::err("ERR Protocol error: invalid bulk length")
    );
    raw.assert_closed();
    // A new limit applies from the next request on, even one pipelined in the same write
    // (requests are parsed ahead of the one running).
    let big = vec![b'w'; limit + 1];
    let mut write =
        b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$18\r\nproto-max-bulk-len\r\n$3\r\n2mb\r\n".to_vec();
    write.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n${}\r\n", big.len()).as_bytes());
    write.extend_from_slice(&big);
    write.extend_from_slice(b"\r\n");
    let mut raw = s.raw();
    raw.send(&write);
    assert_eq!(raw.read(), Resp::Simple("OK".into()));
    assert_eq!(raw.read(), Resp::Bulk(big));
    q::<()>(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "1mb"]);

    // Commands that build strings respect the same limit.
    let half = "y".repeat(limit / 2 + 1);
    q::<i64>(&mut c, &["APPEND", "s", &half]);
    assert_eq!(
        qerr(&mut c, &["APPEND", "s", &half]),
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(
        qerr(&mut c, &["SETRANGE", "s", &limit.to_string(), "x"]),
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(q::<usize>(&mut c, &["STRLEN", "s"]), half.len());

    // An inline request without a newline cannot grow without bound.
    let mut raw = s.raw();
    raw.send(&vec![b'a'; 70 * 1024]);
    assert_eq!(
        raw.read(),
        Resp::err("ERR Protocol error: too big inline request")
    );
    raw.assert_closed();
    // Neither can the declared argument count.
    let mut raw = s.raw();
    raw.send(b"*99999999999\r\n");
    assert_eq!(
        raw.read(),
        Resp::err("ERR Protocol error: invalid multibulk length")
    );
    raw.assert_closed();
    assert_eq!(q::<usize>(&mut c, &["STRLEN", "s"]), half.len());
}

#[test]
fn inline_commands() {
    let s = Server::start();
    let mut raw = s.raw();
    raw.send(b"PING\r\n");
    assert_eq!(raw.read(), Resp::Simple("PONG".into()));
    raw.send(b"PING\n");
    assert_eq!(raw.read(), Resp::Simple("PONG".into()));
    // Blank lines are skipped.
    raw.send(b"\r\n\r\n   \r\nping\r\n");
    assert_eq!(raw.read(), Resp::Simple("PONG".into()));
    raw.send(b"SET greeting \"hello world\"\r\n");
    assert_eq!(raw.read(), Resp::ok());
    raw.send(b"GET greeting\r\n");
    assert_eq!(raw.read(), Resp::bulk("hello world"));
    raw.send(b"ECHO \"a\\x41\\n\" 'single \"quoted\"'\r\n");
    assert_eq!(
        raw.read(),
        Resp::err("ERR wrong number of arguments for 'echo' command")
    );
    raw.send(b"ECHO \"a\\x41\\n\"\r\nECHO 'x y'\r\n");
    assert_eq!(raw.read(), Resp::bulk("aA\n"));
    assert_eq!(raw.read(), Resp::bulk("x y"));
    raw.send(b"INCRBY n 5\r\n");
    assert_eq!(raw.read(), Resp::Int(5));
    raw.send(b"NOSUCH a b\r\n");
    assert_eq!(
        raw.read(),
        Resp::err("ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' ")
    );
    // Inline and multibulk requests mixed in one write, answered in order.
    raw.send(b"SET mixed 1\r\n*2\r\n$4\r\nINCR\r\n$5\r\nmixed\r\nGET mixed\r\n");
    assert_eq!(raw.read(), Resp::ok());
    assert_eq!(raw.read(), Resp::Int(2));
    assert_eq!(raw.read(), Resp::bulk("2"));
}

#[test]
fn partial_frames_are_reassembled() {
    let s = Server::start();
    let mut raw = s.raw();
    let req = encode_cmd(&["SET", "k", "hello"]);
    for b in &req {
        raw.stream.write_all(std::slice::from_ref(b)).unwrap();
        raw.stream.flush().unwrap();
    }
    assert_eq!(raw.read(), Resp::ok());
    // A large bulk split across many writes, and an inline command split mid-line.
    let big = vec![b'q'; 200_000];
    let req = encode_cmd(&[&b"SET"[..], b"big", &big]);
    for chunk in req.chunks(7_001) {
        raw.send(chunk);
    }
    assert_eq!(raw.read(), Resp::ok());
    raw.send(b"STRL");
    raw.send(b"EN big\r");
    raw.send(b"\n");
    assert_eq!(raw.read(), Resp::Int(200_000));
    assert_eq!(raw.cmd(&["GET", "k"]), Resp::bulk("hello"));
}

#[test]
fn pipeline_of_10000_commands_in_one_write() {
    let s = Server::start();
    let mut raw = s.raw();
    const N: usize = 10_000;
    let mut batch = Vec::new();
    for i in 0..N {
        if i % 2 == 0 {
            batch.extend(encode_cmd(&["INCR", "ctr"]));
        } else {
            batch.extend(encode_cmd(&["ECHO", &format!("msg-{i}")]));
        }
    }
    // Write from another thread while this one reads, so neither side's socket buffer can
    // deadlock the exchange; the whole batch still goes out as one write call.
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    for i in 0..N {
        let expected = if i % 2 == 0 {
            Resp::Int((i / 2 + 1) as i64)
        } else {
            Resp::bulk(&format!("msg-{i}"))
        };
        assert_eq!(raw.read(), expected, "reply #{i} out of order");
    }
    sender.join().unwrap();
    assert_eq!(raw.cmd(&["GET", "ctr"]), Resp::bulk(&(N / 2).to_string()));

    // The same through the redis crate's pipeline.
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..N {
        p.cmd("SET").arg(format!("p:{i}")).arg(i).ignore();
    }
    for i in (0..N).step_by(1000) {
        p.cmd("GET").arg(format!("p:{i}"));
    }
    let got: Vec<usize> = p.query(&mut c).unwrap();
    assert_eq!(got, (0..N).step_by(1000).collect::<Vec<_>>());
    assert_eq!(q::<usize>(&mut c, &["DBSIZE"]), N + 1);
}

#[test]
fn unknown_command_and_arity_texts() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(
        qerr(&mut c, &["NOSUCHCMD"]),
        "ERR unknown command 'NOSUCHCMD', with args beginning with: "
    );
    assert_eq!(
        qerr(&mut c, &["nosuchcmd", "a", "b c"]),
        "ERR unknown command 'nosuchcmd', with args beginning with: 'a' 'b c' "
    );
    // At most 128 bytes of quoted arguments, however many are sent.
    let long = "x".repeat(300);
    let mut args = vec!["FOO", long.as_str()];
    args.extend(std::iter::repeat_n("more", 1000));
    let text = qerr(&mut c, &args);
    assert_eq!(
        text,
        format!(
            "ERR unknown command 'FOO', with args beginning with: '{}' ",
            "x".repeat(128)
        )
    );
    // Names are case-insensitive; arity errors name the command in lower case.
    assert_eq!(q::<String>(&mut c, &["pInG"]), "PONG");
    assert_eq!(
        qerr(&mut c, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        qerr(&mut c, &["HsEt", "h"]),
        "ERR wrong number of arguments for 'hset' command"
    );
    // Empty requests are ignored.
    let mut raw = s.raw();
    raw.send(b"*0\r\n*-1\r\n");
    assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn protocol_replies_match_redis_server() {
    let s = Server::start();
    let long = "y".repeat(200);
    assert_same_as_redis(
        &s,
        &[
            &["NOSUCH"],
            &["NOSUCH", "a", "b"],
            &["NOSUCH", &long, "z"],
            &["GET"],
            &["SET", "k"],
            &["ping"],
            &["PING", "x", "y"],
        ],
    );
}
