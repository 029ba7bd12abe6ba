//! `rekey authorize NAME`: the first token set for a stored credential, by
//! the authorization code grant with PKCE through a loopback redirect, or
//! (`--device`) the device authorization grant. Everything is printed on
//! stderr; nothing secret is printed unless asked (`--print-url`).
//!
//! The browser is sent to a one-use start URL on the loopback listener, which
//! answers with a redirect to the authorization URL: a browser opener's
//! command line can be read by every local user, and `state` and the PKCE
//! challenge must not be.

use super::{Exit, Failure};
use rekey::KeyStore;
use rekey::authorize::{AuthorizeError, CodeOptions, CodePrompt, DevicePrompt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The stored credential to authorise (`rekey credential add` first).
    credential: String,
    /// Use the device authorization grant (RFC 8628): print a code to enter
    /// on another device, instead of a browser redirect.
    #[arg(long)]
    device: bool,
    /// Do not open a browser; only print the (one-use) start URL.
    #[arg(long)]
    no_browser: bool,
    /// Also print the authorization URL itself (it carries this request's
    /// state and PKCE challenge: for your own terminal only).
    #[arg(long)]
    print_url: bool,
    /// Seconds to wait for the redirect (default 300, at most a day).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// The loopback redirect URI to listen on (default
    /// http://127.0.0.1/callback on a free port; give a port when the
    /// provider wants an exact, registered URI).
    #[arg(long)]
    redirect_uri: Option<String>,
}

pub async fn run(
    store: Arc<dyn KeyStore>,
    cache_dir: Option<PathBuf>,
    args: Args,
) -> Result<Exit, Failure> {
    let name = args.credential.clone();
    let credential = {
        let (store, name) = (store.clone(), name.clone());
        super::blocking(move || Ok(store.load(&name)?)).await?
    };
    if credential.settings.grant.is_machine() {
        return Err(Failure::new(
            Exit::BadInput,
            format!(
                "{name:?} uses the {} grant: nobody authorises it; `rekey send` fetches its token",
                credential.settings.grant.name()
            ),
        ));
    }
    let rekey = super::rekey_for_one_call(cache_dir)?;
    let settings = &credential.settings;
    let result = if args.device {
        rekey.authorize_device(&name, settings, show_device).await
    } else {
        let options = CodeOptions {
            redirect_uri: args.redirect_uri.clone(),
            timeout: Duration::from_secs(args.timeout),
        };
        let browser = !args.no_browser;
        rekey
            .authorize_code(&name, settings, &options, |prompt| {
                show_url(&name, prompt, browser, args.print_url, args.timeout)
            })
            .await
    };
    let keys = result.map_err(failure)?;
    if keys.refresh_token().is_none() {
        eprintln!(
            "rekey: warning: the provider issued no refresh token (ask for offline access: e.g. scope offline_access, or Google's access_type=offline); {name:?} works until its access token expires"
        );
    }
    let stored = {
        let name = name.clone();
        super::blocking(move || {
            // The settings as stored now; only the keys change.
            let current = store.load(&name)?;
            store.put(&name, &current.settings, Some(&keys))?;
            Ok(())
        })
        .await
    };
    stored?;
    eprintln!("rekey: authorised: the token set for {name:?} is stored");
    Ok(Exit::Ok)
}

fn failure(e: AuthorizeError) -> Failure {
    Failure::new(Exit::Failure(e.category()), e.to_string())
}

fn show_url(name: &str, prompt: &CodePrompt, browser: bool, print_url: bool, timeout: u64) {
    if browser && open_browser(&prompt.start_url) {
        eprintln!("rekey: a browser was asked to open the authorisation page for {name:?}");
        eprintln!(
            "rekey: if none opened, open this URL (it works once):\n\n  {}\n",
            prompt.start_url
        );
    } else {
        eprintln!(
            "rekey: to authorise {name:?}, open this URL in a browser (it works once):\n\n  {}\n",
            prompt.start_url
        );
    }
    if print_url {
        eprintln!(
            "rekey: the authorization URL (it carries this request's state and challenge: keep it to yourself):\n\n  {}\n",
            prompt.authorization_url
        );
    }
    eprintln!("rekey: waiting up to {timeout} s for the provider's redirect…");
}

fn show_device(p: &DevicePrompt) {
    eprintln!(
        "rekey: on any device, open {}\nrekey: and enter the code:\n\n  {}\n",
        p.verification_uri, p.user_code
    );
    if let Some(complete) = &p.verification_uri_complete {
        eprintln!("rekey: (or open {complete})");
    }
    eprintln!(
        "rekey: waiting up to {} s for approval (polling every {} s)…",
        p.expires_in, p.interval
    );
}

/// Asks the desktop to open `url`: `xdg-open` where there is one on PATH
/// (`open` on macOS). False when there is none. Only the start URL comes
/// here: the opener's command line is readable by every local user.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(opener).is_file()));
    if !on_path {
        return false;
    }
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
