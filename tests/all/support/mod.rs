//! Shared harness for the end-to-end scenarios: a loopback provider, a real
//! SQLite store in a temporary directory, the real host and guest, and the
//! real `rekey` binary. Nothing here stands in for either side of the sandbox.

use rekey::observe::{Event, Exchange, Observer};
use rekey::{ClientAuth, Config, KeyStore, Rekey, Settings, SqliteStore, Strategy, TokenSet};
use rekey_testkit::{Provider, ProviderConfig};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod peers;
pub mod postgres;

/// A peer the scenarios need is missing: skip loudly, or fail where every
/// peer is required (`REKEY_REQUIRE_PEERS=1`, as `.ci/run` sets).
pub fn missing_peer(what: &str) {
    if std::env::var_os("REKEY_REQUIRE_PEERS").is_some() {
        panic!("{what} (REKEY_REQUIRE_PEERS is set, so this fails instead of skipping)");
    }
    eprintln!("\n==================== SKIPPED: {what} ====================\n");
}

/// One scenario's world.
pub struct Fixture {
    pub provider: Arc<Provider>,
    pub store: Arc<SqliteStore>,
    pub rekey: Rekey,
    pub events: Arc<Recorder>,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new(provider: ProviderConfig) -> Fixture {
        Self::with(provider, Config::default(), Duration::from_secs(5)).await
    }

    /// With host settings and the store's busy timeout chosen by the test.
    pub async fn with(provider: ProviderConfig, mut config: Config, busy: Duration) -> Fixture {
        let provider = Provider::start(provider).await.expect("start the provider");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open_with_busy_timeout(dir.path().join("rekey.db"), busy)
                .expect("open the store"),
        );
        let events = Arc::new(Recorder::default());
        config.observer = events.clone();
        let rekey = Rekey::new(config).expect("load the component");
        Fixture {
            provider,
            store,
            rekey,
            events,
            dir,
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("rekey.db")
    }

    pub fn store_dyn(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }

    /// Settings that match the provider's client, with this strategy and auth.
    pub fn settings(&self, strategy: Strategy, auth: ClientAuth) -> Settings {
        client_settings(&self.provider, strategy, auth)
    }

    /// Authorises at the provider and stores the credential; returns the
    /// first token response.
    pub fn add_credential(&self, name: &str, settings: &Settings) -> serde_json::Value {
        let first = self.provider.authorize();
        let keys = TokenSet::import(&first.to_string()).expect("token response imports");
        self.store
            .put(name, settings, Some(&keys))
            .expect("store the credential");
        first
    }

    /// `GET /api/<path>` through rekey with credential `name`.
    pub async fn get(&self, name: &str, path: &str) -> Result<rekey::Response, rekey::Error> {
        self.rekey
            .send(
                self.store_dyn(),
                name,
                rekey::Request::get(&self.provider.api_url(path)),
            )
            .await
    }

    /// The stored keys as JSON.
    pub fn stored_keys(&self, name: &str) -> serde_json::Value {
        let keys = self
            .store
            .load(name)
            .expect("credential")
            .keys
            .expect("keys stored");
        serde_json::from_str(keys.expose()).expect("stored keys are JSON")
    }

    /// The stored keys and the record's version.
    pub fn stored_raw(&self, name: &str) -> (Option<TokenSet>, u64) {
        let c = self.store.load(name).expect("credential");
        (c.keys, c.version)
    }
}

/// Writes of the credential's record one uncontended refresh makes: the
/// lease, the refresh mark right before the token request, and the new keys
/// with both cleared (the component's fleet protocol, `guest/src/fleet.rs`).
pub const WRITES_PER_REFRESH: u64 = 3;

/// Settings for the provider's client: the one place scenarios, the fleet and
/// benches build them.
pub fn client_settings(provider: &Provider, strategy: Strategy, auth: ClientAuth) -> Settings {
    let client = provider.client();
    let mut s = Settings::new(client.token_url, client.client_id)
        .with_secret(client.client_secret)
        .with_auth(auth)
        .with_strategy(strategy);
    // Bound to the provider's API, as every credential must be.
    s.api_origins = vec![api_origin(provider)];
    s
}

/// The origin of the provider's protected API (`http://127.0.0.1:PORT`).
pub fn api_origin(provider: &Provider) -> String {
    url::Url::parse(&provider.api_url(""))
        .expect("the provider's API URL parses")
        .origin()
        .ascii_serialization()
}

/// A new grant at the provider, imported as a first token set.
pub fn first_token_set(provider: &Provider) -> TokenSet {
    TokenSet::import(&provider.authorize().to_string()).expect("token response imports")
}

/// Counts what crossed the sandbox boundary, as the host observed it.
#[derive(Default)]
pub struct Recorder {
    log: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

impl Observer for Recorder {
    fn event(&self, event: &Event<'_>) {
        let line = match event {
            Event::Http {
                exchange: Exchange::Api,
                outcome,
                ..
            } => format!("api {outcome:?}"),
            Event::Http {
                exchange: Exchange::TokenEndpoint,
                outcome,
                ..
            } => format!("token {outcome:?}"),
            Event::KeysPersisted {
                refresh_token_rotated,
                ..
            } => format!("persisted rotated={refresh_token_rotated}"),
            Event::KeysNotPersisted { .. } => "not persisted".into(),
            Event::LeaseAcquired { .. } => "lease".into(),
        };
        self.log.lock().unwrap().push(line);
    }
}

/// A provider config with this access-token lifetime.
pub fn provider_with_ttl(ttl: Duration) -> ProviderConfig {
    ProviderConfig {
        access_ttl: ttl,
        ..ProviderConfig::default()
    }
}

pub fn str_field<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("field {name} missing"))
}

/// The `rekey` binary cargo built for these tests.
pub fn rekey_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rekey"))
}

/// Runs the CLI against a store; stdin is empty.
pub fn rekey_cli(store: &Path, args: &[&str]) -> Output {
    rekey_cli_env(store, args, &[])
}

pub fn rekey_cli_env(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(rekey_bin());
    cmd.arg("--store")
        .arg(store)
        .args(args)
        .stdin(std::process::Stdio::null());
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run rekey")
}

/// stdout and stderr together, for "never printed" checks.
pub fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A plain GET over HTTP/1.0: status, `location` header, body.
pub fn fetch(url: &str) -> (u16, Option<String>, String) {
    let u = url::Url::parse(url).expect("URL");
    let mut stream =
        std::net::TcpStream::connect((u.host_str().unwrap(), u.port().unwrap())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nhost: {}\r\n\r\n",
        u.authority()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    (status, location, body.to_owned())
}
