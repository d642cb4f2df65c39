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
    /// The caller's id for the request it makes (a message id, an RFC 9421 nonce): recorded
    /// with each event, so the same request made twice with a key is seen (a replay).
    pub request_id: Option<String>,
}

impl CallerContext {
    /// A caller named `principal` with no roles, on this host and in this process.
    pub fn new(principal: impl Into<String>) -> Self {
        CallerContext {
            principal: principal.into(),
            roles: BTreeSet::new(),
            host: crate::hostname(),
            pid: std::process::id(),
            request_id: None,
        }
    }

    /// With the caller's id for its request, checked by [`check_request_id`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an id [`check_request_id`] refuses.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_request_id(&id)?;
        self.request_id = Some(id);
        Ok(self)
    }

    /// Adds a role.
    #[must_use]
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.insert(role.into());
        self
    }

    /// The OS account running this process: the name of its **effective uid** (from
    /// `/proc/self/status` and `/etc/passwd`; `uid:N` when the account has no name), with no
    /// roles. Environment variables such as `$USER` are not believed: anyone can set them.
    /// Only where `/proc` cannot be read does it fall back to `$USER`, then `$LOGNAME`. The
    /// host is read from `/proc/sys/kernel/hostname`, `/etc/hostname` or `$HOSTNAME`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the account cannot be told at all.
    pub fn current_os_user() -> Result<Self> {
        match effective_uid() {
            Some(uid) => Ok(CallerContext::new(account_name(uid))),
            None => Self::from_env_vars(std::env::var("USER").ok(), std::env::var("LOGNAME").ok()),
        }
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
                    "cannot tell who the caller is: /proc/self/status is unreadable and neither \
                     $USER nor $LOGNAME is set"
                        .into(),
                )
            })
    }
}

/// The effective uid of this process, from `/proc/self/status` (`Uid: real effective ...`).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_uid(&status)
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The account name of `uid` in `/etc/passwd`, or `uid:N`.
fn account_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| name_in_passwd(&p, uid))
        .unwrap_or_else(|| format!("uid:{uid}"))
}

fn name_in_passwd(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// A request id that can be written into the audit log and shown in a report as it is: 1 to
/// 256 characters, none of them a control character or an invisible one that could change how
/// the rest of a line reads (bidirectional overrides and isolates, zero-width characters, line
/// and paragraph separators).
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn check_request_id(id: &str) -> Result<()> {
    let n = id.chars().count();
    if n == 0 || n > 256 {
        return Err(Error::InvalidInput(format!(
            "a request id has 1 to 256 characters, not {n}"
        )));
    }
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    if let Some(c) = id.chars().find(|&c| invisible(c)) {
        return Err(Error::InvalidInput(format!(
            "a request id may not contain {:?} (a control or invisible character)",
            c
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_names_the_account() {
        let status = "Name:\tkeyhaven\nUid:\t1000\t0\t0\t0\nGid:\t1000\t0\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name: x\n"), None);
        let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(name_in_passwd(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(name_in_passwd(passwd, 7), None);
        // This process: the account of its effective uid, whatever $USER says.
        let me = CallerContext::current_os_user().unwrap_or_else(|_| CallerContext::new("?"));
        if let Some(uid) = effective_uid() {
            assert_eq!(me.principal, account_name(uid));
        }
    }

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
