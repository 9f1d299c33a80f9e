//! A Redis Cluster (`redis.cluster`): one connection that knows the slot
//! map, sends each command to the primary of its key's slot and follows
//! the cluster through failovers (`MOVED`, `CLUSTERDOWN`, a refreshed map).

use std::sync::Arc;

use redis::Cmd;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::OnceCell;

use super::{CALL_TIMEOUT, CONNECT_TIMEOUT, MAX_IN_FLIGHT, StoreError};

/// Attempts a command gets on a redirection or a cluster in failover before
/// it fails; the call's own bound ([`super::bounded`]) stops it sooner.
const RETRIES: u32 = 3;

/// Shared by every clone of a handle (and small to clone).
#[derive(Clone)]
pub(super) struct Cluster(Arc<Inner>);

struct Inner {
    client: ClusterClient,
    /// Set once connecting succeeded (it is tried again on the next call
    /// until then, so a gateway starts while the cluster is down).
    conn: OnceCell<ClusterConnection>,
}

impl Cluster {
    pub(super) fn new(nodes: &[&str]) -> Result<Cluster, StoreError> {
        let client = ClusterClient::builder(nodes.iter().copied())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CALL_TIMEOUT)
            .retries(RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .connection_concurrency_limit(MAX_IN_FLIGHT)
            .build()
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        Ok(Cluster(Arc::new(Inner {
            client,
            conn: OnceCell::new(),
        })))
    }

    pub(super) async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let config = ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT);
        self.0
            .conn
            .get_or_try_init(|| self.0.client.get_async_connection_with_config(config))
            .await
            .cloned()
    }
}

/// `WAIT replicas timeout_ms` on the primary holding `key`: the connection
/// the write went over, so the answer counts the replicas that have it.
pub(super) async fn wait(
    conn: &mut ClusterConnection,
    key: &str,
    replicas: u64,
    timeout_ms: u64,
) -> redis::RedisResult<i64> {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(timeout_ms);
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        key,
        SlotAddr::Master,
    )));
    let v = conn.route_command(cmd, route).await?;
    Ok(redis::from_redis_value(v)?)
}

/// Every key matching `pattern`, from every primary that holds slots: a
/// cluster's `SCAN` sees one node only.
pub(super) async fn scan(
    conn: &mut ClusterConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let nodes = conn
        .route_command(redis::cmd("CLUSTER").arg("NODES").clone(), any)
        .await?;
    let nodes: String = redis::from_redis_value(nodes)?;
    let mut keys = Vec::new();
    for (host, port) in primaries(&nodes) {
        let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let mut cursor = 0u64;
        loop {
            let mut cmd: Cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let v = conn.route_command(cmd, at.clone()).await?;
            let (next, found): (u64, Vec<String>) = redis::from_redis_value(v)?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(keys)
}

/// The primaries that hold slots, from `CLUSTER NODES`: a line per node,
/// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch>
/// <link> <slot>…`. A failed primary whose slots went to its replica holds
/// none and is left out; one not yet replaced is kept, so a scan that cannot
/// reach it fails rather than leaving its keys out.
fn primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.split(',').any(|x| x == "master") || f.len() < 9 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_the_masters_holding_slots() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002,host-c master,fail - 0 1 3 disconnected
d4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
e5 127.0.0.1:7004@17004 master - 0 1 7 connected 10923-16383
";
        assert_eq!(
            primaries(nodes),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7004)
            ]
        );
    }
}
