//! `wasi:config/store` that holds nothing. `rekey-proxy-env.wasm` is the
//! proxy with this plugged into its `wasi:config/store` import, for runtimes
//! that do not link wasi:config (`wasmtime serve` 49, `wash dev` 2.10): every
//! setting then comes from the environment, the adapters' fallback. It
//! imports nothing, so it adds no import to the proxy.

#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    world: "rekey:edge/noconfig",
    path: "../wit",
    generate_all,
});

use alloc::string::String;
use alloc::vec::Vec;
use exports::wasi::config::store::{Error, Guest};

struct Empty;

impl Guest for Empty {
    fn get(_key: String) -> Result<Option<String>, Error> {
        Ok(None)
    }

    fn get_all() -> Result<Vec<(String, String)>, Error> {
        Ok(Vec::new())
    }
}

export!(Empty);

#[cfg(target_arch = "wasm32")]
mod wasm_rt {
    use core::alloc::{GlobalAlloc, Layout};

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// The canonical ABI's allocator: the host lowers `get`'s key with it.
    ///
    /// # Safety
    /// Called by the host with a pointer it got from here, or null.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        if new_len == 0 {
            return align as *mut u8;
        }
        let ptr = unsafe {
            if old_len == 0 {
                ALLOCATOR.alloc(Layout::from_size_align_unchecked(new_len, align))
            } else {
                ALLOCATOR.realloc(
                    old,
                    Layout::from_size_align_unchecked(old_len, align),
                    new_len,
                )
            }
        };
        if ptr.is_null() {
            core::arch::wasm32::unreachable();
        }
        ptr
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        core::arch::wasm32::unreachable()
    }
}
