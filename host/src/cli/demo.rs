//! `rekey demo`: the whole routine on this machine alone. An embedded
//! provider issues 2-second access tokens and rotates refresh tokens (a reused
//! one is refused and kills the grant); requests go through the real guest and
//! host across several expiries, with each strategy; every exchange that
//! crosses the sandbox boundary is printed as it happens.

use super::{Exit, Failure};
use rekey::observe::{Event, Exchange, Observer};
use rekey::{
    ClientAuth, Config, KeyStore, Rekey, Request, Settings, SqliteStore, Strategy, TokenSet,
};
use rekey_testkit::{Provider, ProviderConfig};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUESTS_PER_STRATEGY: u32 = 7;
const SPACING: Duration = Duration::from_millis(700);

/// Prints the timeline; counts what it saw.
struct Timeline {
    started: std::sync::OnceLock<Instant>,
    api_in_call: AtomicU32,
    persisted: AtomicU32,
    rotations: AtomicU32,
    last_line: Mutex<()>,
}

impl Timeline {
    fn line(&self, text: &str) {
        let _one_at_a_time = self.last_line.lock();
        println!(
            "[{:6.2}s] {text}",
            self.started
                .get_or_init(Instant::now)
                .elapsed()
                .as_secs_f64()
        );
    }
}

impl Observer for Timeline {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Http {
                exchange: Exchange::Api,
                method,
                target,
                outcome,
                ..
            } => {
                let path = target.splitn(4, '/').nth(3).unwrap_or("");
                let retry = if self.api_in_call.fetch_add(1, Ordering::SeqCst) > 0 {
                    " (retry)"
                } else {
                    ""
                };
                let result = match outcome {
                    Ok(401) => "401 token rejected".to_string(),
                    Ok(s) => s.to_string(),
                    Err(e) => format!("failed: {e}"),
                };
                self.line(&format!("  → {method} /{path}{retry}  ← {result}"));
            }
            Event::Http {
                exchange: Exchange::TokenEndpoint,
                outcome,
                ..
            } => {
                let result = match outcome {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("failed: {e}"),
                };
                self.line(&format!(
                    "  ↻ refresh: POST /token grant_type=refresh_token  ← {result}"
                ));
            }
            Event::KeysPersisted {
                version,
                refresh_token_rotated,
                ..
            } => {
                self.persisted.fetch_add(1, Ordering::SeqCst);
                let rotation = if *refresh_token_rotated {
                    self.rotations.fetch_add(1, Ordering::SeqCst);
                    "new refresh token"
                } else {
                    "refresh token kept"
                };
                self.line(&format!(
                    "  ✔ keys persisted (v{version}, {rotation}; access_token=[redacted] refresh_token=[redacted])"
                ));
            }
            Event::KeysNotPersisted { reason, .. } => {
                self.line(&format!("  ✘ keys NOT persisted: {reason}"))
            }
            Event::LeaseAcquired { .. } => {}
        }
    }
}

pub async fn run() -> Result<Exit, Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(Exit::Failed, format!("demo: {what}: {e}"))
    };
    let provider = Provider::start(ProviderConfig::default())
        .await
        .map_err(|e| fail("start the provider", &e))?;
    let dir = tempfile::tempdir().map_err(|e| fail("create a temporary store", &e))?;
    let store: Arc<dyn KeyStore> = Arc::new(
        SqliteStore::open(dir.path().join("demo.db")).map_err(|e| fail("open the store", &e))?,
    );
    let timeline = Arc::new(Timeline {
        started: std::sync::OnceLock::new(),
        api_in_call: AtomicU32::new(0),
        persisted: AtomicU32::new(0),
        rotations: AtomicU32::new(0),
        last_line: Mutex::new(()),
    });
    let config = Config {
        observer: timeline.clone(),
        ..Config::default()
    };
    let rekey = Rekey::new(config).map_err(|e| fail("load the component", &e))?;

    println!(
        "rekey demo: provider {} issues 2 s access tokens and rotates refresh tokens;",
        provider.token_url()
    );
    println!("a reused refresh token is refused (invalid_grant) and revokes the grant.");
    println!(
        "store: {} (temporary)\n",
        dir.path().join("demo.db").display()
    );

    let mut sent = 0;
    let mut failed = 0;
    for (name, strategy) in [
        ("on-auth-failure", Strategy::OnAuthFailure),
        ("every-request", Strategy::EveryRequest),
        ("before-expiry", Strategy::BeforeExpiry),
    ] {
        let client = provider.client();
        let mut settings = Settings::new(client.token_url, client.client_id)
            .with_secret(client.client_secret)
            .with_auth(ClientAuth::Basic)
            .with_strategy(strategy);
        settings.expiry_margin_secs = 1;
        // Bound, as every credential must be: its token goes to the demo's API only.
        settings.api_origins = vec![provider.base_url()];
        let keys = TokenSet::import(&provider.authorize().to_string())
            .map_err(|e| fail("import the first token set", &e))?;
        store
            .put(name, &settings, Some(&keys))
            .map_err(|e| fail("store the credential", &e))?;
        let margin = if strategy == Strategy::BeforeExpiry {
            ", margin 1 s"
        } else {
            ""
        };
        println!(
            "── strategy {name}{margin}: credential stored (v0), {REQUESTS_PER_STRATEGY} requests {} ms apart",
            SPACING.as_millis()
        );

        for i in 1..=REQUESTS_PER_STRATEGY {
            timeline.api_in_call.store(0, Ordering::SeqCst);
            timeline.line(&format!("request {i}"));
            let req = Request::new("POST", &provider.api_url("orders"))
                .header("content-type", "application/json")
                .body(format!("{{\"order\":{i}}}"));
            sent += 1;
            match rekey.send(store.clone(), name, req).await {
                Ok(resp) => timeline.line(&format!(
                    "  = {} {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                )),
                Err(e) => {
                    failed += 1;
                    timeline.line(&format!("  = error: {e}"));
                }
            }
            tokio::time::sleep(SPACING).await;
        }
        let stored = store.load(name).map_err(|e| fail("read the store", &e))?;
        let live = stored
            .keys
            .as_ref()
            .and_then(|k| serde_json::from_str::<serde_json::Value>(k.expose()).ok())
            .and_then(|v| {
                v["refresh_token"]
                    .as_str()
                    .map(|rt| provider.refresh_token_is_live(rt))
            })
            .unwrap_or(false);
        println!(
            "   store now at v{}; its refresh token is live at the provider: {}\n",
            stored.version,
            if live { "yes" } else { "NO" }
        );
        if !live {
            failed += 1;
        }
    }

    println!("── no keys stored: what a host sees before anyone has authorised");
    let client = provider.client();
    let mut settings =
        Settings::new(client.token_url, client.client_id).with_secret(client.client_secret);
    settings.api_origins = vec![provider.base_url()];
    store
        .put("unauthorised", &settings, None)
        .map_err(|e| fail("store the credential", &e))?;
    match rekey
        .send(
            store.clone(),
            "unauthorised",
            Request::get(&provider.api_url("orders")),
        )
        .await
    {
        Err(e) if e.needs_authorization() => {
            println!(
                "   error (exit code {}): {e}\n",
                super::Exit::from(e.category()).code()
            )
        }
        other => {
            failed += 1;
            println!("   UNEXPECTED: {:?}\n", other.map(|r| r.status));
        }
    }

    let stats = provider.stats();
    println!("summary");
    println!("  requests sent            {sent} ({failed} failed)");
    println!(
        "  API calls (incl. retries) {}, of them 401: {}",
        stats.api_calls, stats.api_unauthorized
    );
    println!(
        "  token endpoint calls     {} ({} refreshes granted)",
        stats.token_calls, stats.refreshes_granted
    );
    println!(
        "  keys persisted           {} ({} with a rotated refresh token)",
        timeline.persisted.load(Ordering::SeqCst),
        timeline.rotations.load(Ordering::SeqCst)
    );
    println!(
        "  invalid_grant            {} (reused refresh tokens: {})",
        stats.invalid_grant, stats.reused_refresh_tokens
    );
    if failed > 0 || stats.invalid_grant > 0 {
        return Err(Failure::new(
            Exit::Failed,
            "demo: something went wrong (see above)",
        ));
    }
    Ok(Exit::Ok)
}
