//! What the effects read from the runtime's configuration (the same source
//! the front reads): which credential's record, where requests may go, limits.

use crate::target::Target;
use alloc::format;
use alloc::string::{String, ToString};
use rekey_edge_rt::config::{self, Source};

pub struct Settings {
    /// The guest path of a preopened directory (`wasmtime serve --dir HOST::GUEST`).
    pub keys_dir: String,
    /// The credential's name: its record is `<name>@<generation>.json`.
    pub credential: String,
    /// `REKEY_TEST_HOLD_WRITES=1`: the scenarios' hook (`wasi_dir.rs`), for
    /// tests only; `lib.rs` warns on stderr whenever it is set.
    pub test_hold_writes: bool,
    pub token_url: Target,
    pub upstream: Target,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub between_bytes_timeout_ms: u64,
    pub max_response_bytes: u64,
}

impl Settings {
    pub fn load() -> Result<Settings, String> {
        let src = config::source()?;
        let required = |name: &str| {
            src.get(name)
                .ok_or_else(|| format!("{name} is not configured"))
        };
        Ok(Settings {
            keys_dir: src
                .get("REKEY_KEYS_DIR")
                .unwrap_or_else(|| "/keys".to_string()),
            credential: src
                .get("REKEY_CREDENTIAL")
                .unwrap_or_else(|| "default".to_string()),
            test_hold_writes: match src.get("REKEY_TEST_HOLD_WRITES").as_deref() {
                None => false,
                Some("1") => true,
                Some(_) => return Err("REKEY_TEST_HOLD_WRITES must be 1 or unset".into()),
            },
            token_url: Target::parse(&required("REKEY_TOKEN_URL")?)
                .map_err(|e| format!("REKEY_TOKEN_URL: {e}"))?,
            upstream: Target::parse(&required("REKEY_UPSTREAM")?)
                .map_err(|e| format!("REKEY_UPSTREAM: {e}"))?,
            connect_timeout_ms: config::number(&src, "REKEY_CONNECT_TIMEOUT_MS", 10_000)?,
            first_byte_timeout_ms: config::number(&src, "REKEY_FIRST_BYTE_TIMEOUT_MS", 30_000)?,
            between_bytes_timeout_ms: config::number(
                &src,
                "REKEY_BETWEEN_BYTES_TIMEOUT_MS",
                30_000,
            )?,
            max_response_bytes: config::number(&src, "REKEY_MAX_RESPONSE_BYTES", 4 << 20)?,
        })
    }
}
