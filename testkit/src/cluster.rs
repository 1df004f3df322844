//! A real Redis Cluster on loopback ports, made of [`RedisServer`]s and
//! joined by `redis-cli --cluster create`: plain, durable, TLS, or with
//! replicas ([`crate::replicas`]); slots moved by [`crate::resharding`].

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::procs::{RedisServer, START_TIMEOUT};

/// A real Redis Cluster on loopback ports: three masters, no replicas
/// ([`RedisCluster::start_replicated`]: one replica each).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with(0, |_| Vec::new())
    }

    /// A cluster whose nodes keep every acknowledged write across a crash
    /// ([`RedisServer::durable_args`], a directory per node under `dir`),
    /// so a node can be restarted ([`RedisServer::restarted`]) with its
    /// data and its cluster configuration.
    pub fn start_durable(dir: &Path) -> RedisCluster {
        Self::start_with(0, |port| {
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node directory");
            RedisServer::durable_args(&node_dir)
        })
    }

    /// A cluster whose nodes also serve TLS with `certs`' server certificate
    /// (requiring client certificates from its CA) and talk TLS among
    /// themselves; `redis-cli` still reaches them on their plain ports.
    /// Returns the cluster and its `rediss+cluster://` URL.
    pub fn start_tls(certs: &crate::TestCerts) -> (RedisCluster, String) {
        // Node port → its TLS port (a node retried on fresh ports gets new ones).
        let tls_ports = std::sync::Mutex::new(HashMap::new());
        let path = |p: &Path| p.to_string_lossy().to_string();
        let cluster = Self::start_with(0, |port| {
            let tls_port = free_port();
            tls_ports.lock().unwrap().insert(port, tls_port);
            [
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cert-file",
                &path(&certs.server_cert),
                "--tls-key-file",
                &path(&certs.server_key),
                "--tls-client-cert-file",
                &path(&certs.client_cert),
                "--tls-client-key-file",
                &path(&certs.client_key),
                "--tls-ca-cert-file",
                &path(&certs.ca),
                "--tls-auth-clients",
                "yes",
                "--tls-cluster",
                "yes",
            ]
            .map(String::from)
            .to_vec()
        });
        let tls_ports = tls_ports.into_inner().unwrap();
        let seeds: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", tls_ports[&n.port])).collect();
        (cluster, format!("rediss+cluster://{}", seeds.join(",")))
    }

    /// Three masters with `replicas` replicas each, every node started with
    /// the arguments `extra` gives for its port.
    pub(crate) fn start_with(replicas: usize, extra: impl Fn(u16) -> Vec<String>) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                // Fresh ports (and TLS ports from `extra`) on every try: a
                // port chosen here may be taken by another test before binding.
                (0..5)
                    .find_map(|_| {
                        let port = free_port();
                        let conf =
                            std::env::temp_dir().join(format!("tally-test-cluster-{port}-{}.conf", std::process::id()));
                        let conf_arg = conf.to_string_lossy().to_string();
                        let mut args: Vec<String> =
                            ["--cluster-enabled", "yes", "--cluster-config-file", &conf_arg].map(String::from).to_vec();
                        args.extend(extra(port));
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let mut node = RedisServer::try_start_on(port, &args)?;
                        node.remove_when_gone(conf);
                        Some(node)
                    })
                    .expect("a cluster node found its ports taken five times in a row")
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("All 16384 slots covered"), "cluster create failed:\n{text}");
        // `--cluster create` returns once the nodes agree on the configuration;
        // each node flips cluster_state to ok shortly after. There is no event
        // to wait on for that, so poll it (bounded).
        let deadline = Instant::now() + START_TIMEOUT;
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not reach state ok");
                thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// One cluster for the whole test binary (keys are unique per test).
    pub fn shared() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(RedisCluster::start)
    }
}
