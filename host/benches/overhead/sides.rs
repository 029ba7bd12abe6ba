//! The sides of every comparison: rekey configured as `Rekey::new` is by
//! default (only the observer and the cache differ), and the native
//! baseline; and what each does once per sample.

use crate::native;
use rekey::observe::{Event, Observer};
use rekey::{Config, KeyStore, Rekey, Request, TokenSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The credential the warm request uses, in every store.
pub const WARM: &str = "warm";
/// The credential the refresh path uses: its access token is rejected
/// before each sample.
pub const REFRESH: &str = "refresh";

/// The pool `Config::default()` gives `Rekey::new`: the bench measures that.
pub fn default_pool() -> u32 {
    Config::default()
        .pooling
        .expect("Config::default() uses the pooling allocator")
}

/// Events cost nothing here: the native side logs nothing either.
struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// `Config::default()` but for the allocator, the cache and a no-op observer.
pub fn config(pooling: Option<u32>, cache_dir: Option<&Path>) -> Config {
    Config {
        observer: Arc::new(Quiet),
        pooling,
        cache_dir: cache_dir.map(Path::to_path_buf),
        ..Config::default()
    }
}

/// One side of a comparison, sending the warm request (valid token, 200).
#[derive(Clone)]
pub enum Caller {
    Rekey {
        rekey: Rekey,
        store: Arc<dyn KeyStore>,
    },
    Native {
        client: reqwest::Client,
        token: Arc<str>,
    },
}

impl Caller {
    pub async fn warm(&self, url: &str) {
        let status = match self {
            Caller::Rekey { rekey, store } => {
                let resp = rekey
                    .send(store.clone(), WARM, Request::get(url))
                    .await
                    .expect("rekey warm request");
                resp.status
            }
            Caller::Native { client, token } => native::get(client, url, token, "warm").await,
        };
        assert_eq!(status, 200, "warm request was not accepted");
    }

    /// How long one warm request took.
    pub async fn timed_warm(&self, url: &str) -> Duration {
        let t = Instant::now();
        self.warm(url).await;
        t.elapsed()
    }
}

/// Rejects the `REFRESH` credential's access token (untimed), then times
/// rekey's 401 → refresh → retry.
pub async fn rekey_refresh(rekey: &Rekey, store: &Arc<dyn KeyStore>, api: &str) -> Duration {
    expire_access_token(&**store, REFRESH);
    let t = Instant::now();
    let resp = rekey
        .send(store.clone(), REFRESH, Request::get(api))
        .await
        .expect("rekey refresh path");
    let elapsed = t.elapsed();
    assert_eq!(resp.status, 200, "rekey retry rejected");
    elapsed
}

/// Rejected access token, currently valid (latest rotated) refresh token.
fn expire_access_token(store: &dyn KeyStore, name: &str) {
    let c = store.load(name).expect("credential");
    let keys = c.keys.expect("keys");
    let keys: serde_json::Value = serde_json::from_str(keys.expose()).expect("keys JSON");
    let refresh = keys["refresh_token"].as_str().expect("refresh token");
    let reset = serde_json::json!({ "access_token": "expired", "refresh_token": refresh });
    store
        .put(
            name,
            &c.settings,
            Some(&TokenSet::stored(reset.to_string())),
        )
        .expect("reset keys");
}
