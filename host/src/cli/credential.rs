//! `rekey credential add|show|list|remove`.

use super::{Exit, Failure};
use rekey::settings::{ClientAuth, ClientSecret, Settings, Strategy};
use rekey::{KeyStore, Secret, TokenSet};
use serde_json::json;
use std::io::Read;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Store a credential: where and how to refresh, and its first token set.
    Add(AddArgs),
    /// Show a credential with every secret redacted.
    Show { name: String },
    /// List stored credentials.
    List,
    /// Delete a credential.
    Remove { name: String },
}

#[derive(clap::Args)]
pub struct AddArgs {
    name: String,
    /// The provider's token endpoint.
    #[arg(long)]
    token_url: String,
    #[arg(long)]
    client_id: String,
    /// The client secret, stored with the credential.
    #[arg(long, conflicts_with = "client_secret_env")]
    client_secret: Option<String>,
    /// Read the client secret from this environment variable at each call instead.
    #[arg(long)]
    client_secret_env: Option<String>,
    /// How to present the client secret at the token endpoint.
    #[arg(long, value_enum, default_value = "basic")]
    client_auth: AuthArg,
    /// `scope` sent with each refresh.
    #[arg(long)]
    scope: Option<String>,
    /// An extra form parameter for the refresh, `KEY=VALUE` (e.g. format=json); repeatable.
    #[arg(long = "param")]
    params: Vec<String>,
    #[arg(long, value_enum, default_value = "on-auth-failure")]
    strategy: StrategyArg,
    /// With before-expiry: refresh when the token expires within this many seconds.
    #[arg(long, default_value_t = 60)]
    expiry_margin: u32,
    /// A status that means "token rejected"; repeatable (default 401).
    #[arg(long = "rejected-status")]
    rejected_statuses: Vec<u16>,
    /// The token response to start from (JSON), from a file or `-` for stdin.
    #[arg(long)]
    keys: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    Basic,
    Post,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StrategyArg {
    OnAuthFailure,
    EveryRequest,
    BeforeExpiry,
}

pub fn run(store: &dyn KeyStore, cmd: Command) -> Result<Exit, Failure> {
    match cmd {
        Command::Add(args) => add(store, args),
        Command::Show { name } => {
            let c = store.load(&name)?;
            print_json(&describe(&c));
            Ok(Exit::Ok)
        }
        Command::List => {
            for c in store.list()? {
                let state = if c.keys.is_some() {
                    "keys stored"
                } else {
                    "no keys"
                };
                println!(
                    "{}\t{}\tv{}\t{}",
                    c.name, c.settings.token_url, c.version, state
                );
            }
            Ok(Exit::Ok)
        }
        Command::Remove { name } => {
            if store.remove(&name)? {
                Ok(Exit::Ok)
            } else {
                Err(rekey::StoreError::UnknownCredential(name).into())
            }
        }
    }
}

fn add(store: &dyn KeyStore, a: AddArgs) -> Result<Exit, Failure> {
    let mut settings = Settings::new(a.token_url, a.client_id);
    settings.client_secret = match (a.client_secret, a.client_secret_env) {
        (Some(s), _) => Some(ClientSecret::Literal(Secret::new(s))),
        (None, Some(var)) => Some(ClientSecret::Env(var)),
        (None, None) => None,
    };
    settings.client_auth = match a.client_auth {
        AuthArg::Basic => ClientAuth::Basic,
        AuthArg::Post => ClientAuth::Post,
    };
    settings.scope = a.scope;
    settings.extra_params = a
        .params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    Failure::new(
                        Exit::BadInput,
                        format!("--param {p:?} must look like KEY=VALUE"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    settings.strategy = match a.strategy {
        StrategyArg::OnAuthFailure => Strategy::OnAuthFailure,
        StrategyArg::EveryRequest => Strategy::EveryRequest,
        StrategyArg::BeforeExpiry => Strategy::BeforeExpiry,
    };
    settings.expiry_margin_secs = a.expiry_margin;
    if !a.rejected_statuses.is_empty() {
        settings.rejected_statuses = a.rejected_statuses;
    }
    if !(settings.token_url.starts_with("https://") || settings.token_url.starts_with("http://")) {
        return Err(Failure::new(
            Exit::BadInput,
            "--token-url must be an absolute http(s) URL",
        ));
    }

    let keys = match a.keys.as_deref() {
        None => None,
        Some(source) => {
            let text = read_source(source)?;
            Some(TokenSet::import(&text).map_err(|e| {
                Failure::new(
                    Exit::BadInput,
                    format!("the keys from {} are unusable: {e}", source_name(source)),
                )
            })?)
        }
    };
    store.put(&a.name, &settings, keys.as_ref())?;
    Ok(Exit::Ok)
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
        "updated_at": c.updated_at,
        "settings": {
            "token_url": s.token_url,
            "client_id": s.client_id,
            "client_secret": secret,
            "client_auth": s.client_auth,
            "scope": s.scope,
            "extra_params": s.extra_params,
            "strategy": s.strategy,
            "expiry_margin_secs": s.expiry_margin_secs,
            "rejected_statuses": s.rejected_statuses,
        },
        "keys": c.keys.as_ref().map(TokenSet::redacted),
    })
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON value serializes")
    );
}
