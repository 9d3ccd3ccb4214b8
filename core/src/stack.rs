//! Run the engine on a large stack segment of the calling thread.
//!
//! Rhai evaluates scripts recursively: every script call level, every level of
//! expression nesting and every level of data nesting (Rhai walks nested arrays
//! and maps to check size limits and to drop them) costs native stack. A native
//! stack overflow kills the whole process, and the stack of the thread that
//! happens to call us may be small (8 MiB on glibc, 128 KiB on musl, whatever
//! `threading.stack_size` set). So compiling and calling run on a dedicated
//! [`ENGINE_STACK_BYTES`] segment (a lazily committed mapping with a guard page),
//! allocated once per OS thread and reused by every later call on that thread.
//! The switch costs a few nanoseconds; the thread stays the same, so
//! thread-locals (the per-call deadline and log buffers) keep working.
//!
//! Where the mapping cannot be made (or the platform cannot switch stacks) the
//! closure simply runs on the current stack.

use std::cell::Cell;

#[cfg(unix)]
use crate::limits::ENGINE_STACK_BYTES;

thread_local! {
    static ON_ENGINE_STACK: Cell<bool> = const { Cell::new(false) };
}

#[cfg(unix)]
mod segment {
    use std::cell::RefCell;

    /// One mapping: a guard page at the low end, then the usable stack.
    pub struct Segment {
        map: *mut libc::c_void,
        map_len: usize,
        page: usize,
    }

    impl Segment {
        fn new(size: usize) -> Option<Self> {
            // SAFETY: plain libc calls; every result is checked.
            unsafe {
                let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).ok()?;
                if page == 0 {
                    return None;
                }
                let map_len = size.div_ceil(page) * page + page;
                #[cfg(any(target_os = "linux", target_os = "android"))]
                let flags =
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK;
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                let flags = libc::MAP_PRIVATE | libc::MAP_ANON;
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    -1,
                    0,
                );
                if map == libc::MAP_FAILED {
                    return None;
                }
                // Guard page at the low end: stacks grow down on every target
                // this is built for; an overflow faults instead of corrupting.
                if libc::mprotect(map, page, libc::PROT_NONE) != 0 {
                    libc::munmap(map, map_len);
                    return None;
                }
                Some(Self { map, map_len, page })
            }
        }

        /// Low address and size of the usable part.
        pub fn usable(&self) -> (*mut u8, usize) {
            // SAFETY: the offset stays inside the mapping.
            let base = unsafe { (self.map as *mut u8).add(self.page) };
            (base, self.map_len - self.page)
        }
    }

    impl Drop for Segment {
        fn drop(&mut self) {
            // SAFETY: unmapping our own mapping; nothing runs on it any more
            // (thread-local destructors run after the last call returned).
            unsafe {
                libc::munmap(self.map, self.map_len);
            }
        }
    }

    thread_local! {
        static SEGMENT: RefCell<Option<Segment>> = const { RefCell::new(None) };
    }

    /// The usable part of this thread's segment, created on first use.
    pub fn get(size: usize) -> Option<(*mut u8, usize)> {
        SEGMENT
            .try_with(|s| {
                let mut s = s.borrow_mut();
                if s.is_none() {
                    *s = Segment::new(size);
                }
                s.as_ref().map(Segment::usable)
            })
            .ok()
            .flatten()
    }
}

/// Run `f` on this thread's engine stack (or directly, see the module docs).
pub fn on_engine_stack<R, F: FnOnce() -> R>(f: F) -> R {
    if ON_ENGINE_STACK.get() {
        return f();
    }
    psm::psm_stack_manipulation! {
        yes {
            #[cfg(unix)]
            {
                if let Some((base, size)) = segment::get(ENGINE_STACK_BYTES) {
                    ON_ENGINE_STACK.set(true);
                    let mut outcome = None;
                    // SAFETY: `base..base+size` is a page-aligned, writable mapping
                    // owned by this thread with a guard page below it; it is not in
                    // use (ON_ENGINE_STACK was false) and outlives the call. Panics
                    // are caught on the segment and resumed after switching back.
                    unsafe {
                        psm::on_stack(base, size, || {
                            outcome = Some(std::panic::catch_unwind(
                                std::panic::AssertUnwindSafe(f),
                            ));
                        });
                    }
                    ON_ENGINE_STACK.set(false);
                    return match outcome {
                        Some(Ok(value)) => value,
                        Some(Err(panic)) => std::panic::resume_unwind(panic),
                        None => unreachable!("the engine-stack closure did not run"),
                    };
                }
            }
            f()
        }
        no {
            f()
        }
    }
}
