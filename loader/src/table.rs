//! The loader's table: created if missing, written with binary COPY one batch per
//! transaction, its keys read back so that a second run skips what is there.

use crate::prepare::Row;
use bytes::BytesMut;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, Transaction};
use std::collections::HashSet;
use std::error::Error;

/// The columns, in COPY order.
const COLUMNS: &str = "study_key, source_path, format, modality, patient_id, accession_number, \
     study_instance_uid, series_instance_uid, study_date, modality_code, files, bytes, meta, data, emb";

/// A table name as given (`name` or `schema.name`), each part quoted.
pub fn quoted_name(name: &str) -> Result<String, String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2
        || parts
            .iter()
            .any(|p| p.is_empty() || p.contains('"') || p.contains('\0'))
    {
        return Err(format!(
            "invalid table name \"{name}\": give name or schema.name, without quotes"
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// Creates the table if it does not exist. `study_key` is unique: it is what
/// makes a second run, or a run after a crash, add each study once.
pub fn create(client: &mut Client, table: &str) -> Result<(), String> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            study_key           text PRIMARY KEY,
            source_path         text,
            format              text NOT NULL,
            modality            text,
            patient_id          text,
            accession_number    text,
            study_instance_uid  text,
            series_instance_uid text,
            study_date          date,
            modality_code       text,
            files               int NOT NULL,
            bytes               bigint NOT NULL,
            meta                jsonb NOT NULL,
            data                bytea[],
            emb                 embedding,
            loaded_at           timestamptz NOT NULL DEFAULT now()
        )"
    );
    client
        .batch_execute(&sql)
        .map_err(|e| format!("cannot create {table}: {}", db_error(&e)))
}

/// The keys already in the table.
pub fn keys(client: &mut Client, table: &str) -> Result<HashSet<String>, String> {
    let rows = client
        .query(&format!("SELECT study_key FROM {table}"), &[])
        .map_err(|e| format!("cannot read the keys of {table}: {}", db_error(&e)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Writes a batch of rows with binary COPY inside `tx`.
pub fn copy_rows(tx: &mut Transaction, table: &str, rows: &[Row]) -> Result<(), String> {
    let types: Vec<Type> = tx
        .prepare(&format!("SELECT {COLUMNS} FROM {table} LIMIT 0"))
        .map_err(|e| {
            format!(
                "{table} is not a table m3ret-load can write: {}",
                db_error(&e)
            )
        })?
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .map_err(|e| format!("COPY into {table}: {}", db_error(&e)))?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for row in rows {
        let modality = row.modality.map(|m| m.name());
        let date = row
            .attribute("StudyDate")
            .and_then(|d| DicomDate::parse(&d));
        let files = row.files as i32;
        let bytes = row.bytes as i64;
        let meta = serde_json::Value::Object(row.meta.clone());
        let emb = row.emb.as_ref().map(|v| EmbeddingValue(v));
        let values: [&(dyn ToSql + Sync); 15] = [
            &row.key,
            &row.source_path,
            &row.format,
            &modality,
            &row.attribute("PatientID"),
            &row.attribute("AccessionNumber"),
            &row.attribute("StudyInstanceUID"),
            &row.attribute("SeriesInstanceUID"),
            &date,
            &row.attribute("Modality"),
            &files,
            &bytes,
            &meta,
            &row.data,
            &emb,
        ];
        writer
            .write(&values)
            .map_err(|e| format!("COPY of {}: {}", row.key, db_error(&e)))?;
    }
    writer
        .finish()
        .map_err(|e| format!("COPY into {table}: {}", db_error(&e)))?;
    Ok(())
}

/// Keys of the rows the server can embed and has not yet (modality and data known).
pub fn keys_to_embed(client: &mut Client, table: &str) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            &format!("SELECT study_key FROM {table} WHERE emb IS NULL AND modality IS NOT NULL AND data IS NOT NULL ORDER BY study_key"),
            &[],
        )
        .map_err(|e| format!("cannot read {table}: {}", db_error(&e)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How the server embeds the rows of a table.
pub enum ServerEmbedding {
    /// One server: m3ret_embed_batch per modality with this model (None: the default).
    Batched(Option<String>),
    /// A Citus distributed table: Citus refuses m3ret_embed (STABLE) with column
    /// references in an UPDATE, so each worker embeds its own rows with
    /// m3ret_embed_pinned and this `name@version`, resolved once on the coordinator.
    Pinned(String),
}

/// Chooses how to embed `table`'s rows with `model` (None: the default model).
pub fn server_embedding(
    client: &mut Client,
    table: &str,
    model: Option<&str>,
) -> Result<ServerEmbedding, String> {
    if !is_distributed(client, table)? {
        return Ok(ServerEmbedding::Batched(model.map(str::to_string)));
    }
    let row = match model {
        Some(m) => client.query_one(
            "SELECT name || '@' || version FROM m3ret_model_resolve($1)",
            &[&m],
        ),
        None => client.query_one(
            "SELECT coalesce((SELECT model FROM m3ret_model_list WHERE is_default), '')",
            &[],
        ),
    };
    let pinned: String = row.map_err(|e| db_error(&e))?.get(0);
    if pinned.is_empty() {
        return Err("no default model on the coordinator: import one, or pass --model".into());
    }
    Ok(ServerEmbedding::Pinned(pinned))
}

/// Whether `table` is a Citus distributed table (false where Citus is not installed).
fn is_distributed(client: &mut Client, table: &str) -> Result<bool, String> {
    let citus: bool = client
        .query_one(
            "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
            &[],
        )
        .map_err(|e| db_error(&e))?
        .get(0);
    if !citus {
        return Ok(false);
    }
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                            WHERE logicalrelid = $1::text::pg_catalog.regclass)",
            &[&table],
        )
        .map_err(|e| db_error(&e))?
        .get(0))
}

/// Embeds the rows of `keys` in the server, as `how` says. Batched: single files
/// with one m3ret_embed_batch call per modality, series one m3ret_embed call each;
/// pinned: one m3ret_embed_pinned call per row, on the workers. One transaction;
/// returns how many rows got an embedding.
pub fn embed_in_server(
    client: &mut Client,
    table: &str,
    keys: &[String],
    how: &ServerEmbedding,
) -> Result<u64, String> {
    let model = match how {
        ServerEmbedding::Batched(model) => model.as_deref(),
        ServerEmbedding::Pinned(model) => return embed_pinned(client, table, keys, model),
    };
    let mut tx = client.transaction().map_err(|e| db_error(&e))?;
    let singles = tx
        .execute(
            &format!(
                "UPDATE {table} t SET emb = b.embedding
                 FROM (SELECT modality, array_agg(study_key ORDER BY study_key) AS k,
                              array_agg(data[1] ORDER BY study_key) AS d
                       FROM {table}
                       WHERE study_key = ANY($1) AND emb IS NULL AND modality IS NOT NULL
                             AND cardinality(data) = 1
                       GROUP BY modality) g,
                      LATERAL m3ret_embed_batch(g.d, g.modality, $2) b
                 WHERE t.study_key = g.k[b.ord]"
            ),
            &[&keys, &model],
        )
        .map_err(|e| format!("m3ret_embed_batch: {}", db_error(&e)))?;
    let series = tx
        .execute(
            &format!(
                "UPDATE {table} SET emb = m3ret_embed(data, modality, $2)
                 WHERE study_key = ANY($1) AND emb IS NULL AND modality IS NOT NULL
                       AND cardinality(data) > 1"
            ),
            &[&keys, &model],
        )
        .map_err(|e| format!("m3ret_embed of a series: {}", db_error(&e)))?;
    tx.commit().map_err(|e| db_error(&e))?;
    Ok(singles + series)
}

fn embed_pinned(
    client: &mut Client,
    table: &str,
    keys: &[String],
    model: &str,
) -> Result<u64, String> {
    client
        .execute(
            &format!(
                "UPDATE {table} SET emb = m3ret_embed_pinned(data, modality, $2)
                 WHERE study_key = ANY($1) AND emb IS NULL AND modality IS NOT NULL"
            ),
            &[&keys, &model],
        )
        .map_err(|e| format!("m3ret_embed_pinned: {}", db_error(&e)))
}

/// The server's message (and detail) rather than the client library's wrapper text.
pub fn db_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// A DICOM DA value (YYYYMMDD) as a PostgreSQL date (days since 2000-01-01).
#[derive(Debug)]
struct DicomDate(i32);

impl DicomDate {
    fn parse(text: &str) -> Option<DicomDate> {
        let t = text.trim();
        if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (y, m, d): (i64, i64, i64) = (
            t[..4].parse().ok()?,
            t[4..6].parse().ok()?,
            t[6..].parse().ok()?,
        );
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let days_in_month = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] {
            return None;
        }
        Some(DicomDate(
            (days_from_civil(y, m, d) - days_from_civil(2000, 1, 1)) as i32,
        ))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl ToSql for DicomDate {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }

    to_sql_checked!();
}

/// An embedding in the type's binary format (as pgvector's vector: dims, 0, floats).
#[derive(Debug)]
struct EmbeddingValue<'a>(&'a [f32]);

impl ToSql for EmbeddingValue<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&(self.0.len() as i16).to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        for v in self.0 {
            out.extend_from_slice(&v.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "embedding"
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dicom_dates_become_days_since_2000() {
        assert_eq!(DicomDate::parse("20000101").map(|d| d.0), Some(0));
        assert_eq!(DicomDate::parse("19991231").map(|d| d.0), Some(-1));
        assert_eq!(DicomDate::parse("20240229").map(|d| d.0), Some(8825));
        assert!(DicomDate::parse("20230229").is_none());
        assert!(DicomDate::parse("2023-01-01").is_none());
        assert!(DicomDate::parse("").is_none());
    }

    #[test]
    fn table_names_are_quoted_or_refused() {
        assert_eq!(quoted_name("studies").unwrap(), "\"studies\"");
        assert_eq!(quoted_name("pacs.Studies").unwrap(), "\"pacs\".\"Studies\"");
        assert!(quoted_name("a.b.c").is_err());
        assert!(quoted_name("x\"; DROP TABLE y; --").is_err());
    }
}
