//! Configuration as the runtime supplies it. One seam (`Source`) so a
//! `wasi:config/store` source can stand beside the environment: `wasmtime
//! serve` offers `wasi:cli/environment` by default and `wasi:config` only
//! behind `-S config`, and a component cannot import an interface optionally.

use crate::wasi::cli::environment;
use alloc::string::String;
use alloc::vec::Vec;

/// Where settings come from.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// `wasi:cli/environment` (`wasmtime serve --env NAME[=VALUE]`).
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn load() -> Env {
        Env(environment::get_environment())
    }
}

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

/// The configuration source the adapters read.
pub fn source() -> Env {
    Env::load()
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
