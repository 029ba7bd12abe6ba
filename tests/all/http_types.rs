//! A credential's handle as a `tower::Service` over `http` types: what code
//! written for hyper or tower stacks plugs in. The same routine underneath:
//! the request as given, a refresh on a rejected token, the rotated keys
//! stored, nothing sent off the credential's origins.

use crate::support::*;
use bytes::Bytes;
use rekey::{ClientAuth, Error, Strategy};
use rekey_testkit::ProviderConfig;
use tower_service::Service;

async fn call(
    svc: &mut rekey::CredentialHandle,
    req: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, Error> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_handle_serves_http_requests_through_the_routine() {
    let f = Fixture::new(ProviderConfig::default()).await;
    let first = f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let mut svc = f.rekey.credential(f.store_dyn(), "c");
    assert_eq!(svc.name(), "c");

    let echo = http::Request::post(f.provider.api_url("echo"))
        .header("x-trace", "7")
        .body(Bytes::from_static(b"a body, byte for byte"))
        .unwrap();
    let resp = call(&mut svc, echo).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.body().as_ref(), b"a body, byte for byte");
    let seen = f.provider.api_log();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "echo")
    );

    // A rejected token: refreshed, stored, the request sent once more.
    f.provider.expire_access_tokens();
    let me = http::Request::get(f.provider.api_url("me"))
        .body(Bytes::new())
        .unwrap();
    let resp = call(&mut svc, me).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "the API's headers come back"
    );
    let stats = f.provider.stats();
    assert_eq!(
        (stats.refreshes_granted, stats.reused_refresh_tokens),
        (1, 0)
    );
    assert_ne!(
        f.stored_keys("c")["refresh_token"],
        first["refresh_token"],
        "the rotated refresh token is stored"
    );

    // Off the credential's origins, a relative URI, a header that is not
    // text: refused before anything is sent.
    let before = f.provider.stats().api_calls;
    let elsewhere = http::Request::get("http://127.0.0.2:9/steal")
        .body(Bytes::new())
        .unwrap();
    let relative = http::Request::get("/api/me").body(Bytes::new()).unwrap();
    let binary = http::Request::get(f.provider.api_url("me"))
        .header("x-bin", http::HeaderValue::from_bytes(&[0xfe]).unwrap())
        .body(Bytes::new())
        .unwrap();
    for (req, what) in [
        (elsewhere, "another origin"),
        (relative, "a relative URI"),
        (binary, "a binary header"),
    ] {
        let err = call(&mut svc, req).await.expect_err(what);
        assert!(matches!(err, Error::InvalidRequest(_)), "{what}: {err:?}");
    }
    assert_eq!(f.provider.stats().api_calls, before, "nothing was sent");
}
