//! One message each way per request, over a Unix stream socket in the data directory:
//!
//! ```text
//! u32 header length | header (JSON) | u32 blob count | (u64 length | bytes) per blob
//! ```
//!
//! Integers are little-endian. Requests carry the study files (embed) or a model file
//! (load) as blobs; answers carry one embedding per blob (f32, little-endian). Every
//! length is checked against a cap before anything is allocated.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The socket's path, relative to the data directory (backends and the server run
/// there: a relative path never hits the 107-byte limit of a socket path). In
/// pg_stat_tmp, whose contents base backups skip (a socket is no file to copy).
pub const SOCKET_PATH: &str = "pg_stat_tmp/m3ret_server.sock";

/// Most bytes of a JSON header.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Most blobs in one message (a batch of studies).
pub const MAX_BLOBS: usize = 100_000;
/// Most bytes of all blobs of one message together (a bytea is at most 1 GiB).
pub const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// The key the server holds a model under: `<database oid>/<sha256 of its file>`.
/// A model belongs to the database whose registry holds it, so a session of one
/// database never embeds with another's model, whatever sha256 its registry
/// claims: the server asks for the file, and checks its sha256, for each database.
pub fn model_key(database: u32, sha256: &str) -> String {
    format!("{database}/{sha256}")
}

/// The (database, sha256) of a model key; a bare sha256 is a key of no database.
pub fn split_model_key(key: &str) -> (Option<u32>, &str) {
    match key.split_once('/') {
        Some((db, sha256)) => (db.parse().ok(), sha256),
        None => (None, key),
    }
}

/// What a backend asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Embed the blobs with the model of this key ([`model_key`]).
    Embed {
        model: String,
        modality: String,
        form: Form,
    },
    /// The model file (one blob) for this key, sent after a `NeedModel` answer.
    Load { model: String, label: String },
    /// The server's counters, for `m3ret_runtime_info()`.
    Status,
}

/// How the blobs of an embed request make studies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// One blob, one study.
    One,
    /// All blobs make one study (a DICOM series, a video's frames).
    Series,
    /// Each blob is a study of its own.
    Batch,
}

/// What the server answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Embeddings follow as blobs, one per study.
    Embeddings,
    /// The server has not loaded this model: send it with `Load`, then ask again.
    NeedModel,
    Loaded,
    Status {
        status: serde_json::Value,
    },
    /// A study could not be read (`index`: which blob, for a batch).
    BadStudy {
        index: usize,
        error: String,
    },
    /// Anything else that went wrong (a refused model file, a failed forward pass).
    Failed {
        error: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(io::Error),
    #[error("message too large: {0}")]
    TooLarge(String),
    #[error("malformed message header: {0}")]
    BadHeader(String),
}

/// A message read from the socket.
pub struct Message<H> {
    pub header: H,
    pub blobs: Vec<Vec<u8>>,
}

pub fn write_message<H: Serialize>(
    out: &mut impl Write,
    header: &H,
    blobs: &[&[u8]],
) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    let mut head = Vec::with_capacity(header.len() + 8);
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    head.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    out.write_all(&head)?;
    for blob in blobs {
        out.write_all(&(blob.len() as u64).to_le_bytes())?;
        out.write_all(blob)?;
    }
    out.flush()
}

pub fn read_message<H: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> Result<Message<H>, ProtocolError> {
    let header_len = read_u32(input)? as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(ProtocolError::TooLarge(format!(
            "header of {header_len} bytes (at most {MAX_HEADER_BYTES})"
        )));
    }
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header).map_err(ProtocolError::Io)?;
    let header: H =
        serde_json::from_slice(&header).map_err(|e| ProtocolError::BadHeader(e.to_string()))?;
    let count = read_u32(input)? as usize;
    if count > MAX_BLOBS {
        return Err(ProtocolError::TooLarge(format!(
            "{count} blobs (at most {MAX_BLOBS})"
        )));
    }
    let mut total = 0u64;
    let mut blobs = Vec::with_capacity(count);
    for _ in 0..count {
        let mut len = [0u8; 8];
        input.read_exact(&mut len).map_err(ProtocolError::Io)?;
        let len = u64::from_le_bytes(len);
        total = total.saturating_add(len);
        if total > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::TooLarge(format!(
                "blobs of more than {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        let mut blob = vec![0u8; len as usize];
        input.read_exact(&mut blob).map_err(ProtocolError::Io)?;
        blobs.push(blob);
    }
    Ok(Message { header, blobs })
}

fn read_u32(input: &mut impl Read) -> Result<u32, ProtocolError> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b).map_err(ProtocolError::Io)?;
    Ok(u32::from_le_bytes(b))
}

/// An embedding as a blob.
pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A blob as an embedding (None: its length is not a whole number of f32).
pub fn blob_to_vector(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        let mut wire = Vec::new();
        let request = Request::Embed {
            model: "ab".into(),
            modality: "xray".into(),
            form: Form::Batch,
        };
        write_message(&mut wire, &request, &[b"one", b"", b"three"]).unwrap();
        let back: Message<Request> = read_message(&mut wire.as_slice()).unwrap();
        assert_eq!(back.header, request);
        assert_eq!(back.blobs, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // A header length of 4 GiB - 1: refused without reading further.
        let wire = u32::MAX.to_le_bytes();
        let err = read_message::<Request>(&mut wire.as_slice()).err().unwrap();
        assert!(
            err.to_string().contains("header of 4294967295 bytes"),
            "{err}"
        );

        // A blob claiming 2^40 bytes: refused before allocating it.
        let mut wire = Vec::new();
        write_message(&mut wire, &Request::Status, &[]).unwrap();
        wire.truncate(wire.len() - 4);
        wire.extend_from_slice(&1u32.to_le_bytes());
        wire.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = read_message::<Request>(&mut wire.as_slice()).err().unwrap();
        assert!(err.to_string().contains("blobs of more than"), "{err}");
    }

    #[test]
    fn vectors_survive_as_blobs() {
        let v = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e7];
        assert_eq!(blob_to_vector(&vector_to_blob(&v)).unwrap(), v);
        assert!(blob_to_vector(&[0u8; 5]).is_none());
    }
}
