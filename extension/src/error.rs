//! Raising PostgreSQL ERRORs with a proper SQLSTATE.

use m3ret_core::vector::VectorError;
use pgrx::pg_sys::ereport;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;

/// Ends the statement with an ERROR carrying `code` and `message`.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    let message: String = message.into();
    ereport!(ERROR, code, message);
}

/// Maps an embedding validation error to the SQLSTATE pgvector uses for it.
pub fn raise_vector_error(err: VectorError) -> ! {
    let code = match err {
        VectorError::Malformed { .. } => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        VectorError::TooManyDims(_) => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        VectorError::Empty | VectorError::NotFinite { .. } | VectorError::DimensionMismatch(..) => {
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION
        }
    };
    raise(code, err.to_string())
}

/// Unwraps a core result, turning its error into an ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, VectorError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise_vector_error(e))
    }
}
