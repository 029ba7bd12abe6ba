//! The native baseline: the same requests sent with reqwest directly, the
//! way an application would write them.

use rekey::HttpConfig;
use rekey_testkit::Provider;
use std::sync::Once;

static CRYPTO: Once = Once::new();

/// The client `HttpClient` (host/src/http.rs) builds on its first send, with
/// the configuration `Config::default()` gives rekey: rustls with ring
/// installed once, no redirects, no proxies, the same timeouts. Keep it in
/// step with that file: the library has no way to hand out its client.
pub fn client() -> reqwest::Client {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let http = HttpConfig::default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(http.connect_timeout)
        .timeout(http.total_timeout)
        .build()
        .expect("build the native client")
}

/// `GET url` with a bearer token, reading the whole body; the status.
pub async fn get(client: &reqwest::Client, url: &str, token: &str, what: &str) -> u16 {
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("native {what}: {e}"));
    let status = resp.status().as_u16();
    resp.bytes()
        .await
        .unwrap_or_else(|e| panic!("native {what}, body: {e}"));
    status
}

/// The three exchanges rekey does on a rejected token: 401, refresh
/// (client_secret_basic, like rekey's default), parse, retry. Keeps the
/// rotated refresh token.
pub async fn refresh(
    client: &reqwest::Client,
    provider: &Provider,
    api: &str,
    refresh_token: &mut String,
) {
    let status = get(client, api, "expired", "first request").await;
    assert_eq!(status, 401, "expired token was accepted");

    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token)
        .finish();
    let cfg = provider.config();
    let resp = client
        .post(provider.token_url())
        .basic_auth(&cfg.client_id, Some(&cfg.client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(form)
        .send()
        .await
        .expect("native token request");
    assert_eq!(resp.status().as_u16(), 200, "native refresh refused");
    let body = resp.bytes().await.expect("native token body");
    let tokens: serde_json::Value = serde_json::from_slice(&body).expect("token JSON");
    if let Some(rotated) = tokens["refresh_token"].as_str() {
        *refresh_token = rotated.to_owned();
    }
    let access = tokens["access_token"].as_str().expect("access_token");

    let status = get(client, api, access, "retry").await;
    assert_eq!(status, 200, "native retry rejected");
}
