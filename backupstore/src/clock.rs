//! The store's notion of now: seconds since the Unix epoch, as manifests,
//! locks and the store configuration record it.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The local time's offset from UTC, in seconds east, at `utc` (seconds
/// since the epoch), from the C library's time zone (`TZ`, else
/// `/etc/localtime`); 0 if it cannot say.
pub(crate) fn local_offset(utc: u64) -> i64 {
    let t = utc.min(i64::MAX as u64) as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is the
    // reentrant form and writes only `tm`.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}
