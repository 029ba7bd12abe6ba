//! The CLI's process exit codes: the library says who can fix a failure
//! ([`rekey::Category`]); this is the one place that turns that into a number.

use rekey::Category;

/// Every code `rekey` exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    Ok = 0,
    /// The demo failed, or an internal error.
    Failed = 1,
    /// Bad input: the request, the arguments, an unknown credential, a key file.
    BadInput = 2,
    /// Please authenticate / re-authorisation needed.
    NeedsAuthorization = 3,
    /// The token endpoint or the refresh lease failed: try again later.
    TokenEndpoint = 4,
    /// The API rejected the token again after a refresh, or for its scope.
    RejectedByApi = 5,
    /// The API request failed on the way.
    Transport = 6,
    /// Keys not persisted, or the store is unusable.
    Store = 7,
    /// The component failed (trap, limit) or could not be loaded.
    Component = 8,
    /// The credential's settings are wrong (locally, or as the provider said).
    SettingsWrong = 9,
    /// A refresh may have spent the refresh token without its answer arriving.
    RefreshInDoubt = 10,
    /// `send -f` and the response status is 400 or above (as curl -f).
    HttpError = 22,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl From<Category> for Exit {
    fn from(c: Category) -> Self {
        match c {
            Category::BadInput => Exit::BadInput,
            Category::NeedsAuthorization => Exit::NeedsAuthorization,
            Category::SettingsWrong => Exit::SettingsWrong,
            Category::TokenEndpoint => Exit::TokenEndpoint,
            Category::RefreshInDoubt => Exit::RefreshInDoubt,
            Category::RejectedByApi => Exit::RejectedByApi,
            Category::Transport => Exit::Transport,
            Category::Store => Exit::Store,
            Category::Component => Exit::Component,
        }
    }
}
