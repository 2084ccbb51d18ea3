//! A Citus cluster on localhost: a coordinator and its workers, each a throwaway
//! PostgreSQL 15 cluster with Citus (`scripts/install-citus.sh`) and m3ret preloaded,
//! and one database in which both extensions exist on every node (docs/citus.md,
//! "Setting up a cluster", which this follows step by step).

use crate::cluster::{Cluster, Database};

/// Every node's `postgresql.conf` lines. Citus first, as it asks (it refuses to load
/// after a library that set planner or executor hooks; m3ret sets none, so the other
/// order starts too); m3ret starts each node's model server. Logical WAL: shard
/// moves copy by logical replication.
pub const NODE_SETTINGS: &[&str] = &[
    "shared_preload_libraries = 'citus,m3ret'",
    "wal_level = logical",
    "max_connections = 100",
    // Few shards keep the tests quick; every shard still gets its own index.
    "citus.shard_count = 4",
    "citus.shard_replication_factor = 1",
    // A test cluster is never idle long enough to need the pool's background connections.
    "citus.max_cached_conns_per_worker = 2",
];

/// A coordinator and `n` workers, all in one database `name`.
pub struct CitusCluster {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
    pub name: String,
}

impl CitusCluster {
    /// Starts the nodes, creates the database and Citus on each, registers the
    /// workers with the coordinator, then creates m3ret on the coordinator only:
    /// Citus creates it on the workers.
    pub fn start(workers: usize, name: &str) -> CitusCluster {
        Self::start_with(workers, name, &[])
    }

    /// As [`CitusCluster::start`], with extra settings on every node.
    pub fn start_with(workers: usize, name: &str, extra: &[&str]) -> CitusCluster {
        let settings: Vec<&str> = NODE_SETTINGS.iter().chain(extra).copied().collect();
        let coordinator = Cluster::start(&settings);
        let workers: Vec<Cluster> = (0..workers).map(|_| Cluster::start(&settings)).collect();
        for node in std::iter::once(&coordinator).chain(&workers) {
            node.empty_database(name)
                .connect()
                .batch_execute("CREATE EXTENSION citus")
                .expect("CREATE EXTENSION citus");
        }
        let cluster = CitusCluster {
            coordinator,
            workers,
            name: name.to_string(),
        };
        let mut c = cluster.connect();
        c.execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
            &[&i32::from(cluster.coordinator.port())],
        )
        .expect("citus_set_coordinator_host");
        for w in &cluster.workers {
            c.execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&i32::from(w.port())],
            )
            .expect("citus_add_node");
        }
        c.batch_execute("CREATE EXTENSION m3ret")
            .expect("CREATE EXTENSION m3ret on the coordinator");
        cluster
    }

    /// A connection to the coordinator's database.
    pub fn connect(&self) -> postgres::Client {
        self.coordinator.existing_database(&self.name).connect()
    }

    /// A connection to worker `i`'s database.
    pub fn connect_worker(&self, i: usize) -> postgres::Client {
        self.workers[i].existing_database(&self.name).connect()
    }

    /// The coordinator's database handle (for psql files).
    pub fn database(&self) -> Database<'_> {
        self.coordinator.existing_database(&self.name)
    }

    /// Every node, the coordinator first.
    pub fn nodes(&self) -> impl Iterator<Item = &Cluster> {
        std::iter::once(&self.coordinator).chain(&self.workers)
    }

    /// Panics, showing the log, if a backend of any node died of a signal.
    pub fn assert_no_backend_crashed(&self) {
        for node in self.nodes() {
            node.assert_no_backend_crashed();
        }
    }
}
