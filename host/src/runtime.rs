//! Compiling the component once and running one call per `Store`.

use crate::bindings::rekey::oauth2::types::{self as wit, Request, Response, TransportError};
use crate::bindings::{Client, ClientImports, ClientPre};
use crate::cache::{self, Origin};
use crate::error::{Error, describe_transport};
use crate::http::{HttpClient, HttpConfig};
use crate::lease::{HeldLease, Leases};
use crate::observe::{Event, Exchange, Observer, TracingObserver, loggable_target};
use crate::secret::Secret;
use crate::store::{KeyStore, call_store};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// How often the epoch advances; the call deadline is counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Time kept in hand after a token exchange, to persist its result.
const SPEND_MARGIN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Config {
    pub http: HttpConfig,
    /// Linear memory a call may grow to.
    pub memory_limit_bytes: usize,
    /// Wall-clock bound on one call, network waits included; past it the
    /// guest traps at its next instruction.
    pub call_timeout: Duration,
    /// How long a call waits for another worker's refresh to finish.
    pub lease_timeout: Duration,
    /// How long a refresh lease lasts unless renewed; it is renewed before
    /// each token-endpoint attempt, so it must cover one attempt (the HTTP
    /// total timeout) plus a backoff. A worker that dies holding it delays
    /// the others by at most this.
    pub lease_ttl: Duration,
    pub observer: Arc<dyn Observer>,
    /// Pre-allocate instance slots for this many concurrent calls (the
    /// pooling allocator: instantiation in microseconds). Further calls wait
    /// for a slot. `None`: allocate on demand.
    pub pooling: Option<u32>,
    /// Where compiled native code is cached between processes; `None`
    /// compiles at every start. See [`crate::cache`].
    pub cache_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            memory_limit_bytes: 32 * 1024 * 1024,
            call_timeout: Duration::from_secs(120),
            lease_timeout: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(40),
            observer: Arc::new(TracingObserver),
            pooling: Some(128),
            cache_dir: None,
        }
    }
}

/// A loaded rekey component. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Rekey {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    origin: Origin,
    /// Bounds concurrent calls to the pool's slots.
    slots: Option<Semaphore>,
    pre: ClientPre<CallState>,
    http: HttpClient,
    leases: Leases,
    config: Config,
}

impl Rekey {
    /// Compiles the embedded guest component.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Self::from_component_bytes(config, crate::GUEST_WASM)
    }

    pub fn from_component_bytes(config: Config, wasm: &[u8]) -> anyhow::Result<Self> {
        if config.lease_ttl <= config.http.total_timeout {
            anyhow::bail!(
                "lease_ttl ({:?}) must exceed the HTTP total timeout ({:?}): the lease is renewed once per token-endpoint attempt",
                config.lease_ttl,
                config.http.total_timeout
            );
        }
        let mut wasm_config = wasmtime::Config::new();
        wasm_config.epoch_interruption(true);
        if let Some(slots) = config.pooling {
            wasm_config.allocation_strategy(pooling(slots, config.memory_limit_bytes));
        }
        let engine = Engine::new(&wasm_config)?;
        let (component, origin) =
            cache::load_or_compile(&engine, wasm, config.cache_dir.as_deref())?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Client::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let pre = ClientPre::new(linker.instantiate_pre(&component)?)?;
        start_epoch_ticker(&engine);
        Ok(Rekey {
            inner: Arc::new(Inner {
                http: HttpClient::new(&config.http),
                slots: config.pooling.map(|n| Semaphore::new(n as usize)),
                engine,
                origin,
                pre,
                leases: Leases::default(),
                config,
            }),
        })
    }

    /// Whether the component was compiled or loaded from the cache.
    pub fn origin(&self) -> Origin {
        self.inner.origin
    }

    /// Sends `req` for the credential `name` in `store`, refreshing and
    /// persisting as its settings say.
    pub async fn send(
        &self,
        store: Arc<dyn KeyStore>,
        name: &str,
        req: Request,
    ) -> Result<Response, Error> {
        let credential = {
            let name = name.to_owned();
            call_store(&store, move |s| s.load(&name)).await?
        };
        let settings = credential
            .settings
            .to_wit()
            .map_err(Error::InvalidSettings)?;
        let _slot = self.slot().await?;
        let mut wstore = self.new_store(name, &settings.token_url, store);
        let component_failed = |e: wasmtime::Error| Error::Component(format!("{e:#}"));
        let client = self
            .inner
            .pre
            .instantiate_async(&mut wstore)
            .await
            .map_err(component_failed)?;
        let keys = credential.keys.as_ref().map(Secret::expose);
        let result = client
            .call_send_authorized(&mut wstore, &settings, keys, &req)
            .await
            .map_err(component_failed)?;
        wstore.data_mut().end_lease().await;
        result.map_err(Error::from)
    }

    /// Instantiates the component in a fresh `Store` and drops it: the
    /// per-call fixed cost, for benchmarks.
    #[doc(hidden)]
    pub async fn instantiate_only(&self) -> anyhow::Result<()> {
        let _slot = self.slot().await?;
        let mut wstore = self.new_store("", "", Arc::new(crate::MemoryStore::new()));
        self.inner.pre.instantiate_async(&mut wstore).await?;
        Ok(())
    }

    async fn slot(&self) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, Error> {
        match &self.inner.slots {
            None => Ok(None),
            Some(s) => s
                .acquire()
                .await
                .map(Some)
                .map_err(|_| Error::Component("runtime shut down".into())),
        }
    }

    fn new_store(&self, name: &str, token_url: &str, store: Arc<dyn KeyStore>) -> Store<CallState> {
        let inner = &self.inner;
        let state = CallState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(inner.config.memory_limit_bytes)
                .instances(4)
                .build(),
            credential: name.to_owned(),
            token_url: token_url.to_owned(),
            store,
            http: inner.http.clone(),
            observer: inner.config.observer.clone(),
            leases: inner.leases.clone(),
            lease_timeout: inner.config.lease_timeout,
            lease_ttl: inner.config.lease_ttl,
            lease: None,
            deadline: Instant::now() + inner.config.call_timeout,
            http_total_timeout: inner.config.http.total_timeout,
            refresh_token_before: None,
        };
        let mut wstore = Store::new(&inner.engine, state);
        wstore.limiter(|s| &mut s.limits);
        let ticks = inner.config.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        wstore.set_epoch_deadline(ticks.max(1) as u64);
        wstore.epoch_deadline_trap();
        wstore
    }
}

/// Slots for `n` concurrent instances of our component (3 core instances:
/// the module and wit-component's shim and fixup; 1 memory; 1 table each).
fn pooling(n: u32, memory_limit: usize) -> InstanceAllocationStrategy {
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(n)
        .total_core_instances(n * 4)
        .total_memories(n)
        .total_tables(n * 2)
        .total_stacks(n)
        .max_memory_size(memory_limit)
        // Reset a slot by rewriting the few pages a call dirtied (found with
        // PAGEMAP_SCAN on Linux >= 6.7) instead of madvise: no TLB-shootdown
        // interrupts, no page faults on the next call. Measured: warm-path
        // overhead 43 -> 17 us, instantiation 11 -> 6 us; ~6 MiB resident.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    InstanceAllocationStrategy::Pooling(p)
}

/// Advances the epoch while the engine lives; the thread ends at the first
/// tick after the last handle to the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("rekey-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker");
}

/// Everything one call's imports need. Dropped with the `Store`, which ends
/// any lease the call still holds, whether it returned or trapped.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    credential: String,
    token_url: String,
    store: Arc<dyn KeyStore>,
    http: HttpClient,
    observer: Arc<dyn Observer>,
    leases: Leases,
    lease_timeout: Duration,
    lease_ttl: Duration,
    lease: Option<HeldLease>,
    /// When the epoch deadline traps this call.
    deadline: Instant,
    http_total_timeout: Duration,
    /// The refresh token stored when the lease was taken, to tell rotation.
    refresh_token_before: Option<Secret>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for CallState {}

impl CallState {
    /// A refresh token goes out only while this call still holds the lease
    /// and can outlive the exchange: a trap after the provider rotated the
    /// token but before it was persisted would lose the new one.
    async fn may_spend_refresh_token(&mut self) -> Result<(), TransportError> {
        if Instant::now() + self.http_total_timeout + SPEND_MARGIN > self.deadline {
            return Err(TransportError::Refused(
                "too little of the call's time is left to exchange and persist a refresh token"
                    .into(),
            ));
        }
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        match lease.renew(&self.store, &self.credential, self.lease_ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Refused(
                "the refresh lease ran out and another worker may have refreshed; not spending the refresh token".into(),
            )),
            Err(e) => Err(TransportError::Refused(format!("cannot renew the refresh lease: {e}"))),
        }
    }

    async fn end_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release(&self.store, &self.credential).await;
        }
    }
}

impl Drop for CallState {
    fn drop(&mut self) {
        // Only after a trap or cancellation: `send` ends leases itself.
        if let Some(lease) = self.lease.take() {
            lease.release_detached(self.store.clone(), std::mem::take(&mut self.credential));
        }
    }
}

impl ClientImports for CallState {
    async fn http_send(&mut self, req: Request) -> Result<Response, TransportError> {
        let exchange = if req.url == self.token_url {
            Exchange::TokenEndpoint
        } else {
            Exchange::Api
        };
        if exchange == Exchange::TokenEndpoint {
            self.may_spend_refresh_token().await?;
        }
        let method = req.method.clone();
        let target = loggable_target(&req.url);
        let started = Instant::now();
        let result = self.http.send(req).await;
        let failure = result.as_ref().err().map(describe_transport);
        self.observer.event(&Event::Http {
            credential: &self.credential,
            exchange,
            method: &method,
            target: &target,
            outcome: result
                .as_ref()
                .map(|r| r.status)
                .map_err(|_| failure.as_deref().unwrap_or("")),
            elapsed: started.elapsed(),
        });
        result
    }

    async fn emit_update_keys(&mut self, keys: String) -> Result<(), String> {
        let keys = Secret::new(keys);
        let expected = self.lease.as_ref().map(|l| l.version);
        let saved = {
            let (name, keys) = (self.credential.clone(), keys.clone());
            call_store(&self.store, move |s| s.save_keys(&name, &keys, expected)).await
        };
        match saved {
            Ok(version) => {
                let rotated = refresh_token(&keys).is_some_and(|new| {
                    self.refresh_token_before
                        .as_ref()
                        .is_none_or(|old| old.expose() != new.expose())
                });
                self.observer.event(&Event::KeysPersisted {
                    credential: &self.credential,
                    version,
                    refresh_token_rotated: rotated,
                });
                // Durable: others may now refresh from what we stored.
                self.end_lease().await;
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                self.observer.event(&Event::KeysNotPersisted {
                    credential: &self.credential,
                    reason: &reason,
                });
                Err(reason)
            }
        }
    }

    async fn acquire_refresh_lease(&mut self) -> Result<Option<String>, String> {
        if self.lease.is_none() {
            let started = Instant::now();
            let lease = self
                .leases
                .acquire(
                    &self.store,
                    &self.credential,
                    self.lease_ttl,
                    self.lease_timeout,
                )
                .await?;
            self.lease = Some(lease);
            self.observer.event(&Event::LeaseAcquired {
                credential: &self.credential,
                waited: started.elapsed(),
            });
        }
        let name = self.credential.clone();
        let current = call_store(&self.store, move |s| s.load(&name))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(lease) = &mut self.lease {
            lease.version = current.version;
        }
        self.refresh_token_before = current.keys.as_ref().and_then(refresh_token);
        Ok(current.keys.map(|k| k.expose().to_owned()))
    }

    async fn release_refresh_lease(&mut self) {
        self.end_lease().await;
    }
}

fn refresh_token(keys: &Secret) -> Option<Secret> {
    let value: serde_json::Value = serde_json::from_str(keys.expose()).ok()?;
    value.get("refresh_token")?.as_str().map(Secret::new)
}
