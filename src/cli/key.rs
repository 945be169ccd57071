//! `ballast backup key create`: writes a backup key file here, without the
//! daemon. A passphrase is read from a file, the environment or the
//! terminal, never from the command line (where `ps` would show it).

use std::path::Path;

use anyhow::{bail, Context, Result};
use ballast_backupstore::BackupKey;
use zeroize::Zeroizing;

use super::args::KeyCommand;
use super::output::json;

/// The environment variable a passphrase may come from (for scripts).
const PASSPHRASE_ENV: &str = "BALLAST_BACKUP_PASSPHRASE";

pub fn run(command: KeyCommand) -> Result<String> {
    let KeyCommand::Create {
        file,
        passphrase,
        passphrase_file,
        salt,
        output,
    } = command;
    let key = if passphrase {
        let secret = read_passphrase(passphrase_file.as_deref())?;
        BackupKey::from_passphrase(secret.as_bytes(), salt.as_deref())?
    } else {
        BackupKey::generate()
    };
    key.write_new(&file)?;
    let salt = key.kdf().map(|k| k.salt.clone());
    Ok(if output.json {
        json(&serde_json::json!({
            "file": file,
            "fingerprint": key.fingerprint(),
            "kdf": key.kdf(),
        }))
    } else {
        let mut text = format!("{}: key {}\n", file.display(), key.fingerprint());
        if let Some(salt) = salt {
            text.push_str(&format!(
                "derived from the passphrase with scrypt, salt {salt} (recorded in the file and the store)\n"
            ));
        }
        text
    })
}

fn read_passphrase(file: Option<&Path>) -> Result<Zeroizing<String>> {
    let passphrase = if let Some(file) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("--passphrase-file {}", file.display()))?,
        );
        Zeroizing::new(text.lines().next().unwrap_or_default().to_string())
    } else if let Ok(env) = std::env::var(PASSPHRASE_ENV) {
        Zeroizing::new(env)
    } else {
        let no_terminal = || {
            format!("no terminal to read the passphrase from: set ${PASSPHRASE_ENV} or use --passphrase-file")
        };
        let first =
            Zeroizing::new(rpassword::prompt_password("passphrase: ").with_context(no_terminal)?);
        let again = Zeroizing::new(
            rpassword::prompt_password("passphrase again: ").with_context(no_terminal)?,
        );
        if first != again {
            bail!("the passphrases differ; nothing was written");
        }
        first
    };
    if passphrase.is_empty() {
        bail!("the passphrase is empty; nothing was written");
    }
    Ok(passphrase)
}
