//! Hostile and broken clients at the connection level: a client cannot make the node buffer
//! without bound (query buffer, MULTI queue, replies it does not read, a replica that does
//! not keep up), cannot make it reparse a dribbled request from the start, cannot keep a
//! slot by panicking its task or by idling, cannot exhaust the metrics endpoint, and a
//! counter reset mid-traffic leaves INFO sane. Real processes, real clients; every wait is a
//! condition with a deadline.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

/// An INFO field read on a fresh connection (for servers that close idle clients).
fn info_now(s: &Server, name: &str) -> String {
    let mut con = s.conn();
    info_field(&mut con, name)
}

fn info_now_u64(s: &Server, name: &str) -> u64 {
    info_now(s, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// Write `bytes`, ignoring a server that closed the connection meanwhile.
fn send_lossy(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

/// The server closes `stream` (EOF or reset) within the I/O timeout, whatever it sent first.
fn wait_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

#[test]
fn query_buffer_limit_closes_a_client_with_too_much_unparsed_input() {
    let s = Server::start();
    let mut con = s.conn();
    let get = |con: &mut redis::Connection| -> Vec<String> {
        q(con, &["CONFIG", "GET", "client-query-buffer-limit"])
    };
    assert_eq!(get(&mut con), ["client-query-buffer-limit", "1073741824"]);
    let e = qerr(
        &mut con,
        &["CONFIG", "SET", "client-query-buffer-limit", "1000"],
    );
    assert!(e.contains("argument must be between 1048576"), "{e}");
    let _: () = q(
        &mut con,
        &["CONFIG", "SET", "client-query-buffer-limit", "1mb"],
    );
    assert_eq!(get(&mut con), ["client-query-buffer-limit", "1048576"]);

    // A bulk within proto-max-bulk-len (512mb) but larger than the query buffer limit: the
    // client is closed on its header, before the node buffers it.
    let mut a = TcpStream::connect(s.addr()).unwrap();
    send_lossy(&mut a, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\nxxxx");
    wait_closed(&mut a);

    // A request of many small arguments that keeps growing past the limit.
    let mut b = TcpStream::connect(s.addr()).unwrap();
    send_lossy(&mut b, b"*100000\r\n$3\r\nSET\r\n");
    let arg = b"$10\r\n0123456789\r\n".repeat(1000);
    for _ in 0..80 {
        send_lossy(&mut b, &arg);
    }
    wait_closed(&mut b);

    wait_until(WAIT_TIMEOUT, "both clients are counted", || {
        info_u64(&mut con, "client_query_buffer_limit_disconnections") == 2
    });
    // A request under the limit is served, and the node is fine.
    let value = "v".repeat(900_000);
    let _: () = q(&mut con, &["SET", "big", &value]);
    let got: String = q(&mut con, &["GET", "big"]);
    assert_eq!(got.len(), value.len());
    let _: () = q(&mut con, &["SET", "k", "small"]);
    let got: String = q(&mut con, &["GET", "k"]);
    assert_eq!(got, "small");
}

#[test]
fn a_request_dribbled_in_small_chunks_runs() {
    let s = Server::start();
    let mut raw = s.raw();
    let value = (0..100_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect::<String>();
    let wire = encode_cmd(&["SET", "dribbled", value.as_str()]);
    for chunk in wire.chunks(7) {
        raw.send(chunk);
    }
    assert_eq!(raw.read(), Resp::ok());
    // An inline request, one byte at a time.
    for b in b"SET inline \"one byte at a time\"\r\n" {
        raw.send(&[*b]);
    }
    assert_eq!(raw.read(), Resp::ok());
    let mut con = s.conn();
    let got: String = q(&mut con, &["GET", "dribbled"]);
    assert_eq!(got, value);
    let got: String = q(&mut con, &["GET", "inline"]);
    assert_eq!(got, "one byte at a time");
}

#[test]
fn a_panicking_connection_gives_back_its_slot_entry_and_watches() {
    let s = Server::start_with(&["--enable-debug-command", "yes", "--maxclients", "3"]);
    let mut con = s.conn();
    assert_eq!(
        q::<Vec<String>>(&mut con, &["CONFIG", "GET", "enable-debug-command"]),
        ["enable-debug-command", "yes"]
    );
    // More panics than maxclients: a leaked slot would lock every new client out.
    for i in 0..5 {
        let mut doomed = s.raw();
        assert_eq!(doomed.cmd(&["CLIENT", "SETNAME", "doomed"]), Resp::ok());
        assert_eq!(doomed.cmd(&["WATCH", "w"]), Resp::ok());
        doomed.send(&encode_cmd(&["DEBUG", "PANIC-CLIENT"]));
        doomed.assert_closed();
        wait_until(WAIT_TIMEOUT, "the panicked client is gone", || {
            info_u64(&mut con, "connected_clients") == 1
        });
        let list: String = q(&mut con, &["CLIENT", "LIST"]);
        assert!(!list.contains("name=doomed"), "round {i}: {list}");
    }
    assert_eq!(info_u64(&mut con, "connection_panics"), 5);
    // Both free slots are usable, and WATCH/EXEC still work on the key the dead watched.
    let mut a = s.raw();
    let mut b = s.raw();
    assert_eq!(a.cmd(&["WATCH", "w"]), Resp::ok());
    assert_eq!(b.cmd(&["SET", "w", "changed"]), Resp::ok());
    assert_eq!(a.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(a.cmd(&["SET", "w", "mine"]), Resp::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["EXEC"]), Resp::NilArray);
    let got: String = q(&mut con, &["GET", "w"]);
    assert_eq!(got, "changed");

    // Without enable-debug-command, DEBUG is refused with Redis' words.
    let plain = Server::start();
    let mut p = plain.conn();
    let e = qerr(&mut p, &["DEBUG", "PANIC-CLIENT"]);
    assert!(e.starts_with("ERR DEBUG command not allowed."), "{e}");
    plain.raw().cmd(&["PING"]);
}

#[test]
fn a_client_that_does_not_read_its_replies_is_dropped_at_the_output_limit() {
    let s = Server::start();
    let mut con = s.conn();
    let e = qerr(
        &mut con,
        &["CONFIG", "SET", "client-output-buffer-limit", "normal 1mb"],
    );
    assert!(
        e.contains("Wrong number of arguments in buffer limit"),
        "{e}"
    );
    let e = qerr(
        &mut con,
        &["CONFIG", "SET", "client-output-buffer-limit", "bogus 1 1 1"],
    );
    assert!(e.contains("Invalid client class"), "{e}");
    let _: () = q(
        &mut con,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "normal 1mb 256kb 10",
        ],
    );
    let got: Vec<String> = q(&mut con, &["CONFIG", "GET", "client-output-buffer-limit"]);
    assert_eq!(
        got[1],
        "normal 1048576 262144 10 slave 268435456 67108864 60 pubsub 33554432 8388608 60"
    );
    let value = "x".repeat(512 * 1024);
    let _: () = q(&mut con, &["SET", "big", &value]);

    // 400 GETs of 512 KB pipelined, never read: the node does not queue 200 MB for it.
    let mut hog = TcpStream::connect(s.addr()).unwrap();
    let pipeline = encode_cmd(&["GET", "big"]).repeat(400);
    send_lossy(&mut hog, &pipeline);
    wait_until(WAIT_TIMEOUT, "the non-reading client is dropped", || {
        info_u64(&mut con, "client_output_buffer_limit_disconnections") == 1
            && info_u64(&mut con, "connected_clients") == 1
    });
    // A client that reads gets the same reply.
    let got: String = q(&mut con, &["GET", "big"]);
    assert_eq!(got.len(), value.len());
    drop(hog);
}

#[test]
fn a_replica_over_the_replica_class_limit_is_dropped_then_resyncs() {
    let primary = Server::start();
    let mut p = primary.conn();
    // One unacknowledged byte is too many.
    let _: () = q(
        &mut p,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "replica 1 0 0",
        ],
    );
    let target = format!("127.0.0.1 {}", primary.port);
    let replica = Server::start_with(&["--replicaof", &target]);
    let mut r = replica.conn();
    let mut i = 0;
    wait_until(WAIT_TIMEOUT, "the replica link is dropped", || {
        i += 1;
        let _: () = q(&mut p, &["SET", "k", &i.to_string()]);
        info_u64(&mut p, "client_output_buffer_limit_disconnections") >= 1
    });
    let _: () = q(
        &mut p,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "slave 256mb 64mb 60",
        ],
    );
    let _: () = q(&mut p, &["SET", "k", "final"]);
    wait_until(
        WAIT_TIMEOUT,
        "the replica resynced",
        || matches!(v(&mut r, &["GET", "k"]), redis::Value::BulkString(b) if b == b"final"),
    );
}

#[test]
fn metrics_connections_are_bounded_and_silent_ones_closed() {
    let port = free_port();
    let s = Server::start_with(&["--metrics-port", &port.to_string()]);
    wait_until(
        WAIT_TIMEOUT,
        "the metrics endpoint accepts connections",
        || http_get(port, "/metrics").is_ok(),
    );
    // Sixteen connections that never send a request take every slot...
    let mut silent: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // ...so the next is refused at once: a 503, or a reset when the node closed it before
    // reading its request (it never waits on a client it refuses). Never a scrape.
    match http_get(port, "/metrics") {
        Ok((status, _, _)) => assert_eq!(status, "HTTP/1.1 503 Service Unavailable"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The silent ones are closed after the read timeout, and scrapes work again.
    for c in &mut silent {
        wait_closed(c);
    }
    let m = scrape_metrics(port);
    assert!(m["meridian_service_connections_refused_total"] >= 17.0);
    s.raw().cmd(&["PING"]);
}

#[test]
fn config_resetstat_mid_activity_leaves_info_sane() {
    let s = Server::start();
    let mut con = s.conn();
    // Enough traffic for a per-second sample of a large total...
    let mut load = s.conn();
    wait_until(WAIT_TIMEOUT, "an ops/s sample of heavy traffic", || {
        let mut pipe = redis::pipe();
        for i in 0..500 {
            pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
        }
        let _: () = pipe.query(&mut load).unwrap();
        info_u64(&mut con, "instantaneous_ops_per_sec") > 3_000
            && info_u64(&mut con, "total_commands_processed") > 20_000
    });
    // ...then a reset in the middle of it, and light traffic only.
    let _: () = q(&mut con, &["CONFIG", "RESETSTAT"]);
    let _: () = q(&mut load, &["SET", "after", "1"]);
    // The next samples see a total smaller than the last: the gauge must follow the light
    // traffic (a wrapped difference would read ~2^64, a panicking cycle would stay stale).
    wait_until(WAIT_TIMEOUT, "ops/s follows the light traffic", || {
        let _: () = q(&mut load, &["PING"]);
        info_u64(&mut con, "instantaneous_ops_per_sec") < 1_000
    });
    // The background cycle lives on (it expires this key actively; nobody reads it), and no
    // figure wrapped below zero.
    let _: () = q(&mut con, &["SET", "ephemeral", "x", "PX", "50"]);
    wait_until(
        WAIT_TIMEOUT,
        "the key is expired by the background cycle",
        || info_u64(&mut con, "expired_keys") >= 1,
    );
    let text: String = q(&mut con, &["INFO", "everything"]);
    for l in text.lines() {
        if let Some((name, value)) = l.split_once(':') {
            let sane = value.parse::<u64>().map_or(true, |n| n < 1 << 62);
            assert!(sane, "{name}:{value}");
        }
    }
    assert!(info_u64(&mut con, "total_commands_processed") < 20_000);
}

#[test]
fn multi_queue_is_bounded_by_the_query_buffer_limit() {
    let s = Server::start();
    let mut con = s.conn();
    let _: () = q(
        &mut con,
        &["CONFIG", "SET", "client-query-buffer-limit", "1mb"],
    );
    let value = "v".repeat(400 * 1024);
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&["MULTI"]), Resp::ok());
    let queued = Resp::Simple("QUEUED".into());
    assert_eq!(raw.cmd(&["SET", "m1", &value]), queued);
    assert_eq!(raw.cmd(&["SET", "m2", &value]), queued);
    let e = raw.cmd(&["SET", "m3", &value]);
    assert_eq!(
        e,
        Resp::err(
            "ERR Transaction discarded: its queued commands exceed client-query-buffer-limit"
        )
    );
    assert_eq!(raw.cmd(&["PING"]), queued);
    assert_eq!(
        raw.cmd(&["EXEC"]),
        Resp::err("EXECABORT Transaction discarded because of previous errors.")
    );
    // Nothing ran, and the connection is usable for the next transaction.
    assert_eq!(raw.cmd(&["EXISTS", "m1", "m2", "m3"]), Resp::Int(0));
    assert_eq!(raw.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(raw.cmd(&["SET", "m1", &value]), queued);
    assert_eq!(raw.cmd(&["EXEC"]), Resp::Array(vec![Resp::ok()]));
}

#[test]
fn idle_clients_are_closed_after_timeout_but_not_while_in_wait() {
    let s = Server::start_with(&["--timeout", "1"]);
    assert_eq!(info_now(&s, "connected_clients"), "1");
    let mut con = s.conn();
    assert_eq!(
        q::<Vec<String>>(&mut con, &["CONFIG", "GET", "timeout"]),
        ["timeout", "1"]
    );
    drop(con);
    // A client blocked in WAIT longer than the timeout gets its answer.
    let mut waiting = s.raw();
    assert_eq!(waiting.cmd(&["WAIT", "1", "2500"]), Resp::Int(0));
    // Then, idle, it is closed (waited for by a blocking read with a deadline).
    waiting.assert_closed();
    let mut idle = s.raw();
    assert_eq!(idle.cmd(&["PING"]), Resp::Simple("PONG".into()));
    idle.assert_closed();
    assert!(info_now_u64(&s, "client_idle_timeout_disconnections") >= 2);
    // CONFIG SET timeout: Redis' range; 0 turns it off.
    let mut con = s.conn();
    let e = qerr(&mut con, &["CONFIG", "SET", "timeout", "-1"]);
    assert!(e.contains("argument must be between 0"), "{e}");
    let _: () = q(&mut con, &["CONFIG", "SET", "timeout", "0"]);
    assert_eq!(
        q::<Vec<String>>(&mut con, &["CONFIG", "GET", "timeout"]),
        ["timeout", "0"]
    );
}
