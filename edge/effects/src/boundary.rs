//! The second line behind the guest's own checks: what `http-send` refuses
//! whatever the guest asks, so a component bug cannot send a secret
//! elsewhere. The guest carries the first line (`guest/src/origins.rs`).

use crate::exports::rekey::oauth2::types::{Purpose, TransportError};
use crate::settings::Settings;
use crate::target::Target;

pub fn check(purpose: Purpose, target: &Target, settings: &Settings) -> Result<(), TransportError> {
    let refuse = |why: &str| Err(TransportError::Refused(why.into()));
    if !target.https && !target.is_loopback() {
        return refuse("plain http carries credentials only to loopback");
    }
    match purpose {
        Purpose::TokenEndpoint if !target.same_url(&settings.token_url) => {
            refuse("a token-endpoint request goes only to REKEY_TOKEN_URL")
        }
        Purpose::Api if !target.is_under(&settings.upstream) => {
            refuse("an API request goes only under REKEY_UPSTREAM")
        }
        Purpose::DeviceEndpoint => refuse("the edge proxy runs no device authorization"),
        Purpose::TokenEndpoint | Purpose::Api => Ok(()),
    }
}
