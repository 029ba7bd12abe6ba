//! The shipped component itself: the size budget of the release build
//! (`GUEST_WASM` is always built with the size-optimised `guest` profile).

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
