//! The CLI's process exit codes: the library says who can fix a failure
//! ([`rekey::Category`]); this is the one place that turns that into a number.

use rekey::Category;

/// How `rekey` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: success (any HTTP status, unless `send -f`).
    Ok,
    /// 1: the demo failed, or an internal error.
    Failed,
    /// 2: bad arguments (and the library's bad-input category).
    BadInput,
    /// 22: `send -f` and the response status is 400 or above (as curl -f).
    HttpError,
    /// A failure the library categorised.
    Failure(Category),
}

impl Exit {
    /// The process exit code; the README's table lists the same.
    pub fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::BadInput | Exit::Failure(Category::BadInput) => 2,
            Exit::Failure(Category::NeedsAuthorization) => 3,
            Exit::Failure(Category::TokenEndpoint) => 4,
            Exit::Failure(Category::RejectedByApi) => 5,
            Exit::Failure(Category::Transport) => 6,
            Exit::Failure(Category::Store) => 7,
            Exit::Failure(Category::Component) => 8,
            Exit::Failure(Category::SettingsWrong) => 9,
            Exit::Failure(Category::RefreshInDoubt) => 10,
            Exit::HttpError => 22,
        }
    }
}

impl From<Category> for Exit {
    fn from(c: Category) -> Self {
        Exit::Failure(c)
    }
}
