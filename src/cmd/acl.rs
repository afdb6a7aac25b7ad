//! Authentication and ACL commands: AUTH, ACL (the users and rules live in `crate::acl`),
//! and the gate every request passes ([`gate`]: NOAUTH, NOPERM, the ACL log).

use super::*;
use crate::acl::{self, Denied, Registry};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("auth", -2, FAST | NO_MULTI | STALE | LOADING, 0, 0, 0, auth),
        spec!("acl", -2, STALE | LOADING, 0, 0, 0, acl_cmd),
    ]
}

/// Commands a connection may send before it authenticated, and that no ACL rule refuses
/// (Redis' `no-auth` commands).
fn no_auth(spec: &Spec) -> bool {
    matches!(spec.name, "auth" | "hello" | "quit" | "reset")
}

/// Check a request against the connection's user: `None` lets it run. Called by the
/// connection only when the session is not `free` or the ACL changed since it looked.
pub fn gate(
    shared: &crate::shared::Shared,
    conn: &mut ConnState,
    spec: &Spec,
    args: &[&[u8]],
    now_ms: u64,
) -> Option<Outcome> {
    if conn.session.version != shared.acl.version() && !conn.session.refresh(&shared.acl) {
        // The user was deleted (ACL DELUSER, ACL LOAD): its connections end, as in Redis.
        return Some(Outcome::Close(err(
            "ERR the user of this connection was deleted",
        )));
    }
    if conn.session.free || no_auth(spec) {
        return None;
    }
    if !conn.session.authenticated {
        return Some(err(acl::ERR_NOAUTH).into());
    }
    let user = conn.session.user.clone()?;
    match acl::check(&user, spec, args) {
        Ok(()) => None,
        Err(denied) => {
            let (reason, object) = match &denied {
                Denied::Command(c) => ("command", c.clone()),
                Denied::Key(k) => ("key", String::from_utf8_lossy(k).to_string()),
                Denied::Channel(c) => ("channel", String::from_utf8_lossy(c).to_string()),
            };
            let context = if conn.multi.is_some() {
                "multi"
            } else {
                "toplevel"
            };
            let cmd = Registry::get().names[Registry::get().id_of(spec, args)].clone();
            shared.acl.log(
                reason,
                context,
                object,
                user.name.clone(),
                client_info(shared, conn, &cmd, now_ms),
                now_ms,
            );
            Some(err_owned(denied.reply_text(&user.name)).into())
        }
    }
}

/// The `client-info` of an ACL log entry: CLIENT INFO's line (clients parse every field).
fn client_info(shared: &crate::shared::Shared, conn: &ConnState, cmd: &str, now_ms: u64) -> String {
    format!(
        "id={} addr={} laddr={}:{} fd=0 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={} redir=-1 resp={}",
        conn.id,
        conn.addr,
        shared.config.bind,
        conn.local_port,
        String::from_utf8_lossy(conn.name.as_deref().unwrap_or(b"")),
        now_ms.saturating_sub(conn.created_ms) / 1000,
        conn.multi.as_ref().map_or(-1, |q| q.len() as i64),
        conn.session.user_name(),
        if conn.resp3 { 3 } else { 2 },
    )
}

/// Authenticate the connection as `user` (AUTH, HELLO … AUTH); a failure is logged
/// (reason `auth`, object `AUTH` or `HELLO`) and answers WRONGPASS.
pub(crate) fn login(ctx: &mut Ctx, user: &[u8], pass: &[u8], object: &str) -> Result<(), Reply> {
    let acl = &ctx.shared.acl;
    let version = acl.version();
    match acl.authenticate(user, pass) {
        Some(u) => {
            let name = u.name.clone();
            ctx.conn.session.login(u, version);
            if let Some(c) = ctx.shared.clients.lock().get_mut(&ctx.conn.id) {
                c.user = name;
            }
            Ok(())
        }
        None => {
            let username = String::from_utf8_lossy(user).to_string();
            let info = client_info(
                ctx.shared,
                ctx.conn,
                &object.to_ascii_lowercase(),
                ctx.now_ms,
            );
            acl.log(
                "auth",
                if ctx.conn.multi.is_some() {
                    "multi"
                } else {
                    "toplevel"
                },
                object.to_string(),
                username,
                info,
                ctx.now_ms,
            );
            Err(err(acl::ERR_WRONGPASS))
        }
    }
}

fn auth(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match a.len() {
        2 => {
            let d = ctx.shared.acl.default_user();
            if d.nopass {
                return err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
            }
            flat(login(ctx, b"default", a[1], "AUTH").map(|()| ok()))
        }
        3 => flat(login(ctx, a[1], a[2], "AUTH").map(|()| ok())),
        _ => syntax(),
    }
}

fn text(s: impl Into<String>) -> Reply {
    Reply::Bulk(Bytes::from(s.into()))
}

fn acl_cmd(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = String::from_utf8_lossy(a[1]).to_ascii_lowercase();
    let need = |n: usize, exact: bool| {
        if (exact && a.len() != n) || a.len() < n {
            Err(arity(&format!("acl|{sub}")))
        } else {
            Ok(())
        }
    };
    let acl = &ctx.shared.acl;
    let r: Result<Reply, Reply> = (|| match sub.as_str() {
        "setuser" => {
            need(3, false)?;
            let name = std::str::from_utf8(a[2])
                .ok()
                .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
                .ok_or_else(|| err("ERR Usernames can't contain spaces or null characters"))?;
            acl.setuser(name, &a[3..])
                .map_err(|e| err_owned(format!("ERR {e}")))?;
            Ok(ok())
        }
        "getuser" => {
            need(3, true)?;
            let Some(u) = std::str::from_utf8(a[2]).ok().and_then(|n| acl.user(n)) else {
                return Ok(Reply::Null);
            };
            let mut flags = vec![text(if u.enabled { "on" } else { "off" })];
            if u.nopass {
                flags.push(text("nopass"));
            }
            let channels = if u.all_channels {
                "&*".to_string()
            } else {
                u.channels
                    .iter()
                    .map(|c| format!("&{}", String::from_utf8_lossy(c)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            Ok(Reply::Map(vec![
                (text("flags"), Reply::Array(flags)),
                (
                    text("passwords"),
                    Reply::Array(u.passwords.iter().map(|p| text(acl::hex(p))).collect()),
                ),
                (text("commands"), text(u.commands_text())),
                (text("keys"), text(u.keys_text())),
                (text("channels"), text(channels)),
                (text("selectors"), Reply::Array(vec![])),
            ]))
        }
        "deluser" => {
            need(3, false)?;
            acl.deluser(&a[2..])
                .map(|n| Reply::Int(n as i64))
                .map_err(err)
        }
        "list" => {
            need(2, true)?;
            Ok(Reply::Array(
                acl.users()
                    .iter()
                    .map(|u| text(format!("user {} {}", u.name, u.describe())))
                    .collect(),
            ))
        }
        "users" => {
            need(2, true)?;
            Ok(Reply::Array(
                acl.users().iter().map(|u| text(u.name.clone())).collect(),
            ))
        }
        "whoami" => {
            need(2, true)?;
            Ok(text(ctx.conn.session.user_name().to_string()))
        }
        "cat" => match a.get(2) {
            None => Ok(Reply::Array(
                acl::CATEGORIES.iter().map(|c| text(*c)).collect(),
            )),
            Some(c) => {
                need(3, true)?;
                let name = String::from_utf8_lossy(c);
                let bit = acl::category_bit(&name)
                    .ok_or_else(|| err_owned(format!("ERR Unknown category '{name}'")))?;
                Ok(Reply::Array(
                    Registry::get()
                        .in_category(bit)
                        .into_iter()
                        .map(text)
                        .collect(),
                ))
            }
        },
        "log" => {
            let n = match a.get(2) {
                None => 10,
                Some(x) if x.eq_ignore_ascii_case(b"reset") => {
                    acl.log_reset();
                    return Ok(ok());
                }
                Some(x) => match crate::util::parse_int(x) {
                    Some(n) if n >= 0 => n as usize,
                    _ => return Err(not_int()),
                },
            };
            need(2, false)?;
            let now = ctx.now_ms;
            Ok(Reply::Array(
                acl.log_entries(n)
                    .into_iter()
                    .map(|e| {
                        Reply::Map(vec![
                            (text("count"), Reply::Int(e.count as i64)),
                            (text("reason"), text(e.reason)),
                            (text("context"), text(e.context)),
                            (text("object"), text(e.object)),
                            (text("username"), text(e.username)),
                            (
                                text("age-seconds"),
                                Reply::Double(now.saturating_sub(e.created_ms) as f64 / 1000.0),
                            ),
                            (text("client-info"), text(e.client_info)),
                            (text("entry-id"), Reply::Int(e.entry_id as i64)),
                            (text("timestamp-created"), Reply::Int(e.created_ms as i64)),
                            (
                                text("timestamp-last-updated"),
                                Reply::Int(e.updated_ms as i64),
                            ),
                        ])
                    })
                    .collect(),
            ))
        }
        "save" => {
            need(2, true)?;
            acl.save_file().map_err(|e| err_owned(format!("ERR {e}")))?;
            Ok(ok())
        }
        "load" => {
            need(2, true)?;
            acl.load_file().map_err(|e| err_owned(format!("ERR {e}")))?;
            Ok(ok())
        }
        "genpass" => {
            let bits = match a.get(2) {
                None => 256,
                Some(b) => match crate::util::parse_int(b) {
                    Some(n) if (1..=4096).contains(&n) => n as usize,
                    _ => return Err(err("ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096")),
                },
            };
            Ok(text(acl::genpass(bits)))
        }
        "dryrun" => {
            need(4, false)?;
            let name = String::from_utf8_lossy(a[2]).to_string();
            let u = acl
                .user(&name)
                .ok_or_else(|| err_owned(format!("ERR User '{name}' not found")))?;
            let spec = lookup(a[3]).ok_or_else(|| {
                err_owned(format!(
                    "ERR Command '{}' not found",
                    String::from_utf8_lossy(a[3])
                ))
            })?;
            let args = &a[3..];
            if !spec.arity_ok(args.len()) {
                return Err(arity(spec.name));
            }
            Ok(match acl::check(&u, spec, args) {
                Ok(()) => ok(),
                Err(d) => text(d.dryrun_text(&name)),
            })
        }
        "help" => Ok(Reply::Array(
            [
                "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CAT [<category>]",
                "DELUSER <username> [<username> ...]",
                "DRYRUN <username> <command> [<arg> ...]",
                "GETUSER <username>",
                "LIST",
                "USERS",
                "LOAD",
                "LOG [<count> | RESET]",
                "SAVE",
                "SETUSER <username> <attribute> [<attribute> ...]",
                "WHOAMI",
                "GENPASS [<bits>]",
                "HELP",
            ]
            .into_iter()
            .map(|l| Reply::Simple(Cow::Borrowed(l)))
            .collect(),
        )),
        _ => Err(err_owned(format!(
            "ERR unknown subcommand '{}'. Try ACL HELP.",
            String::from_utf8_lossy(a[1])
        ))),
    })();
    flat(r)
}
