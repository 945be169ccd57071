//! Running the host tools (mount, losetup, mkfs, blkid) with errors that
//! say which command failed and why.

use std::ffi::OsStr;
use std::io;
use std::process::Output;

use tokio::process::Command;

use super::HostError;

/// Runs `program args`; its stdout on success.
pub async fn run<I, S>(program: &str, args: I) -> Result<String, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = output(program, args).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failure(program, &output))
    }
}

/// Runs `program args` and returns its output whatever the exit status.
pub async fn output<I, S>(program: &str, args: I) -> Result<Output, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    Command::new(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| not_runnable(program, e))
}

/// The one-line error for a command that ran and failed.
pub fn failure(program: &str, output: &Output) -> HostError {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    HostError(if detail.is_empty() {
        format!("{program} failed ({})", output.status)
    } else {
        format!("{program} failed: {detail}")
    })
}

pub fn not_runnable(program: &str, e: io::Error) -> HostError {
    if e.kind() == io::ErrorKind::NotFound {
        HostError(format!("{program} is not installed on this host"))
    } else {
        HostError(format!("cannot run {program}: {e}"))
    }
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
