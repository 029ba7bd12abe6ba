//! One credential in one store, named once: what an application keeps
//! instead of passing the store and the name on every call.

use crate::{Error, KeepaliveOutcome, KeyStore, Rekey, Request, Response};
use std::sync::Arc;
use std::time::Duration;

/// A credential's handle (`rekey.credential(store, "crm")`); cheap to clone.
#[derive(Clone)]
pub struct CredentialHandle {
    rekey: Rekey,
    store: Arc<dyn KeyStore>,
    name: Arc<str>,
}

impl CredentialHandle {
    /// Sends `req` with this credential's token: [`Rekey::send`].
    pub async fn send(&self, req: Request) -> Result<Response, Error> {
        self.rekey.send(self.store.clone(), &self.name, req).await
    }

    /// Refreshes this credential's token set if it was obtained `older_than`
    /// ago or more, so its refresh token does not die from disuse:
    /// [`Rekey::keepalive`].
    pub async fn keepalive(&self, older_than: Duration) -> Result<KeepaliveOutcome, Error> {
        self.rekey
            .keepalive(self.store.clone(), &self.name, older_than)
            .await
    }

    /// The credential's name in its store.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for CredentialHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Rekey {
    /// A handle on credential `name` in `store`.
    pub fn credential(&self, store: Arc<dyn KeyStore>, name: &str) -> CredentialHandle {
        CredentialHandle {
            rekey: self.clone(),
            store,
            name: name.into(),
        }
    }
}
