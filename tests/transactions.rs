//! MULTI/EXEC/DISCARD/WATCH/UNWATCH: queued execution, EXECABORT after a queuing error,
//! runtime errors inside EXEC, optimistic concurrency (a WATCHed key changed by anyone →
//! EXEC answers nil), and the CAS loop of a real client library under contention.

mod common;

use common::*;
use redis::Commands;

#[test]
fn multi_exec_queues_then_runs_in_order() {
    let s = Server::start();
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(raw.cmd(&["SET", "a", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(raw.cmd(&["INCR", "a"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        raw.cmd(&["SADD", "s", "x", "y"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(raw.cmd(&["GET", "a"]), Resp::Simple("QUEUED".into()));
    // Nothing ran yet: another connection sees no key.
    let mut other = s.conn();
    assert_eq!(q::<i64>(&mut other, &["EXISTS", "a", "s"]), 0);
    assert_eq!(
        raw.cmd(&["EXEC"]),
        Resp::Array(vec![
            Resp::ok(),
            Resp::Int(2),
            Resp::Int(2),
            Resp::bulk("2")
        ])
    );
    assert_eq!(q::<i64>(&mut other, &["EXISTS", "a", "s"]), 2);
    // An empty transaction is an empty array.
    assert_eq!(raw.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(raw.cmd(&["EXEC"]), Resp::Array(vec![]));

    // The redis crate's atomic pipeline wraps MULTI/EXEC.
    let mut c = s.conn();
    let (v1, v2): (i64, String) = redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg("a")
        .arg(10)
        .cmd("SET")
        .arg("b")
        .arg("x")
        .ignore()
        .cmd("GET")
        .arg("b")
        .query(&mut c)
        .unwrap();
    assert_eq!((v1, v2.as_str()), (12, "x"));
}

#[test]
fn discard_drops_the_queue() {
    let s = Server::start();
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&["MULTI"]), Resp::ok());
    raw.cmd(&["SET", "a", "1"]);
    assert_eq!(raw.cmd(&["DISCARD"]), Resp::ok());
    assert_eq!(raw.cmd(&["EXISTS", "a"]), Resp::Int(0));
    assert_eq!(raw.cmd(&["EXEC"]), Resp::err("ERR EXEC without MULTI"));
    assert_eq!(
        raw.cmd(&["DISCARD"]),
        Resp::err("ERR DISCARD without MULTI")
    );
    assert_eq!(raw.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(
        raw.cmd(&["MULTI"]),
        Resp::err("ERR MULTI calls can not be nested")
    );
    assert_eq!(raw.cmd(&["DISCARD"]), Resp::ok());
    // After DISCARD, commands run immediately again.
    assert_eq!(raw.cmd(&["SET", "a", "2"]), Resp::ok());
    assert_eq!(raw.cmd(&["GET", "a"]), Resp::bulk("2"));
}

#[test]
fn queuing_error_aborts_exec() {
    let s = Server::start();
    let mut raw = s.raw();
    raw.cmd(&["MULTI"]);
    assert_eq!(raw.cmd(&["SET", "a", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        raw.cmd(&["NOSUCHCMD", "x"]),
        Resp::err("ERR unknown command 'NOSUCHCMD', with args beginning with: 'x' ")
    );
    assert_eq!(raw.cmd(&["SET", "b", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        raw.cmd(&["EXEC"]),
        Resp::err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(raw.cmd(&["EXISTS", "a", "b"]), Resp::Int(0), "nothing ran");

    // Wrong arity is a queuing error too.
    raw.cmd(&["MULTI"]);
    raw.cmd(&["SET", "a", "1"]);
    assert_eq!(
        raw.cmd(&["GET"]),
        Resp::err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        raw.cmd(&["EXEC"]),
        Resp::err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(raw.cmd(&["EXISTS", "a"]), Resp::Int(0));
    // The connection is out of MULTI afterwards.
    assert_eq!(raw.cmd(&["SET", "a", "1"]), Resp::ok());

    // Through the client library: the pipeline fails (the crate reports the queuing error
    // it saw first) and nothing ran.
    let mut c = s.conn();
    let r: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("c")
        .arg("1")
        .cmd("NOSUCHCMD")
        .query(&mut c);
    let e = r.expect_err("the transaction must fail");
    let text = err_text(&e);
    assert!(
        text.starts_with("EXECABORT") || text.starts_with("ERR unknown command 'NOSUCHCMD'"),
        "{text}"
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "c"]), 0);
}

#[test]
fn runtime_errors_do_not_roll_back() {
    let s = Server::start();
    let mut raw = s.raw();
    raw.cmd(&["MULTI"]);
    raw.cmd(&["SET", "a", "text"]);
    raw.cmd(&["INCR", "a"]);
    raw.cmd(&["SADD", "a", "m"]);
    raw.cmd(&["SET", "b", "1"]);
    assert_eq!(
        raw.cmd(&["EXEC"]),
        Resp::Array(vec![
            Resp::ok(),
            Resp::err("ERR value is not an integer or out of range"),
            Resp::err("WRONGTYPE Operation against a key holding the wrong kind of value"),
            Resp::ok(),
        ])
    );
    assert_eq!(raw.cmd(&["GET", "a"]), Resp::bulk("text"));
    assert_eq!(raw.cmd(&["GET", "b"]), Resp::bulk("1"));
}

#[test]
fn watch_conflict_from_another_connection_aborts() {
    let s = Server::start();
    let mut a = s.raw();
    let mut b = s.conn();
    q::<()>(&mut b, &["SET", "k", "1"]);
    assert_eq!(a.cmd(&["WATCH", "k"]), Resp::ok());
    q::<()>(&mut b, &["SET", "k", "2"]);
    a.cmd(&["MULTI"]);
    a.cmd(&["SET", "k", "from-a"]);
    a.cmd(&["SET", "other", "from-a"]);
    assert_eq!(
        a.cmd(&["EXEC"]),
        Resp::NilArray,
        "EXEC after a conflicting write"
    );
    assert_eq!(q::<String>(&mut b, &["GET", "k"]), "2");
    assert_eq!(
        q::<i64>(&mut b, &["EXISTS", "other"]),
        0,
        "the whole transaction was dropped"
    );
    // EXEC forgets the watches: the next transaction goes through.
    a.cmd(&["MULTI"]);
    a.cmd(&["SET", "k", "from-a"]);
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![Resp::ok()]));

    // Every kind of change counts: DEL, INCR, SADD, EXPIRE, creation of a missing key, FLUSHALL.
    let changes: Vec<Vec<&str>> = vec![
        vec!["DEL", "k"],
        vec!["INCR", "n"],
        vec!["SADD", "s", "new"],
        vec!["EXPIRE", "k", "100"],
        vec!["SET", "created", "x"],
        vec!["HSET", "h", "f", "v"],
        vec!["FLUSHALL"],
    ];
    for change in changes {
        q::<()>(&mut b, &["SET", "k", "1"]);
        let key = match change[0] {
            "FLUSHALL" => "k",
            _ => change[1],
        };
        assert_eq!(a.cmd(&["WATCH", key]), Resp::ok());
        q::<redis::Value>(&mut b, &change);
        a.cmd(&["MULTI"]);
        a.cmd(&["PING"]);
        assert_eq!(a.cmd(&["EXEC"]), Resp::NilArray, "after {change:?}");
    }
}

#[test]
fn watch_untouched_key_executes() {
    let s = Server::start();
    let mut a = s.raw();
    let mut b = s.conn();
    q::<()>(&mut b, &["SET", "k", "1"]);
    assert_eq!(a.cmd(&["WATCH", "k", "missing"]), Resp::ok());
    // Writes to other keys and reads of the watched one do not conflict.
    q::<()>(&mut b, &["SET", "unrelated", "x"]);
    q::<String>(&mut b, &["GET", "k"]);
    a.cmd(&["MULTI"]);
    a.cmd(&["INCR", "k"]);
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![Resp::Int(2)]));

    // UNWATCH forgets: a later conflicting write no longer aborts.
    a.cmd(&["WATCH", "k"]);
    assert_eq!(a.cmd(&["UNWATCH"]), Resp::ok());
    q::<()>(&mut b, &["SET", "k", "10"]);
    a.cmd(&["MULTI"]);
    a.cmd(&["INCR", "k"]);
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![Resp::Int(11)]));

    // DISCARD forgets too.
    a.cmd(&["WATCH", "k"]);
    a.cmd(&["MULTI"]);
    a.cmd(&["DISCARD"]);
    q::<()>(&mut b, &["SET", "k", "20"]);
    a.cmd(&["MULTI"]);
    a.cmd(&["INCR", "k"]);
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![Resp::Int(21)]));
}

#[test]
fn watch_sees_own_writes_and_rules() {
    let s = Server::start();
    let mut a = s.raw();
    // A write by the watching connection itself also invalidates (Redis semantics).
    a.cmd(&["WATCH", "k"]);
    a.cmd(&["SET", "k", "mine"]);
    a.cmd(&["MULTI"]);
    a.cmd(&["GET", "k"]);
    assert_eq!(a.cmd(&["EXEC"]), Resp::NilArray);
    a.cmd(&["MULTI"]);
    assert_eq!(
        a.cmd(&["WATCH", "k"]),
        Resp::err("ERR WATCH inside MULTI is not allowed")
    );
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![]));
    assert_eq!(
        a.cmd(&["WATCH"]),
        Resp::err("ERR wrong number of arguments for 'watch' command")
    );
}

#[test]
fn cas_loop_under_contention_is_exact() {
    let s = Server::start();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let barrier = &barrier;
            let s = &s;
            scope.spawn(move || {
                let mut c = s.conn();
                barrier.wait();
                for _ in 0..PER_THREAD {
                    // Read-modify-write on a plain string with WATCH: retried on conflict.
                    let _: () = redis::transaction(&mut c, &["cas"], |con, pipe| {
                        let cur: Option<String> = con.get("cas")?;
                        let next = cur.map_or(0, |v| v.parse::<u64>().unwrap()) + 1;
                        pipe.set("cas", next.to_string()).ignore().query(con)
                    })
                    .unwrap();
                }
            });
        }
    });
    let mut c = s.conn();
    assert_eq!(q::<usize>(&mut c, &["GET", "cas"]), THREADS * PER_THREAD);
}
