//! The host's error: the guest's typed `send-error` plus what can go wrong
//! around it, each in a [`Category`] that says who can fix it. Every message
//! is safe to log: no token, secret or token-response body.

use crate::Response;
use crate::bindings::rekey::oauth2::types::{self as wit, SendError, TransportError};
use crate::store::StoreError;

/// Why a call failed. New cases may come in a minor release: match on
/// [`Error::category`] for policy, on cases for detail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The credential store failed or does not hold the credential.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself cannot be sent (method, URL, size).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The [`crate::Config`] given to [`crate::Rekey::new`] cannot work.
    #[error("invalid rekey configuration: {0}")]
    InvalidConfig(String),
    /// The credential's settings cannot work (checked before anything is sent).
    #[error("credential settings are unusable: {0}")]
    InvalidSettings(String),
    /// No keys (or no refresh token) are stored: a person must authorise.
    #[error("not authenticated: {0}")]
    NotAuthenticated(String),
    /// The token endpoint refused the grant (`invalid_grant`).
    #[error(
        "re-authorisation needed: the token endpoint refused the refresh with {code} (HTTP {status}); the stored keys were left as they were"
    )]
    ReauthorizationRequired {
        /// HTTP status of the token response.
        status: u16,
        /// The OAuth error code.
        code: String,
    },
    /// The token endpoint refused the client or the request as configured.
    #[error(
        "the token endpoint refused the credential's settings with {code} (HTTP {status}): check the client id, secret, client authentication, scope and extra parameters; the stored keys were left as they were"
    )]
    SettingsRejected {
        /// HTTP status of the token response.
        status: u16,
        /// The OAuth error code.
        code: String,
    },
    /// The token endpoint failed before the refresh token can have been spent.
    #[error("token endpoint failed: {0}")]
    TokenEndpoint(String),
    /// A refresh may have been processed without its answer arriving.
    #[error(
        "refresh in doubt: {0}; if the provider rotated the refresh token, a person must authorise again"
    )]
    RefreshInDoubt(String),
    /// The API rejected a freshly refreshed token (this call's, or one
    /// obtained moments ago): another refresh cannot help.
    #[error("the API rejected the request (HTTP {}) with a freshly refreshed token; another refresh cannot help", .0.status)]
    RejectedAfterRefresh(Response),
    /// The API wants a scope the token lacks.
    #[error("the API refused the token for lacking scope{}", scope.as_ref().map(|s| format!(" (it asks for {s:?})")).unwrap_or_default())]
    InsufficientScope {
        /// The scope the API named, if any.
        scope: Option<String>,
        /// The API's response.
        response: Response,
    },
    /// The API request could not be sent or answered.
    #[error("request failed: {}", describe_transport(.0))]
    Transport(TransportError),
    /// New keys could not be made durable, so the request was not resent.
    #[error("refreshed keys could not be persisted, so the request was not retried: {0}")]
    KeysNotPersisted(String),
    /// The refresh lease could not be taken or kept.
    #[error("refresh lease unavailable: {0}")]
    LeaseUnavailable(String),
    /// The credential's record could not be read or written; nothing was
    /// spent.
    #[error("the credential store is unavailable: {0}")]
    StoreUnavailable(String),
    /// The stored keys are not a usable token set.
    #[error("stored keys are unusable: {0}")]
    InvalidKeys(String),
    /// A trap, an exhausted deadline or memory limit, or an instantiation failure.
    #[error("the rekey component failed: {0}")]
    Component(String),
}

/// Who can fix a failure, and how.
/// A closed set on purpose (not `non_exhaustive`): an embedder's policy, like
/// the CLI's exit codes, maps every case, and a new one is a breaking change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// The caller's input: the request, the credential name, a key file.
    BadInput,
    /// A person must run the authorisation flow again.
    NeedsAuthorization,
    /// The credential's settings are wrong (locally, or as the provider says).
    SettingsWrong,
    /// The token endpoint or the lease failed transiently: try again later.
    TokenEndpoint,
    /// A refresh may have spent the refresh token without its answer arriving.
    RefreshInDoubt,
    /// The API refused the token even after a refresh (or for its scope).
    RejectedByApi,
    /// The API request failed on the way.
    Transport,
    /// The credential store failed; new keys may not be durable.
    Store,
    /// The component trapped or ran out of time or memory: a bug or a limit.
    Component,
}

impl Error {
    /// Who can fix this.
    pub fn category(&self) -> Category {
        match self {
            Error::InvalidRequest(_) | Error::InvalidKeys(_) | Error::InvalidConfig(_) => {
                Category::BadInput
            }
            Error::Store(StoreError::UnknownCredential(_) | StoreError::InvalidKeys(_)) => {
                Category::BadInput
            }
            Error::Transport(TransportError::InvalidRequest(_)) => Category::BadInput,
            Error::NotAuthenticated(_) | Error::ReauthorizationRequired { .. } => {
                Category::NeedsAuthorization
            }
            Error::InvalidSettings(_) | Error::SettingsRejected { .. } => Category::SettingsWrong,
            Error::TokenEndpoint(_) | Error::LeaseUnavailable(_) => Category::TokenEndpoint,
            Error::RefreshInDoubt(_) => Category::RefreshInDoubt,
            Error::RejectedAfterRefresh(_) | Error::InsufficientScope { .. } => {
                Category::RejectedByApi
            }
            Error::Transport(_) => Category::Transport,
            Error::KeysNotPersisted(_) | Error::Store(_) | Error::StoreUnavailable(_) => {
                Category::Store
            }
            Error::Component(_) => Category::Component,
        }
    }

    /// True when only a person running the authorisation flow can fix it.
    pub fn needs_authorization(&self) -> bool {
        self.category() == Category::NeedsAuthorization
    }

    /// True when the credential's settings must change first.
    pub fn is_settings_problem(&self) -> bool {
        self.category() == Category::SettingsWrong
    }

    /// True when the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => matches!(e, StoreError::Write(_) | StoreError::Conflict(_)),
            // Nothing was spent: the same call may find the store back.
            Error::StoreUnavailable(_) => true,
            // The provider may have rotated: the credential stays marked in
            // doubt, and a retry could only report that.
            Error::KeysNotPersisted(_) => false,
            _ => matches!(
                self.category(),
                Category::TokenEndpoint | Category::Transport
            ),
        }
    }
}

impl Error {
    /// The component's error, its responses' bodies taken back by `take`.
    pub(crate) fn from_send(e: SendError, take: impl FnOnce(wit::Response) -> Response) -> Self {
        match e {
            SendError::NotAuthenticated(m) => Error::NotAuthenticated(m),
            SendError::ReauthorizationRequired(o) => Error::ReauthorizationRequired {
                status: o.status,
                code: o.code,
            },
            SendError::SettingsRejected(o) => Error::SettingsRejected {
                status: o.status,
                code: o.code,
            },
            SendError::TokenEndpoint(m) => Error::TokenEndpoint(m),
            SendError::RefreshInDoubt(m) => Error::RefreshInDoubt(m),
            SendError::RejectedAfterRefresh(r) => Error::RejectedAfterRefresh(take(r)),
            SendError::InsufficientScope(c) => Error::InsufficientScope {
                scope: c.scope,
                response: take(c.response),
            },
            SendError::Transport(t) => Error::Transport(t),
            SendError::KeysNotPersisted(m) => Error::KeysNotPersisted(m),
            SendError::LeaseUnavailable(m) => Error::LeaseUnavailable(m),
            SendError::StoreUnavailable(m) => Error::StoreUnavailable(m),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_are_not_reauthorization() {
        let e = Error::from_send(
            SendError::SettingsRejected(wit::OauthError {
                status: 401,
                code: "invalid_client".into(),
            }),
            |_| unreachable!("no response in this error"),
        );
        assert!(e.is_settings_problem() && !e.needs_authorization() && !e.is_retryable());
        let e = Error::ReauthorizationRequired {
            status: 400,
            code: "invalid_grant".into(),
        };
        assert!(e.needs_authorization() && !e.is_settings_problem());
    }

    #[test]
    fn transient_failures_are_retryable_and_input_is_not() {
        assert!(Error::TokenEndpoint("503".into()).is_retryable());
        assert!(Error::Transport(TransportError::Timeout).is_retryable());
        assert!(!Error::Transport(TransportError::InvalidRequest("x".into())).is_retryable());
        assert!(Error::Store(StoreError::Conflict("c".into())).is_retryable());
        assert!(!Error::Store(StoreError::UnknownCredential("c".into())).is_retryable());
        assert!(!Error::RefreshInDoubt("x".into()).is_retryable());
    }
}
