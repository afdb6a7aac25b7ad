//! The stock `redis-cli` (Debian package redis-tools) against meridian: plain and `--raw` /
//! `--no-raw` output, commands piped on stdin, `--pipe` mass insertion, `--scan`, RESP3 (`-3`).
//! Without redis-cli the tests print a notice and pass, unless the CI env var is set.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Run `redis-cli -p <port> <args>` with `stdin` fed in; returns stdout (asserting success).
fn cli(s: &Server, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &s.port.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redis-cli");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().expect("redis-cli output");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn redis_cli_runs_commands() {
    if !tool_available("redis-cli") {
        return;
    }
    let s = Server::start();
    assert_eq!(cli(&s, &["PING"], b""), "PONG\n");
    assert_eq!(cli(&s, &["SET", "greeting", "hello world"], b""), "OK\n");
    assert_eq!(cli(&s, &["GET", "greeting"], b""), "hello world\n");
    // Formatted (tty-style) and raw output of the same replies.
    assert_eq!(cli(&s, &["--no-raw", "INCR", "ctr"], b""), "(integer) 1\n");
    assert_eq!(cli(&s, &["--raw", "INCR", "ctr"], b""), "2\n");
    assert_eq!(
        cli(&s, &["--no-raw", "GET", "greeting"], b""),
        "\"hello world\"\n"
    );
    assert_eq!(cli(&s, &["--raw", "GET", "greeting"], b""), "hello world\n");
    assert_eq!(cli(&s, &["--no-raw", "GET", "missing"], b""), "(nil)\n");
    assert_eq!(
        cli(&s, &["--no-raw", "SMEMBERS", "missing"], b""),
        "(empty array)\n"
    );
    cli(&s, &["SADD", "set", "b", "a"], b"");
    let mut members: Vec<String> = cli(&s, &["--raw", "SMEMBERS", "set"], b"")
        .lines()
        .map(String::from)
        .collect();
    members.sort();
    assert_eq!(members, ["a", "b"]);
    // Errors are printed as the server sent them.
    assert_eq!(
        cli(&s, &["GET"], b"").trim_end(),
        "ERR wrong number of arguments for 'get' command"
    );
    // -r repeats a command.
    assert_eq!(cli(&s, &["-r", "3", "INCR", "rep"], b""), "1\n2\n3\n");
}

#[test]
fn redis_cli_reads_commands_from_stdin() {
    if !tool_available("redis-cli") {
        return;
    }
    let s = Server::start();
    let out = cli(
        &s,
        &[],
        b"SET a 1\nINCR a\nGET a\nHSET h f \"two words\"\nHGET h f\nDEL a\nEXISTS a\n",
    );
    assert_eq!(out, "OK\n2\n2\n1\ntwo words\n1\n0\n");
}

#[test]
fn redis_cli_pipe_mass_insert_and_scan() {
    if !tool_available("redis-cli") {
        return;
    }
    let s = Server::start();
    let mut proto = Vec::new();
    for i in 0..2000 {
        proto.extend(encode_cmd(&["SET", &format!("user:{i}"), &format!("v{i}")]));
    }
    for i in 0..100 {
        proto.extend(encode_cmd(&["SADD", &format!("group:{i}"), "m"]));
    }
    let out = cli(&s, &["--pipe"], &proto);
    assert!(out.contains("errors: 0, replies: 2100"), "{out}");
    let mut c = s.conn();
    assert_eq!(q::<usize>(&mut c, &["DBSIZE"]), 2100);
    assert_eq!(q::<String>(&mut c, &["GET", "user:1999"]), "v1999");
    // --scan iterates SCAN to the end: every matching key exactly once.
    let scanned = cli(&s, &["--scan", "--pattern", "group:*"], b"");
    let mut keys: Vec<&str> = scanned.lines().collect();
    keys.sort_unstable();
    let mut want: Vec<String> = (0..100).map(|i| format!("group:{i}")).collect();
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(cli(&s, &["--scan"], b"").lines().count(), 2100);
}

#[test]
fn redis_cli_speaks_resp3() {
    if !tool_available("redis-cli") {
        return;
    }
    let s = Server::start();
    cli(&s, &["HSET", "h", "f", "v"], b"");
    // -3 makes redis-cli send HELLO 3 and print RESP3 types.
    assert_eq!(
        cli(&s, &["-3", "--no-raw", "HGETALL", "h"], b""),
        "1# \"f\" => \"v\"\n"
    );
    assert_eq!(
        cli(&s, &["-3", "--no-raw", "GET", "missing"], b""),
        "(nil)\n"
    );
}
