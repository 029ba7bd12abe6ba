//! Instances kept between calls (host/src/warm.rs): one credential's calls
//! reuse an instance; a trapped instance is never reused; no instance serves
//! two credentials.

use rekey::{Config, Error, KeyStore, MemoryStore, Rekey, Request, Settings, TokenSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// Guest memory for these calls: ample for a small token set, too little to
/// read one of `BIG` bytes (response bodies never enter the guest), so that
/// call traps in the guest's allocator.
const MEMORY: usize = 2 << 20;
const BIG: usize = 3 << 20;

/// Answers every request with a short body.
fn start_api() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let body = b"small".to_vec();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    origin
}

fn credential(store: &MemoryStore, name: &str, origin: &str) {
    store_keys(store, name, origin, "");
}

/// The credential's keys, with `padding` in a field of their own.
fn store_keys(store: &MemoryStore, name: &str, origin: &str, padding: &str) {
    let mut settings = Settings::new("http://127.0.0.1:9/token", "client");
    settings.api_origins = vec![origin.to_owned()];
    let keys = TokenSet::import(&format!(
        r#"{{"access_token":"warm-test","token_type":"Bearer","padding":"{padding}"}}"#
    ))
    .unwrap();
    store.put(name, &settings, Some(&keys)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapped_instance_is_never_reused_and_credentials_never_share_one() {
    let origin = start_api();
    let memory = Arc::new(MemoryStore::new());
    credential(&memory, "a", &origin);
    credential(&memory, "b", &origin);
    let store: Arc<dyn KeyStore> = memory.clone();
    let rekey = Rekey::new(Config {
        memory_limit_bytes: MEMORY,
        ..Config::default()
    })
    .unwrap();
    let send = |name: &'static str, path: &'static str| {
        let (rekey, store, url) = (rekey.clone(), store.clone(), format!("{origin}{path}"));
        async move { rekey.send(store, name, Request::get(&url)).await }
    };

    for _ in 0..3 {
        let resp = send("a", "/small").await.expect("a small response");
        assert_eq!(resp.body, b"small");
    }
    assert_eq!(rekey.instances_created(), 1, "three calls, one instance");

    store_keys(&memory, "a", &origin, &"x".repeat(BIG));
    match send("a", "/small").await {
        Err(Error::Component(_)) => {}
        Err(e) => panic!("keys over the guest's memory must trap, not: {e}"),
        Ok(r) => panic!("keys over the guest's memory must trap, got {}", r.status),
    }
    credential(&memory, "a", &origin);
    // The trapped instance is gone: the next call makes a new one, and works
    // (entering a trapped instance again would fail).
    let resp = send("a", "/small").await.expect("a call after the trap");
    assert_eq!(resp.body, b"small");
    assert_eq!(
        rekey.instances_created(),
        2,
        "a new instance after the trap"
    );
    send("a", "/small").await.expect("and it is kept");
    assert_eq!(rekey.instances_created(), 2);

    // Another credential never gets a's instance.
    send("b", "/small").await.expect("b's call");
    assert_eq!(rekey.instances_created(), 3, "b has an instance of its own");
    send("a", "/small").await.expect("a again");
    send("b", "/small").await.expect("b again");
    assert_eq!(rekey.instances_created(), 3);
}
