//! PostgreSQL store, for fleets: every machine's workers share one credential
//! table and one lease table. Each operation is a single statement, so it is
//! atomic on its own and durable when it returns (synchronous_commit), and the
//! lease uses the server's clock, so machines' clock skew does not matter.
//!
//! Uses the blocking `postgres` client: call it from blocking threads (the
//! host does), never from inside async code.

use super::{Credential, KeyStore, StoreError, json_position, now_unix, validate_keys};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use postgres::{Client, NoTls};
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rekey_credentials (
    name       TEXT PRIMARY KEY,
    settings   TEXT NOT NULL,
    keys       TEXT,
    version    BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rekey_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
";

/// A store in PostgreSQL tables `rekey_credentials` and `rekey_leases`.
pub struct PostgresStore {
    /// Where, for messages: the URL without its password.
    target: String,
    /// Always `Some` until dropped (see `Drop`).
    client: Mutex<Option<Client>>,
}

impl PostgresStore {
    /// Connects (plain TCP: keep it on loopback or a private network) and
    /// creates the tables if needed.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let target = without_password(url);
        let unusable = |e: postgres::Error| StoreError::Unusable {
            path: target.clone(),
            reason: describe(&e),
        };
        let mut client = Client::connect(url, NoTls).map_err(unusable)?;
        // Many workers may start at once; serialise the CREATEs. The batch is
        // one transaction: a transaction-level lock is held until its commit,
        // where an unlock inside it would let the next worker in before the
        // tables are visible (its CREATE then fails on a duplicate key).
        client
            .batch_execute(&format!("SELECT pg_advisory_xact_lock(7412); {SCHEMA}"))
            .map_err(unusable)?;
        Ok(PostgresStore {
            target: target.clone(),
            client: Mutex::new(Some(client)),
        })
    }

    fn with<R>(&self, op: impl FnOnce(&mut Client) -> R) -> R {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        op(guard
            .as_mut()
            .expect("the client lives until the store is dropped"))
    }

    fn unusable(&self, e: postgres::Error) -> StoreError {
        StoreError::Unusable {
            path: self.target.clone(),
            reason: describe(&e),
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing the connection blocks on the client's own runtime, which
        // panics on an async thread: close it on a plain thread instead.
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(client) = client
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

fn write(e: postgres::Error) -> StoreError {
    StoreError::Write(describe(&e))
}

/// The server's message when there is one (its Display is just "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn to_credential(row: &postgres::Row) -> Result<Credential, StoreError> {
    let name: String = row.get(0);
    let settings: String = row.get(1);
    let settings: Settings = serde_json::from_str(&settings).map_err(|e| StoreError::Corrupt {
        name: name.clone(),
        reason: format!("settings: {}", json_position(&e)),
    })?;
    let keys: Option<String> = row.get(2);
    let version: i64 = row.get(3);
    Ok(Credential {
        name,
        settings,
        keys: keys.map(TokenSet::stored),
        version: version.max(0) as u64,
        updated_at: row.get(4),
        needs_authorization: None,
        refresh_in_doubt: false,
    })
}

const SELECT: &str = "SELECT name, settings, keys, version, updated_at FROM rekey_credentials";

impl KeyStore for PostgresStore {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        let row = self
            .with(|c| c.query_opt(&format!("{SELECT} WHERE name = $1"), &[&name]))
            .map_err(|e| self.unusable(e))?
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
        to_credential(&row)
    }

    fn save_keys(
        &self,
        name: &str,
        keys: &TokenSet,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        validate_keys(keys)?;
        let expected = expected_version.map(|v| v as i64);
        self.with(|c| {
            let row = c
                .query_opt(
                    "UPDATE rekey_credentials SET keys = $2, version = version + 1, updated_at = $3
                     WHERE name = $1 AND ($4::BIGINT IS NULL OR version = $4) RETURNING version",
                    &[&name, &keys.expose(), &now_unix(), &expected],
                )
                .map_err(write)?;
            if let Some(row) = row {
                return Ok(row.get::<_, i64>(0) as u64);
            }
            let exists = c
                .query_opt("SELECT 1 FROM rekey_credentials WHERE name = $1", &[&name])
                .map_err(write)?
                .is_some();
            Err(if exists {
                StoreError::Conflict(name.into())
            } else {
                StoreError::UnknownCredential(name.into())
            })
        })
    }

    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        if let Some(k) = keys {
            validate_keys(k)?;
        }
        let settings = serde_json::to_string(settings).expect("settings serialize");
        self.with(|c| {
            c.execute(
                "INSERT INTO rekey_credentials (name, settings, keys, version, updated_at) VALUES ($1, $2, $3, 0, $4)
                 ON CONFLICT (name) DO UPDATE SET settings = $2, keys = COALESCE($3, rekey_credentials.keys),
                     version = rekey_credentials.version + CASE WHEN $3::TEXT IS NULL THEN 0 ELSE 1 END,
                     updated_at = $4",
                &[&name, &settings, &keys.map(TokenSet::expose), &now_unix()],
            )
        })
        .map_err(write)?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        self.with(|c| c.query(&format!("{SELECT} ORDER BY name"), &[]))
            .map_err(|e| self.unusable(e))?
            .iter()
            .map(to_credential)
            .collect()
    }

    fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .with(|c| c.execute("DELETE FROM rekey_credentials WHERE name = $1", &[&name]))
            .map_err(write)?;
        Ok(n > 0)
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = ttl.as_millis() as i64;
        let row = self
            .with(|c| {
                c.query_opt(
                    "INSERT INTO rekey_leases (name, holder, expires_at)
                     VALUES ($1, $2, clock_timestamp() + $3::BIGINT * INTERVAL '1 millisecond')
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                     WHERE rekey_leases.expires_at <= clock_timestamp() OR rekey_leases.holder = EXCLUDED.holder
                     RETURNING holder",
                    &[&name, &holder, &ttl_ms],
                )
            })
            .map_err(write)?;
        Ok(row.is_some())
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = ttl.as_millis() as i64;
        let n = self
            .with(|c| {
                c.execute(
                    "UPDATE rekey_leases SET expires_at = clock_timestamp() + $3::BIGINT * INTERVAL '1 millisecond'
                     WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()",
                    &[&name, &holder, &ttl_ms],
                )
            })
            .map_err(write)?;
        Ok(n == 1)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM rekey_leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
        })
        .map_err(write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::without_password("postgres://rekey:hunter2@db.internal:5432/app"),
            "postgres://rekey@db.internal:5432/app"
        );
        assert_eq!(
            super::without_password("postgres://db/app"),
            "postgres://db/app"
        );
    }
}
