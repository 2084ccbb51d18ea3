//! The model registry, seen from Rust: resolving `name`, `name@version` or the
//! default to a version, fetching its weights, and checking files before import.
//! The table, view and admin functions themselves are SQL (sql/registry.sql).

use crate::error::raise;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::prelude::*;
use pgrx::JsonB;

/// One model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub version: i32,
    pub sha256: String,
}

impl ModelRef {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// `name@version` -> (name, Some(version)); `name` -> (name, None).
pub fn parse_ref(model: &str) -> (String, Option<i32>) {
    match model.rsplit_once('@') {
        Some((name, v)) => match v.parse::<i32>() {
            Ok(version) if version > 0 => (name.to_string(), Some(version)),
            _ => raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid model reference \"{model}\": expected name or name@version"),
            ),
        },
        None => (model.to_string(), None),
    }
}

/// `object` (a table or function of the extension) qualified with the extension's
/// schema. m3ret's own queries must not depend on the caller's search_path:
/// postgres_fdw, for one, evaluates the parameters it sends to a shard (such as the
/// query image's `(SELECT m3ret_embed(...))`) with search_path set to pg_catalog.
fn qualified(object: &str) -> String {
    let schema = Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'm3ret'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<String>()
    });
    match schema {
        Ok(Some(schema)) => format!("{schema}.{object}"),
        _ => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "the m3ret extension is not installed in this database (CREATE EXTENSION m3ret)",
        ),
    }
}

// The registry is read with read-only SPI (`select`): pgrx's `Spi::get_*` helpers
// run every query as an update, which assigns a transaction ID. That made
// m3ret_embed fail on a standby ("cannot assign TransactionIds during recovery")
// and spend an XID per call on a primary.

/// The version `model` names (the latest when no version is given), or the default.
pub fn resolve(model: Option<&str>) -> ModelRef {
    let models = qualified("m3ret_models");
    let row = match model {
        None => Spi::connect(|client| {
            client
                .select(
                    &format!("SELECT name, version, sha256 FROM {models} WHERE is_default"),
                    Some(1),
                    &[],
                )?
                .first()
                .get_three::<String, i32, String>()
        }),
        Some(m) => {
            let (name, version) = parse_ref(m);
            Spi::connect(|client| {
                client
                    .select(
                        &format!(
                            "SELECT name, version, sha256 FROM {models} \
                             WHERE name = $1 AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
                        ),
                        Some(1),
                        &[name.into(), version.into()],
                    )?
                    .first()
                    .get_three::<String, i32, String>()
            })
        }
    };
    match row {
        Ok((Some(name), Some(version), Some(sha256))) => ModelRef { name, version, sha256 },
        Ok(_) | Err(pgrx::spi::SpiError::InvalidPosition) => match model {
            None => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                "no default model: import one with m3ret_model_import(name, weights), or pass a model name",
            ),
            Some(m) => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("unknown model \"{m}\": m3ret_model_list shows the imported models"),
            ),
        },
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("reading m3ret_models: {e}")),
    }
}

/// Runs as the owner of `m3ret_models` until dropped, as PostgreSQL does for its own
/// internal queries (SECURITY_LOCAL_USERID_CHANGE): the caller may embed without
/// being allowed to read the weights column. Dropped on unwind too; an ERROR's
/// transaction abort would restore the user as well.
struct AsRegistryOwner {
    user: pg_sys::Oid,
    context: i32,
}

impl AsRegistryOwner {
    fn begin() -> AsRegistryOwner {
        let models = qualified("m3ret_models");
        let owner = Spi::connect(|client| {
            client
                .select(
                    "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1::pg_catalog.regclass",
                    Some(1),
                    &[models.into()],
                )?
                .first()
                .get_one::<pg_sys::Oid>()
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "m3ret_models has no owner: is the extension installed in this database?",
            )
        });
        let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
        // SAFETY: plain reads and writes of the backend's current user, on its one thread.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
        AsRegistryOwner { user, context }
    }
}

impl Drop for AsRegistryOwner {
    fn drop(&mut self) {
        // SAFETY: as in begin().
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// The weights of a model version, read with the registry owner's rights.
pub fn weights(model: &ModelRef) -> Vec<u8> {
    let owner = AsRegistryOwner::begin();
    let weights = weights_as_current_user(model);
    drop(owner);
    weights
}

fn weights_as_current_user(model: &ModelRef) -> Vec<u8> {
    Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT weights FROM {} WHERE name = $1 AND version = $2",
                    qualified("m3ret_models")
                ),
                Some(1),
                &[model.name.clone().into(), model.version.into()],
            )?
            .first()
            .get_one::<Vec<u8>>()
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("model {} was dropped", model.label()),
        )
    })
}

/// Checks a model file and describes it: `{"sha256", "dims", "config"}`.
/// Used by m3ret_model_import before it stores anything.
#[pg_extern(immutable, parallel_safe, strict)]
fn m3ret_model_inspect(weights: &[u8]) -> JsonB {
    let file = m3ret_core::model::ModelFile::from_bytes(weights).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("model file refused: {e}"),
        )
    });
    JsonB(serde_json::json!({
        "sha256": m3ret_core::model::file::sha256_hex(weights),
        "dims": file.config.embedding_dims(),
        "config": file.config,
    }))
}

/// Reads a model file under `m3ret.model_dir` (a superuser-only setting) and
/// imports it as m3ret_model_import does.
#[pg_extern(volatile, strict)]
fn m3ret_model_import_file(name: &str, path: &str) -> String {
    require_admin("import models");
    let Some(dir) = crate::settings::string(&crate::settings::MODEL_DIR).filter(|d| !d.is_empty())
    else {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "m3ret_model_import_file reads only under m3ret.model_dir, which is not set (a superuser sets it)",
        )
    };
    let canonical_dir = std::fs::canonicalize(&dir).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("m3ret.model_dir \"{dir}\": {e}"),
        )
    });
    let full = std::path::Path::new(&dir).join(path);
    let canonical = std::fs::canonicalize(&full).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("model file \"{}\": {e}", full.display()),
        )
    });
    if !canonical.starts_with(&canonical_dir) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("model file \"{path}\" is outside m3ret.model_dir"),
        );
    }
    let bytes = std::fs::read(&canonical).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("model file \"{}\": {e}", canonical.display()),
        )
    });
    Spi::get_one_with_args::<String>(
        &format!("SELECT {}($1, $2)", qualified("m3ret_model_import")),
        &[name.into(), bytes.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "m3ret_model_import returned nothing",
        )
    })
}

/// Superusers and members of m3ret_admin only: the registry's own check
/// (m3ret_require_admin in sql/registry.sql), which raises the ERROR itself.
pub fn require_admin(action: &str) {
    if let Err(e) = Spi::get_one_with_args::<String>(
        &format!("SELECT {}($1)::text", qualified("m3ret_require_admin")),
        &[action.into()],
    ) {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("checking privileges: {e}"),
        );
    }
}
