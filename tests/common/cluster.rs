//! A six-node region cluster on loopback (three primaries, three replicas: node i+3
//! replicates node i), formed from the nodes' configs alone like `examples/cluster-6`.

use super::{free_port, q, wait_until, Server};
use std::path::PathBuf;
use std::time::Duration;

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const PRIMARY_SLOTS: [&str; 3] = ["0-5460", "5461-10922", "10923-16383"];
/// Every test cluster authenticates its bus (`[cluster] bus-secret`).
pub const BUS_SECRET: &str = "test-region-bus-secret-0123456789";

pub struct Cluster {
    pub dir: PathBuf,
    pub ports: Vec<u16>,
    pub bus: Vec<u16>,
    pub node_timeout_ms: u64,
    /// Appended to every node's config (e.g. a `[kafka]` table).
    pub extra_toml: String,
    pub nodes: Vec<Option<Server>>,
}

impl Cluster {
    pub fn start(node_timeout_ms: u64) -> Cluster {
        Cluster::start_with(node_timeout_ms, "")
    }

    /// Six nodes whose configs end with `extra_toml`.
    pub fn start_with(node_timeout_ms: u64, extra_toml: &str) -> Cluster {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let bus: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let mut c = Cluster {
            dir,
            ports,
            bus,
            node_timeout_ms,
            extra_toml: extra_toml.to_string(),
            nodes: Vec::new(),
        };
        for i in 0..6 {
            let s = c.spawn(i);
            c.nodes.push(Some(s));
        }
        c
    }

    /// Six nodes, each at `cluster_state:ok`, with every replica attached.
    pub fn start_ready(node_timeout_ms: u64) -> Cluster {
        let cl = Cluster::start(node_timeout_ms);
        for i in 0..6 {
            cl.wait_ok(i);
        }
        cl.wait_replicas_attached();
        cl
    }

    pub fn config(&self, i: usize) -> String {
        let meet: Vec<String> = (0..6)
            .filter(|&j| j != i)
            .map(|j| format!("\"127.0.0.1:{}@{}\"", self.ports[j], self.bus[j]))
            .collect();
        let role = if i < 3 {
            format!("slots = \"{}\"", PRIMARY_SLOTS[i])
        } else {
            format!("replicate = \"127.0.0.1:{}\"", self.ports[i - 3])
        };
        format!(
            "bind = \"127.0.0.1\"\nport = {port}\n[cluster]\nbus-port = {bus}\nnode-timeout-ms = {t}\nnodes-file = \"{dir}/nodes-{{port}}.json\"\nbus-secret = \"{secret}\"\nmeet = [{meet}]\n{role}\n{extra}",
            port = self.ports[i],
            bus = self.bus[i],
            t = self.node_timeout_ms,
            dir = self.dir.display(),
            meet = meet.join(", "),
            secret = BUS_SECRET,
            extra = self.extra_toml,
        )
    }

    pub fn spawn(&self, i: usize) -> Server {
        // The client port is fixed by the config (the nodes' addresses are in each other's).
        Server::start_with_config(&self.config(i), &["--port", &self.ports[i].to_string()])
    }

    pub fn conn(&self, i: usize) -> redis::Connection {
        self.nodes[i].as_ref().expect("node running").conn()
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// Every node sees three replicas attached (the slot map clients read is complete).
    pub fn wait_replicas_attached(&self) {
        for i in 0..6 {
            let mut con = self.conn(i);
            wait_until(DEADLINE, "three replicas attached", || {
                let nodes: String = q(&mut con, &["CLUSTER", "NODES"]);
                // The flags field: `slave`, or `myself,slave` on the node's own line.
                nodes
                    .lines()
                    .filter(|l| {
                        l.split(' ')
                            .nth(2)
                            .is_some_and(|f| f.split(',').any(|f| f == "slave"))
                    })
                    .count()
                    == 3
            });
        }
    }

    pub fn wait_ok(&self, i: usize) {
        let mut con = self.conn(i);
        wait_until(DEADLINE, "cluster_state:ok", || {
            let info: String = q(&mut con, &["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A hash tag `prefix<n>` (use it as `{tag}`) whose slot node 0 serves (0-5460).
pub fn tag_on_node0(prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|t| super::key_slot(format!("{{{t}}}").as_bytes()) < 5461)
        .expect("a tag on node 0")
}
