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
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The format this code writes and reads; a newer one is refused.
const FORMAT: u64 = 1;
const MARKER: &str = "rekey_record";

/// What a backend's bytes hold.
pub enum Decoded {
    Record(StoredRecord),
    /// A 0.2 keys file: the token set, as text.
    Keys02(String),
}

/// Decodes stored bytes. Errors name the field, never a value.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let text = core::str::from_utf8(bytes).map_err(|_| "the record is not UTF-8".to_string())?;
    let fields = match serde_json::from_str::<BTreeMap<String, &RawValue>>(text) {
        Ok(fields) if fields.contains_key(MARKER) => fields,
        // Not a record: a 0.2 token set (the guest judges whether it is usable).
        _ => return Ok(Decoded::Keys02(text.into())),
    };
    let value = |name: &str| -> Result<Value, String> {
        match fields.get(name) {
            None => Ok(Value::Null),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| format!("the record's {name} is not JSON")),
        }
    };
    match value(MARKER)?.as_u64() {
        Some(FORMAT) => {}
        Some(n) if n > FORMAT => {
            return Err(format!(
                "the record has format {n}, newer than this proxy knows ({FORMAT})"
            ));
        }
        _ => return Err(format!("the record's {MARKER} is not {FORMAT}")),
    }
    let version = value("version")?
        .as_u64()
        .ok_or("the record's version is not a whole number")?;
    let keys = match fields.get("keys") {
        None => None,
        Some(raw) => match value("keys")? {
            Value::Null => None,
            Value::String(text) => Some(text),
            Value::Object(_) => Some(raw.get().to_string()),
            _ => return Err("the record's keys are neither an object nor text".into()),
        },
    };
    let object = |name: &str| -> Result<Option<Map<String, Value>>, String> {
        match value(name)? {
            Value::Null => Ok(None),
            Value::Object(map) => Ok(Some(map)),
            _ => Err(format!("the record's {name} is not an object")),
        }
    };
    let text = |map: &Map<String, Value>, outer: &str, name: &str| -> Result<String, String> {
        map.get(name)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| format!("the record's {outer}.{name} is not text"))
    };
    let number = |map: &Map<String, Value>, outer: &str, name: &str| -> Result<u64, String> {
        map.get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("the record's {outer}.{name} is not a whole number"))
    };
    let lease = match object("lease")? {
        None => None,
        Some(m) => Some(Lease {
            holder: text(&m, "lease", "holder")?,
            until_ms: number(&m, "lease", "until_ms")?,
        }),
    };
    let refresh_mark = match object("refresh_mark")? {
        None => None,
        Some(m) => Some(RefreshMark {
            holder: text(&m, "refresh_mark", "holder")?,
            at_ms: number(&m, "refresh_mark", "at_ms")?,
        }),
    };
    let dead_grant = match object("dead_grant")? {
        None => None,
        Some(m) => Some(DeadGrant {
            code: text(&m, "dead_grant", "code")?,
            at: number(&m, "dead_grant", "at")?,
        }),
    };
    Ok(Decoded::Record(StoredRecord {
        version,
        data: CredentialRecord {
            keys,
            lease,
            refresh_mark,
            dead_grant,
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
    let quote = |s: &str| Value::String(s.into()).to_string();
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
