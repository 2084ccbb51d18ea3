//! Starting, using and stopping a throwaway cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The PostgreSQL binaries the clusters run: `$M3RET_PG_BIN` (scripts/env.sh sets it
/// for the version M3RET_PG picks), else the system PostgreSQL 15 (Debian's layout).
pub fn pg_bin() -> PathBuf {
    std::env::var_os("M3RET_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}
/// util-linux's runuser (root only), to run PostgreSQL binaries as `postgres`.
const RUNUSER: &str = "/usr/sbin/runuser";
/// The line PostgreSQL logs when a backend crashes; it must never appear.
pub const CRASH_MARKER: &str = "terminated by signal";

/// A PostgreSQL cluster (of [`pg_bin`]'s version) in a temporary data directory, on loopback and its own
/// port, stopped when dropped (or, for the shared one, when the test binary exits).
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    stopped: AtomicBool,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

impl Cluster {
    /// The cluster shared by all tests of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| {
            let cluster = Cluster::start(&[]);
            // Statics are never dropped: stop the server when the test binary exits,
            // whether its tests passed or failed.
            unsafe { libc::atexit(stop_shared_at_exit) };
            cluster
        })
    }

    /// Starts a new cluster with extra `postgresql.conf` lines. Models run in f32
    /// there (`m3ret.cpu_precision = f32`), so that SQL and core's reference
    /// embeddings agree to the last bits; tests/tests/precision.rs runs bf16.
    pub fn start(extra_settings: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("m3ret-cluster-")
            .tempdir()
            .expect("temp dir");
        let cluster = Cluster {
            port: free_port(),
            dir,
            stopped: AtomicBool::new(false),
        };
        std::fs::create_dir(cluster.data_dir()).expect("data dir");
        give_to_postgres(cluster.dir.path());
        cluster.run_as_postgres(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data_dir()),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\n\
             max_connections = 40\nshared_buffers = 128MB\nlog_min_messages = warning\n\
             m3ret.cpu_precision = f32\n",
            cluster.port,
            path_str(cluster.dir.path()),
        );
        for line in extra_settings {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = cluster.data_dir().join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        cluster.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            path_str(&cluster.log_path()),
        ]);
        cluster
    }

    /// A hot standby of `primary`: a base backup taken with `pg_basebackup -R`
    /// (streaming replication, WAL streamed during the backup), started on a port of
    /// its own. The primary's default settings allow it (wal_level replica, trust
    /// for replication from loopback).
    pub fn standby_of(primary: &Cluster) -> Cluster {
        Self::from_base_backup(primary, true)
    }

    /// A base backup of `primary` (WAL streamed during the backup) restored as a
    /// cluster of its own: it replays that WAL when it starts, as a restore would.
    pub fn restored_from_base_backup(primary: &Cluster) -> Cluster {
        Self::from_base_backup(primary, false)
    }

    fn from_base_backup(primary: &Cluster, as_standby: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("m3ret-backup-")
            .tempdir()
            .expect("temp dir");
        let standby = Cluster {
            port: free_port(),
            dir,
            stopped: AtomicBool::new(false),
        };
        give_to_postgres(standby.dir.path());
        let port = primary.port.to_string();
        let data_dir = standby.data_dir();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            path_str(&data_dir),
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        ];
        if as_standby {
            args.push("-R");
        }
        standby.run_as_postgres("pg_basebackup", &args);
        // Later lines win: the copy's own port and socket directory.
        let conf_path = standby.data_dir().join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        conf.push_str(&format!(
            "port = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            standby.port,
            path_str(standby.dir.path())
        ));
        std::fs::write(&conf_path, conf).expect("write postgresql.conf");
        standby.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            path_str(&standby.log_path()),
        ]);
        standby
    }

    /// Waits until this standby has replayed everything `primary` has written so far,
    /// polling its replay position.
    pub fn wait_for_replay_of(&self, primary: &Cluster) {
        let mut p =
            postgres::Client::connect(&primary.connection_string("postgres"), postgres::NoTls)
                .expect("connect to the primary");
        let target: String = p
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        let mut s = postgres::Client::connect(&self.connection_string("postgres"), postgres::NoTls)
            .expect("connect to the standby");
        loop {
            let caught_up: bool = s
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&target],
                )
                .unwrap()
                .get(0);
            if caught_up {
                return;
            }
            // No deadline: a standby that stops answering fails the query above.
            std::thread::yield_now();
        }
    }

    /// Promotes a standby to a primary and waits until it is one.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"]);
    }

    /// A handle to an existing database (no DROP or CREATE: a standby cannot).
    pub fn existing_database(&self, name: &str) -> Database<'_> {
        Database {
            cluster: self,
            name: name.to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A path in this cluster's own folder (owned by `postgres`), for files such as dumps.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Panics, showing the log, if any backend of this cluster died of a signal.
    pub fn assert_no_backend_crashed(&self) {
        let log = self.log();
        if log.contains(CRASH_MARKER) {
            panic!("a backend was {CRASH_MARKER}; server log:\n{log}");
        }
    }

    pub fn connection_string(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// Creates a fresh database with the m3ret extension (dropping any old one of that name).
    pub fn database(&self, name: &str) -> Database<'_> {
        let db = self.empty_database(name);
        db.connect()
            .batch_execute("CREATE EXTENSION m3ret")
            .expect("CREATE EXTENSION m3ret");
        db
    }

    /// Creates a fresh database without any extension (dropping any old one of that name).
    pub fn empty_database(&self, name: &str) -> Database<'_> {
        let mut admin =
            postgres::Client::connect(&self.connection_string("postgres"), postgres::NoTls)
                .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .expect("drop database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        Database {
            cluster: self,
            name: name.to_string(),
        }
    }

    /// Kills the postmaster and every process of the cluster with SIGKILL, as a power
    /// cut would, then starts it again: the restart replays the WAL.
    pub fn crash_and_restart(&self) {
        self.crash();
        self.pg_ctl(&["start", "-w", "-t", "120", "-l", path_str(&self.log_path())]);
    }

    /// The running postmaster's pid, from its postmaster.pid file.
    pub fn postmaster_pid(&self) -> i32 {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("postmaster.pid");
        pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster pid")
    }

    /// Kills the postmaster and every process of the cluster with SIGKILL, as a power
    /// cut would, and returns once they are gone. The cluster stays down.
    pub fn crash(&self) {
        let postmaster = self.postmaster_pid();
        let mut victims = children_of(postmaster);
        victims.push(postmaster);
        for &pid in &victims {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SIGKILL cannot be caught; wait until the kernel has ended them (a bounded
        // number of polls, so a stuck process fails the test instead of hanging it).
        let mut polls = 0;
        while victims.iter().any(|&pid| is_running(pid)) {
            polls += 1;
            if polls > 600 {
                panic!("cluster processes {victims:?} survived SIGKILL");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // After a real crash no process would hold the old pid; here a zombie may,
        // which the new postmaster would take for a running server (data directory
        // and socket lock files both name it).
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        let _ = std::fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// Stops the server at once (no shutdown checkpoint needed for a throwaway cluster).
    pub fn stop(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            let _ = self.try_pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }

    /// Starts a cluster [`Cluster::stop`] stopped, on its old port, and waits until it
    /// accepts connections.
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "120", "-l", path_str(&self.log_path())]);
        self.stopped.store(false, Ordering::SeqCst);
    }

    fn pg_ctl(&self, args: &[&str]) {
        if let Err(e) = self.try_pg_ctl(args) {
            panic!("pg_ctl {args:?} failed: {e}\nserver log:\n{}", self.log());
        }
    }

    fn try_pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data_dir = self.data_dir();
        let mut all = vec!["-D", path_str(&data_dir)];
        all.extend_from_slice(args);
        let out = self
            .postgres_command("pg_ctl", &all)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs a PostgreSQL program (pg_dump, pg_restore, ...) as the `postgres` user in
    /// this cluster's folder, failing with its stderr unless it succeeds.
    pub fn run_as_postgres(&self, program: &str, args: &[&str]) {
        let out = self
            .postgres_command(program, args)
            .output()
            .expect("run PostgreSQL binary");
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command for a PostgreSQL binary, as the `postgres` user when we are root
    /// (initdb and the postmaster refuse to run as root), with a clean environment:
    /// in particular no RUST_BACKTRACE, which would make every ERROR capture a backtrace,
    /// and no LD_LIBRARY_PATH, so the extension must find libtorch through its rpath.
    fn postgres_command(&self, program: &str, args: &[&str]) -> Command {
        let binary = pg_bin().join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new(RUNUSER);
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LC_ALL", "C.UTF-8")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

extern "C" fn stop_shared_at_exit() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop();
        // The TempDir is never dropped either: remove the data directory ourselves.
        let _ = std::fs::remove_dir_all(cluster.dir.path());
    }
}

/// One database of a cluster, with the extension created.
pub struct Database<'c> {
    pub cluster: &'c Cluster,
    pub name: String,
}

impl Database<'_> {
    pub fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.cluster.connection_string(&self.name), postgres::NoTls)
            .unwrap_or_else(|e| {
                panic!(
                    "connect to {}: {e}\nserver log:\n{}",
                    self.name,
                    self.cluster.log()
                )
            })
    }

    /// Runs a file of the repository (`sql/...`) through psql, stopping at the
    /// first error, with `name=value` psql variables; panics with its output if
    /// it fails, else returns its standard output.
    pub fn psql_file(&self, file: &str, vars: &[String]) -> String {
        let mut cmd = Command::new(pg_bin().join("psql"));
        cmd.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &self.cluster.port().to_string(), "-d", &self.name]);
        for var in vars {
            cmd.arg("-v").arg(var);
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        let out = cmd
            .arg("-f")
            .arg(&path)
            .env_remove("PGOPTIONS")
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql -f {file} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn give_to_postgres(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {dir:?} to postgres failed");
    }
}

/// True while `pid` exists and is not a zombie (nobody may reap it in a container).
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                })
                == Some(parent)
        })
        .collect()
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
