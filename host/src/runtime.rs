//! Compiling the component once and running one call per `Store`.

use crate::bindings::RefresherPre;
use crate::bindings::exports::rekey::oauth2::client::KeepaliveOutcome as KeepaliveWit;
use crate::bindings::rekey::oauth2::types::{FleetTiming, TransportError};
use crate::bindings::rekey::oauth2::{host, signer, types};
use crate::body;
use crate::cache::{self, Origin};
use crate::call::{self, CallState, Destinations};
use crate::dpop::DpopSigner;
use crate::drive::{MustFinish, drive};
use crate::error::{Error, describe_transport};
use crate::http::{HttpClient, HttpConfig};
use crate::observe::{Observer, TracingObserver};
use crate::signing::Signer;
use crate::store::{KeyStore, load_credential};
use crate::warm::{self, Warm, WarmInstances};
use crate::{Request, Response};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};
use wasmtime_wasi::WasiCtx;

/// How often the epoch advances; the call deadline is counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How a [`Rekey`] runs calls.
#[derive(Clone)]
pub struct Config {
    /// Timeouts and size cap of every HTTP exchange.
    pub http: HttpConfig,
    /// Linear memory a call may grow to.
    pub memory_limit_bytes: usize,
    /// Wall-clock bound on one call, network waits included; past it the
    /// guest traps at its next instruction.
    pub call_timeout: Duration,
    /// How long a call waits for another worker's refresh to finish (the
    /// component's `fleet-timing.lease-wait-ms`).
    pub lease_timeout: Duration,
    /// How long a refresh lease lasts unless renewed (`lease-ttl-ms`); the
    /// component renews it before each token-endpoint attempt, so it must
    /// cover one attempt (the HTTP total timeout) plus a backoff. A worker
    /// that dies holding it delays the others by at most this. Workers
    /// sharing a store must have clocks that agree to well within it.
    pub lease_ttl: Duration,
    /// Receives every exchange and persistence event (the CLI logs them).
    pub observer: Arc<dyn Observer>,
    /// Pre-allocate instance slots for this many concurrent calls (the
    /// pooling allocator: instantiation in microseconds). Further calls wait
    /// for a slot. `None`: allocate on demand.
    pub pooling: Option<u32>,
    /// Where compiled native code is cached between processes; `None`
    /// compiles at every start. See [`crate::cache`].
    pub cache_dir: Option<PathBuf>,
    /// Larger request bodies are refused before the call. (A body stays in
    /// the host, shared with the HTTP client, never copied into the
    /// component; the bound is on what one call holds in memory.)
    pub max_request_bytes: usize,
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
            max_request_bytes: 8 * 1024 * 1024,
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
    /// Bounds one credential's concurrent calls to its share of the slots.
    shares: Shares,
    pre: RefresherPre<CallState>,
    /// Instances kept between one credential's calls (see [`crate::warm`]).
    warm: WarmInstances,
    /// Instances created so far, for tests of reuse.
    instantiated: AtomicU64,
    /// What an idle instance's host state points at instead of a real store.
    parked_store: Arc<dyn KeyStore>,
    http: HttpClient,
    /// The component's fleet timing, from `config`.
    fleet: FleetTiming,
    config: Config,
}

/// What [`Rekey::keepalive`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveOutcome {
    /// The stored token set is younger than asked and its refresh token not
    /// about to expire, or another worker renewed it meanwhile: nothing was
    /// spent.
    Fresh,
    /// The refresh token was exchanged and the result stored.
    Refreshed,
    /// The grant keeps no refresh token (client credentials, jwt-bearer):
    /// nothing dies from disuse, nothing was sent.
    NothingToKeep,
}

impl std::fmt::Display for KeepaliveOutcome {
    /// `fresh`, `refreshed`, `nothing to keep`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeepaliveOutcome::Fresh => "fresh",
            KeepaliveOutcome::Refreshed => "refreshed",
            KeepaliveOutcome::NothingToKeep => "nothing to keep",
        })
    }
}

impl Rekey {
    /// Compiles the embedded guest component.
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::from_component_bytes(config, crate::GUEST_WASM)
    }

    /// Compiles (or loads from the cache) another build of the component.
    pub fn from_component_bytes(config: Config, wasm: &[u8]) -> Result<Self, Error> {
        if config.lease_ttl <= config.http.total_timeout {
            return Err(Error::InvalidConfig(format!(
                "lease_ttl ({:?}) must exceed the HTTP total timeout ({:?}): the lease is renewed once per token-endpoint attempt",
                config.lease_ttl, config.http.total_timeout
            )));
        }
        Self::load(config, wasm)
            .map_err(|e| Error::Component(format!("loading the component: {e:#}")))
    }

    fn load(config: Config, wasm: &[u8]) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&config))?;
        let (component, origin) =
            cache::load_or_compile(&engine, wasm, config.cache_dir.as_deref())?;
        let mut linker = Linker::<CallState>::new(&engine);
        // Exactly what the component imports: the clocks (and the pollable
        // its sleeps wait on), randomness, rekey's host interface and the
        // signer (the credential's key, which stays here).
        add_wasi_to_linker(&mut linker)?;
        types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        signer::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let pre = RefresherPre::new(linker.instantiate_pre(&component)?)?;
        start_epoch_ticker(&engine);
        Ok(Rekey {
            inner: Arc::new(Inner {
                http: HttpClient::new(&config.http),
                slots: config.pooling.map(|n| Semaphore::new(n as usize)),
                shares: Shares::new(config.pooling),
                warm: WarmInstances::new(idle_instances(config.pooling)),
                instantiated: AtomicU64::new(0),
                parked_store: Arc::new(crate::MemoryStore::new()),
                engine,
                origin,
                pre,
                fleet: FleetTiming {
                    lease_ttl_ms: millis(config.lease_ttl),
                    lease_wait_ms: millis(config.lease_timeout),
                },
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
    ///
    /// A caller that stops waiting (a dropped future, an embedder's timeout)
    /// or stops polling does not cut a refresh short or stall it, lease
    /// held, between the provider's rotation and the durable write of its
    /// result: once a call refreshes, a task of its own drives it too (see
    /// [`crate::drive`]).
    pub async fn send(
        &self,
        store: Arc<dyn KeyStore>,
        name: &str,
        req: Request,
    ) -> Result<Response, Error> {
        let url = check_request(&req, self.inner.config.max_request_bytes)?;
        let must_finish = MustFinish::default();
        let (this, name, flag) = (self.clone(), name.to_owned(), must_finish.clone());
        drive(
            async move { this.call(store, &name, req, url, flag).await },
            must_finish,
        )
        .await
    }

    async fn call(
        &self,
        store: Arc<dyn KeyStore>,
        name: &str,
        req: Request,
        url: reqwest::Url,
        must_finish: MustFinish,
    ) -> Result<Response, Error> {
        let (credential, settings) = self.load_for_call(&store, name).await?;
        let destinations = Destinations::of(&credential)?;
        destinations.check(&url, name)?;
        let call = async |warm: &mut Warm| {
            let req = body::request(warm.store.data_mut(), req)?;
            let result = warm
                .client
                .rekey_oauth2_client()
                .call_send(&mut warm.store, &settings, &req)
                .await?;
            let state = warm.store.data_mut();
            Ok(match result {
                Ok(resp) => body::response(state, resp).map_err(component_failed),
                Err(e) => {
                    let mut failed = None;
                    let e = Error::from_send(e, |resp| {
                        body::response(state, resp).unwrap_or_else(|e| {
                            failed = Some(component_failed(e));
                            Response::default()
                        })
                    });
                    Err(failed.unwrap_or(e))
                }
            })
        };
        let on = On {
            store,
            name,
            credential: &credential,
            settings: &settings,
            destinations,
            must_finish,
        };
        self.on_instance(on, call).await?
    }

    /// Exercises the refresh token of credential `name` in `store` so that
    /// it does not die from disuse (Microsoft: 90 days idle, Xero: 60): the
    /// component refreshes when the stored set was obtained `older_than`
    /// ago or more (or when is unknown: an imported set), or when the
    /// provider said its refresh token expires within that time; otherwise
    /// [`KeepaliveOutcome::Fresh`]. The refresh is `send`'s own (the fleet's
    /// lease and mark, adopting a set another worker stored meanwhile), so
    /// any number of processes and machines may run this at once, from
    /// cron, and one refresh happens. No API request is sent. A grant that
    /// keeps no refresh token (client credentials, jwt-bearer) is
    /// [`KeepaliveOutcome::NothingToKeep`] with nothing sent. Errors are
    /// `send`'s: a dead grant is [`Error::ReauthorizationRequired`] (then
    /// without a request), no keys [`Error::NotAuthenticated`], a lost
    /// answer [`Error::RefreshInDoubt`]. Like `send`, a refresh once begun
    /// finishes even if the caller stops waiting.
    pub async fn keepalive(
        &self,
        store: Arc<dyn KeyStore>,
        name: &str,
        older_than: Duration,
    ) -> Result<KeepaliveOutcome, Error> {
        let must_finish = MustFinish::default();
        let (this, name, flag) = (self.clone(), name.to_owned(), must_finish.clone());
        drive(
            async move { this.keepalive_call(store, &name, older_than, flag).await },
            must_finish,
        )
        .await
    }

    async fn keepalive_call(
        &self,
        store: Arc<dyn KeyStore>,
        name: &str,
        older_than: Duration,
        must_finish: MustFinish,
    ) -> Result<KeepaliveOutcome, Error> {
        let credential = load_credential(&store, name).await?;
        let mut settings = if credential.settings.grant.is_machine() {
            // Nothing to keep, and nothing is sent: a client secret in a
            // variable this process lacks (cron's environment) is not read.
            credential.settings.to_wit_unresolved()
        } else {
            credential
                .settings
                .to_wit()
                .map_err(Error::InvalidSettings)?
        };
        settings.fleet = self.inner.fleet;
        let destinations = Destinations::of(&credential)?;
        let call = async |warm: &mut Warm| {
            warm.client
                .rekey_oauth2_client()
                .call_keepalive(&mut warm.store, &settings, older_than.as_secs())
                .await
        };
        let on = On {
            store,
            name,
            credential: &credential,
            settings: &settings,
            destinations,
            must_finish,
        };
        let result = self.on_instance(on, call).await?;
        match result {
            Ok(KeepaliveWit::Fresh) => Ok(KeepaliveOutcome::Fresh),
            Ok(KeepaliveWit::Refreshed) => Ok(KeepaliveOutcome::Refreshed),
            Ok(KeepaliveWit::NothingToKeep) => Ok(KeepaliveOutcome::NothingToKeep),
            // No API request is made, so no response comes with an error.
            Err(e) => Err(Error::from_send(e, |_| Response::default())),
        }
    }

    /// The credential `name` and the WIT settings of a call for it (an
    /// environment secret resolved now; the fleet's timing from `config`).
    async fn load_for_call(
        &self,
        store: &Arc<dyn KeyStore>,
        name: &str,
    ) -> Result<(crate::Credential, types::Settings), Error> {
        let credential = load_credential(store, name).await?;
        let mut settings = credential
            .settings
            .to_wit()
            .map_err(Error::InvalidSettings)?;
        settings.fleet = self.inner.fleet;
        Ok((credential, settings))
    }

    /// Runs `call` on an instance for the credential (its warm one, or a
    /// new one) within the credential's share of the slots, so the others'
    /// calls never starve while its calls wait on its lease. The instance is
    /// kept for the credential's next call unless the component trapped
    /// (`call`'s error): a trapped instance is dropped, never reused.
    async fn on_instance<T>(
        &self,
        on: On<'_>,
        call: impl AsyncFnOnce(&mut Warm) -> Result<T, wasmtime::Error>,
    ) -> Result<T, Error> {
        let _share = self.inner.shares.acquire(on.name).await;
        let _slot = self.slot().await?;
        let key = warm::Key::new(&on.store, on.name);
        let mut warm = self
            .instance_for(
                &key,
                on.store,
                on.credential,
                on.settings,
                on.destinations,
                on.must_finish,
            )
            .await?;
        let out = call(&mut warm).await.map_err(component_failed)?;
        self.park(key, warm);
        Ok(out)
    }

    /// An instance for a call of `credential`: its warm one, or a new one,
    /// holding the call's host state.
    async fn instance_for(
        &self,
        key: &warm::Key,
        store: Arc<dyn KeyStore>,
        credential: &crate::Credential,
        settings: &types::Settings,
        destinations: Destinations,
        must_finish: MustFinish,
    ) -> Result<Warm, Error> {
        let mut state = self.new_state(&credential.name, &settings.token_url, store);
        state.destinations = destinations;
        // The key is read only when the component asks for a signature,
        // after the signer's check of what it is asked to sign: a call whose
        // stored token is still valid needs none. A missing or wrong key is
        // then `InvalidSettings`, and the request it was for is not sent.
        state.signer = Signer::new(credential.settings.signing.as_ref(), settings);
        state.dpop = DpopSigner::new(credential.settings.dpop.as_ref(), &settings.token_url);
        state.must_finish = must_finish;
        state.keys_seen = credential.keys.clone();
        state.loaded = Some(call::to_wit(credential));
        match self.inner.warm.take(key) {
            Some(mut warm) => {
                // Nothing of the last call's host state carries over.
                *warm.store.data_mut() = state;
                warm.store.set_epoch_deadline(self.call_ticks());
                Ok(warm)
            }
            None => self.instantiate(state).await,
        }
    }

    /// Keeps `warm` for the credential's next call.
    fn park(&self, key: warm::Key, warm: Warm) {
        let parked = self.new_state("", "", self.inner.parked_store.clone());
        self.inner.warm.put(key, warm, parked);
    }

    /// A new instance in a new `Store` holding `state`.
    async fn instantiate(&self, state: CallState) -> Result<Warm, Error> {
        let mut store = self.new_store(state);
        let client = self
            .inner
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Component(format!("{e:#}")))?;
        self.inner.instantiated.fetch_add(1, Ordering::Relaxed);
        Ok(Warm::new(store, client))
    }

    /// How many instances this `Rekey` has created: calls of one credential
    /// reuse an instance (see [`crate::warm`]). For tests.
    #[doc(hidden)]
    pub fn instances_created(&self) -> u64 {
        self.inner.instantiated.load(Ordering::Relaxed)
    }

    fn call_ticks(&self) -> u64 {
        let ticks = self.inner.config.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        (ticks.max(1)).try_into().unwrap_or(u64::MAX)
    }

    /// Instantiates the component in a fresh `Store` and drops it: the
    /// per-call fixed cost, for benchmarks.
    #[doc(hidden)]
    pub async fn instantiate_only(&self) -> anyhow::Result<()> {
        let _slot = self.slot().await?;
        let state = self.new_state("", "", Arc::new(crate::MemoryStore::new()));
        self.inner
            .pre
            .instantiate_async(&mut self.new_store(state))
            .await?;
        Ok(())
    }

    /// Runs one function of the component's `authorize` export (the first
    /// token set, see [`crate::authorize`]) in a fresh instance bounded by
    /// `timeout`. Kept apart from `send`: no credential is loaded and its
    /// record is never read or written (none of these requests spends a
    /// refresh token); the host's own checks on every URL still apply, and
    /// token requests go only to `token_url`, device requests only to
    /// `device_url`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_authorize<T>(
        &self,
        name: &str,
        token_url: &str,
        device_url: Option<&str>,
        (signer, dpop): (Option<Signer>, Option<DpopSigner>),
        timeout: Duration,
        f: impl AsyncFnOnce(
            &crate::bindings::exports::rekey::oauth2::authorize::Guest,
            &mut Store<CallState>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, Error> {
        let _slot = self.slot().await?;
        let mut state = self.new_state(name, token_url, Arc::new(crate::MemoryStore::new()));
        state.device_url = device_url.map(str::to_owned);
        state.signer = signer;
        state.dpop = dpop;
        let mut wstore = self.new_store(state);
        wstore.data_mut().deadline = Instant::now() + timeout;
        let ticks = timeout.as_millis() / EPOCH_TICK.as_millis();
        wstore.set_epoch_deadline(ticks.max(1) as u64);
        let failed = |e: wasmtime::Error| Error::Component(format!("{e:#}"));
        let instance = self
            .inner
            .pre
            .instantiate_async(&mut wstore)
            .await
            .map_err(failed)?;
        f(instance.rekey_oauth2_authorize(), &mut wstore)
            .await
            .map_err(failed)
    }

    /// Checks `settings` by exactly the rules the component's `send` applies
    /// to them (its `check-settings` export), so a credential accepted when
    /// it is created or changed is not refused later for its settings. An
    /// environment secret need not be set yet: only its presence counts.
    pub async fn check_settings(&self, settings: &crate::Settings) -> Result<(), Error> {
        let _slot = self.slot().await?;
        let state = self.new_state("", &settings.token_url, Arc::new(crate::MemoryStore::new()));
        let mut wstore = self.new_store(state);
        let failed = |e: wasmtime::Error| Error::Component(format!("{e:#}"));
        let instance = self
            .inner
            .pre
            .instantiate_async(&mut wstore)
            .await
            .map_err(failed)?;
        instance
            .rekey_oauth2_client()
            .call_check_settings(&mut wstore, &settings.to_wit_unresolved())
            .await
            .map_err(failed)?
            .map_err(Error::InvalidSettings)
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

    /// The host state of one call.
    pub(crate) fn new_state(
        &self,
        name: &str,
        token_url: &str,
        store: Arc<dyn KeyStore>,
    ) -> CallState {
        let inner = &self.inner;
        CallState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(inner.config.memory_limit_bytes)
                .instances(4)
                .build(),
            credential: name.to_owned(),
            token_url: token_url.to_owned(),
            device_url: None,
            store,
            http: inner.http.clone(),
            observer: inner.config.observer.clone(),
            loaded: None,
            keys_seen: None,
            started: Instant::now(),
            deadline: Instant::now() + inner.config.call_timeout,
            http_total_timeout: inner.config.http.total_timeout,
            destinations: Destinations::default(),
            signer: None,
            dpop: None,
            must_finish: MustFinish::default(),
        }
    }

    fn new_store(&self, state: CallState) -> Store<CallState> {
        let mut wstore = Store::new(&self.inner.engine, state);
        wstore.limiter(|s| &mut s.limits);
        wstore.set_epoch_deadline(self.call_ticks());
        wstore.epoch_deadline_trap();
        wstore
    }
}

/// Refuses what cannot be sent before a slot is taken: a method or URL the
/// HTTP client would reject, or a body over the limit. The URL as it will
/// be sent.
fn check_request(req: &Request, max_body: usize) -> Result<reqwest::Url, Error> {
    if reqwest::Method::from_bytes(req.method.as_bytes()).is_err() {
        return Err(Error::InvalidRequest("invalid HTTP method".into()));
    }
    let url = crate::http::parse_url(&req.url).map_err(|e| match e {
        TransportError::InvalidRequest(m) => Error::InvalidRequest(m),
        other => Error::InvalidRequest(describe_transport(&other)),
    })?;
    if req.body.len() > max_body {
        return Err(Error::InvalidRequest(format!(
            "request too large: the body is {} bytes, the limit is {max_body}",
            req.body.len()
        )));
    }
    Ok(url)
}

/// Per-credential shares of the instance slots: a credential whose calls
/// all wait on its refresh lease (a hanging token endpoint) holds at most
/// three quarters of them.
struct Shares {
    per_credential: usize,
    by_name: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl Shares {
    fn new(slots: Option<u32>) -> Self {
        let n = slots.map_or(usize::MAX >> 4, |n| n as usize);
        Shares {
            per_credential: (n - n / 4).max(1),
            by_name: Default::default(),
        }
    }

    async fn acquire(&self, name: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(name.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_credential)))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }
}

/// The WASI the component imports, and nothing more: a call can read the
/// clocks, sleep and draw random numbers, and has no files, sockets,
/// environment or stdio.
fn add_wasi_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{clocks, io, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(linker, CallState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(linker, CallState::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(linker, CallState::random)?;
    io::poll::add_to_linker::<_, HasTable>(linker, |s| &mut s.table)?;
    Ok(())
}

/// Milliseconds for the component's `u32` fields, saturating.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// `wasi:io/poll` needs only the resource table its pollables live in.
struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// The wasmtime configuration [`Rekey::new`] builds its engine with, for
/// benchmarks that must measure exactly that engine.
#[doc(hidden)]
pub fn engine_config(config: &Config) -> wasmtime::Config {
    let mut wasm_config = wasmtime::Config::new();
    wasm_config.epoch_interruption(true);
    if let Some(slots) = config.pooling {
        wasm_config.allocation_strategy(pooling(slots, config.memory_limit_bytes));
    }
    wasm_config
}

/// How many idle instances are kept warm: as many as calls may run at once
/// (so every concurrent call of a busy credential finds one).
fn idle_instances(pooling: Option<u32>) -> usize {
    pooling.map_or(64, |n| n as usize)
}

/// Slots for `n` concurrent calls and the idle instances kept beside them
/// (3 core instances: the module and wit-component's shim and fixup; 1
/// memory; 1 table each). An idle `Store` keeps the fiber stack of its last
/// call, so stacks are counted the same way.
fn pooling(n: u32, memory_limit: usize) -> InstanceAllocationStrategy {
    let instances = n.saturating_add(idle_instances(Some(n)) as u32);
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances)
        .total_tables(instances.saturating_mul(2))
        .total_stacks(instances)
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

/// What a call runs on: the credential, its WIT settings and where its
/// tokens may go, in the store it was read from.
struct On<'a> {
    store: Arc<dyn KeyStore>,
    name: &'a str,
    credential: &'a crate::Credential,
    settings: &'a types::Settings,
    destinations: Destinations,
    must_finish: MustFinish,
}

/// A trap or a failed conversion at the component boundary.
fn component_failed(e: wasmtime::Error) -> Error {
    Error::Component(format!("{e:#}"))
}
