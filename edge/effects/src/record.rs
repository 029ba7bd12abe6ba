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
        format!("{{\"holder\": {}, \"until_ms\": {}}}", quote(&l.holder), l.until_ms)
    });
    let mark = data.refresh_mark.as_ref().map_or("null".into(), |m| {
        format!("{{\"holder\": {}, \"at_ms\": {}}}", quote(&m.holder), m.at_ms)
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
    keys.starts_with('{')
        && keys.ends_with('}')
        && serde_json::from_str::<&RawValue>(keys).is_ok()
}
