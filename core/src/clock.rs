//! The clock behind the per-call wall-clock budget.
//!
//! Linux: `CLOCK_MONOTONIC_COARSE`, read from the vDSO in a few nanoseconds with
//! the resolution of the kernel tick (1-4 ms), cheap enough to read at every
//! Rhai operation. Elsewhere: `Instant`, read every few operations.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return fallback_ns();
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn now_ns() -> u64 {
    fallback_ns()
}

/// Nanoseconds since a process-wide origin, from `Instant`.
fn fallback_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
