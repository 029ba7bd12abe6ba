//! One line per event on the runtime's stderr. Callers pass text that holds no
//! token, secret or body: these lines are the server's output.

use crate::wasi::cli::stderr;

pub fn line(msg: &str) {
    let out = stderr::get_stderr();
    // blocking-write-and-flush takes at most 4096 bytes per call.
    for chunk in msg.as_bytes().chunks(4096).chain([&b"\n"[..]]) {
        if out.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
}
