//! A backend's side of the model server (m3ret-server): one connection per request,
//! a wait that honours cancellation, statement_timeout and m3ret.server_timeout,
//! and a model file handed over once per server when it asks for it.
//!
//! The backend sends the study files as they are; the server decodes them. So in
//! server mode this process runs no libtorch at all (no thread pools, no weights, no
//! CUDA context), and a crash in a decoder or in the model takes down the server
//! only, never a backend.

use crate::error::raise;
use crate::registry::{self, ModelRef};
use crate::settings;
use m3ret_server::protocol::{
    blob_to_vector, model_key, read_message, write_message, Answer, Form, Message, Request,
    SOCKET_PATH,
};
use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// What the server made of an embed request.
pub enum Embedded {
    Vectors(Vec<Vec<f32>>),
    /// Study `index` (0-based, of the request's buffers) could not be read.
    BadStudy {
        index: usize,
        error: String,
    },
}

/// Embeds `buffers` (`form` says how they make studies) with `model` on the server.
pub fn embed(model: &ModelRef, modality: &str, form: Form, buffers: &[&[u8]]) -> Embedded {
    let mut stream = connect(setting_ms(&settings::SERVER_CONNECT_TIMEOUT_MS));
    let request = Request::Embed {
        model: key_of(model),
        modality: modality.to_string(),
        form,
    };
    let expected = match form {
        Form::Batch => buffers.len(),
        Form::One | Form::Series => 1,
    };
    // At most twice: the second time after handing the server the model it lacked.
    for _ in 0..2 {
        let answer = ask(&mut stream, &request, buffers);
        match answer.header {
            Answer::Embeddings => return Embedded::Vectors(vectors(answer.blobs, expected)),
            Answer::NeedModel => hand_over(&mut stream, model),
            Answer::BadStudy { index, error } => return Embedded::BadStudy { index, error },
            Answer::Failed { error } => {
                raise(PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, error)
            }
            other => protocol_error(&other),
        }
    }
    raise(
        PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        format!(
            "the m3ret model server dropped model {} right after loading it (m3ret.max_cached_models too small for the models in use?)",
            model.label()
        ),
    )
}

/// The server's key for `model`: this database's, never another's.
fn key_of(model: &ModelRef) -> String {
    // SAFETY: a plain read of the backend's database, set at connection start.
    model_key(unsafe { pg_sys::MyDatabaseId }.to_u32(), &model.sha256)
}

/// The server's counters (`m3ret_runtime_info()`), with the models of this database
/// only; an error text when it does not answer.
pub fn status() -> Result<serde_json::Value, String> {
    let mut status = server_status()?;
    // SAFETY: as in key_of().
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if let Some(serde_json::Value::Array(models)) = status.get_mut("models_loaded") {
        models.retain(|m| m["database"].as_u64() == Some(database as u64));
        for m in models.iter_mut() {
            if let Some(m) = m.as_object_mut() {
                m.remove("database");
            }
        }
    }
    Ok(status)
}

fn server_status() -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(SOCKET_PATH).map_err(|e| not_running_text(&e))?;
    match exchange(&mut stream, &Request::Status, &[], Duration::from_secs(5)) {
        Ok(Message {
            header: Answer::Status { status },
            ..
        }) => Ok(status),
        Ok(other) => Err(format!("unexpected answer {:?}", other.header)),
        Err(NoAnswer::Lost(e) | NoAnswer::NotSent(e)) => {
            Err(format!("the m3ret model server closed the connection: {e}"))
        }
        Err(NoAnswer::TimedOut) => Err("the m3ret model server did not answer within 5 s".into()),
    }
}

fn hand_over(stream: &mut UnixStream, model: &ModelRef) {
    let weights = registry::weights(model);
    let request = Request::Load {
        model: key_of(model),
        label: model.label(),
    };
    let answer = ask(stream, &request, &[&weights]).header;
    drop(weights);
    // The file's bytes (and the detoasted copy SPI read them from) were freed into
    // glibc's heap, which keeps them: a backend that handed a model over once would
    // hold its size for the rest of the session. Hand that memory back now.
    // SAFETY: a plain libc call.
    unsafe { libc::malloc_trim(0) };
    match answer {
        Answer::Loaded => {}
        Answer::Failed { error } => raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, error),
        other => protocol_error(&other),
    }
}

fn vectors(blobs: Vec<Vec<u8>>, expected: usize) -> Vec<Vec<f32>> {
    if blobs.len() != expected {
        raise(
            PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
            format!(
                "the m3ret model server answered {} embeddings for {expected} studies",
                blobs.len()
            ),
        );
    }
    blobs
        .iter()
        .map(|b| {
            blob_to_vector(b).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                    "the m3ret model server answered a malformed embedding",
                )
            })
        })
        .collect()
}

fn protocol_error(answer: &Answer) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        format!("unexpected answer from the m3ret model server: {answer:?}"),
    )
}

fn setting_ms(setting: &pgrx::guc::GucSetting<i32>) -> Duration {
    Duration::from_millis(setting.get().max(0) as u64)
}

fn not_running_text(e: &std::io::Error) -> String {
    format!(
        "the m3ret model server is not running ({SOCKET_PATH} in the data directory: {e}); \
         it runs when m3ret is in shared_preload_libraries (the server log says why it stopped), \
         or a superuser may SET m3ret.inference = backend"
    )
}

/// Connects, waiting up to `timeout` for a server that is (re)starting.
fn connect(timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(SOCKET_PATH) {
            Ok(stream) => return stream,
            Err(e) if Instant::now() >= deadline => raise(
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                not_running_text(&e),
            ),
            Err(_) => {
                wait(None, Duration::from_millis(50));
            }
        }
    }
}

/// Sends one request and waits for its answer; an ERROR if there is none. A request
/// that could not even be sent (a server that died just as it accepted the
/// connection resets it) is sent once more on a new connection, which waits for the
/// restarted server; one the server received is never sent twice (it may be the
/// study that crashed it).
fn ask(stream: &mut UnixStream, request: &Request, blobs: &[&[u8]]) -> Message<Answer> {
    let timeout = setting_ms(&settings::SERVER_TIMEOUT_MS);
    let mut answer = exchange(stream, request, blobs, timeout);
    if let Err(NoAnswer::NotSent(_)) = answer {
        *stream = connect(setting_ms(&settings::SERVER_CONNECT_TIMEOUT_MS));
        answer = exchange(stream, request, blobs, timeout);
    }
    match answer {
        Ok(answer) => answer,
        Err(NoAnswer::Lost(e) | NoAnswer::NotSent(e)) => lost(e),
        Err(NoAnswer::TimedOut) => raise(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            format!(
                "the m3ret model server did not answer within m3ret.server_timeout ({} ms)",
                timeout.as_millis()
            ),
        ),
    }
}

enum NoAnswer {
    /// The request did not reach the server.
    NotSent(String),
    Lost(String),
    TimedOut,
}

/// Sends one request and waits up to `timeout` for its answer. Waits on the latch
/// and the socket together, so that a cancel or statement_timeout ends the wait at
/// once; dropping the stream on the way out closes it, and the server drops the
/// abandoned request.
fn exchange(
    stream: &mut UnixStream,
    request: &Request,
    blobs: &[&[u8]],
    timeout: Duration,
) -> Result<Message<Answer>, NoAnswer> {
    let deadline = Instant::now() + timeout;
    let _ = stream.set_write_timeout(Some(timeout));
    write_message(stream, request, blobs).map_err(|e| NoAnswer::NotSent(e.to_string()))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NoAnswer::TimedOut);
        }
        if wait(Some(stream), left.min(Duration::from_secs(1))) {
            break;
        }
    }
    let _ = stream.set_read_timeout(Some(timeout));
    read_message::<Answer>(&mut BufReader::new(&*stream)).map_err(|e| NoAnswer::Lost(e.to_string()))
}

fn lost(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        format!("the m3ret model server closed the connection before answering (did it crash? the server log says): {e}"),
    )
}

/// Waits on this backend's latch (and `socket`, readable) for at most `timeout`,
/// then checks for interrupts. Returns whether the socket is readable.
fn wait(socket: Option<&UnixStream>, timeout: Duration) -> bool {
    let mut events = pg_sys::WL_LATCH_SET as i32
        | pg_sys::WL_TIMEOUT as i32
        | pg_sys::WL_EXIT_ON_PM_DEATH as i32;
    let fd = match socket {
        Some(s) => {
            events |= pg_sys::WL_SOCKET_READABLE as i32;
            s.as_raw_fd()
        }
        None => pg_sys::PGINVALID_SOCKET,
    };
    // SAFETY: MyLatch is this backend's own latch; the socket stays open for the call.
    let fired = unsafe {
        let fired = pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events,
            fd,
            timeout.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        fired
    };
    pgrx::check_for_interrupts!();
    fired & pg_sys::WL_SOCKET_READABLE as i32 != 0
}
