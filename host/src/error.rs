//! The host's error: the guest's typed `send-error` plus what can go wrong
//! around it. Every message is safe to log.

use crate::bindings::rekey::oauth2::types::{Response, SendError, TransportError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("credential settings are unusable: {0}")]
    InvalidSettings(String),
    #[error("not authenticated: {0}")]
    NotAuthenticated(String),
    #[error(
        "re-authorisation needed: the token endpoint refused the refresh with {code} (HTTP {status}); the stored keys were left as they were"
    )]
    ReauthorizationRequired { status: u16, code: String },
    #[error("token endpoint failed: {0}")]
    TokenEndpoint(String),
    #[error("the API rejected the request (HTTP {}) again with a freshly refreshed token", .0.status)]
    RejectedAfterRefresh(Response),
    #[error("request failed: {}", describe_transport(.0))]
    Transport(TransportError),
    #[error("refreshed keys could not be persisted, so the request was not retried: {0}")]
    KeysNotPersisted(String),
    #[error("refresh lease unavailable: {0}")]
    LeaseUnavailable(String),
    #[error("stored keys are unusable: {0}")]
    InvalidKeys(String),
    /// A trap, an exhausted deadline or memory limit, or an instantiation failure.
    #[error("the rekey component failed: {0}")]
    Component(String),
}

impl Error {
    /// Distinct process exit codes, so scripts can tell "a person must
    /// re-authorise" from "try again later".
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotAuthenticated(_) | Error::ReauthorizationRequired { .. } => 3,
            Error::TokenEndpoint(_) | Error::LeaseUnavailable(_) => 4,
            Error::RejectedAfterRefresh(_) => 5,
            Error::Transport(_) => 6,
            Error::Store(StoreError::UnknownCredential(_)) => 2,
            Error::KeysNotPersisted(_) | Error::Store(_) => 7,
            Error::InvalidSettings(_) | Error::InvalidKeys(_) => 2,
            Error::Component(_) => 8,
        }
    }

    /// True when only a person running the authorisation flow can fix it.
    pub fn needs_authorization(&self) -> bool {
        self.exit_code() == 3
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotAuthenticated(m) => Error::NotAuthenticated(m),
            SendError::ReauthorizationRequired(o) => Error::ReauthorizationRequired {
                status: o.status,
                code: o.code,
            },
            SendError::TokenEndpoint(m) => Error::TokenEndpoint(m),
            SendError::RejectedAfterRefresh(r) => Error::RejectedAfterRefresh(r),
            SendError::Transport(t) => Error::Transport(t),
            SendError::KeysNotPersisted(m) => Error::KeysNotPersisted(m),
            SendError::LeaseUnavailable(m) => Error::LeaseUnavailable(m),
            SendError::InvalidSettings(m) => Error::InvalidSettings(m),
            SendError::InvalidKeys(m) => Error::InvalidKeys(m),
        }
    }
}

pub(crate) fn describe_transport(e: &TransportError) -> String {
    match e {
        TransportError::Timeout => "timed out".into(),
        TransportError::Connect(m) => format!("could not connect: {m}"),
        TransportError::TooLarge(cap) => format!("response body exceeds the cap of {cap} bytes"),
        TransportError::InvalidRequest(m) => format!("invalid request: {m}"),
        TransportError::Refused(m) => format!("not sent: {m}"),
        TransportError::Other(m) => m.clone(),
    }
}
