//! MIGRATE against hostile targets: a fake target (a TCP listener in the test, on a port
//! the OS picks) answers garbage, an empty line, an endless line, an error, nothing, or
//! hangs up. Each time the node answers a clear error, keeps serving, and keeps the key.
//! MIGRATE is refused inside MULTI, and its timeout is capped.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

/// How a fake target treats MIGRATE's connection once it has read its first bytes.
#[derive(Clone, Copy)]
enum Target {
    Answer(&'static [u8]),
    /// A megabyte without a line end.
    Endless,
    /// Reads on and never answers.
    Silent,
    HangUp,
}

/// A one-connection fake target; the thread ends when the node closes its side.
fn fake_target(how: Target) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake target");
    let port = listener.local_addr().expect("its address").port();
    let t = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
        match how {
            Target::Answer(b) => {
                let _ = s.write_all(b);
            }
            Target::Endless => {
                let _ = s.write_all(&vec![b'x'; 1 << 20]);
            }
            Target::Silent => {}
            Target::HangUp => return,
        }
        // Drain until the node hangs up.
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    (port, t)
}

fn migrate_to(con: &mut redis::Connection, port: u16, timeout: &str) -> String {
    qerr(
        con,
        &["MIGRATE", "127.0.0.1", &port.to_string(), "k", "0", timeout],
    )
}

#[test]
fn a_hostile_target_gets_a_clear_error_and_the_key_stays() {
    let mut server = Server::start();
    let mut con = server.conn();
    let _: () = q(&mut con, &["SET", "k", "v"]);
    let cases: [(Target, &str); 6] = [
        (
            Target::Answer(b"\r\n"),
            "ERR Target instance sent an invalid reply",
        ),
        (
            Target::Answer(b"\n"),
            "ERR Target instance sent an invalid reply",
        ),
        (
            Target::Answer(b"garbage\r\n"),
            "ERR Target instance sent an invalid reply",
        ),
        (
            Target::Answer(b"-ERR nope\r\n"),
            "ERR Target instance replied with error: ERR nope",
        ),
        (
            Target::Endless,
            "ERR Target instance sent a reply line too long",
        ),
        (
            Target::HangUp,
            "IOERR error or timeout reading from target instance",
        ),
    ];
    for (how, expected) in cases {
        let (port, t) = fake_target(how);
        assert_eq!(migrate_to(&mut con, port, "5000"), expected);
        t.join().expect("the fake target");
        server.assert_alive();
        let v: String = q(&mut con, &["GET", "k"]);
        assert_eq!(v, "v");
    }
}

/// A silent target: the timeout ends the wait. A negative timeout is Redis' default (one
/// second) and a huge one is capped (10 s), so neither waits forever.
#[test]
fn a_silent_target_times_out_even_with_a_huge_or_negative_timeout() {
    let mut server = Server::start();
    let mut con = server.conn();
    let _: () = q(&mut con, &["SET", "k", "v"]);
    for timeout in ["200", "-5", "99999999999999"] {
        let (port, t) = fake_target(Target::Silent);
        assert_eq!(
            migrate_to(&mut con, port, timeout),
            "IOERR error or timeout reading from target instance",
            "timeout {timeout}"
        );
        t.join().expect("the fake target");
        server.assert_alive();
        let v: String = q(&mut con, &["GET", "k"]);
        assert_eq!(v, "v");
    }
    assert_eq!(
        qerr(&mut con, &["MIGRATE", "127.0.0.1", "1", "k", "0", "soon"]),
        "ERR value is not an integer or out of range"
    );
}

/// MIGRATE inside MULTI is refused when queued (it would hold every shard through the
/// transfer), and EXEC then aborts.
#[test]
fn migrate_is_refused_inside_multi() {
    let server = Server::start();
    let mut con = server.conn();
    let _: () = q(&mut con, &["SET", "k", "v"]);
    let _: () = q(&mut con, &["MULTI"]);
    assert_eq!(
        qerr(&mut con, &["MIGRATE", "127.0.0.1", "1", "k", "0", "100"]),
        "ERR Command not allowed inside a transaction"
    );
    assert!(qerr(&mut con, &["EXEC"]).starts_with("EXECABORT"));
    let v: String = q(&mut con, &["GET", "k"]);
    assert_eq!(v, "v");
}
