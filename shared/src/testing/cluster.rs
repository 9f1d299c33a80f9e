//! A real Redis Cluster for tests: three primaries and a replica each,
//! `redis-server --cluster-enabled yes` on free loopback ports in a
//! directory of its own, joined by `redis-cli --cluster create`. Every wait
//! polls the nodes; every process is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::free_port;
use crate::config::{RedisConfig, RedisFailureMode, RedisTarget};
use crate::secret::Secret;

/// How long the cluster may take to form or to fail over.
const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

struct Node {
    port: u16,
    /// The cluster bus port (`--cluster-port`), kept across a restart.
    bus: u16,
    child: Option<Child>,
}

/// A node's line of `CLUSTER NODES`.
struct Line {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    /// The primary's id, for a replica.
    of: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts 6 nodes, creates the cluster (3 primaries, 1 replica each)
    /// and waits until every node says `cluster_state:ok` and every
    /// primary has its replica attached.
    pub fn start() -> RedisCluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let node = cluster.start_node();
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (./scripts/test installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ready();
        cluster
    }

    /// A node on free ports, answering PING. A port found free may be taken
    /// by another process before the server binds it (the server then
    /// exits): it starts again on other ports.
    fn start_node(&self) -> Node {
        for _ in 0..10 {
            let (port, bus) = (free_port(), free_port());
            let mut child = self.spawn(port, bus);
            let mut exited = false;
            wait_for(&format!("node {port} to answer"), || {
                exited = child.try_wait().ok().flatten().is_some();
                exited || query(port, &["PING"]).is_some()
            });
            if !exited {
                return Node {
                    port,
                    bus,
                    child: Some(child),
                };
            }
        }
        panic!("no redis-server node started on free ports");
    }

    fn spawn(&self, port: u16, bus: u16) -> Child {
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .args(["--cluster-node-timeout", "2000"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (./scripts/test installs it)")
    }

    /// The seed URLs, one per node, as `redis.cluster` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// A config naming every node, waiting for one replica per write.
    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            target: RedisTarget::Cluster(self.urls().into_iter().map(Secret::new).collect()),
            wait_replicas: 1,
            gateway_replicas: 1,
            usage_retention: Duration::from_secs(86_400),
            key_prefix: prefix.to_owned(),
            on_failure: RedisFailureMode::Local,
        }
    }

    /// The ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Runs one command on the node at `port`, answering its reply as text
    /// (`None` when the node does not answer).
    pub fn query(&self, port: u16, args: &[&str]) -> Option<redis::Value> {
        query(port, args)
    }

    /// The port of the primary holding `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot = match query(port, &["CLUSTER", "KEYSLOT", key]) {
            Some(redis::Value::Int(s)) => s as u16,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        };
        self.lines(port)
            .into_iter()
            .find(|l| {
                l.primary && !l.failed && l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|l| l.port)
            .expect("a primary holds every slot")
    }

    /// Kills the primary holding `key` (SIGKILL, as a crash would), promotes
    /// its replica with `CLUSTER FAILOVER TAKEOVER`, and waits until every
    /// live node says `cluster_state:ok` with the replica holding the slots.
    /// Answers the (killed, promoted) ports.
    pub fn fail_over(&mut self, key: &str) -> (u16, u16) {
        let old = self.primary_of(key);
        let lines = self.lines(old);
        let old_id = lines
            .iter()
            .find(|l| l.port == old)
            .map(|l| l.id.clone())
            .unwrap();
        let replica = lines
            .iter()
            .find(|l| l.of.as_deref() == Some(old_id.as_str()))
            .map(|l| l.port)
            .expect("every primary has a replica");
        self.kill(old);
        let answer = query(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert!(
            matches!(answer, Some(redis::Value::Okay)),
            "CLUSTER FAILOVER TAKEOVER answered {answer:?}"
        );
        wait_for("the replica to hold the slots", || {
            self.live_ports().iter().all(|p| {
                cluster_ok(*p)
                    && self
                        .lines(*p)
                        .iter()
                        .any(|l| l.port == replica && l.primary && !l.slots.is_empty())
            })
        });
        (old, replica)
    }

    /// Kills the node at `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut c) = n.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node at `port` again, empty (nothing is kept on disk but
    /// its cluster config): it rejoins as the replica of the primary that
    /// took its slots. Waits until that primary has it online.
    pub fn restart(&mut self, port: u16) {
        self.kill(port);
        let i = self.nodes.iter().position(|n| n.port == port).unwrap();
        let child = self.spawn(port, self.nodes[i].bus);
        self.nodes[i].child = Some(child);
        wait_for(&format!("node {port} to rejoin as a replica"), || {
            let lines = self.lines(port);
            let me = lines.iter().find(|l| l.port == port);
            let primary = me
                .and_then(|m| m.of.as_ref())
                .and_then(|id| lines.iter().find(|l| &l.id == id));
            cluster_ok(port) && primary.is_some_and(|p| replicas_online(p.port) >= 1)
        });
    }

    fn wait_ready(&self) {
        wait_for("the cluster to be ok", || {
            self.nodes.iter().all(|n| cluster_ok(n.port))
                && self.nodes.iter().all(|n| {
                    let lines = self.lines(n.port);
                    lines.len() == 6
                        && lines
                            .iter()
                            .filter(|l| l.primary)
                            .all(|p| lines.iter().any(|r| r.of.as_ref() == Some(&p.id)))
                })
                && self
                    .lines(self.nodes[0].port)
                    .iter()
                    .filter(|l| l.primary)
                    .all(|p| replicas_online(p.port) >= 1)
        });
    }

    fn lines(&self, port: u16) -> Vec<Line> {
        let text = match query(port, &["CLUSTER", "NODES"]) {
            Some(v) => redis::from_redis_value::<String>(v).unwrap_or_default(),
            None => return Vec::new(),
        };
        text.lines().filter_map(parse_line).collect()
    }
}

fn parse_line(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let addr = f.get(1)?.split(['@', ',']).next()?;
    let port = addr.rsplit_once(':')?.1.parse().ok()?;
    let flags: Vec<&str> = f.get(2)?.split(',').collect();
    let slots = f
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|x| (x, x)),
        })
        .collect();
    Some(Line {
        id: f[0].to_owned(),
        port,
        primary: flags.contains(&"master"),
        failed: flags.contains(&"fail"),
        of: (f.get(3)? != &"-").then(|| f[3].to_owned()),
        slots,
    })
}

fn cluster_ok(port: u16) -> bool {
    query(port, &["CLUSTER", "INFO"])
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .is_some_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
}

/// Replicas attached and streaming to the primary at `port`.
fn replicas_online(port: u16) -> usize {
    query(port, &["INFO", "replication"])
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .map_or(0, |info| {
            info.lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count()
        })
}

fn query(port: u16, args: &[&str]) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn).ok()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_WITHIN;
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
