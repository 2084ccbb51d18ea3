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
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
                 WHERE e.extname OPERATOR(pg_catalog.=) 'm3ret'",
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

// Every query here names its operators and types with their schema
// (`OPERATOR(pg_catalog.=)`, `pg_catalog.int4`): an unqualified `=` resolves through
// the caller's search_path, where a role may have put an operator of its own, and
// the weights are read with the registry owner's rights (`AsRegistryOwner`).
//
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
                             WHERE name OPERATOR(pg_catalog.=) $1 \
                               AND ($2::pg_catalog.int4 IS NULL OR version OPERATOR(pg_catalog.=) $2) \
                             ORDER BY version DESC LIMIT 1"
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
/// being allowed to read the weights column. For as long, search_path is
/// `pg_catalog, pg_temp`, as PostgreSQL's own maintenance commands restrict it: no
/// name looked up with the owner's rights can reach a schema the caller chose (the
/// queries qualify every name too; this guards the ones a later change forgets).
/// Dropped on unwind too; an ERROR's (sub)transaction abort would restore the user
/// and the setting as well.
struct AsRegistryOwner {
    user: pg_sys::Oid,
    context: i32,
    guc_level: i32,
}

impl AsRegistryOwner {
    fn begin() -> AsRegistryOwner {
        let models = qualified("m3ret_models");
        let owner = Spi::connect(|client| {
            client
                .select(
                    "SELECT relowner FROM pg_catalog.pg_class \
                     WHERE oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
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
        AsRegistryOwner {
            user,
            context,
            guc_level: restrict_search_path(),
        }
    }
}

impl Drop for AsRegistryOwner {
    fn drop(&mut self) {
        // SAFETY: pops the GUC nest level begin() pushed (restoring search_path), then
        // restores the user, both on the backend's one thread.
        unsafe {
            pg_sys::AtEOXact_GUC(false, self.guc_level);
            pg_sys::SetUserIdAndSecContext(self.user, self.context);
        }
    }
}

/// Sets search_path to `pg_catalog, pg_temp` in a new GUC nest level, which the
/// caller pops with `AtEOXact_GUC(false, level)` (PostgreSQL's RestrictSearchPath,
/// which PostgreSQL 15 lacks). pg_temp is named last so that it is not searched first.
fn restrict_search_path() -> i32 {
    // SAFETY: as a function's SET clause does it (fmgr_security_definer): a new nest
    // level, then a saved, session-level value within it.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    }
}

/// The weights of a model version, read with the registry owner's rights, and
/// checked against the version's sha256: a row whose weights were changed behind
/// m3ret_model_import's back is refused, not loaded under another file's identity.
pub fn weights(model: &ModelRef) -> Vec<u8> {
    let owner = AsRegistryOwner::begin();
    let weights = weights_as_current_user(model);
    drop(owner);
    let actual = m3ret_core::model::file::sha256_hex(&weights);
    if actual != model.sha256 {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "model {}: its weights have sha256 {actual}, not the {} its registry row names (the row was changed outside m3ret_model_import)",
                model.label(),
                model.sha256
            ),
        );
    }
    weights
}

fn weights_as_current_user(model: &ModelRef) -> Vec<u8> {
    Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT weights FROM {} \
                     WHERE name OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
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
/// Used by m3ret_model_import before it stores anything. The check is the one a
/// load makes: the config within m3ret's limits, then the encoder built on the CPU
/// from the file's tensors, every name and shape matched.
#[pg_extern(immutable, parallel_safe, strict)]
fn m3ret_model_inspect(weights: &[u8]) -> JsonB {
    let refused = |e: m3ret_core::model::ModelError| -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("model file refused: {e}"),
        )
    };
    let file = m3ret_core::model::ModelFile::from_bytes(weights).unwrap_or_else(|e| refused(e));
    if let Err(e) = m3ret_core::model::Embedder::from_file(&file, tch::Device::Cpu) {
        refused(e)
    }
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
    // Refused on its text first, before the file system is asked anything: an
    // answer about a path outside the directory ("No such file" against
    // "Permission denied") would tell whether it exists.
    let relative = std::path::Path::new(path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("model file \"{path}\" is outside m3ret.model_dir (give a path below it, without \"..\")"),
        );
    }
    let full = std::path::Path::new(&dir).join(relative);
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
        &format!(
            "SELECT {}($1)::pg_catalog.text",
            qualified("m3ret_require_admin")
        ),
        &[action.into()],
    ) {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("checking privileges: {e}"),
        );
    }
}
