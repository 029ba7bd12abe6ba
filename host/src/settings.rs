//! A credential's settings as the store keeps them, and their conversion to
//! the WIT `settings` the guest receives.

use crate::bindings::rekey::oauth2::types as wit;
pub use crate::dpop::Dpop;
use crate::secret::Secret;
pub use crate::signing::{Signing, SigningAlgorithm, SigningKeySource};
use serde::{Deserialize, Serialize};

/// Where the client secret comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientSecret {
    /// Stored with the credential (the store's one deliberate write of it).
    Literal(#[serde(serialize_with = "crate::secret::serialize_exposed")] Secret),
    /// Read from this environment variable at each call, so the store never
    /// holds it (e.g. `SALESFORCE_SECRET`).
    Env(String),
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
/// Stored as `basic`/`post`; read in every host's spelling (see [`spelled`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`), the RFC 6749 default.
    #[default]
    Basic,
    /// In the form body (`client_secret_post`).
    Post,
    /// A JWT signed with the client's private key (RFC 7523 §2.2, OIDC
    /// `private_key_jwt`): needs [`Settings::signing`]; the client secret is
    /// never sent. Stored as `private_key_jwt`.
    PrivateKeyJwt,
}

/// The one reading of an enum value every host shares: any case, `_` or `-`.
fn spelled(value: &str) -> String {
    value.trim().to_ascii_lowercase().replace('_', "-")
}

impl<'de> Deserialize<'de> for ClientAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match spelled(&value).as_str() {
            "basic" | "client-secret-basic" => Ok(ClientAuth::Basic),
            "post" | "client-secret-post" => Ok(ClientAuth::Post),
            "private-key-jwt" => Ok(ClientAuth::PrivateKeyJwt),
            _ => Err(serde::de::Error::custom(format!(
                "unknown client auth {value:?} (basic, post, client-secret-basic, client-secret-post or private_key_jwt)"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
/// When the refresh token is exchanged.
pub enum Strategy {
    /// After the API rejects the access token (the standard way).
    #[default]
    OnAuthFailure,
    /// Before every request (providers that want the refresh token exercised).
    EveryRequest,
    /// When the token expires within `expiry_margin_secs`; still on rejection.
    BeforeExpiry,
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match spelled(&value).as_str() {
            "on-auth-failure" => Ok(Strategy::OnAuthFailure),
            "every-request" => Ok(Strategy::EveryRequest),
            "before-expiry" => Ok(Strategy::BeforeExpiry),
            _ => Err(serde::de::Error::custom(format!(
                "unknown strategy {value:?} (on-auth-failure, every-request or before-expiry)"
            ))),
        }
    }
}

/// How the credential gets new tokens. Stored as `"grant"` (`refresh-token`,
/// the default, is not written; `client-credentials`, `jwt-bearer`; read in
/// every host's spelling) with the JWT bearer grant's `"subject"` and
/// `"claims"` (an object of strings) beside it, as the other hosts write them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GrantFields", into = "GrantFields")]
pub enum Grant {
    /// Spend the stored refresh token; a person authorises first.
    #[default]
    RefreshToken,
    /// The client's own credentials (RFC 6749 §4.4): no authorisation, no
    /// refresh token; needs a client secret or `private_key_jwt`.
    ClientCredentials,
    /// A signed assertion (RFC 7523 §2.1, e.g. a service account): like the
    /// client-credentials grant (nothing stored first, no refresh token),
    /// with a JWT built per request and signed with the key of
    /// [`Settings::signing`].
    JwtBearer {
        /// `sub`: the principal the token is for.
        subject: String,
        /// Further claims with string values (in order), e.g. `scope`. The
        /// registered ones (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`)
        /// cannot be set.
        claims: Vec<(String, String)>,
    },
}

impl Grant {
    /// Nobody authorises it, nothing is stored first, and no refresh token
    /// is kept: client credentials and the JWT bearer grant.
    pub fn is_machine(&self) -> bool {
        matches!(self, Grant::ClientCredentials | Grant::JwtBearer { .. })
    }

    /// `refresh-token`, `client-credentials` or `jwt-bearer`.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::RefreshToken => "refresh-token",
            Grant::ClientCredentials => "client-credentials",
            Grant::JwtBearer { .. } => "jwt-bearer",
        }
    }
}

/// The grant's fields in the settings column (flattened into it).
#[derive(Serialize, Deserialize)]
struct GrantFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<Claims>,
}

impl TryFrom<GrantFields> for Grant {
    type Error = String;

    fn try_from(f: GrantFields) -> Result<Self, String> {
        let Some(grant) = f.grant else {
            return Ok(Grant::RefreshToken);
        };
        match spelled(&grant).as_str() {
            "refresh-token" => Ok(Grant::RefreshToken),
            "client-credentials" => Ok(Grant::ClientCredentials),
            // A missing subject reads as empty: the check says what to set.
            "jwt-bearer" => Ok(Grant::JwtBearer {
                subject: f.subject.unwrap_or_default(),
                claims: f.claims.map(|c| c.0).unwrap_or_default(),
            }),
            _ => Err(format!(
                "unknown grant {grant:?} (refresh-token, client-credentials or jwt-bearer)"
            )),
        }
    }
}

impl From<Grant> for GrantFields {
    fn from(g: Grant) -> Self {
        match g {
            Grant::RefreshToken => GrantFields {
                grant: None,
                subject: None,
                claims: None,
            },
            Grant::ClientCredentials => GrantFields {
                grant: Some("client-credentials".into()),
                subject: None,
                claims: None,
            },
            Grant::JwtBearer { subject, claims } => GrantFields {
                grant: Some("jwt-bearer".into()),
                subject: Some(subject),
                claims: Some(Claims(claims)),
            },
        }
    }
}

/// Claims as a JSON object of strings.
struct Claims(Vec<(String, String)>);

impl Serialize for Claims {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of claims with string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Claims, A::Error> {
                let mut claims = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    claims.push((k, v));
                }
                Ok(Claims(claims))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn default_margin() -> u32 {
    60
}

fn default_rejected() -> Vec<u16> {
    vec![401]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// A credential's settings: where and how to refresh.
pub struct Settings {
    /// How new tokens are obtained (refresh token unless said otherwise).
    #[serde(flatten)]
    pub grant: Grant,
    /// The token endpoint: https, or http on loopback only.
    pub token_url: String,
    /// The OAuth client id.
    pub client_id: String,
    /// None for public clients.
    #[serde(default)]
    pub client_secret: Option<ClientSecret>,
    /// How the secret is presented.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// `scope` sent with each refresh.
    #[serde(default)]
    pub scope: Option<String>,
    /// Extra form parameters for the refresh (e.g. `format=json`).
    #[serde(default)]
    pub extra_params: Vec<(String, String)>,
    /// When to refresh.
    #[serde(default)]
    pub strategy: Strategy,
    /// Seconds before expiry at which `before-expiry` refreshes.
    #[serde(default = "default_margin")]
    pub expiry_margin_secs: u32,
    /// Statuses that mean "token rejected" (default 401).
    #[serde(default = "default_rejected")]
    pub rejected_statuses: Vec<u16>,
    /// The authorization endpoint, for `rekey authorize` (the code grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    /// The device authorization endpoint (RFC 8628), for `rekey authorize --device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_url: Option<String>,
    /// Extra parameters of the authorization request (e.g. Google's
    /// `access_type=offline`, `prompt=consent`). A `scope` here is the scope
    /// asked for at authorisation (else `scope` is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_params: Vec<(String, String)>,
    /// The issuer, when known (discovery, presets): the redirect's `iss`
    /// must name it when present (RFC 9207).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The issuer advertises `authorization_response_iss_parameter_supported`
    /// (RFC 9207 §3; set by discovery): a redirect without `iss` is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub issuer_sends_iss: bool,
    /// The origins the access token may be sent to (`https://api.example.com`,
    /// `https://*.example.com` for subdomains), or the single entry `*`: any
    /// origin, said explicitly. Empty: not bound, and `send` refuses it.
    #[serde(default)]
    pub api_origins: Vec<String>,
    /// Patterns the token set's `instance_url` must match to add its origin
    /// (Salesforce hands out one per org: `https://*.my.salesforce.com`).
    /// Empty: `instance_url` is never used.
    #[serde(default)]
    pub instance_url_origins: Vec<String>,
    /// How the JWTs of `private_key_jwt` and the JWT bearer grant are
    /// signed, and where the private key is (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
    /// DPoP (RFC 9449): the algorithm of the credential's DPoP key and
    /// where the key is (never the key itself). Token requests then carry a
    /// proof of it, so the server binds its tokens to the key, and a
    /// DPoP-bound token is presented with a proof. None: no proofs, and a
    /// DPoP-bound token set is refused (`InvalidSettings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<Dpop>,
}

impl Settings {
    /// Defaults for everything but the endpoint and the client id.
    pub fn new(token_url: impl Into<String>, client_id: impl Into<String>) -> Self {
        Settings {
            grant: Grant::default(),
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: None,
            client_auth: ClientAuth::default(),
            scope: None,
            extra_params: Vec::new(),
            strategy: Strategy::default(),
            expiry_margin_secs: default_margin(),
            rejected_statuses: default_rejected(),
            authorization_url: None,
            device_url: None,
            auth_params: Vec::new(),
            issuer: None,
            issuer_sends_iss: false,
            api_origins: Vec::new(),
            instance_url_origins: Vec::new(),
            signing: None,
            dpop: None,
        }
    }

    /// With a client secret stored with the credential.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(ClientSecret::Literal(Secret::new(secret)));
        self
    }

    /// With this client authentication.
    pub fn with_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// With DPoP (RFC 9449) proofs of this key: `Dpop::key_file(alg, path)`
    /// or `Dpop::key_env(alg, var)`.
    pub fn with_dpop(mut self, dpop: Dpop) -> Self {
        self.dpop = Some(dpop);
        self
    }

    /// With this refresh strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// What can be checked before anything is sent: the token URL must be
    /// https (plain http only on loopback, as the URL parser that sends it
    /// reads the host), the client id non-empty, and no extra parameter may
    /// take a name the refresh request itself sets.
    pub fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.token_url)
            .map_err(|e| format!("the token URL is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if crate::http::is_loopback(&url) => {}
            "http" => {
                return Err("the token URL must be https:// (http:// only on loopback)".into());
            }
            _ => return Err("the token URL must be an https:// URL".into()),
        }
        if self.client_id.is_empty() {
            return Err("the client id is empty".into());
        }
        let private_key_jwt = self.client_auth == ClientAuth::PrivateKeyJwt;
        if self.grant == Grant::ClientCredentials
            && self.client_secret.is_none()
            && !private_key_jwt
        {
            return Err(
                "the client-credentials grant needs a client secret, or private_key_jwt client authentication with a signing key"
                    .into(),
            );
        }
        if let Grant::JwtBearer { subject, .. } = &self.grant
            && subject.is_empty()
        {
            return Err(
                "the jwt-bearer grant needs a subject: the assertion's sub (e.g. the service account)"
                    .into(),
            );
        }
        if self.signing.is_none() {
            if matches!(self.grant, Grant::JwtBearer { .. }) {
                return Err(
                    "the jwt-bearer grant needs a signing key (algorithm and key file or variable)"
                        .into(),
                );
            }
            if private_key_jwt {
                return Err("private_key_jwt client authentication needs a signing key (algorithm and key file or variable)".into());
            }
        }
        const RESERVED: [&str; 7] = [
            "grant_type",
            "refresh_token",
            "client_id",
            "client_secret",
            "scope",
            "client_assertion",
            "client_assertion_type",
        ];
        if let Some((k, _)) = self
            .extra_params
            .iter()
            .find(|(k, _)| RESERVED.contains(&k.as_str()))
        {
            return Err(format!(
                "the extra parameter {k:?} would override what the refresh request sets itself"
            ));
        }
        crate::origins::Binding::new(&self.api_origins, &self.instance_url_origins, None)?;
        for (what, url) in [
            ("authorization URL", &self.authorization_url),
            ("device authorization URL", &self.device_url),
        ] {
            if let Some(url) = url {
                crate::authorize::check_endpoint(what, url)?;
            }
        }
        if self
            .rejected_statuses
            .iter()
            .any(|s| !(400..600).contains(s))
        {
            return Err("a \"token rejected\" status must be a 4xx or 5xx".into());
        }
        Ok(())
    }

    /// Settings as a store holds them in JSON, older formats included: a
    /// record of contract 0.3 before bound-by-default said
    /// `allow_instance_url: true`, which now means "the instance URL may be
    /// any of the API origins" (so with no API origins the credential is
    /// unbound, and `send` says how to bind it: nothing is lost).
    pub fn from_stored_json(json: &str) -> Result<Settings, serde_json::Error> {
        let mut v: serde_json::Value = serde_json::from_str(json)?;
        if let Some(map) = v.as_object_mut()
            && let Some(allow) = map.remove("allow_instance_url")
            && allow == serde_json::Value::Bool(true)
            && !map.contains_key("instance_url_origins")
        {
            let origins = map.get("api_origins").cloned().unwrap_or_default();
            map.insert("instance_url_origins".into(), origins);
        }
        serde_json::from_value(v)
    }

    /// The WIT settings for one call, with an environment secret resolved now.
    pub(crate) fn to_wit(&self) -> Result<wit::Settings, String> {
        let client_secret = match &self.client_secret {
            None => None,
            Some(ClientSecret::Literal(s)) => Some(s.expose().to_owned()),
            Some(ClientSecret::Env(var)) => Some(std::env::var(var).map_err(|_| {
                format!("environment variable {var} (the client secret) is not set")
            })?),
        };
        Ok(self.wit_with_secret(client_secret))
    }

    /// The WIT settings to check (`check-settings`): a secret stands for
    /// itself only by being there, so none is read or copied.
    pub(crate) fn to_wit_unresolved(&self) -> wit::Settings {
        self.wit_with_secret(self.client_secret.as_ref().map(|_| String::new()))
    }

    /// The credential's private key, loaded now and checked against the
    /// algorithm (as `credential add` does once, and `authorize` before a
    /// person starts); none when it signs nothing. A `send` reads it only
    /// when the component asks for a signature. The error names the file or
    /// variable, never the key.
    pub fn signing_key(&self) -> Result<Option<crate::signing::SigningKey>, String> {
        self.signing.as_ref().map(Signing::load).transpose()
    }

    /// The credential's DPoP key, loaded now and checked against its
    /// algorithm (as `credential add` does once, and `authorize` before a
    /// person starts); none without DPoP. A `send` reads it only when the
    /// component asks for its public key or a proof's signature. The error
    /// names the file or variable, never the key.
    pub fn dpop_key(&self) -> Result<Option<crate::signing::SigningKey>, String> {
        self.dpop.as_ref().map(Dpop::load).transpose()
    }

    fn wit_with_secret(&self, client_secret: Option<String>) -> wit::Settings {
        wit::Settings {
            grant: match &self.grant {
                Grant::RefreshToken => wit::Grant::RefreshToken,
                Grant::ClientCredentials => wit::Grant::ClientCredentials,
                Grant::JwtBearer { subject, claims } => wit::Grant::JwtBearer(wit::JwtBearer {
                    subject: subject.clone(),
                    claims: claims.clone(),
                }),
            },
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            client_secret,
            client_auth: match self.client_auth {
                ClientAuth::Basic => wit::ClientAuth::ClientSecretBasic,
                ClientAuth::Post => wit::ClientAuth::ClientSecretPost,
                ClientAuth::PrivateKeyJwt => wit::ClientAuth::PrivateKeyJwt,
            },
            scope: self.scope.clone(),
            extra_params: self.extra_params.clone(),
            strategy: match self.strategy {
                Strategy::OnAuthFailure => wit::Strategy::OnAuthFailure,
                Strategy::EveryRequest => wit::Strategy::EveryRequest,
                Strategy::BeforeExpiry => wit::Strategy::BeforeExpiry(self.expiry_margin_secs),
            },
            rejected_statuses: self.rejected_statuses.clone(),
            api_origins: self.api_origins.clone(),
            instance_url_origins: self.instance_url_origins.clone(),
            // The runtime sets the fleet's timing from its `Config`.
            fleet: wit::FleetTiming {
                lease_ttl_ms: 0,
                lease_wait_ms: 0,
            },
            // `aud`: as configured, else the issuer when known (RFC 7523bis),
            // else the component uses the token URL.
            signing: self.signing.as_ref().map(|s| wit::Signing {
                algorithm: s.algorithm.to_wit(),
                key_id: s.key_id.clone(),
                audience: s.audience.clone().or_else(|| self.issuer.clone()),
            }),
            dpop: self.dpop.as_ref().map(|d| d.algorithm.to_wit()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_round_trips_and_debug_redacts() {
        let mut s = Settings::new("https://idp/token", "app");
        s.client_secret = Some(ClientSecret::Literal(Secret::new("hunter2")));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn client_auth_reads_every_hosts_spelling_and_stores_one() {
        for (spelling, auth) in [
            ("basic", ClientAuth::Basic),
            ("client-secret-basic", ClientAuth::Basic),
            ("client_secret_basic", ClientAuth::Basic),
            ("post", ClientAuth::Post),
            ("client-secret-post", ClientAuth::Post),
            ("client_secret_post", ClientAuth::Post),
            ("POST", ClientAuth::Post),
            (" Client_Secret_Basic ", ClientAuth::Basic),
        ] {
            let read: ClientAuth = serde_json::from_value(serde_json::json!(spelling)).unwrap();
            assert_eq!(read, auth, "{spelling}");
        }
        assert_eq!(serde_json::to_value(ClientAuth::Post).unwrap(), "post");
        let every: Strategy = serde_json::from_value(serde_json::json!("Every_Request")).unwrap();
        assert_eq!(every, Strategy::EveryRequest);
        assert_eq!(serde_json::to_value(every).unwrap(), "every-request");
        for spelling in ["private_key_jwt", "Private-Key-JWT"] {
            let read: ClientAuth = serde_json::from_value(serde_json::json!(spelling)).unwrap();
            assert_eq!(read, ClientAuth::PrivateKeyJwt);
        }
        assert_eq!(
            serde_json::to_value(ClientAuth::PrivateKeyJwt).unwrap(),
            "private_key_jwt"
        );
        assert!(
            serde_json::from_value::<ClientAuth>(serde_json::json!("tls_client_auth")).is_err()
        );
    }

    #[test]
    fn check_refuses_what_cannot_work_before_anything_is_sent() {
        let ok = Settings::new("https://idp.example/token", "app");
        assert!(ok.check().is_ok());
        assert!(
            Settings::new("http://127.0.0.1:9/token", "app")
                .check()
                .is_ok()
        );
        for bad in [
            Settings::new("http://idp.example/token", "app"),
            Settings::new("http://192.0.2.2:18081\\@127.0.0.1/token", "app"),
            Settings::new("ftp://idp.example/token", "app"),
            Settings::new("token", "app"),
            Settings::new("https://idp.example/token", ""),
            Settings {
                extra_params: vec![("grant_type".into(), "password".into())],
                ..ok.clone()
            },
            Settings {
                rejected_statuses: vec![200],
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    /// One URL policy (issue 20): for every URL of `tests/url-corpus.txt` as
    /// a token URL, `credential add` (the host's check, then the component's
    /// `check-settings`) and the component's decision at `send` agree; what
    /// the component refuses reaches no server; what it accepts, the host's
    /// own check at `http-send` accepts too.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_url_corpus_gets_one_answer_at_add_send_and_http_send() {
        use crate::{KeyStore, MemoryStore, Request, TokenSet};
        use std::io::{Read, Write};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        // An API on loopback that answers 200 and counts connections.
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api_url = format!("http://{}/me", api.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        std::thread::spawn(move || {
            for mut conn in api.incoming().flatten() {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = conn.read(&mut [0; 4096]);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        let rekey = crate::Rekey::new(crate::Config::default()).unwrap();
        let store = Arc::new(MemoryStore::new());
        let keys = TokenSet::import(r#"{"access_token":"at","refresh_token":"rt"}"#).unwrap();
        let corpus = include_str!("../../tests/url-corpus.txt");
        let (mut accepted, mut refused) = (0, 0);
        for line in corpus
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let url = line.replace("\\t", "\t");
            let mut s = Settings::new(url.as_str(), "app");
            s.api_origins = vec![crate::origins::ANY.into()];
            let guest = rekey.check_settings(&s).await;
            let add = s.check().is_ok() && guest.is_ok();
            assert_eq!(
                add,
                guest.is_ok(),
                "{url:?}: add and the component disagree"
            );
            // `send` with the credential stored as it is (no `add`).
            store.put("c", &s, Some(&keys)).unwrap();
            let before = connections.load(Ordering::SeqCst);
            let sent = rekey.send(store.clone(), "c", Request::get(&api_url)).await;
            let reached = connections.load(Ordering::SeqCst) - before;
            store.remove("c").unwrap();
            match guest {
                Ok(()) => {
                    accepted += 1;
                    assert!(
                        sent.is_ok(),
                        "{url:?}: accepted at add, refused at send: {sent:?}"
                    );
                    assert_eq!(reached, 1, "{url:?}");
                    // The host's second line at `http-send` would send it.
                    let parsed = crate::http::parse_url(&url)
                        .unwrap_or_else(|e| panic!("{url:?}: the host cannot parse it: {e:?}"));
                    assert!(
                        parsed.scheme() == "https" || crate::http::is_loopback(&parsed),
                        "{url:?}: the host would refuse it"
                    );
                }
                Err(crate::Error::InvalidSettings(why)) => {
                    refused += 1;
                    assert!(
                        matches!(&sent, Err(crate::Error::InvalidSettings(m)) if *m == why),
                        "{url:?}: refused at add ({why}), at send: {sent:?}"
                    );
                    assert_eq!(reached, 0, "{url:?}: refused, yet something was sent");
                }
                Err(e) => panic!("{url:?}: the check itself failed: {e}"),
            }
        }
        assert!(
            accepted >= 5 && refused >= 20,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn settings_stored_before_bound_by_default_still_load() {
        let old = |origins: &str| {
            format!(
                r#"{{"token_url":"https://idp.example/t","client_id":"a","api_origins":{origins},"allow_instance_url":true}}"#
            )
        };
        let bound = Settings::from_stored_json(&old(r#"["https://*.my.salesforce.com"]"#)).unwrap();
        assert_eq!(bound.instance_url_origins, bound.api_origins);
        // Unbound before: still unbound (send refuses it, naming the fix), nothing lost.
        let unbound = Settings::from_stored_json(&old("[]")).unwrap();
        assert!(unbound.api_origins.is_empty() && unbound.instance_url_origins.is_empty());
        assert_eq!(unbound.token_url, "https://idp.example/t");
        let plain =
            r#"{"token_url":"https://idp.example/t","client_id":"a","allow_instance_url":false}"#;
        assert!(
            Settings::from_stored_json(plain)
                .unwrap()
                .instance_url_origins
                .is_empty()
        );
    }

    /// The settings column as the Node and Python hosts write it (grant
    /// `jwt-bearer` with `subject` and `claims` beside it, `client_auth`
    /// `private_key_jwt`, `signing` naming the key's file or variable): read,
    /// written back the same, and its WIT settings as the component needs.
    #[test]
    fn signed_assertion_settings_are_stored_as_every_host_writes_them() {
        let written_by_node = serde_json::json!({
            "grant": "jwt-bearer",
            "token_url": "https://idp.example/token",
            "client_id": "svc",
            "client_secret": null,
            "client_auth": "private_key_jwt",
            "scope": null,
            "extra_params": [],
            "strategy": "on-auth-failure",
            "expiry_margin_secs": 60,
            "rejected_statuses": [401],
            "api_origins": ["https://api.example"],
            "instance_url_origins": [],
            "subject": "robot@example",
            "claims": {"zeta": "1", "alpha": "2"},
            "signing": {"algorithm": "ES256", "key_id": "k1", "key_file": "/etc/rekey/k.pem"},
        });
        let s = Settings::from_stored_json(&written_by_node.to_string()).unwrap();
        assert_eq!(
            s.grant,
            Grant::JwtBearer {
                subject: "robot@example".into(),
                // A JSON object: read back in name order.
                claims: vec![("alpha".into(), "2".into()), ("zeta".into(), "1".into())],
            }
        );
        assert_eq!(s.client_auth, ClientAuth::PrivateKeyJwt);
        let signing = s.signing.clone().unwrap();
        assert_eq!(signing.algorithm, SigningAlgorithm::Es256);
        assert_eq!(
            signing.key,
            SigningKeySource::File("/etc/rekey/k.pem".into())
        );
        assert!(s.check().is_ok(), "{:?}", s.check());
        let mut back = serde_json::to_value(&s).unwrap();
        for absent in ["authorization_url", "device_url", "issuer"] {
            assert!(back.get(absent).is_none());
        }
        back.as_object_mut().unwrap().remove("scope");
        let mut expected = written_by_node.clone();
        expected.as_object_mut().unwrap().remove("scope");
        assert_eq!(back, expected);
        let wit = s.to_wit_unresolved();
        let wit::Grant::JwtBearer(jwt) = &wit.grant else {
            panic!("{:?}", wit.grant)
        };
        assert_eq!(jwt.subject, "robot@example");
        assert_eq!(jwt.claims.len(), 2);
        assert!(matches!(wit.client_auth, wit::ClientAuth::PrivateKeyJwt));
        let signing = wit.signing.unwrap();
        assert_eq!(signing.key_id.as_deref(), Some("k1"));
        assert_eq!(
            signing.audience, None,
            "no issuer: the component uses the token URL"
        );
        // Python's spelling of the grant, and the issuer as the default audience.
        let mut py = written_by_node.clone();
        py["grant"] = "JWT_BEARER".into();
        py["issuer"] = "https://idp.example".into();
        let s = Settings::from_stored_json(&py.to_string()).unwrap();
        assert!(matches!(s.grant, Grant::JwtBearer { .. }));
        assert_eq!(
            s.to_wit_unresolved().signing.unwrap().audience.as_deref(),
            Some("https://idp.example")
        );
        let mut env = written_by_node;
        env["signing"] =
            serde_json::json!({"algorithm": "RS256", "audience": "https://aud", "key_env": "KEY"});
        let s = Settings::from_stored_json(&env.to_string()).unwrap();
        let signing = s.signing.clone().unwrap();
        assert_eq!(signing.key, SigningKeySource::Env("KEY".into()));
        assert_eq!(
            s.to_wit_unresolved().signing.unwrap().audience.as_deref(),
            Some("https://aud")
        );
        // A settings column of 0.3 (no grant, no signing) still loads as it was.
        let old = r#"{"token_url":"https://idp.example/t","client_id":"a","api_origins":["*"]}"#;
        let s = Settings::from_stored_json(old).unwrap();
        assert_eq!(
            (s.grant.clone(), s.signing.clone()),
            (Grant::RefreshToken, None)
        );
        assert!(serde_json::to_value(&s).unwrap().get("grant").is_none());
        let cc = r#"{"grant":"client-credentials","token_url":"https://idp.example/t","client_id":"a","client_secret":{"env":"S"}}"#;
        let s = Settings::from_stored_json(cc).unwrap();
        assert_eq!(s.grant, Grant::ClientCredentials);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["grant"],
            "client-credentials"
        );
        assert!(
            Settings::from_stored_json(r#"{"grant":"password","token_url":"t","client_id":"a"}"#)
                .is_err()
        );
    }

    /// The stored JSON without its `dpop`.
    fn old_json(v: &serde_json::Value) -> String {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("dpop");
        v.to_string()
    }

    /// DPoP as every host stores it (`{"algorithm", "key_file"|"key_env"}`,
    /// the key never), read back the same; the WIT settings carry only its
    /// algorithm; without it nothing is written and the WIT field is none.
    #[test]
    fn dpop_settings_are_stored_as_every_host_writes_them() {
        let written = serde_json::json!({
            "token_url": "https://idp.example/token",
            "client_id": "app",
            "client_secret": null,
            "client_auth": "basic",
            "scope": null,
            "extra_params": [],
            "strategy": "on-auth-failure",
            "expiry_margin_secs": 60,
            "rejected_statuses": [401],
            "api_origins": ["https://api.example"],
            "instance_url_origins": [],
            "dpop": {"algorithm": "ES256", "key_file": "/etc/rekey/dpop.pem"},
        });
        let s = Settings::from_stored_json(&written.to_string()).unwrap();
        assert_eq!(
            s.dpop,
            Some(Dpop::key_file(
                SigningAlgorithm::Es256,
                "/etc/rekey/dpop.pem"
            ))
        );
        assert!(s.signing.is_none());
        assert_eq!(serde_json::to_value(&s).unwrap(), written);
        assert!(matches!(
            s.to_wit_unresolved().dpop,
            Some(wit::SigningAlgorithm::Es256)
        ));
        let mut env = written.clone();
        env["dpop"] = serde_json::json!({"algorithm": "rs256", "key_env": "DPOP_PEM"});
        let s = Settings::from_stored_json(&env.to_string()).unwrap();
        assert_eq!(
            s,
            Settings::from_stored_json(&old_json(&written))
                .unwrap()
                .with_dpop(Dpop::key_env(SigningAlgorithm::Rs256, "DPOP_PEM"))
        );
        assert!(matches!(
            s.to_wit().unwrap().dpop,
            Some(wit::SigningAlgorithm::Rs256)
        ));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["dpop"],
            serde_json::json!({"algorithm": "RS256", "key_env": "DPOP_PEM"})
        );
        let err = s.dpop_key().unwrap_err();
        assert!(
            err.contains("the DPoP key's environment variable DPOP_PEM"),
            "{err}"
        );
        // Settings of 0.4 (no dpop) load as they were, and write no dpop.
        let mut old = written;
        old.as_object_mut().unwrap().remove("dpop");
        let s = Settings::from_stored_json(&old.to_string()).unwrap();
        assert_eq!(s.dpop, None);
        assert!(s.to_wit_unresolved().dpop.is_none());
        assert!(serde_json::to_value(&s).unwrap().get("dpop").is_none());
        assert_eq!(s.dpop_key().unwrap().map(|k| k.algorithm()), None);
        let mut bad = old;
        bad["dpop"] =
            serde_json::json!({"algorithm": "ES256", "key": "-----BEGIN PRIVATE KEY-----"});
        assert!(Settings::from_stored_json(&bad.to_string()).is_err());
    }

    #[test]
    fn check_says_what_signed_assertions_need() {
        let ok = Settings::new("https://idp.example/token", "app");
        let signing = Some(Signing::key_env(SigningAlgorithm::Es256, "K"));
        let jwt = |subject: &str| Grant::JwtBearer {
            subject: subject.into(),
            claims: vec![],
        };
        for (bad, says) in [
            (
                Settings {
                    grant: Grant::ClientCredentials,
                    ..ok.clone()
                },
                "needs a client secret, or private_key_jwt",
            ),
            (
                Settings {
                    grant: jwt("svc"),
                    ..ok.clone()
                },
                "jwt-bearer grant needs a signing key",
            ),
            (
                Settings {
                    grant: jwt(""),
                    signing: signing.clone(),
                    ..ok.clone()
                },
                "needs a subject",
            ),
            (
                ok.clone().with_auth(ClientAuth::PrivateKeyJwt),
                "private_key_jwt client authentication needs a signing key",
            ),
            (
                Settings {
                    extra_params: vec![("client_assertion".into(), "x".into())],
                    ..ok.clone()
                },
                "would override",
            ),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        for good in [
            Settings {
                grant: Grant::ClientCredentials,
                signing: signing.clone(),
                ..ok.clone().with_auth(ClientAuth::PrivateKeyJwt)
            },
            Settings {
                grant: jwt("svc"),
                signing: signing.clone(),
                ..ok.clone()
            },
        ] {
            assert_eq!(good.check(), Ok(()));
        }
    }

    #[test]
    fn env_secret_missing_names_the_variable_only() {
        let mut s = Settings::new("https://idp/token", "app");
        s.client_secret = Some(ClientSecret::Env("REKEY_TEST_SURELY_UNSET".into()));
        let err = s.to_wit().unwrap_err();
        assert!(err.contains("REKEY_TEST_SURELY_UNSET"), "{err}");
    }
}
