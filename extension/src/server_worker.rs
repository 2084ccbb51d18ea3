//! The background worker that starts and supervises the model server when m3ret is
//! in shared_preload_libraries.
//!
//! The worker forks the server (`m3ret_server::run`): the server is the worker's
//! child, not the postmaster's, so when it crashes the postmaster sees nothing and
//! no backend is restarted. The worker logs how it ended and forks it again after a
//! back-off that doubles up to 10 s (and starts again from 100 ms once a server has
//! run for a minute). Forking without exec keeps libtorch's start-up memory shared
//! with every postgres process (the library was loaded before the postmaster
//! forked); the child then leaves PostgreSQL behind: it detaches shared memory,
//! closes every inherited descriptor but stdio, resets signals, and never calls
//! PostgreSQL code again.

use crate::settings::{self, Inference};
use m3ret_server::protocol::SOCKET_PATH;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set in the postmaster when it registered the worker; backends inherit it by fork.
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Whether this cluster runs a model server (m3ret.inference = auto uses it then).
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Relaxed)
}

/// Called from `_PG_init`: registers the worker when the library is being preloaded
/// and m3ret.inference is not `backend` in postgresql.conf.
pub fn register() {
    // SAFETY: a plain read of a flag the postmaster sets while loading libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading || settings::INFERENCE.get() == Inference::Backend {
        return;
    }
    REGISTERED.store(true, Ordering::Relaxed);
    BackgroundWorkerBuilder::new("m3ret model server supervisor")
        .set_type("m3ret model server supervisor")
        .set_library("m3ret")
        .set_function("m3ret_server_supervisor")
        .enable_shmem_access(None)
        // Standbys too: they embed through their own server.
        .set_start_time(BgWorkerStartTime::PostmasterStart)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A server that ran this long is healthy: the next restart starts the back-off over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn m3ret_server_supervisor(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM | SignalWakeFlags::SIGCHLD);
    let mut restarts = 0u64;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match fork_server(restarts) {
            Ok(pid) => {
                log!("m3ret model server started (pid {pid})");
                let Some(ended) = wait_for_exit(pid) else {
                    stop(pid);
                    return;
                };
                warning!(
                    "m3ret model server (pid {pid}) {}; starting it again in {} ms",
                    describe(ended),
                    backoff.as_millis()
                );
            }
            Err(e) => warning!(
                "cannot start the m3ret model server: {e}; trying again in {} ms",
                backoff.as_millis()
            ),
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = FIRST_BACKOFF;
        }
        if !BackgroundWorker::wait_latch(Some(backoff)) {
            return;
        }
        restarts += 1;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The server's settings, from the m3ret.* settings as the postmaster read them.
fn server_settings(restarts: u64) -> m3ret_server::Settings {
    m3ret_server::Settings {
        socket: SOCKET_PATH.into(),
        device: settings::string(&settings::DEVICE).unwrap_or_else(|| "auto".into()),
        threads: settings::SERVER_THREADS.get().max(0) as usize,
        cpu_precision: settings::CPU_PRECISION.get().choice(),
        batch_wait: Duration::from_millis(settings::BATCH_WAIT_MS.get().max(0) as u64),
        batch_size: settings::BATCH_SIZE.get().max(1) as usize,
        max_models: settings::MAX_CACHED_MODELS.get().max(1) as usize,
        restarts,
    }
}

fn fork_server(restarts: u64) -> std::io::Result<libc::pid_t> {
    let settings = server_settings(restarts);
    // SAFETY: plain process calls; this worker is single-threaded, so the child
    // gets a consistent copy of it.
    let supervisor = unsafe { libc::getpid() };
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => server_process(&settings, supervisor),
        pid => Ok(pid),
    }
}

unsafe extern "C" {
    /// storage/pg_shmem.h: unmaps the main shared memory segment.
    fn PGSharedMemoryDetach();
}

/// The forked child: leaves PostgreSQL behind, serves, and exits without running
/// any PostgreSQL exit callback.
fn server_process(settings: &m3ret_server::Settings, supervisor: libc::pid_t) -> ! {
    // SAFETY: plain process-level calls in a fresh single-threaded child; after
    // this block no PostgreSQL function is called again.
    unsafe {
        pg_sys::set_ps_display(c"model server".as_ptr());
        // A panic must not reach pgrx's hook, which would call into PostgreSQL.
        std::panic::set_hook(Box::new(|info| eprintln!("m3ret model server: {info}")));
        for signal in 1..32 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        // Writing to a backend that went away is an error to handle, not a reason to die.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut none = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // The server ends with its supervisor, whatever ends the supervisor.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != supervisor {
            // The supervisor ended before the line above took effect.
            libc::_exit(0);
        }
        pg_sys::dsm_detach_all();
        PGSharedMemoryDetach();
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let code = match std::panic::catch_unwind(|| m3ret_server::run(settings)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("m3ret model server: {e}");
            1
        }
        Err(_) => 70,
    };
    // SAFETY: ends the child at once, as a crashed server would end.
    unsafe { libc::_exit(code) }
}

/// How the server ended (as waitpid reports it), or None when this worker must stop.
fn wait_for_exit(pid: libc::pid_t) -> Option<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: reaping our own child, without blocking.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Some(status);
        }
        // SIGCHLD sets the latch; the timeout is only a safety net.
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            return None;
        }
    }
}

/// Asks the server to stop, and kills it if it has not within 5 s.
fn stop(pid: libc::pid_t) {
    // SAFETY: signalling and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = 0;
        while Instant::now() < deadline {
            if libc::waitpid(pid, &mut status, libc::WNOHANG) == pid {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        return format!("exited with code {}", libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let name = match signal {
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGBUS => " (SIGBUS)",
            libc::SIGTERM => " (SIGTERM)",
            _ => "",
        };
        // Not PostgreSQL's "terminated by signal": no backend ended.
        return format!("was killed by signal {signal}{name}");
    }
    format!("ended (status {status})")
}
