//! Latency, the sides interleaved in rounds: the warm request (against the
//! provider, and against a server that takes ~1 ms), and the refresh path.

use crate::measure::{Summary, rotation, summarize};
use crate::native;
use crate::sides::{Caller, rekey_refresh};
use rekey::{KeyStore, Rekey};
use rekey_testkit::Provider;
use std::sync::Arc;
use std::time::Duration;

const WARM_ROUNDS: usize = 20;
const WARM_PER_ROUND: usize = 500;
const NEAR_ROUNDS: usize = 10;
const NEAR_PER_ROUND: usize = 100;
const BODY_ROUNDS: usize = 10;
const BODY_PER_ROUND: usize = 50;
/// The large response: bodies cross the component as handles, so its extra
/// cost over native should be that of an empty one.
pub const LARGE_BODY: usize = 1 << 20;
const REFRESH_ROUNDS: usize = 20;
const REFRESH_PER_ROUND: usize = 100;

/// Warm requests to `url` from each side, `per_round` at a time, the order
/// rotating every round.
async fn warm_rounds(
    sides: &[&Caller],
    url: &str,
    rounds: usize,
    per_round: usize,
) -> Vec<Vec<Duration>> {
    let mut samples = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for i in rotation(sides.len(), round) {
            for _ in 0..per_round {
                samples[i].push(sides[i].timed_warm(url).await);
            }
        }
    }
    samples
}

/// The warm request to the provider's API, per side, after one untimed
/// round of warm-up.
pub async fn warm<const N: usize>(sides: [&Caller; N], api: &str) -> [Summary; N] {
    warm_rounds(&sides, api, 1, WARM_PER_ROUND).await;
    let samples = warm_rounds(&sides, api, WARM_ROUNDS, WARM_PER_ROUND).await;
    summaries(samples)
}

/// The same against a server that takes ~1 ms, as a nearby real API does:
/// what the same absolute overhead amounts to off loopback.
pub async fn near<const N: usize>(sides: [&Caller; N]) -> [Summary; N] {
    let slow = slow_server().await;
    summaries(warm_rounds(&sides, &slow, NEAR_ROUNDS, NEAR_PER_ROUND).await)
}

/// Warm requests answered with an empty body and with [`LARGE_BODY`] bytes:
/// `[[rekey, native] empty, [rekey, native] large]`.
pub async fn body_sizes(sides: [&Caller; 2]) -> [[Summary; 2]; 2] {
    let server = bytes_server().await;
    let mut out = Vec::new();
    for path in ["empty", "large"] {
        let url = format!("{server}/{path}");
        warm_rounds(&sides, &url, 1, BODY_PER_ROUND).await;
        out.push(summaries(
            warm_rounds(&sides, &url, BODY_ROUNDS, BODY_PER_ROUND).await,
        ));
    }
    out.try_into().unwrap_or_else(|_| unreachable!("two sizes"))
}

/// `GET /empty` (no body) and `GET /large` ([`LARGE_BODY`] bytes); it
/// checks no token.
async fn bytes_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the bytes server");
    let addr = listener.local_addr().expect("bytes server address");
    let large = bytes::Bytes::from(vec![b'x'; LARGE_BODY]);
    let app = axum::Router::new()
        .route("/empty", axum::routing::get(|| async { "" }))
        .route(
            "/large",
            axum::routing::get(move || std::future::ready(large.clone())),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn summaries<const N: usize>(samples: Vec<Vec<Duration>>) -> [Summary; N] {
    let mut samples: [Vec<Duration>; N] = samples.try_into().expect("one sample set a side");
    std::array::from_fn(|i| summarize(&mut samples[i]))
}

/// `GET /me` answering 200 after ~1 ms; it checks no token.
async fn slow_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the slow server");
    let addr = listener.local_addr().expect("slow server address");
    let app = axum::Router::new().route(
        "/me",
        axum::routing::get(|| async {
            // A blocking-thread sleep: tokio's timer would round the delay
            // up to a millisecond tick and add phase noise to both sides.
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1))).await;
            r#"{"ok":true}"#
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/me")
}

/// 401 → refresh → retry, rekey then native: [rekey, native]. Keys are reset
/// outside the timed region; the provider rotates refresh tokens, so the
/// reset always carries the latest one from the store. Round 0 is the
/// warm-up.
pub async fn refresh(
    rekey: &Rekey,
    store: &Arc<dyn KeyStore>,
    client: &reqwest::Client,
    provider: &Provider,
    api: &str,
) -> [Summary; 2] {
    let before = provider.stats().refreshes_granted;
    let mut native_refresh_token = provider.authorize()["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let mut kept: [Vec<Duration>; 2] = Default::default();
    for round in 0..=REFRESH_ROUNDS {
        let mut samples: [Vec<Duration>; 2] = Default::default();
        for side in rotation(2, round) {
            for _ in 0..REFRESH_PER_ROUND {
                let elapsed = if side == 0 {
                    rekey_refresh(rekey, store, api).await
                } else {
                    let t = std::time::Instant::now();
                    native::refresh(client, provider, api, &mut native_refresh_token).await;
                    t.elapsed()
                };
                samples[side].push(elapsed);
            }
        }
        if round > 0 {
            for (kept, samples) in kept.iter_mut().zip(&mut samples) {
                kept.append(samples);
            }
        }
    }
    let refreshes = provider.stats().refreshes_granted - before;
    let expected = 2 * (REFRESH_ROUNDS + 1) * REFRESH_PER_ROUND;
    assert_eq!(
        refreshes as usize, expected,
        "every iteration refreshes once"
    );
    kept.map(|mut v| summarize(&mut v))
}
