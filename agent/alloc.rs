//! The allocator's one setting we change. `main.rs` makes mimalloc the global allocator (musl's
//! malloc and its lock took a third of the daemon's CPU under a burst). The bundled mimalloc 3
//! gives freed pages back to the kernel only after `purge_delay` = 1,000 ms (times 10 for whole
//! arenas), so in a burst the memory freed a moment ago is still resident while new allocations
//! take fresh pages. Measured (docs/BENCHMARKS.md, "Burst memory"), peak RSS of a 100,000-file
//! burst / its `rm -r` on a 100 × 100 tree, three runs each, and agent CPU in `vm-tests/bench`
//! (10,000 files in 100 dirs; rm -r of 50,000):
//!
//! | purge_delay | burst peak | rm -r peak | CPU |
//! |---|---|---|---|
//! | 1,000 ms (default) | 55–74 MB | 57–70 MB | 0.59–0.60 s; 1.72–1.73 s |
//! | 100 ms | 60–87 MB | 55–60 MB | 0.56–0.88 s; 1.64–1.74 s |
//! | **10 ms** | 49–53 MB | 48–52 MB | 0.63–0.69 s; 1.89–2.10 s |
//! | 0 (at once) | 45–46 MB | 45–47 MB | 0.76–0.82 s; 2.09–2.25 s |
//!
//! 10 ms keeps most of the memory gain for about half the extra CPU that purging at once costs.
//!
//! The mimalloc crate exposes `mi_option_set` only behind a feature that needs another crate, so
//! the two functions are declared here; the option's number is checked by the test below against
//! the bundled mimalloc's documented default.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_long};

// The static mimalloc library comes with this crate.
extern crate mimalloc;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_option_get(option: c_int) -> c_long;
}

/// `mi_option_purge_delay` in `mi_option_e` of the mimalloc bundled by libmimalloc-sys
/// (`c_src/mimalloc/v3/include/mimalloc.h`).
const PURGE_DELAY: c_int = 15;

/// What the agent sets.
pub const AGENT_PURGE_DELAY_MS: c_long = 10;

/// Freed memory goes back to the kernel after [`AGENT_PURGE_DELAY_MS`], unless mimalloc's own
/// `MIMALLOC_PURGE_DELAY` is set (measurements compare delays with it). Call first thing in
/// `main`, before any thread.
pub fn purge_sooner() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set stores an integer in mimalloc's option table; any option number below
    // `_mi_option_last` is valid, and any delay ≥ 0 is documented for this one.
    unsafe { mi_option_set(PURGE_DELAY, AGENT_PURGE_DELAY_MS) }
}

/// The current purge delay in ms (the bundled mimalloc's default is 1,000).
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads mimalloc's option table.
    unsafe { mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_number_is_the_purge_delay() {
        // Option 15's default is 1,000 (c_src/mimalloc/v3/src/options.c); its neighbours' are 1
        // (14, deprecated eager-commit delay) and 0 (16, NUMA nodes): a mimalloc upgrade that
        // renumbers the options fails here rather than setting something else.
        assert_eq!(
            purge_delay_ms(),
            1000,
            "mi_option 15 is not purge_delay here"
        );
        purge_sooner();
        assert_eq!(purge_delay_ms(), AGENT_PURGE_DELAY_MS);
    }
}
