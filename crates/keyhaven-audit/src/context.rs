//! Who is calling: the principal, roles, host and process the decorators act for.

use std::collections::BTreeSet;

use keyhaven_core::{Error, Result};

/// The caller a decorated store acts for: checked by [`crate::AccessControlledStore`] and
/// written into every record by [`crate::AuditedStore`].
///
/// The [`keyhaven_core::KeyStore`] methods carry no caller, so a decorated store is built for one
/// caller (one process, one session, one request handler); use `for_caller` on the decorators to
/// derive a store for another caller that shares the same inner store, policy and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerContext {
    /// Who asks (an OS user, a service account, ...).
    pub principal: String,
    /// The roles the principal holds (policy rules may grant by role).
    pub roles: BTreeSet<String>,
    /// The host the caller runs on.
    pub host: String,
    /// The caller's process id.
    pub pid: u32,
}

impl CallerContext {
    /// A caller named `principal` with no roles, on this host and in this process.
    pub fn new(principal: impl Into<String>) -> Self {
        CallerContext {
            principal: principal.into(),
            roles: BTreeSet::new(),
            host: crate::hostname(),
            pid: std::process::id(),
        }
    }

    /// Adds a role.
    #[must_use]
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.insert(role.into());
        self
    }

    /// The OS user running this process (`$USER`, else `$LOGNAME`), with no roles; the host is
    /// read from `/proc/sys/kernel/hostname`, `/etc/hostname` or `$HOSTNAME`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if neither variable holds a non-empty name.
    pub fn current_os_user() -> Result<Self> {
        Self::from_env_vars(std::env::var("USER").ok(), std::env::var("LOGNAME").ok())
    }

    fn from_env_vars(user: Option<String>, logname: Option<String>) -> Result<Self> {
        [user, logname]
            .into_iter()
            .flatten()
            .map(|s| s.trim().to_owned())
            .find(|s| !s.is_empty())
            .map(CallerContext::new)
            .ok_or_else(|| {
                Error::InvalidInput(
                    "cannot tell who the caller is: neither $USER nor $LOGNAME is set".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_then_logname() {
        let c = CallerContext::from_env_vars(Some("alice".into()), Some("bob".into()));
        assert_eq!(c.ok().map(|c| c.principal), Some("alice".into()));
        let c = CallerContext::from_env_vars(Some(" ".into()), Some("bob".into()));
        assert_eq!(c.ok().map(|c| c.principal), Some("bob".into()));
        assert!(CallerContext::from_env_vars(None, None).is_err());
        let c = CallerContext::new("x").role("signer");
        assert!(c.roles.contains("signer"));
        assert_eq!(c.pid, std::process::id());
        assert!(!c.host.is_empty());
    }
}
