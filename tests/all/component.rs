//! The shipped component itself: the size budget of the release build
//! (`GUEST_WASM` is always built with the size-optimised `guest` profile) and
//! exactly what it imports and exports.

/// Budget: the component stays at or under 150 KB (150,000 bytes).
#[test]
fn the_release_component_fits_its_size_budget() {
    let size = rekey::GUEST_WASM.len();
    eprintln!("rekey_guest.wasm: {size} bytes");
    assert!(
        size <= 150_000,
        "component is {size} bytes, over the 150 KB budget"
    );
    // A component (layer 1), not a core module (layer 0).
    assert_eq!(&rekey::GUEST_WASM[..8], b"\0asm\x0d\0\x01\0");
}

/// A strict host (the `wasi:http/proxy` world, a plugin host that supplies
/// rekey's interface, clocks and randomness only) can link it: no
/// `wasi:cli`, no filesystem or sockets, and no lease functions (contract
/// 0.3: the record store's two effects are all the fleet protocol needs).
/// Contract 0.4 adds the signer: one function, the key stays with the host;
/// and `keepalive` to the client export. Contract 0.5 adds DPoP's two to the
/// signer (the DPoP key's public JWK, and a proof's signature).
#[test]
fn the_component_imports_exactly_the_host_interface_signer_clocks_and_random() {
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::new(&engine, rekey::GUEST_WASM).unwrap();
    let ty = component.component_type();
    let mut imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_owned()).collect();
    imports.sort();
    assert_eq!(
        imports,
        [
            "rekey:oauth2/host@0.5.0",
            "rekey:oauth2/signer@0.5.0",
            "rekey:oauth2/types@0.5.0",
            "wasi:clocks/monotonic-clock@0.2.0",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:io/poll@0.2.0",
            "wasi:random/random@0.2.0",
        ]
    );
    // The host interface is effects only; `types` adds the body handle,
    // which the component can make (its forms) and read (token answers).
    let functions = |interface: &str| {
        let item = ty
            .imports(&engine)
            .chain(ty.exports(&engine))
            .find(|(n, _)| *n == interface)
            .map(|(_, item)| item)
            .unwrap();
        let wasmtime::component::types::ComponentItem::ComponentInstance(instance) = item.ty else {
            panic!("{interface} is an instance");
        };
        let mut functions: Vec<String> = instance
            .exports(&engine)
            .filter(|(_, item)| {
                matches!(
                    item.ty,
                    wasmtime::component::types::ComponentItem::ComponentFunc(_)
                )
            })
            .map(|(n, _)| n.to_owned())
            .collect();
        functions.sort();
        functions
    };
    assert_eq!(
        functions("rekey:oauth2/host@0.5.0"),
        ["emit-update-keys", "http-send", "read-record"]
    );
    assert_eq!(
        functions("rekey:oauth2/signer@0.5.0"),
        ["dpop-public-key", "dpop-sign", "sign"]
    );
    assert_eq!(
        functions("rekey:oauth2/types@0.5.0"),
        ["[constructor]body", "[method]body.read"]
    );
    let mut exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_owned()).collect();
    exports.sort();
    assert_eq!(
        exports,
        ["rekey:oauth2/authorize@0.5.0", "rekey:oauth2/client@0.5.0"]
    );
    // The client: send, the settings check, and keepalive (a refresh token
    // exercised before it dies from disuse).
    assert_eq!(
        functions("rekey:oauth2/client@0.5.0"),
        ["check-settings", "keepalive", "send"]
    );
}
