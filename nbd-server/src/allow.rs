//! Which exports each TLS client identity may use: an allow list, one
//! identity a line,
//!
//! ```text
//! # IDENTITY: EXPORT...
//! alice: db db@*
//! CN=backup.example.com,O=Example: *
//! ```
//!
//! An identity is a PSK username or a client certificate's subject (as
//! [`crate::Tls`] prints it: RFC 4514, most specific part first). It ends at
//! the line's last `:` (export names never contain one, subjects may).
//! An export is a name (`db`, `db@snap`), a prefix ending in `*` (`db@*`,
//! every snapshot of `db`), or `*` (everything). An identity the list does
//! not name may use no export; an export an identity may not use is not
//! listed to it and cannot be opened (as if it did not exist).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::export::{Export, ExportProvider};

#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    #[error("cannot read allow list {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("allow list {path} line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct AllowList {
    rules: HashMap<String, Vec<Pattern>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, export: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == export,
            Pattern::Prefix(prefix) => export.starts_with(prefix.as_str()),
        }
    }
}

impl AllowList {
    pub fn load(path: &Path) -> Result<AllowList, AllowError> {
        let text = std::fs::read_to_string(path).map_err(|source| AllowError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| AllowError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses an allow list; blank lines and `#` comments are skipped. An
    /// identity named on several lines may use what any of them allow.
    pub fn parse(text: &str) -> Result<AllowList, (usize, String)> {
        let mut rules: HashMap<String, Vec<Pattern>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| (i + 1, reason);
            let (identity, exports) = line
                .rsplit_once(':')
                .ok_or_else(|| bad("expected IDENTITY: EXPORT...".into()))?;
            let identity = identity.trim();
            if identity.is_empty() {
                return Err(bad("empty identity".into()));
            }
            let patterns = exports
                .split_whitespace()
                .map(|p| {
                    parse_pattern(p)
                        .ok_or_else(|| bad(format!("{p:?} is not an export name, NAME* or *")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules
                .entry(identity.to_string())
                .or_default()
                .extend(patterns);
        }
        Ok(AllowList { rules })
    }

    /// Whether `identity` (none: the client did not authenticate) may use
    /// `export`.
    pub fn permits(&self, identity: Option<&str>, export: &str) -> bool {
        identity
            .and_then(|id| self.rules.get(id))
            .is_some_and(|patterns| patterns.iter().any(|p| p.matches(export)))
    }
}

fn parse_pattern(p: &str) -> Option<Pattern> {
    let (body, prefix) = match p.strip_suffix('*') {
        Some(body) => (body, true),
        None => (p, false),
    };
    let valid = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b));
    if !valid || (body.is_empty() && !prefix) {
        return None;
    }
    Some(if prefix {
        Pattern::Prefix(body.to_string())
    } else {
        Pattern::Exact(body.to_string())
    })
}

/// The exports of `inner` that one client identity may use.
pub(crate) struct AllowedExports {
    inner: Arc<dyn ExportProvider>,
    allow: Arc<AllowList>,
    identity: Option<String>,
}

impl AllowedExports {
    pub(crate) fn new(
        inner: Arc<dyn ExportProvider>,
        allow: Arc<AllowList>,
        identity: Option<String>,
    ) -> Self {
        AllowedExports {
            inner,
            allow,
            identity,
        }
    }

    fn permits(&self, export: &str) -> bool {
        self.allow.permits(self.identity.as_deref(), export)
    }
}

impl ExportProvider for AllowedExports {
    fn resolve(&self, name: &str) -> Option<Export> {
        // Checked on the canonical name the export resolves to as well,
        // should a provider ever accept aliases.
        if !self.permits(name) {
            return None;
        }
        self.inner.resolve(name).filter(|e| self.permits(&e.name))
    }

    fn list(&self) -> Vec<String> {
        let mut names = self.inner.list();
        names.retain(|name| self.permits(name));
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_get_what_their_lines_allow() {
        let list = AllowList::parse(
            "# who may use what\n\
             alice: db db@*\n\
             CN=backup,O=Example Org: *\n\
             carol:\n\
             alice: web\n",
        )
        .unwrap();
        let alice = Some("alice");
        assert!(list.permits(alice, "db"));
        assert!(list.permits(alice, "db@monday"));
        assert!(list.permits(alice, "web"));
        assert!(!list.permits(alice, "dbx"));
        assert!(!list.permits(alice, "web@s"));
        assert!(list.permits(Some("CN=backup,O=Example Org"), "anything@at-all"));
        assert!(!list.permits(Some("carol"), "db"));
        assert!(!list.permits(Some("mallory"), "db"));
        assert!(!list.permits(None, "db"));
    }

    #[test]
    fn subjects_may_contain_colons() {
        let list = AllowList::parse("CN=host:10809: vol\n").unwrap();
        assert!(list.permits(Some("CN=host:10809"), "vol"));
    }

    #[test]
    fn refuses_malformed_lines() {
        assert_eq!(AllowList::parse("ok: a\nno colon here").unwrap_err().0, 2);
        assert_eq!(AllowList::parse(": a").unwrap_err().1, "empty identity");
        let (_, reason) = AllowList::parse("alice: ../x").unwrap_err();
        assert_eq!(reason, r#""../x" is not an export name, NAME* or *"#);
        assert!(AllowList::parse("alice: a*b").is_err());
        assert!(AllowList::parse("alice: *").is_ok());
    }
}
