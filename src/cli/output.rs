//! Output formatting: aligned tables for people, JSON for scripts.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `text` to stdout. A closed pipe (`ballast list | head -1`) is not
/// an error worth reporting.
pub fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// An error and its causes as one line, `outer: cause: cause`. An error
/// whose message already ends with its cause's (typed errors that name
/// their source, like `cannot bind X: <io error>`) does not repeat it.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Pretty JSON with a trailing newline.
pub fn json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("API types always serialise");
    text.push('\n');
    text
}

/// A table with a header row; columns are left-aligned and separated by two spaces.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for a Unix timestamp.
pub fn format_time(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `YYYY-MM-DD HH:MM:SS ZONE` in the local time zone (`TZ`, else
/// `/etc/localtime`) for a Unix timestamp, e.g. `2026-12-01 16:00:00 CET`;
/// UTC if the C library cannot convert it.
pub fn format_local_time(unix_secs: u64) -> String {
    let t = unix_secs.min(i64::MAX as u64) as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is reentrant.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("{} UTC", format_time(unix_secs));
    }
    let mut buf = [0u8; 64];
    // SAFETY: the buffer, format string and `tm` are live; strftime writes
    // at most `buf.len()` bytes and returns how many.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y-%m-%d %H:%M:%S %Z".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_without_repeated_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot bind /x: {0}")]
        struct Bind(#[source] std::io::Error);
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::new(Bind(io)).context("--control-socket");
        assert_eq!(
            error_line(&e),
            "--control-socket: cannot bind /x: No such file or directory (os error 2)"
        );
        let multi = anyhow::anyhow!("first\nsecond").context("outer");
        assert_eq!(error_line(&multi), "outer: first second");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_time(4_102_444_799), "2099-12-31 23:59:59");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["NAME", "SIZE"]);
        table.row(vec!["a-long-name".into(), "10 GiB".into()]);
        table.row(vec!["b".into(), "".into()]);
        assert_eq!(
            table.render(),
            "NAME         SIZE\na-long-name  10 GiB\nb\n"
        );
    }
}
