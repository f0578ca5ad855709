//! Payload encoding shared by every vtasks client (`docs/PROTOCOL.md`,
//! "Payload encoding"): JSON text, compressed with zstd when larger than
//! `COMPRESS_ABOVE` bytes. A compressed payload is a zstd frame, recognised by
//! its magic number; JSON text never starts with those bytes.

use crate::error::{Error, Result};

use vtasks_protocol::MAX_PAYLOAD;
/// Payloads larger than this are compressed; never inflate one beyond
/// `MAX_DECODED` (a compressed bomb).
pub use vtasks_protocol::{COMPRESS_ABOVE, MAX_DECODED};
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const LEVEL: i32 = 3;

/// Encodes a JSON value for the wire.
pub fn encode(value: &serde_json::Value) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(value).map_err(|e| Error::Payload(e.to_string()))?;
    compress(json)
}

/// Compresses already-serialised JSON text if it is large.
pub fn compress(json: Vec<u8>) -> Result<Vec<u8>> {
    if json.len() <= COMPRESS_ABOVE {
        return Ok(json);
    }
    zstd::bulk::compress(&json, LEVEL).map_err(|e| Error::Payload(e.to_string()))
}

/// Refuses an encoded payload or result the server would refuse: larger
/// than `MAX_PAYLOAD` (16 MiB) once compressed. `what` names it in the
/// message, as the server's error does (`payload`, `result`).
pub fn check_size(what: &str, encoded: &[u8]) -> Result<()> {
    if encoded.len() > MAX_PAYLOAD {
        return Err(Error::Payload(format!(
            "{what} of {} bytes exceeds the limit of {MAX_PAYLOAD} bytes",
            encoded.len()
        )));
    }
    Ok(())
}

/// The JSON text of a payload, decompressed if needed.
pub fn json_text(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if bytes.starts_with(&ZSTD_MAGIC) {
        let text = zstd::bulk::decompress(bytes, MAX_DECODED)
            .map_err(|e| Error::Payload(format!("zstd: {e}")))?;
        return Ok(text.into());
    }
    Ok(bytes.into())
}

/// Decodes a payload into a JSON value.
pub fn decode(bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(&json_text(bytes)?).map_err(|e| Error::Payload(format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_payloads_stay_plain_json() {
        let v = json!({"task": "app.tasks.send", "args": [1, "x"]});
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&v).unwrap());
        assert_eq!(decode(&bytes).unwrap(), v);
    }

    #[test]
    fn large_payloads_are_compressed_and_round_trip() {
        let v = json!({"blob": "a".repeat(100_000)});
        let bytes = encode(&v).unwrap();
        assert!(bytes.starts_with(&ZSTD_MAGIC));
        assert!(bytes.len() < 10_000);
        assert_eq!(decode(&bytes).unwrap(), v);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"not json").is_err());
        assert!(decode(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]).is_err());
    }
}
