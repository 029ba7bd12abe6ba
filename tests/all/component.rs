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
/// rekey's interface and clocks only) can link it: no `wasi:cli`, no
/// filesystem, sockets or random.
#[test]
fn the_component_imports_exactly_the_host_interface_and_the_clocks() {
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::new(&engine, rekey::GUEST_WASM).unwrap();
    let ty = component.component_type();
    let mut imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_owned()).collect();
    imports.sort();
    assert_eq!(
        imports,
        [
            "rekey:oauth2/host@0.2.0",
            "rekey:oauth2/types@0.2.0",
            "wasi:clocks/monotonic-clock@0.2.0",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:io/poll@0.2.0",
        ]
    );
    let mut exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_owned()).collect();
    exports.sort();
    assert_eq!(
        exports,
        ["rekey:oauth2/authorize@0.2.0", "rekey:oauth2/client@0.2.0"]
    );
}
