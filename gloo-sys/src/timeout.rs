//! Conversion of [`Duration`] timeouts to the shim's milliseconds.

use std::time::Duration;

use crate::ffi::GLOO_SHIM_MAX_TIMEOUT_MS;

/// `timeout` in whole milliseconds for the shim: rounded up, at least 1 ms
/// (Gloo treats 0 as already expired), at most `GLOO_SHIM_MAX_TIMEOUT_MS`
/// (about 24.8 days, which stands in for "no timeout").
pub(crate) fn timeout_ms(timeout: Duration) -> i64 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms)
        .unwrap_or(i64::MAX)
        .clamp(1, GLOO_SHIM_MAX_TIMEOUT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_and_clamps() {
        assert_eq!(timeout_ms(Duration::ZERO), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_ms(Duration::from_secs(3)), 3000);
        assert_eq!(timeout_ms(Duration::MAX), GLOO_SHIM_MAX_TIMEOUT_MS);
    }
}
