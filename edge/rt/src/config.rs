//! Configuration as the runtime supplies it: `wasi:config/store` first (what
//! wasmCloud and Spin provide; `wasmtime serve -S config -S config-var=K=V`),
//! then `wasi:cli/environment` (`wasmtime serve --env`) for whatever the store
//! does not hold. Both are read once per instance (one per request).

use crate::wasi::cli::environment;
use crate::wasi::config::store;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Where settings come from.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// Name/value pairs; an empty value counts as unset.
pub struct Pairs(Vec<(String, String)>);

impl Source for Pairs {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

/// The store's value, else the environment's. The store is asked key by
/// key (`get`): `wasmtime serve -S config` (49) links `get` but not
/// `get-all`, and a component that imports what the runtime lacks does not
/// start.
pub struct Layered {
    env: Pairs,
}

impl Source for Layered {
    fn get(&self, name: &str) -> Option<String> {
        match store::get(name) {
            Ok(Some(v)) if !v.is_empty() => Some(v),
            // A store that fails for a key leaves it to the environment; the
            // failure is logged (the runtime's words, never a value).
            Err(store::Error::Upstream(m) | store::Error::Io(m)) => {
                crate::log::line(&format!(
                    "rekey-edge: wasi:config/store failed for {name}: {m}"
                ));
                self.env.get(name)
            }
            _ => self.env.get(name),
        }
    }
}

/// The configuration source the adapters read.
pub fn source() -> Result<Layered, String> {
    Ok(Layered {
        env: Pairs(environment::get_environment()),
    })
}

/// A whole number setting, or `default` when unset. A value that is set but
/// not a number is an error naming the setting (never its value).
pub fn number(src: &dyn Source, name: &str, default: u64) -> Result<u64, String> {
    match src.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| alloc::format!("{name} is not a whole number")),
    }
}

/// A comma-separated list, trimmed, empty items dropped; none when unset.
pub fn list(src: &dyn Source, name: &str) -> Option<Vec<String>> {
    src.get(name).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}
