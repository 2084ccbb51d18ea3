//! A postgres process that has the library loaded exits without running
//! libtorch's static destructors.
//!
//! Linking libtorch registers C++ destructors for its operator registry, which
//! `exit()` runs in every process that loaded the library: with m3ret preloaded,
//! every backend of the cluster, whether it ever embedded or not. They deregister
//! thousands of operators and write to pages inherited from the postmaster (each
//! write copies a page): about 0.3 s of CPU at every disconnect on this project's
//! machine, time another session's query then waits for on a small server
//! (measured with strace and perf on a backend's exit; `benches/sql_model_server`
//! shows it as a slower first call in the next fresh backend).
//!
//! PostgreSQL ends a process with `proc_exit`, which runs all of its own clean-up
//! (locks, shared memory, temporary files and tables, statistics) before it calls
//! `exit(code)`. A handler registered after libtorch was loaded runs before
//! libtorch's destructors; once `proc_exit` has done its work, it flushes stdio and
//! ends the process at once with the same exit status. An `exit()` called any
//! other way (without `proc_exit`) runs everything as before.

use pgrx::pg_sys;
use std::ffi::{c_int, c_void};

extern "C" {
    /// glibc's `on_exit`: like `atexit`, and the handler is told the exit status.
    fn on_exit(handler: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

/// Called from `_PG_init`, after the dynamic loader ran libtorch's constructors
/// (which registered its destructors earlier, so they would run after this).
pub fn skip_library_destructors() {
    // SAFETY: registers a plain function, with no argument, in this process's
    // exit list (inherited by the processes the postmaster forks).
    let failed = unsafe { on_exit(exit_without_destructors, std::ptr::null_mut()) } != 0;
    if failed {
        // The table is full: exits stay slow, nothing else changes.
        pgrx::log!(
            "m3ret: could not register its exit handler; process exits run libtorch's destructors"
        );
    }
}

extern "C" fn exit_without_destructors(status: c_int, _: *mut c_void) {
    // SAFETY: a read of a flag of this process; set by proc_exit before it runs
    // PostgreSQL's exit callbacks, which are all done by the time exit() calls us.
    if unsafe { pg_sys::proc_exit_inprogress } {
        // SAFETY: flushing every stdio stream, then ending the process as exit()
        // would, minus the handlers registered before this one.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            libc::_exit(status);
        }
    }
}
