//! Authentication and ACLs with real clients (the `redis` crate, raw RESP, redis-py):
//! requirepass and AUTH, HELLO AUTH, NOAUTH before AUTH, NOPERM for a command and for a key
//! pattern, %R~/%W~, the ACL log, the aclfile saved and loaded, CONFIG SET requirepass,
//! protected mode, Redis' pre-auth request bounds, a replica authenticating to a primary
//! with masteruser/masterauth, MIGRATE's AUTH to a protected target, and the internal
//! commands (MERIDIAN MERGE/SYNC) refused to an ordinary user. Error texts are Redis 7.2's.

mod common;

use common::*;
use std::path::PathBuf;

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn conn_as(port: u16, user: &str, pass: &str) -> redis::Connection {
    let url = format!("redis://{user}:{pass}@127.0.0.1:{port}/");
    let con = redis::Client::open(url)
        .expect("client url")
        .get_connection()
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    con.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    con
}

fn admin(s: &Server) -> redis::Connection {
    conn_as(s.port, "default", "sekret")
}

fn err_of(r: Resp) -> String {
    match r {
        Resp::Error(e) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn temp_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("meridian-acl-{}-{n}-{name}", std::process::id()))
}

#[test]
fn requirepass_auth_noauth_wrongpass_and_hello_auth() {
    let s = Server::start_with(&["--requirepass", "sekret"]);
    let mut raw = s.raw();
    // Unknown commands and arity come first, as in Redis; then NOAUTH.
    assert!(err_of(raw.cmd(&["NOSUCH"])).starts_with("ERR unknown command"));
    assert_eq!(err_of(raw.cmd(&["GET", "k"])), NOAUTH);
    assert_eq!(err_of(raw.cmd(&["AUTH", "wrong"])), WRONGPASS);
    assert_eq!(err_of(raw.cmd(&["AUTH", "nobody", "sekret"])), WRONGPASS);
    assert_eq!(err_of(raw.cmd(&["HELLO", "3"])), "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    assert_eq!(raw.cmd(&["AUTH", "sekret"]), Resp::ok());
    assert_eq!(raw.cmd(&["SET", "k", "v"]), Resp::ok());
    // HELLO … AUTH … SETNAME on a fresh connection.
    let mut raw = s.raw();
    assert_eq!(
        err_of(raw.cmd(&["HELLO", "3", "AUTH", "default", "bad"])),
        WRONGPASS
    );
    let hello = raw.cmd(&["HELLO", "3", "AUTH", "default", "sekret", "SETNAME", "n1"]);
    assert!(!hello.is_error(), "{hello:?}");
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), Resp::bulk("n1"));
    assert_eq!(raw.cmd(&["ACL", "WHOAMI"]), Resp::bulk("default"));
    // RESET goes back to the default user, unauthenticated while it has a password.
    assert_eq!(raw.cmd(&["RESET"]), Resp::Simple("RESET".into()));
    assert_eq!(err_of(raw.cmd(&["GET", "k"])), NOAUTH);
    // The redis crate with the password in the URL.
    let mut con = conn_as(s.port, "default", "sekret");
    assert_eq!(q::<String>(&mut con, &["GET", "k"]), "v");
    let mut anon = s.conn();
    assert_eq!(qerr(&mut anon, &["GET", "k"]), NOAUTH);
}

#[test]
fn acl_users_command_and_key_permissions_and_the_log() {
    let s = Server::start_with(&["--requirepass", "sekret"]);
    let mut a = admin(&s);
    let _: () = q(
        &mut a,
        &[
            "ACL",
            "SETUSER",
            "alice",
            "on",
            ">pw",
            "~cache:*",
            "%R~ro:*",
            "%W~wo:*",
            "+@read",
            "+set",
            "+acl|whoami",
        ],
    );
    let list: Vec<String> = q(&mut a, &["ACL", "LIST"]);
    assert!(
        list.iter().any(|l| l.starts_with("user alice on #")
            && l.ends_with("~cache:* %R~ro:* %W~wo:* resetchannels -@all +@read +set +acl|whoami")),
        "{list:?}"
    );
    assert_eq!(
        qerr(&mut a, &["ACL", "SETUSER", "bob", "+nosuch"]),
        "ERR Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL"
    );
    let mut al = conn_as(s.port, "alice", "pw");
    assert_eq!(q::<String>(&mut al, &["ACL", "WHOAMI"]), "alice");
    let _: () = q(&mut al, &["SET", "cache:1", "v"]);
    assert_eq!(q::<String>(&mut al, &["GET", "cache:1"]), "v");
    // A command outside the user's rules.
    assert_eq!(
        qerr(&mut al, &["DEL", "cache:1"]),
        "NOPERM User alice has no permissions to run the 'del' command"
    );
    // A key outside its patterns; read-only and write-only patterns.
    assert_eq!(
        qerr(&mut al, &["GET", "other"]),
        "NOPERM No permissions to access a key"
    );
    let _: Option<String> = q(&mut al, &["GET", "ro:1"]);
    assert_eq!(
        qerr(&mut al, &["SET", "ro:1", "x"]),
        "NOPERM No permissions to access a key"
    );
    let _: () = q(&mut al, &["SET", "wo:1", "x"]);
    assert_eq!(
        qerr(&mut al, &["GET", "wo:1"]),
        "NOPERM No permissions to access a key"
    );
    // The log, newest first, with Redis' fields.
    let log: Vec<redis::Value> = q(&mut a, &["ACL", "LOG"]);
    let text = format!("{log:?}");
    let newest = format!("{:?}", log.first().expect("log entries"));
    assert!(
        newest.contains("\"key\"") && newest.contains("\"wo:1\"") && newest.contains("\"alice\""),
        "{newest}"
    );
    assert!(
        text.contains("\"del\"") && text.contains("\"command\""),
        "{text}"
    );
    for field in [
        "count",
        "reason",
        "context",
        "object",
        "username",
        "age-seconds",
        "client-info",
        "entry-id",
    ] {
        assert!(
            newest.contains(&format!("\"{field}\"")),
            "{field} missing: {newest}"
        );
    }
    // A failed AUTH is logged too.
    assert_eq!(err_of(s.raw().cmd(&["AUTH", "alice", "nope"])), WRONGPASS);
    let log: Vec<redis::Value> = q(&mut a, &["ACL", "LOG", "1"]);
    let newest = format!("{log:?}");
    assert!(
        newest.contains("\"auth\"") && newest.contains("\"AUTH\""),
        "{newest}"
    );
    let _: () = q(&mut a, &["ACL", "LOG", "RESET"]);
    assert!(q::<Vec<redis::Value>>(&mut a, &["ACL", "LOG"]).is_empty());
    // DRYRUN names the key.
    assert_eq!(
        q::<String>(&mut a, &["ACL", "DRYRUN", "alice", "GET", "other"]),
        "User alice has no permissions to access the 'other' key"
    );
    assert_eq!(
        q::<String>(&mut a, &["ACL", "DRYRUN", "alice", "GET", "cache:x"]),
        "OK"
    );
    // Rules change under a live connection; deleting the user closes its connections.
    let _: () = q(&mut a, &["ACL", "SETUSER", "alice", "+del"]);
    let _: i64 = q(&mut al, &["DEL", "cache:1"]);
    assert_eq!(q::<i64>(&mut a, &["ACL", "DELUSER", "alice"]), 1);
    assert!(cmd(&["GET", "cache:1"])
        .query::<redis::Value>(&mut al)
        .is_err());
    assert_eq!(
        qerr(&mut a, &["ACL", "DELUSER", "default"]),
        "ERR The 'default' user cannot be removed"
    );
    let cats: Vec<String> = q(&mut a, &["ACL", "CAT"]);
    assert!(cats.contains(&"dangerous".to_string()) && cats.contains(&"admin".to_string()));
    let admin_cmds: Vec<String> = q(&mut a, &["ACL", "CAT", "admin"]);
    for c in [
        "meridian|merge",
        "meridian|sync",
        "config|set",
        "replicaof",
        "acl|setuser",
    ] {
        assert!(admin_cmds.contains(&c.to_string()), "{c} not in @admin");
    }
    assert_eq!(q::<String>(&mut a, &["ACL", "GENPASS", "32"]).len(), 8);
}

#[test]
fn an_ordinary_user_cannot_inject_crdt_state_or_read_the_replication_stream() {
    let s = Server::start();
    let mut a = s.conn();
    let _: () = q(
        &mut a,
        &[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">pw",
            "allkeys",
            "+@all",
            "-@dangerous",
        ],
    );
    let mut app = conn_as(s.port, "app", "pw");
    let _: () = q(&mut app, &["SET", "k", "v"]);
    for (args, what) in [
        (&["MERIDIAN", "MERGE", "k", "x"][..], "meridian|merge"),
        (&["MERIDIAN", "SYNC", "?", "0", "1"][..], "meridian|sync"),
        (&["MERIDIAN", "LINK", "DOWN", "b"][..], "meridian|link"),
        (&["FLUSHALL"][..], "flushall"),
        (&["REPLICAOF", "127.0.0.1", "1"][..], "replicaof"),
        (&["CONFIG", "SET", "maxmemory", "1"][..], "config|set"),
        (&["ACL", "SETUSER", "app", "+@all"][..], "acl|setuser"),
        (
            &["MIGRATE", "127.0.0.1", "1", "k", "0", "10"][..],
            "migrate",
        ),
    ] {
        assert_eq!(
            qerr(&mut app, args),
            format!("NOPERM User app has no permissions to run the '{what}' command")
        );
    }
    assert_eq!(q::<String>(&mut app, &["GET", "k"]), "v");
    assert_eq!(q::<String>(&mut app, &["ACL", "WHOAMI"]), "app");
    // Nothing was merged, nothing changed hands.
    assert_eq!(q::<i64>(&mut a, &["DBSIZE"]), 1);
}

#[test]
fn pre_auth_requests_are_bounded_as_in_redis() {
    let s = Server::start_with(&["--requirepass", "sekret"]);
    let mut raw = s.raw();
    raw.send(b"*11\r\n");
    assert_eq!(
        err_of(raw.read()),
        "ERR Protocol error: unauthenticated multibulk length"
    );
    raw.assert_closed();
    let mut raw = s.raw();
    raw.send(b"*1\r\n$16385\r\n");
    assert_eq!(
        err_of(raw.read()),
        "ERR Protocol error: unauthenticated bulk length"
    );
    raw.assert_closed();
    // Ten arguments of 16 KB are fine before AUTH, and AUTH lifts the bounds for the very
    // next request of the same pipeline.
    let mut raw = s.raw();
    let big = "x".repeat(16 * 1024);
    let mut pipeline = encode_cmd(&["ECHO", big.as_str()]);
    pipeline.extend(encode_cmd(&["AUTH", "sekret"]));
    let args: Vec<String> = std::iter::once("MSET".to_string())
        .chain((0..20).map(|i| format!("k{i}")))
        .collect();
    pipeline.extend(encode_cmd(&args));
    pipeline.extend(encode_cmd(&["SET", "big", &"y".repeat(100_000)]));
    raw.send(&pipeline);
    assert_eq!(err_of(raw.read()), NOAUTH);
    assert_eq!(raw.read(), Resp::ok());
    assert_eq!(raw.read(), Resp::ok());
    assert_eq!(raw.read(), Resp::ok());
    let mut a = admin(&s);
    assert_eq!(q::<String>(&mut a, &["STRLEN", "big"]), "100000");
}

#[test]
fn config_set_requirepass_at_run_time() {
    let s = Server::start();
    let mut before = s.conn();
    let _: () = q(&mut before, &["CONFIG", "SET", "requirepass", "sekret"]);
    // Connections authenticated before keep working (as in Redis); new ones need AUTH.
    let _: () = q(&mut before, &["SET", "k", "v"]);
    assert_eq!(qerr(&mut s.conn(), &["GET", "k"]), NOAUTH);
    assert_eq!(q::<String>(&mut admin(&s), &["GET", "k"]), "v");
    let got: Vec<String> = q(&mut before, &["CONFIG", "GET", "requirepass"]);
    assert_eq!(got, ["requirepass", "sekret"]);
    let _: () = q(&mut before, &["CONFIG", "SET", "requirepass", ""]);
    assert_eq!(q::<String>(&mut s.conn(), &["GET", "k"]), "v");
}

#[test]
fn aclfile_save_and_load_round_trip() {
    let path = temp_path("users.acl");
    std::fs::write(
        &path,
        "user default on >sekret ~* &* +@all\nuser alice on >pw ~a:* +@read\n",
    )
    .expect("write aclfile");
    let path_text = path.to_str().expect("utf-8 path").to_string();
    {
        let s = Server::start_with(&["--aclfile", &path_text]);
        assert_eq!(qerr(&mut s.conn(), &["GET", "x"]), NOAUTH);
        let mut a = admin(&s);
        let users: Vec<String> = q(&mut a, &["ACL", "USERS"]);
        assert_eq!(users, ["alice", "default"]);
        let _: () = q(
            &mut a,
            &["ACL", "SETUSER", "bob", "on", ">bpw", "%R~b:*", "+get"],
        );
        let _: () = q(&mut a, &["ACL", "SAVE"]);
        let text = std::fs::read_to_string(&path).expect("read aclfile");
        assert!(
            text.contains("user bob on #") && text.contains("%R~b:* resetchannels -@all +get"),
            "{text}"
        );
        // An edit of the file, then ACL LOAD: carol in, alice and bob out.
        std::fs::write(
            &path,
            format!("{text}user carol on >cpw ~* +@all\n")
                .lines()
                .filter(|l| !l.starts_with("user alice") && !l.starts_with("user bob"))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .expect("edit aclfile");
        let _: () = q(&mut a, &["ACL", "LOAD"]);
        let users: Vec<String> = q(&mut a, &["ACL", "USERS"]);
        assert_eq!(users, ["carol", "default"]);
        let _: () = q(&mut conn_as(s.port, "carol", "cpw"), &["SET", "c", "1"]);
        // A broken file is refused whole.
        std::fs::write(&path, "user carol on +nosuch\n").expect("write");
        assert!(qerr(&mut a, &["ACL", "LOAD"]).contains("Unknown command or category name"));
        assert_eq!(
            q::<Vec<String>>(&mut a, &["ACL", "USERS"]),
            ["carol", "default"]
        );
        let _: () = q(&mut a, &["ACL", "SAVE"]);
    }
    // A restart loads what was saved.
    let s = Server::start_with(&["--aclfile", &path_text]);
    let mut carol = conn_as(s.port, "carol", "cpw");
    assert_eq!(q::<String>(&mut carol, &["ACL", "WHOAMI"]), "carol");
    let _ = std::fs::remove_file(&path);
}

/// A non-loopback address of this host (the one the default route leaves by), if any.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.255.255.1:9"))
        .ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn protected_mode_refuses_other_hosts_while_the_default_user_has_no_password() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("NOTICE: no non-loopback address on this host; skipping");
        return;
    };
    let s = Server::start_with(&["--bind", "0.0.0.0"]);
    let connect = || {
        let stream = std::net::TcpStream::connect((ip, s.port)).expect("connect");
        Raw::from_stream(stream)
    };
    let mut outside = connect();
    outside.send(&encode_cmd(&["PING"]));
    let denied = err_of(outside.read());
    assert!(
        denied.starts_with("DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user."),
        "{denied}"
    );
    outside.assert_closed();
    // Loopback clients are served; with a password set, other hosts are too (after AUTH).
    let mut local = s.conn();
    let _: () = q(&mut local, &["CONFIG", "SET", "requirepass", "sekret"]);
    let mut outside = connect();
    assert_eq!(err_of(outside.cmd(&["GET", "k"])), NOAUTH);
    assert_eq!(outside.cmd(&["AUTH", "sekret"]), Resp::ok());
    // protected-mode no: no refusal even without a password.
    let _: () = q(&mut local, &["CONFIG", "SET", "requirepass", ""]);
    let _: () = q(&mut local, &["CONFIG", "SET", "protected-mode", "no"]);
    assert_eq!(connect().cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn replica_authenticates_to_a_protected_primary_with_masteruser_and_masterauth() {
    let primary = Server::start_with(&["--requirepass", "sekret"]);
    let mut p = admin(&primary);
    // The replication identity may run the replica stream and nothing else.
    let _: () = q(
        &mut p,
        &[
            "ACL",
            "SETUSER",
            "replicator",
            "on",
            ">rpw",
            "nocommands",
            "+meridian|sync",
        ],
    );
    let _: () = q(&mut p, &["SET", "before", "1"]);
    let target = format!("127.0.0.1 {}", primary.port);
    let replica = Server::start_with(&[
        "--replicaof",
        &target,
        "--masteruser",
        "replicator",
        "--masterauth",
        "rpw",
    ]);
    let mut r = replica.conn();
    wait_until(WAIT_TIMEOUT, "the replica is in sync", || {
        info_field(&mut r, "master_link_status") == "up"
            && info_field(&mut r, "master_sync_in_progress") == "0"
    });
    let _: () = q(&mut p, &["SET", "after", "2"]);
    wait_until(WAIT_TIMEOUT, "the replica has both keys", || {
        q::<Option<String>>(&mut r, &["GET", "before"]).as_deref() == Some("1")
            && q::<Option<String>>(&mut r, &["GET", "after"]).as_deref() == Some("2")
    });
    // The identity cannot do anything else.
    let mut as_repl = s_raw_auth(&primary, "replicator", "rpw");
    assert_eq!(
        err_of(as_repl.cmd(&["GET", "before"])),
        "NOPERM User replicator has no permissions to run the 'get' command"
    );
}

fn s_raw_auth(s: &Server, user: &str, pass: &str) -> Raw {
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&["AUTH", user, pass]), Resp::ok());
    raw
}

#[test]
fn migrate_authenticates_to_a_protected_target() {
    let source = Server::start();
    let target = Server::start_with(&["--requirepass", "sekret"]);
    let mut src = source.conn();
    let _: () = q(&mut src, &["SET", "k1", "v1"]);
    let _: () = q(&mut src, &["SET", "k2", "v2"]);
    let port = target.port.to_string();
    assert_eq!(
        qerr(
            &mut src,
            &["MIGRATE", "127.0.0.1", &port, "k1", "0", "5000"]
        ),
        format!("ERR Target instance replied with error: {NOAUTH}")
    );
    assert_eq!(
        qerr(
            &mut src,
            &[
                "MIGRATE",
                "127.0.0.1",
                &port,
                "k1",
                "0",
                "5000",
                "AUTH",
                "bad"
            ]
        ),
        format!("ERR Target instance replied with error: {WRONGPASS}")
    );
    let _: () = q(
        &mut src,
        &[
            "MIGRATE",
            "127.0.0.1",
            &port,
            "k1",
            "0",
            "5000",
            "AUTH",
            "sekret",
        ],
    );
    let _: () = q(
        &mut src,
        &[
            "MIGRATE",
            "127.0.0.1",
            &port,
            "k2",
            "0",
            "5000",
            "AUTH2",
            "default",
            "sekret",
        ],
    );
    let mut t = admin(&target);
    assert_eq!(q::<String>(&mut t, &["GET", "k1"]), "v1");
    assert_eq!(q::<String>(&mut t, &["GET", "k2"]), "v2");
    assert_eq!(q::<i64>(&mut src, &["EXISTS", "k1", "k2"]), 0);
}

/// Can `python3` import redis-py? Under CI a missing module fails the test.
fn python_redis_available() -> bool {
    if !tool_available("python3") {
        return false;
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("the python module redis (redis-py) is required in CI (.ci/run installs it)");
        }
        eprintln!("NOTICE: python3 cannot import redis (pip install redis); skipping this test");
    }
    ok
}

#[test]
fn redis_py_authenticates_and_sees_acl_errors() {
    if !python_redis_available() {
        return;
    }
    let s = Server::start_with(&["--requirepass", "sekret"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/acl_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("127.0.0.1:{}", s.port))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK acl"),
        "redis-py ACL script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
