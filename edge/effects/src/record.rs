//! The credential's record as bytes: one JSON object, the same for every
//! backend (a file today, a key-value entry tomorrow). Readable and editable
//! by an operator:
//!
//! ```json
//! {"rekey_record": 1, "version": 7, "updated_at": 1733212800,
//!  "lease": null, "refresh_mark": null, "dead_grant": null,
//!  "keys": {"access_token": "…", "refresh_token": "…"}}
//! ```
//!
//! `keys` is the token set embedded as it was given (byte for byte, so the
//! guest reads back exactly what it wrote), or a JSON string when the text
//! is not a JSON object. Anything else that parses as JSON without
//! `rekey_record` is a 0.2 keys file: the token set alone, read as version 0
//! with no lease, mark or dead grant (the first write converts it).

use crate::exports::rekey::oauth2::types::{
    CredentialRecord, DeadGrant, Lease, RefreshMark, StoredRecord,
};
use alloc::format;
use alloc::string::{String, ToString};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The format this code writes and reads; a newer one is refused.
const FORMAT: u64 = 1;
const MARKER: &str = "rekey_record";

/// What a backend's bytes hold.
pub enum Decoded {
    Record(StoredRecord),
    /// A 0.2 keys file: the token set, as text.
    Keys02(String),
}

/// Only the marker: tells a record from a 0.2 token set.
#[derive(Deserialize)]
struct Marker {
    rekey_record: Option<u64>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    version: u64,
    #[serde(borrow)]
    keys: Option<&'a RawValue>,
    lease: Option<LeaseJson>,
    refresh_mark: Option<MarkJson>,
    dead_grant: Option<DeadJson>,
}

#[derive(Deserialize)]
struct LeaseJson {
    holder: String,
    until_ms: u64,
}

#[derive(Deserialize)]
struct MarkJson {
    holder: String,
    at_ms: u64,
}

#[derive(Deserialize)]
struct DeadJson {
    code: String,
    at: u64,
}

/// Decodes stored bytes. Errors give a position, never a value (serde's
/// messages can quote what they found).
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let text = core::str::from_utf8(bytes).map_err(|_| "the record is not UTF-8".to_string())?;
    match serde_json::from_str::<Marker>(text) {
        Ok(Marker {
            rekey_record: Some(FORMAT),
        }) => {}
        Ok(Marker {
            rekey_record: Some(n),
        }) if n > FORMAT => {
            return Err(format!(
                "the record has format {n}, newer than this proxy knows ({FORMAT})"
            ));
        }
        Ok(Marker {
            rekey_record: Some(_),
        }) => return Err(format!("the record's {MARKER} is not {FORMAT}")),
        // Not a record: a 0.2 token set (the guest judges whether it is usable).
        _ => return Ok(Decoded::Keys02(text.into())),
    }
    let damaged = |e: serde_json::Error| {
        format!(
            "the record is damaged (line {} column {})",
            e.line(),
            e.column()
        )
    };
    let f: Fields<'_> = serde_json::from_str(text).map_err(damaged)?;
    let keys = match f.keys.map(RawValue::get) {
        None => None,
        Some(raw) if raw.starts_with('{') => Some(raw.to_string()),
        Some(raw) if raw.starts_with('"') => Some(serde_json::from_str(raw).map_err(damaged)?),
        Some(_) => return Err("the record's keys are neither an object nor text".into()),
    };
    Ok(Decoded::Record(StoredRecord {
        version: f.version,
        data: CredentialRecord {
            keys,
            lease: f.lease.map(|l| Lease {
                holder: l.holder,
                until_ms: l.until_ms,
            }),
            refresh_mark: f.refresh_mark.map(|m| RefreshMark {
                holder: m.holder,
                at_ms: m.at_ms,
            }),
            dead_grant: f.dead_grant.map(|d| DeadGrant {
                code: d.code,
                at: d.at,
            }),
        },
    }))
}

/// The version stored in `bytes` (none stored: 0, like a 0.2 keys file).
pub fn version_of(bytes: Option<&[u8]>) -> Result<u64, String> {
    match bytes.map(decode).transpose()? {
        Some(Decoded::Record(r)) => Ok(r.version),
        Some(Decoded::Keys02(_)) | None => Ok(0),
    }
}

/// The bytes of a record.
pub fn encode(version: u64, data: &CredentialRecord, updated_at: u64) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let lease = data.lease.as_ref().map_or("null".into(), |l| {
        format!(
            "{{\"holder\": {}, \"until_ms\": {}}}",
            quote(&l.holder),
            l.until_ms
        )
    });
    let mark = data.refresh_mark.as_ref().map_or("null".into(), |m| {
        format!(
            "{{\"holder\": {}, \"at_ms\": {}}}",
            quote(&m.holder),
            m.at_ms
        )
    });
    let dead = data.dead_grant.as_ref().map_or("null".into(), |d| {
        format!("{{\"code\": {}, \"at\": {}}}", quote(&d.code), d.at)
    });
    let keys = match &data.keys {
        None => "null".into(),
        Some(k) if embeddable(k) => k.clone(),
        Some(k) => quote(k),
    };
    format!(
        "{{\"{MARKER}\": {FORMAT}, \"version\": {version}, \"updated_at\": {updated_at},\n \
         \"lease\": {lease},\n \"refresh_mark\": {mark},\n \"dead_grant\": {dead},\n \
         \"keys\": {keys}}}\n"
    )
}

/// A JSON object with nothing around it reads back as the same bytes.
fn embeddable(keys: &str) -> bool {
    keys.starts_with('{') && keys.ends_with('}') && serde_json::from_str::<&RawValue>(keys).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(keys: Option<&str>) -> CredentialRecord {
        CredentialRecord {
            keys: keys.map(String::from),
            lease: Some(Lease {
                holder: "h\"1".into(),
                until_ms: u64::MAX,
            }),
            refresh_mark: Some(RefreshMark {
                holder: "h\"1".into(),
                at_ms: 1,
            }),
            dead_grant: Some(DeadGrant {
                code: "invalid_grant".into(),
                at: 2,
            }),
        }
    }

    type Fields = (
        Option<String>,
        Option<(String, u64)>,
        Option<(String, u64)>,
        Option<(String, u64)>,
    );

    fn fields(r: &CredentialRecord) -> Fields {
        (
            r.keys.clone(),
            r.lease.as_ref().map(|l| (l.holder.clone(), l.until_ms)),
            r.refresh_mark.as_ref().map(|m| (m.holder.clone(), m.at_ms)),
            r.dead_grant.as_ref().map(|d| (d.code.clone(), d.at)),
        )
    }

    fn round_trip(data: &CredentialRecord) -> StoredRecord {
        match decode(encode(7, data, 3).as_bytes()).unwrap_or_else(|e| panic!("{e}")) {
            Decoded::Record(r) => r,
            Decoded::Keys02(_) => panic!("a record read as 0.2 keys"),
        }
    }

    #[test]
    fn every_field_reads_back_as_written() {
        // The guest resolves a failed write by comparing what it reads with
        // what it wrote: keys must come back byte for byte.
        for keys in [
            Some("{\"access_token\":\"a\",  \"n\": 1.50, \"z\":{}}"),
            Some(" {\"padded\":true} "),
            Some("[1,2]"),
            Some("\"text\""),
            Some("not json"),
            Some(""),
            None,
        ] {
            let data = record(keys);
            let back = round_trip(&data);
            assert_eq!(back.version, 7);
            assert_eq!(fields(&back.data), fields(&data), "{keys:?}");
        }
        let empty = CredentialRecord {
            keys: None,
            lease: None,
            refresh_mark: None,
            dead_grant: None,
        };
        assert_eq!(fields(&round_trip(&empty).data), fields(&empty));
    }

    #[test]
    fn a_token_set_alone_is_a_0_2_keys_file() {
        let text = "{\"access_token\":\"a\",\"refresh_token\":\"r\"}";
        assert!(matches!(decode(text.as_bytes()), Ok(Decoded::Keys02(k)) if k == text));
        assert!(matches!(decode(b"garbage"), Ok(Decoded::Keys02(_))));
        assert_eq!(version_of(Some(text.as_bytes())), Ok(0));
        assert_eq!(version_of(None), Ok(0));
    }

    #[test]
    fn a_damaged_or_newer_record_is_refused_without_its_content() {
        let secret = "s3cr3t";
        for bad in [
            format!("{{\"rekey_record\": 2, \"version\": 1, \"keys\": \"{secret}\"}}"),
            format!("{{\"rekey_record\": 1, \"keys\": \"{secret}\"}}"),
            format!("{{\"rekey_record\": 1, \"version\": 1, \"keys\": 5, \"x\": \"{secret}\"}}"),
            format!(
                "{{\"rekey_record\": 1, \"version\": 1, \"lease\": {{\"holder\": \"{secret}\"}}}}"
            ),
        ] {
            match decode(bad.as_bytes()) {
                Err(e) => assert!(!e.contains(secret), "{e}"),
                Ok(_) => panic!("accepted {bad}"),
            }
        }
    }
}
