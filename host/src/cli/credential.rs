//! `rekey credential add|set|show|list|remove|keepalive`.

use super::{Exit, Failure};
use rekey::settings::{
    ClientAuth, ClientSecret, Grant, Settings, Signing, SigningKeySource, Strategy,
};
use rekey::store::check_name;
use rekey::{KeyStore, Secret, TokenSet};
use serde_json::json;
use std::io::Read;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Store a new credential: where and how to refresh, and its first token set.
    Add(AddArgs),
    /// Change some settings of a stored credential (the others, and its
    /// keys, are kept), or replace its keys with `--keys`.
    Set(SetArgs),
    /// Show a credential with every secret redacted.
    Show { name: String },
    /// List stored credentials.
    List,
    /// Delete a credential.
    Remove { name: String },
    /// Refresh credentials whose refresh token could die from disuse (cron-safe on many machines)
    ///
    /// Providers end a refresh token nobody used for a while (Microsoft
    /// after 90 days idle, Xero after 60, Azure AD B2C after 14 by default)
    /// or at a stated expiry. A credential whose token set was obtained
    /// --older-than ago or more (or at an unknown time: imported keys), or
    /// whose refresh token expires within that time, is refreshed through
    /// the fleet's lease, so of many machines running this at once one
    /// spends the refresh token and the others find it fresh. No API
    /// request is sent.
    ///
    /// Prints `NAME: refreshed`, `NAME: fresh` or `NAME: nothing to keep`
    /// (client credentials, jwt-bearer); a failure goes to stderr as `NAME:
    /// …`, and the exit code is that of the first failure (as `send` exits),
    /// 0 when none failed. For example, daily from cron:
    ///
    /// 17 4 * * * rekey --store /var/lib/app/rekey.db credential keepalive
    Keepalive(KeepaliveArgs),
}

#[derive(clap::Args)]
pub struct KeepaliveArgs {
    /// The credentials to keep alive (default: every credential in the store).
    names: Vec<String>,
    /// Refresh a token set obtained this long ago or more: a number with s,
    /// m, h, d or w (`0` refreshes every refresh-token credential). The
    /// default, 7d, is well inside the shortest idle limits providers set
    /// by default (14 days and up), so run daily it refreshes each
    /// credential about once a week and spends few refresh tokens; lower it
    /// for a provider that ends idle tokens sooner.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    older_than: std::time::Duration,
}

/// `90`, `45s`, `30m`, `12h`, `7d`, `2w`: a whole number of seconds or of the unit.
fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{value:?}: give a number with s, m, h, d or w (e.g. 7d)"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{value:?}: give a number with s, m, h, d or w (e.g. 7d)"))?;
    n.checked_mul(unit_secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{value:?} is too long"))
}

/// `rekey credential keepalive`: each credential in turn (all when none is
/// named), one line each; the exit code of the first failure. A signal
/// (SIGTERM, SIGINT) lets the credential in flight finish and stops before
/// the next.
pub async fn keepalive(
    store: std::sync::Arc<dyn KeyStore>,
    cache_dir: Option<std::path::PathBuf>,
    args: KeepaliveArgs,
) -> Result<Exit, Failure> {
    let names = if args.names.is_empty() {
        let all = store.clone();
        super::blocking(move || Ok(all.list()?))
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect()
    } else {
        args.names
    };
    let rekey = super::rekey_for_one_call(cache_dir)?;
    let mut first_failure = None;
    for name in names {
        if super::stop_requested() {
            break;
        }
        let shown = name.escape_debug();
        match rekey.keepalive(store.clone(), &name, args.older_than).await {
            Ok(outcome) => println!("{shown}: {outcome}"),
            Err(e) => {
                eprintln!("{shown}: {e}");
                first_failure.get_or_insert(Exit::Failure(e.category()));
            }
        }
    }
    Ok(first_failure.unwrap_or(Exit::Ok))
}

/// What `add` and `set` both take.
#[derive(clap::Args)]
struct CredentialArgs {
    name: String,
    #[command(flatten)]
    settings: SettingsArgs,
    /// A token response to store as the credential's keys (JSON), from a
    /// file or `-` for stdin.
    #[arg(long)]
    keys: Option<String>,
}

#[derive(clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    credential: CredentialArgs,
    /// Replace an existing credential of this name (its settings; and its
    /// keys, if `--keys` is given). Without it an existing name is refused:
    /// the stored keys may hold a rotated refresh token that the original
    /// file no longer has.
    #[arg(long)]
    replace: bool,
}

#[derive(clap::Args)]
pub struct SetArgs {
    #[command(flatten)]
    credential: CredentialArgs,
    /// Let the next refresh spend the stored refresh token although an
    /// earlier refresh may already have spent it (`refresh in doubt`): right
    /// for providers without rotation or with a grace period for the old
    /// token; at one with strict reuse detection it may end the grant.
    #[arg(long)]
    retry_refresh: bool,
}

/// Settings as options: `add` needs the token URL and client id; `set`
/// changes only what is given.
#[derive(clap::Args)]
struct SettingsArgs {
    /// Start from a provider preset (host/presets.json): salesforce,
    /// microsoft, google, github, or oidc (with --issuer). Every other
    /// option overrides what it sets.
    #[arg(long)]
    provider: Option<String>,
    /// Discover the token, authorization and device endpoints from this
    /// issuer's /.well-known/openid-configuration (or RFC 8414
    /// /.well-known/oauth-authorization-server).
    #[arg(long)]
    issuer: Option<String>,
    /// Whether the issuer sends `iss` on every authorization redirect (RFC
    /// 9207 `authorization_response_iss_parameter_supported`; discovery sets
    /// it): with `true`, a redirect without `iss` is refused.
    #[arg(long, value_name = "true|false")]
    issuer_sends_iss: Option<bool>,
    /// How new tokens are obtained: refresh-token (default: a person runs
    /// `rekey authorize` first), client-credentials (the client's own
    /// grant, for machine-to-machine APIs: no authorisation, needs a secret
    /// or --client-auth private-key-jwt), or jwt-bearer (RFC 7523: a signed
    /// assertion for --assertion-subject; needs a signing key).
    #[arg(long, value_enum)]
    grant: Option<GrantArg>,
    /// The provider's token endpoint (https://; http:// only on loopback).
    #[arg(long)]
    token_url: Option<String>,
    /// The authorization endpoint, for `rekey authorize`.
    #[arg(long)]
    authorization_url: Option<String>,
    /// The device authorization endpoint, for `rekey authorize --device`.
    #[arg(long)]
    device_url: Option<String>,
    /// An extra authorization request parameter, `KEY=VALUE` (e.g.
    /// scope=openid offline_access, prompt=consent); repeatable; given at
    /// all, they replace the stored ones.
    #[arg(long = "auth-param")]
    auth_params: Vec<String>,
    /// The OAuth client id.
    #[arg(long)]
    client_id: Option<String>,
    /// The client secret, stored with the credential. Other users can read it
    /// in the process list while this command runs: prefer
    /// --client-secret-env or --client-secret-file.
    #[arg(long, group = "secret")]
    client_secret: Option<String>,
    /// Read the client secret from this environment variable at each call
    /// (only the variable's name is stored).
    #[arg(long, group = "secret")]
    client_secret_env: Option<String>,
    /// Read the client secret from this file now (its first line) and store it.
    #[arg(long, group = "secret")]
    client_secret_file: Option<std::path::PathBuf>,
    /// No client secret (a public client).
    #[arg(long, group = "secret")]
    public_client: bool,
    /// How the client authenticates at the token endpoint (default basic):
    /// basic or post present the client secret; private-key-jwt a JWT
    /// signed with the signing key (the secret is never sent).
    #[arg(long, value_enum)]
    client_auth: Option<AuthArg>,
    /// The signature algorithm of the JWTs (private-key-jwt, jwt-bearer):
    /// RS256 or ES256 (default: the key's: RSA is RS256, P-256 ES256).
    #[arg(long, value_name = "RS256|ES256", value_parser = parse_algorithm)]
    signing_alg: Option<rekey::SigningAlgorithm>,
    /// The private key that signs them: a PEM file (PKCS#8, PKCS#1 RSA or
    /// SEC1 EC; unencrypted), read at each call. Only its path is stored.
    #[arg(long, group = "signing_key", value_name = "PATH")]
    signing_key_file: Option<std::path::PathBuf>,
    /// The private key in this environment variable (PEM), read at each
    /// call. Only the variable's name is stored.
    #[arg(long, group = "signing_key", value_name = "VAR")]
    signing_key_env: Option<String>,
    /// `kid` in the JWT header, when the server needs it to pick the key.
    #[arg(long, value_name = "KID")]
    signing_key_id: Option<String>,
    /// The JWTs' `aud` (default: the issuer when known, else the token URL).
    #[arg(long, value_name = "URL")]
    assertion_audience: Option<String>,
    /// With --grant jwt-bearer: the assertion's `sub`, the principal the
    /// token is for (e.g. a service account).
    #[arg(long, value_name = "SUB")]
    assertion_subject: Option<String>,
    /// With --grant jwt-bearer: a further claim with a string value,
    /// `NAME=VALUE`; repeatable; given at all, they replace the stored ones.
    #[arg(long = "assertion-claim", value_name = "NAME=VALUE")]
    assertion_claims: Vec<String>,
    /// DPoP (RFC 9449): the algorithm of the DPoP key, ES256 or RS256
    /// (default: the key's). Every token request then carries a proof of
    /// the key, so the server binds its tokens to it (a refresh token of a
    /// public client too), and a DPoP-bound token is sent with a proof.
    #[arg(long, value_name = "ES256|RS256", value_parser = parse_algorithm)]
    dpop_alg: Option<rekey::SigningAlgorithm>,
    /// The DPoP private key: a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC;
    /// unencrypted), read when a proof is signed. Only its path is stored.
    /// It may be the signing key's file or another.
    #[arg(long, group = "dpop_key", value_name = "PATH")]
    dpop_key_file: Option<std::path::PathBuf>,
    /// The DPoP private key in this environment variable (PEM), read when a
    /// proof is signed. Only the variable's name is stored.
    #[arg(long, group = "dpop_key", value_name = "VAR")]
    dpop_key_env: Option<String>,
    /// With `set`: no DPoP any more (tokens already bound to the key are
    /// then refused: authorise again).
    #[arg(long, conflicts_with_all = ["dpop_alg", "dpop_key"])]
    no_dpop: bool,
    /// `scope` sent with each refresh.
    #[arg(long)]
    scope: Option<String>,
    /// An extra form parameter for the refresh, `KEY=VALUE` (e.g. format=json);
    /// repeatable; given at all, they replace the stored ones.
    #[arg(long = "param")]
    params: Vec<String>,
    /// With `set`: drop the stored extra parameters.
    #[arg(long, conflicts_with = "params")]
    no_params: bool,
    /// When to refresh (default on-auth-failure).
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// With before-expiry: refresh when the token expires within this many
    /// seconds (default 60).
    #[arg(long)]
    expiry_margin: Option<u32>,
    /// A status that means "token rejected"; repeatable (default 401); given
    /// at all, they replace the stored ones.
    #[arg(long = "rejected-status")]
    rejected_statuses: Vec<u16>,
    /// An origin the access token may be sent to, e.g.
    /// https://api.example.com or https://*.example.com (subdomains);
    /// repeatable; given at all, they replace the stored ones (and a
    /// preset's). A new credential needs one (a preset may give them), or
    /// --any-api-origin.
    #[arg(long = "api-origin")]
    api_origins: Vec<String>,
    /// Let the access token go to any https origin (or http on a loopback
    /// address): stored as `*`. Only for a credential whose URLs you choose
    /// yourself; prefer --api-origin.
    #[arg(long, conflicts_with = "api_origins")]
    any_api_origin: bool,
    /// A pattern (the syntax of --api-origin) the token set's `instance_url`
    /// must match for its origin to receive the token too (Salesforce:
    /// https://*.my.salesforce.com); repeatable; given at all, they replace
    /// the stored ones. An `instance_url` that matches none is ignored.
    #[arg(long = "instance-url-origin")]
    instance_url_origins: Vec<String>,
    /// With `set`: never use the token set's `instance_url`.
    #[arg(long, conflicts_with = "instance_url_origins")]
    no_instance_url: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GrantArg {
    RefreshToken,
    ClientCredentials,
    /// RFC 7523 §2.1: a signed assertion
    #[value(alias = "jwt_bearer")]
    JwtBearer,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    /// HTTP Basic (client_secret_basic)
    #[value(alias = "client-secret-basic")]
    Basic,
    /// In the form body (client_secret_post)
    #[value(alias = "client-secret-post")]
    Post,
    /// A JWT signed with the signing key (private_key_jwt)
    #[value(alias = "private_key_jwt")]
    PrivateKeyJwt,
}

fn parse_algorithm(value: &str) -> Result<rekey::SigningAlgorithm, String> {
    rekey::SigningAlgorithm::parse(value)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StrategyArg {
    OnAuthFailure,
    EveryRequest,
    BeforeExpiry,
}

/// `cache_dir`: where the component's compiled code is cached (`add` and
/// `set` run its settings check).
pub fn run(
    store: &dyn KeyStore,
    cache_dir: Option<std::path::PathBuf>,
    cmd: Command,
) -> Result<Exit, Failure> {
    match cmd {
        Command::Add(args) => add(store, args, cache_dir),
        Command::Set(args) => set(store, args, cache_dir),
        Command::Show { name } => {
            let c = store.load(&name)?;
            print_json(&describe_all(&c));
            Ok(Exit::Ok)
        }
        Command::List => {
            for c in store.list()? {
                let state = state(&c);
                println!(
                    "{}\t{}\tv{}\t{}",
                    c.name.escape_debug(),
                    c.settings.token_url.escape_debug(),
                    c.version,
                    state
                );
            }
            Ok(Exit::Ok)
        }
        // Run by the CLI's async path (it calls the component per credential).
        Command::Keepalive(_) => unreachable!("keepalive is dispatched by cli::run"),
        Command::Remove { name } => {
            if store.remove(&name)? {
                Ok(Exit::Ok)
            } else {
                Err(rekey::StoreError::UnknownCredential(name).into())
            }
        }
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::new(Exit::BadInput, message)
}

fn add(
    store: &dyn KeyStore,
    args: AddArgs,
    cache_dir: Option<std::path::PathBuf>,
) -> Result<Exit, Failure> {
    let (a, replace) = (args.credential, args.replace);
    check_name(&a.name).map_err(bad)?;
    let Some(client_id) = &a.settings.client_id else {
        return Err(bad(
            "a new credential needs --client-id, and --token-url (or --provider or --issuer)",
        ));
    };
    let has_endpoint = a.settings.token_url.is_some()
        || a.settings.provider.is_some()
        || a.settings.issuer.is_some();
    if !has_endpoint {
        return Err(bad(
            "a new credential needs --token-url (or --provider or --issuer) and --client-id",
        ));
    }
    let token_url = &a.settings.token_url.clone().unwrap_or_default();
    let exists = match store.load(&a.name) {
        Ok(_) => true,
        Err(rekey::StoreError::UnknownCredential(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if exists && !replace {
        return Err(bad(format!(
            "credential {:?} exists: `rekey credential set {0} …` changes its settings and keeps its keys; `add --replace` replaces it",
            a.name
        )));
    }
    let mut settings = Settings::new(token_url.clone(), client_id.clone());
    a.settings.endpoints(&mut settings)?;
    a.settings.apply(&mut settings)?;
    check_with_component(&settings, cache_dir)?;
    let keys = a.keys.as_deref().map(import_keys).transpose()?;
    if exists {
        // Starting over: nothing of the old record (its keys, a dead grant,
        // a refresh mark) carries into the new credential.
        store.remove(&a.name)?;
    }
    store.put(&a.name, &settings, keys.as_ref())?;
    warn_if_any(&a.name, &settings);
    Ok(Exit::Ok)
}

fn set(
    store: &dyn KeyStore,
    args: SetArgs,
    cache_dir: Option<std::path::PathBuf>,
) -> Result<Exit, Failure> {
    let (a, retry_refresh) = (args.credential, args.retry_refresh);
    let mut settings = store.load(&a.name)?.settings;
    let grant = settings.grant.clone();
    a.settings.endpoints(&mut settings)?;
    a.settings.apply(&mut settings)?;
    check_with_component(&settings, cache_dir)?;
    if settings.grant != grant {
        // Its record (keys, marks, a dead grant) belongs to the old grant.
        return Err(bad(format!(
            "changing the grant starts {:?} over: `rekey credential add {0} --replace …` with the new grant",
            a.name
        )));
    }
    let keys = a.keys.as_deref().map(import_keys).transpose()?;
    store.put(&a.name, &settings, keys.as_ref())?;
    warn_if_any(&a.name, &settings);
    if retry_refresh {
        store.clear_refresh_in_doubt(&a.name)?;
    }
    Ok(Exit::Ok)
}

/// One line on what a credential can do now.
fn state(c: &rekey::Credential) -> String {
    match (&c.needs_authorization, c.refresh_in_doubt(), &c.keys) {
        (Some(dead), _, _) => format!(
            "needs authorization ({} at Unix time {})",
            dead.code, dead.at
        ),
        (None, true, _) => "refresh in doubt".into(),
        (None, false, _) if c.refresh_mark.is_some() => "refresh in progress".into(),
        (None, false, Some(keys)) => match refused_only(keys) {
            // The component's memory of a refusal, and no token.
            Some(code) => format!(
                "settings refused by the token endpoint ({code}; the same settings are not asked again for a minute)"
            ),
            None => "keys stored".into(),
        },
        (None, false, None) if c.settings.grant.is_machine() => {
            "no token yet (the first send fetches one)".into()
        }
        (None, false, None) => "no keys".into(),
    }
}

/// The code of the token endpoint's refusal the component remembers
/// (`rekey_refused`), when the keys hold nothing else: no token.
fn refused_only(keys: &rekey::TokenSet) -> Option<String> {
    let keys: serde_json::Value = serde_json::from_str(keys.expose()).ok()?;
    let keys = keys.as_object()?;
    if keys.contains_key("access_token") || keys.contains_key("refresh_token") {
        return None;
    }
    let code = keys.get("rekey_refused")?.get("code")?.as_str()?;
    Some(code.escape_debug().to_string())
}

impl SettingsArgs {
    /// Lays what was given over `s`, then checks the result.
    /// A preset, then what discovery finds, then the endpoint options given:
    /// everything `apply` sets is laid over that.
    fn endpoints(&self, s: &mut Settings) -> Result<(), Failure> {
        let issuer = self.issuer.clone();
        if let Some(name) = &self.provider {
            let preset = rekey::authorize::preset(name).map_err(bad)?;
            preset.apply(s);
            if preset.discover && issuer.is_none() {
                return Err(bad(format!(
                    "--provider {name} needs --issuer (its endpoints are discovered)"
                )));
            }
        }
        if let Some(issuer) = issuer {
            let found = tokio::runtime::Handle::current()
                .block_on(rekey::authorize::discover(&issuer))
                .map_err(|e| Failure::new(Exit::Failure(e.category()), e.to_string()))?;
            found.apply(s);
        }
        if let Some(sends) = self.issuer_sends_iss {
            s.issuer_sends_iss = sends;
        }
        if let Some(url) = &self.authorization_url {
            s.authorization_url = Some(url.clone());
        }
        if let Some(url) = &self.device_url {
            s.device_url = Some(url.clone());
        }
        if !self.auth_params.is_empty() {
            s.auth_params = key_values("--auth-param", &self.auth_params)?;
        }
        Ok(())
    }

    fn apply(self, s: &mut Settings) -> Result<(), Failure> {
        if let Some(grant) = self.grant {
            s.grant = match grant {
                GrantArg::RefreshToken => Grant::RefreshToken,
                GrantArg::ClientCredentials => Grant::ClientCredentials,
                GrantArg::JwtBearer => match &s.grant {
                    // Kept when `set` names the grant it has.
                    Grant::JwtBearer { .. } => s.grant.clone(),
                    _ => Grant::JwtBearer {
                        subject: String::new(),
                        claims: Vec::new(),
                    },
                },
            };
        }
        let claims = key_values("--assertion-claim", &self.assertion_claims)?;
        match &mut s.grant {
            Grant::JwtBearer {
                subject,
                claims: stored,
            } => {
                if let Some(sub) = &self.assertion_subject {
                    sub.clone_into(subject);
                }
                if !claims.is_empty() {
                    *stored = claims;
                }
            }
            _ if self.assertion_subject.is_some() || !claims.is_empty() => {
                return Err(bad(
                    "--assertion-subject and --assertion-claim are for --grant jwt-bearer",
                ));
            }
            _ => {}
        }
        apply_signing(
            s,
            self.signing_alg,
            self.signing_key_file,
            self.signing_key_env,
            self.signing_key_id,
            self.assertion_audience,
        )?;
        if self.no_dpop {
            s.dpop = None;
        } else {
            apply_dpop(s, self.dpop_alg, self.dpop_key_file, self.dpop_key_env)?;
        }
        if let Some(url) = self.token_url {
            s.token_url = url;
        }
        if let Some(id) = self.client_id {
            s.client_id = id;
        }
        if let Some(secret) = self.client_secret {
            s.client_secret = Some(ClientSecret::Literal(Secret::new(secret)));
        } else if let Some(var) = self.client_secret_env {
            s.client_secret = Some(ClientSecret::Env(var));
        } else if let Some(path) = self.client_secret_file {
            s.client_secret = Some(ClientSecret::Literal(read_secret_file(&path)?));
        } else if self.public_client {
            s.client_secret = None;
        }
        if let Some(auth) = self.client_auth {
            s.client_auth = match auth {
                AuthArg::Basic => ClientAuth::Basic,
                AuthArg::Post => ClientAuth::Post,
                AuthArg::PrivateKeyJwt => ClientAuth::PrivateKeyJwt,
            };
        }
        if self.scope.is_some() {
            s.scope = self.scope;
        }
        if self.no_params {
            s.extra_params.clear();
        } else if !self.params.is_empty() {
            s.extra_params = key_values("--param", &self.params)?;
        }
        if let Some(strategy) = self.strategy {
            s.strategy = match strategy {
                StrategyArg::OnAuthFailure => Strategy::OnAuthFailure,
                StrategyArg::EveryRequest => Strategy::EveryRequest,
                StrategyArg::BeforeExpiry => Strategy::BeforeExpiry,
            };
        }
        if let Some(margin) = self.expiry_margin {
            s.expiry_margin_secs = margin;
        }
        if !self.rejected_statuses.is_empty() {
            s.rejected_statuses = self.rejected_statuses;
        }
        if self.any_api_origin {
            s.api_origins = vec![rekey::origins::ANY.to_owned()];
        } else if !self.api_origins.is_empty() {
            s.api_origins = self.api_origins;
        }
        if self.no_instance_url {
            s.instance_url_origins.clear();
        } else if !self.instance_url_origins.is_empty() {
            s.instance_url_origins = self.instance_url_origins;
        }
        s.check().map_err(bad)?;
        if s.api_origins.is_empty() && s.instance_url_origins.is_empty() {
            return Err(bad(
                "the credential would not be bound to API origins, so its token could go anywhere: \
                 give --api-origin https://api.example.com (repeatable), or --any-api-origin to allow any origin explicitly",
            ));
        }
        Ok(())
    }
}

/// A new key source from `--*-key-file` (stored absolute) or `--*-key-env`.
fn key_source(
    key_file: Option<std::path::PathBuf>,
    key_env: Option<String>,
) -> Option<SigningKeySource> {
    match (key_file, key_env) {
        (Some(path), _) => Some(SigningKeySource::File(
            std::path::absolute(&path).unwrap_or(path),
        )),
        (None, Some(var)) => Some(SigningKeySource::Env(var)),
        (None, None) => None,
    }
}

/// What a signing or DPoP setting gets: the given key, else the stored one;
/// the given algorithm, else the stored one, else the key's. A key in an
/// environment variable that is not set now (`unset_env`) is read at each
/// call, so it needs the algorithm named.
struct KeyChoice {
    source: SigningKeySource,
    algorithm: rekey::SigningAlgorithm,
    unset_env: bool,
}

/// The flag names of one key's options, for errors.
struct KeyFlags {
    /// "signing key" or "DPoP key".
    what: &'static str,
    /// The options that need a key, e.g. "--dpop-alg".
    need_key: &'static str,
    /// "--signing-key-file PATH or --signing-key-env VAR".
    give_key: &'static str,
    alg: &'static str,
}

fn choose_key(
    given: Option<SigningKeySource>,
    stored: Option<(&SigningKeySource, rekey::SigningAlgorithm)>,
    alg: Option<rekey::SigningAlgorithm>,
    flags: &KeyFlags,
) -> Result<KeyChoice, Failure> {
    let Some(source) = given.or_else(|| stored.map(|(key, _)| key.clone())) else {
        return Err(bad(format!(
            "{} need{} the {}: {}",
            flags.need_key,
            if flags.need_key.contains(',') {
                ""
            } else {
                "s"
            },
            flags.what,
            flags.give_key
        )));
    };
    let unset_env =
        matches!(&source, SigningKeySource::Env(var) if std::env::var_os(var).is_none());
    let algorithm = match alg.or(stored.map(|(_, alg)| alg)) {
        Some(alg) => alg,
        None if unset_env => {
            return Err(bad(format!(
                "{} is not set now, so the algorithm cannot be read from the key: give {} RS256 or ES256",
                source.describe_as(flags.what),
                flags.alg
            )));
        }
        None => source.load_as(None, flags.what).map_err(bad)?.algorithm(),
    };
    Ok(KeyChoice {
        source,
        algorithm,
        unset_env,
    })
}

/// Lays the signing options over `s.signing`: a key given starts a new
/// signing (its algorithm from `--signing-alg`, else the stored one, else
/// the key's); the others change the stored one. The key is loaded once to
/// check it (a key in an environment variable that is not set now is read
/// at each call: only a warning). Errors name the file or variable, never
/// the key.
fn apply_signing(
    s: &mut Settings,
    alg: Option<rekey::SigningAlgorithm>,
    key_file: Option<std::path::PathBuf>,
    key_env: Option<String>,
    key_id: Option<String>,
    audience: Option<String>,
) -> Result<(), Failure> {
    let source = key_source(key_file, key_env);
    let changed = source.is_some() || alg.is_some() || key_id.is_some() || audience.is_some();
    if !changed {
        return Ok(());
    }
    let flags = KeyFlags {
        what: "signing key",
        need_key: "--signing-alg, --signing-key-id and --assertion-audience",
        give_key: "--signing-key-file PATH or --signing-key-env VAR",
        alg: "--signing-alg",
    };
    let stored = s.signing.as_ref().map(|g| (&g.key, g.algorithm));
    let choice = choose_key(source, stored, alg, &flags)?;
    let mut signing = Signing {
        algorithm: choice.algorithm,
        key_id: s.signing.as_ref().and_then(|g| g.key_id.clone()),
        audience: s.signing.as_ref().and_then(|g| g.audience.clone()),
        key: choice.source,
    };
    if let Some(kid) = key_id {
        signing.key_id = Some(kid);
    }
    if let Some(aud) = audience {
        signing.audience = Some(aud);
    }
    if choice.unset_env {
        eprintln!(
            "rekey: warning: {} is not set now; each call reads the key from it",
            signing.key.describe()
        );
    } else {
        signing.load().map_err(bad)?;
    }
    s.signing = Some(signing);
    Ok(())
}

/// Lays the DPoP options over `s.dpop`: a key given starts a new DPoP
/// setting (its algorithm from `--dpop-alg`, else the stored one, else the
/// key's); `--dpop-alg` alone changes the stored one's. The key is loaded
/// once to check it (one in an environment variable not set now only
/// warns). Errors name the file or variable, never the key.
fn apply_dpop(
    s: &mut Settings,
    alg: Option<rekey::SigningAlgorithm>,
    key_file: Option<std::path::PathBuf>,
    key_env: Option<String>,
) -> Result<(), Failure> {
    let source = key_source(key_file, key_env);
    if source.is_none() && alg.is_none() {
        return Ok(());
    }
    let flags = KeyFlags {
        what: "DPoP key",
        need_key: "--dpop-alg",
        give_key: "--dpop-key-file PATH or --dpop-key-env VAR",
        alg: "--dpop-alg",
    };
    let stored = s.dpop.as_ref().map(|d| (&d.key, d.algorithm));
    let choice = choose_key(source, stored, alg, &flags)?;
    let dpop = rekey::Dpop {
        algorithm: choice.algorithm,
        key: choice.source,
    };
    if choice.unset_env {
        eprintln!(
            "rekey: warning: {} is not set now; each proof reads the key from it",
            dpop.describe()
        );
    } else {
        dpop.load().map_err(bad)?;
    }
    s.dpop = Some(dpop);
    Ok(())
}

/// Runs the component's own check (`check-settings`, the rules `send`
/// applies), so `add`/`set` never accept what `send` refuses.
fn check_with_component(
    settings: &Settings,
    cache_dir: Option<std::path::PathBuf>,
) -> Result<(), Failure> {
    let rekey = super::rekey_for_one_call(cache_dir)?;
    tokio::runtime::Handle::current()
        .block_on(rekey.check_settings(settings))
        .map_err(|e| match e {
            rekey::Error::InvalidSettings(m) => bad(m),
            e => Failure::new(Exit::Failure(e.category()), e.to_string()),
        })
}

/// Says so when a credential may send its token anywhere.
fn warn_if_any(name: &str, settings: &Settings) {
    if settings
        .api_origins
        .iter()
        .any(|o| o == rekey::origins::ANY)
    {
        eprintln!(
            "rekey: warning: {name:?} may send its token to any https origin (--any-api-origin); bind it with `rekey credential set {name} --api-origin https://…`"
        );
    }
}

/// The `KEY=VALUE` arguments given to `flag`, split at the first `=`.
fn key_values(flag: &str, args: &[String]) -> Result<Vec<(String, String)>, Failure> {
    args.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| bad(format!("{flag} {p:?} must look like KEY=VALUE")))
        })
        .collect()
}

/// The secret on the file's first line (a trailing newline is not part of it).
fn read_secret_file(path: &std::path::Path) -> Result<Secret, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "cannot read the client secret from {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.lines().next().unwrap_or("");
    if secret.is_empty() {
        return Err(bad(format!("{} holds no client secret", path.display())));
    }
    Ok(Secret::new(secret))
}

fn import_keys(source: &str) -> Result<TokenSet, Failure> {
    let text = read_source(source)?;
    TokenSet::import(&text).map_err(|e| {
        bad(format!(
            "the keys from {} are unusable: {e}",
            source_name(source)
        ))
    })
}

fn read_source(source: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if source == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(source).map(|t| text = t)
    };
    read.map_err(|e| {
        Failure::new(
            Exit::BadInput,
            format!("cannot read keys from {}: {e}", source_name(source)),
        )
    })?;
    Ok(text)
}

fn source_name(source: &str) -> &str {
    if source == "-" { "stdin" } else { source }
}

fn describe(c: &rekey::Credential) -> serde_json::Value {
    let s = &c.settings;
    let secret = match &s.client_secret {
        None => json!(null),
        Some(ClientSecret::Literal(_)) => json!("[redacted]"),
        Some(ClientSecret::Env(var)) => json!({ "env": var }),
    };
    json!({
        "name": c.name,
        "version": c.version,
        "state": state(c),
        "updated_at": c.updated_at,
        "settings": {
            "grant": s.grant.name(),
            "token_url": s.token_url,
            "client_id": s.client_id,
            "client_secret": secret,
            "client_auth": s.client_auth,
            "scope": s.scope,
            "extra_params": s.extra_params,
            "strategy": s.strategy,
            "expiry_margin_secs": s.expiry_margin_secs,
            "rejected_statuses": s.rejected_statuses,
            "api_origins": if s.api_origins.is_empty() { json!("none: not bound, send refuses it (see `credential set --api-origin`)") } else { json!(s.api_origins) },
            "instance_url_origins": s.instance_url_origins,
        },
        "keys": c.keys.as_ref().map(TokenSet::redacted),
    })
}

/// `describe`, plus the authorization settings where there are any.
fn describe_all(c: &rekey::Credential) -> serde_json::Value {
    let mut v = describe(c);
    let s = &c.settings;
    let shown = &mut v["settings"];
    if let Some(url) = &s.authorization_url {
        shown["authorization_url"] = json!(url);
    }
    if let Some(url) = &s.device_url {
        shown["device_url"] = json!(url);
    }
    if !s.auth_params.is_empty() {
        shown["auth_params"] = json!(s.auth_params);
    }
    if let Some(issuer) = &s.issuer {
        shown["issuer"] = json!(issuer);
        shown["issuer_sends_iss"] = json!(s.issuer_sends_iss);
    }
    if let Grant::JwtBearer { subject, claims } = &s.grant {
        shown["subject"] = json!(subject);
        shown["claims"] = claims.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    }
    if let Some(signing) = &s.signing {
        // Where the key is, never the key.
        shown["signing"] = json!(signing);
    }
    if let Some(dpop) = &s.dpop {
        // The algorithm and where the key is, never the key.
        shown["dpop"] = json!(dpop);
    }
    v
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON value serializes")
    );
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn keepalive_durations_read_a_number_and_a_unit() {
        for (text, secs) in [
            ("0", 0),
            ("90", 90),
            ("45s", 45),
            ("30m", 1800),
            ("12h", 43_200),
            ("7d", 604_800),
            ("2w", 1_209_600),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "d",
            "7 days",
            "1.5d",
            "-1d",
            "7D",
            "99999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
