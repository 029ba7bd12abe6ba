//! What std and wasi-libc would otherwise supply in an adapter component: the
//! heap, the `cabi_realloc` export the host allocates our arguments with (on
//! that same heap), `memcmp`/`bcmp`, and a panic handler. Without wasi-libc the
//! adapters import WASI 0.2.0 only, the version the rekey component imports, so
//! the composed proxy has one version of each interface.

use core::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The canonical ABI's allocator (the component model spec's
/// `cabi_realloc(old, old_len, align, new_len)`).
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
            let layout = Layout::from_size_align_unchecked(old_len, align);
            ALLOCATOR.realloc(old, layout, new_len)
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // Plain indexing: LLVM does not turn a compare loop back into a memcmp call.
    let mut i = 0;
    while i < n {
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As [`memcmp`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    unsafe { memcmp(a, b, n) }
}

/// A panic is a bug: trap, and let the host report a component failure.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
