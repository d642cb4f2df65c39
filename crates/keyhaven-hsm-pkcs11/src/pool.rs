//! One logged-in token and a pool of its sessions.
//!
//! PKCS#11 keeps the user's login per application and token, shared by all of the application's
//! sessions with that token, so the store logs in once, through its first session, and every
//! session it opens later is logged in already. A cryptoki [`Session`] is `Send` but not `Sync`:
//! each operation leases one session for itself, so threads work in parallel on separate
//! sessions; the pool grows on demand up to `max_sessions`, then threads wait for a free one.
//!
//! Recovery: when a call fails because the session or the login was lost
//! (`CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`,
//! `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, ...), [`Token::run`] finds the token again by
//! its selector (its slot may have changed), opens a fresh session, logs in once, starts a new
//! pool *epoch* (older sessions are closed as they come back) and retries the call once. A
//! second failure is reported, never looped on.
//!
//! Recoveries are one at a time (their own mutex), and the epoch is their generation counter:
//! a thread whose session failed recovers only if no other thread has recovered since that
//! session was leased, so many threads hitting a lost login together cause one `C_Login`, not
//! one each. And once `C_Login` has said the stored PIN is wrong (`CKR_PIN_INCORRECT`,
//! `CKR_PIN_LEN_RANGE`) or locked (`CKR_PIN_LOCKED`) — say the PIN was changed behind the
//! store's back — the store remembers it and returns that error without calling `C_Login`
//! again until it is reopened: a stored PIN is never retried, so the token's retry counter
//! cannot be run down by a busy store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Limit, Slot, TokenInfo};
use secrecy::SecretString;

use crate::config::{Pkcs11Config, TokenSelector, pin_is_empty};
use crate::error::{Ckr, Pkcs11Error};
use crate::module::{self, trim};

struct Idle {
    session: Session,
    epoch: u64,
}

struct PoolState {
    slot: Slot,
    idle: Vec<Idle>,
    /// Sessions open: idle plus leased.
    open: usize,
    epoch: u64,
}

/// Why `C_Login` refused the stored PIN; once set, the store never calls `C_Login` again.
#[derive(Debug, Clone, Copy)]
enum PinRefused {
    /// `CKR_PIN_INCORRECT` or `CKR_PIN_LEN_RANGE`.
    Wrong { rv: Ckr, count_low: bool },
    /// `CKR_PIN_LOCKED`.
    Locked,
}

/// What recoveries share (behind [`Token::recovery`]).
#[derive(Debug, Default)]
struct Recovery {
    pin_refused: Option<PinRefused>,
}

/// The number of sessions a store may open: the configured cap (0 counts as 1), no more than the
/// token's own limit where it states one.
fn session_cap(token_limit: Limit, configured: usize) -> usize {
    let configured = configured.max(1);
    match token_limit {
        Limit::Max(n) => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .clamp(1, configured),
        Limit::Unavailable | Limit::Infinite => configured,
    }
}

/// A logged-in token with its session pool.
pub(crate) struct Token {
    pub(crate) pkcs11: Pkcs11,
    pub(crate) module: PathBuf,
    selector: TokenSelector,
    pin: SecretString,
    /// For messages: `token 'label' of module /path`.
    pub(crate) name: String,
    pub(crate) label: String,
    /// The token's serial number, as it reported when opened.
    pub(crate) serial: String,
    pub(crate) mechanisms: Vec<MechanismType>,
    max_sessions: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Held for the whole of a recovery, so that recoveries happen one at a time.
    recovery: Mutex<Recovery>,
    /// `C_Login` calls made (diagnostics and tests).
    logins: AtomicU64,
}

/// A session leased from the pool; goes back on drop (unless from an older epoch).
pub(crate) struct Lease<'a> {
    token: &'a Token,
    session: Option<Session>,
    epoch: u64,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Only `discard`/`drop` take the session out, and both consume the lease.
        self.session
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease always holds its session"))
    }
}

impl Lease<'_> {
    /// Closes the session instead of returning it (it failed in a way that may have broken it).
    pub(crate) fn discard(mut self) {
        if let Some(s) = self.session.take() {
            drop(s);
            self.token.forget_one();
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.token.give_back(session, self.epoch);
        }
    }
}

impl Token {
    /// Loads the module, finds the token, logs in (exactly one attempt) and keeps that first
    /// session in the pool.
    pub(crate) fn open(config: Pkcs11Config) -> Result<Token, Pkcs11Error> {
        let pkcs11 = module::load(&config.module)?;
        let (slot, info) = module::find_token(&pkcs11, &config.module, &config.token)?;
        let label = trim(info.label()).to_owned();
        let name = format!("token '{label}' of module {}", config.module.display());
        if !info.token_initialized() {
            return Err(Pkcs11Error::TokenNotFound {
                module: config.module.clone(),
                selector: config.token.to_string(),
                present: format!(
                    "slot {} holds an uninitialized token: initialize it first",
                    slot.id()
                ),
            });
        }
        if info.user_pin_locked() {
            return Err(Pkcs11Error::PinLocked { token: name });
        }
        let mechanisms = pkcs11
            .get_mechanism_list(slot)
            .map_err(|e| Pkcs11Error::from_cryptoki(&name, e))?;
        let max_sessions = session_cap(info.max_rw_session_count(), config.max_sessions);
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| Pkcs11Error::from_cryptoki(&name, e))?;
        let token = Token {
            pkcs11,
            module: config.module,
            selector: config.token,
            pin: config.user_pin,
            name,
            label,
            serial: trim(info.serial_number()).to_owned(),
            mechanisms,
            max_sessions,
            state: Mutex::new(PoolState {
                slot,
                idle: Vec::new(),
                open: 1,
                epoch: 0,
            }),
            freed: Condvar::new(),
            recovery: Mutex::new(Recovery::default()),
            logins: AtomicU64::new(0),
        };
        token.login(&session, &info)?;
        token.give_back(session, 0);
        Ok(token)
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // The pool's state stays consistent even if a holder panicked (no invariant spans an
        // unwind point), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot the token is in now.
    pub(crate) fn slot(&self) -> Slot {
        self.state().slot
    }

    /// `C_Login` calls this store has made, successful or not.
    pub(crate) fn logins(&self) -> u64 {
        self.logins.load(Ordering::SeqCst)
    }

    /// Logs the user in through `session`: one `C_Login`, never retried.
    fn login(&self, session: &Session, info: &TokenInfo) -> Result<(), Pkcs11Error> {
        let pin = if pin_is_empty(&self.pin) && info.protected_authentication_path() {
            None // PIN pad or other protected path: the token asks the user itself
        } else {
            Some(&self.pin)
        };
        self.logins.fetch_add(1, Ordering::SeqCst);
        match session.login(UserType::User, pin) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLenRange), _)) => {
                let count_low = self
                    .pkcs11
                    .get_token_info(self.slot())
                    .is_ok_and(|i| i.user_pin_count_low() || i.user_pin_final_try());
                Err(Pkcs11Error::WrongPin {
                    token: self.name.clone(),
                    rv: Ckr::new(rv),
                    count_low,
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked {
                token: self.name.clone(),
            }),
            Err(e) => Err(self.unless_gone(Pkcs11Error::from_cryptoki(&self.name, e))),
        }
    }

    /// A call that failed without a meaning of its own (`CKR_GENERAL_ERROR`, a device error, a
    /// handle gone invalid) is often the token disappearing mid-call (SoftHSM answers so when
    /// its token directory is removed): if the token no longer answers, say that it is gone,
    /// not that keyhaven has a bug.
    pub(crate) fn unless_gone(&self, e: Pkcs11Error) -> Pkcs11Error {
        let vague = matches!(
            e.rv().map(Ckr::rv),
            Some(
                RvError::GeneralError
                    | RvError::DeviceError
                    | RvError::DeviceMemory
                    | RvError::FunctionFailed
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid
            )
        );
        if !vague {
            return e;
        }
        match self.check_present() {
            Ok(_) => e,
            Err(Pkcs11Error::TokenGone { token, detail }) => Pkcs11Error::TokenGone {
                token,
                detail: format!("{e}; then {detail}"),
            },
            Err(other) => other,
        }
    }

    /// Leases a session: an idle one, or a new one if fewer than `max_sessions` are open, or
    /// waits for one to come back.
    pub(crate) fn lease(&self) -> Result<Lease<'_>, Pkcs11Error> {
        let mut state = self.state();
        loop {
            while let Some(idle) = state.idle.pop() {
                if idle.epoch == state.epoch {
                    return Ok(Lease {
                        token: self,
                        session: Some(idle.session),
                        epoch: idle.epoch,
                    });
                }
                state.open -= 1;
                drop(idle); // a session from before a recovery
            }
            if state.open < self.max_sessions {
                state.open += 1;
                let (slot, epoch) = (state.slot, state.epoch);
                drop(state);
                return match self.pkcs11.open_rw_session(slot) {
                    Ok(session) => Ok(Lease {
                        token: self,
                        session: Some(session),
                        epoch,
                    }),
                    Err(e) => {
                        self.forget_one();
                        Err(Pkcs11Error::from_cryptoki(&self.name, e))
                    }
                };
            }
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn give_back(&self, session: Session, epoch: u64) {
        let mut state = self.state();
        if epoch == state.epoch {
            state.idle.push(Idle { session, epoch });
        } else {
            state.open -= 1;
            drop(state);
            drop(session);
        }
        self.freed.notify_one();
    }

    fn forget_one(&self) {
        let mut state = self.state();
        state.open = state.open.saturating_sub(1);
        drop(state);
        self.freed.notify_one();
    }

    /// The error a refused PIN is reported with (again, without calling `C_Login`).
    fn refused(&self, why: PinRefused) -> Pkcs11Error {
        match why {
            PinRefused::Wrong { rv, count_low } => Pkcs11Error::WrongPin {
                token: self.name.clone(),
                rv,
                count_low,
            },
            PinRefused::Locked => Pkcs11Error::PinLocked {
                token: self.name.clone(),
            },
        }
    }

    /// Re-finds the token, opens a fresh session, logs in, and starts a new epoch so that every
    /// older session is closed. Called after `cause` showed that the session or login was lost
    /// on a session leased in epoch `seen`.
    ///
    /// One recovery at a time: if another thread recovered since epoch `seen`, there is nothing
    /// left to do (its fresh sessions are logged in). If `C_Login` ever refused the PIN, that
    /// error comes back at once and `C_Login` is not called again.
    fn recover(&self, cause: &Pkcs11Error, seen: u64) -> Result<(), Pkcs11Error> {
        let mut recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = recovery.pin_refused {
            return Err(self.refused(why));
        }
        if self.state().epoch != seen {
            return Ok(()); // recovered meanwhile by another thread
        }
        let gone = |detail: String| Pkcs11Error::TokenGone {
            token: self.name.clone(),
            detail,
        };
        let (slot, info) = module::find_token(&self.pkcs11, &self.module, &self.selector)
            .map_err(|e| gone(format!("{cause}, and then: {e}")))?;
        let session = self
            .pkcs11
            .open_rw_session(slot)
            .map_err(|e| gone(format!("{cause}, and re-opening a session failed: {e}")))?;
        // Log in before the old sessions close, so that the login never lapses in between.
        match self.login(&session, &info) {
            Ok(()) => {}
            Err(e) => {
                recovery.pin_refused = match &e {
                    Pkcs11Error::WrongPin { rv, count_low, .. } => Some(PinRefused::Wrong {
                        rv: *rv,
                        count_low: *count_low,
                    }),
                    Pkcs11Error::PinLocked { .. } => Some(PinRefused::Locked),
                    _ => None,
                };
                return Err(e);
            }
        }
        let stale = {
            let mut state = self.state();
            state.slot = slot;
            state.epoch += 1;
            let stale: Vec<Idle> = state.idle.drain(..).collect();
            state.open = state.open - stale.len() + 1;
            let epoch = state.epoch;
            state.idle.push(Idle { session, epoch });
            stale
        };
        drop(stale);
        drop(recovery);
        self.freed.notify_all();
        Ok(())
    }

    /// Runs `f` on a leased session; if the session or login was lost, recovers and retries once.
    pub(crate) fn run<T>(
        &self,
        f: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, Pkcs11Error> {
        let lease = self.lease()?;
        let first = f(&lease).map_err(|e| Pkcs11Error::from_cryptoki(&self.name, e));
        match first {
            Err(e) if e.session_lost() => {
                let seen = lease.epoch;
                lease.discard();
                self.recover(&e, seen)?;
                let lease = self.lease()?;
                let second = f(&lease).map_err(|e| Pkcs11Error::from_cryptoki(&self.name, e));
                if let Err(e2) = &second
                    && e2.session_lost()
                {
                    lease.discard();
                    return Err(Pkcs11Error::TokenGone {
                        token: self.name.clone(),
                        detail: format!("{e2}, again after re-opening the session and logging in"),
                    });
                }
                second.map_err(|e| self.unless_gone(e))
            }
            other => other.map_err(|e| self.unless_gone(e)),
        }
    }

    /// Makes sure the user is logged in now (another part of the process may have logged out,
    /// or closed every session), recovering if not.
    ///
    /// A lookup that found nothing before this call may have run while the login was lost —
    /// and another thread may have recovered in between, so whether *this* call recovered says
    /// nothing: callers look once more after it.
    pub(crate) fn ensure_login(&self) -> Result<(), Pkcs11Error> {
        let lease = self.lease()?;
        let seen = lease.epoch;
        let state = match lease.get_session_info() {
            Ok(info) => Some(info.session_state()),
            Err(e) => {
                let e = Pkcs11Error::from_cryptoki(&self.name, e);
                if !e.session_lost() {
                    return Err(e);
                }
                lease.discard();
                return self.recover(&e, seen);
            }
        };
        if matches!(state, Some(SessionState::RwUser | SessionState::RoUser)) {
            return Ok(());
        }
        drop(lease);
        let cause = Pkcs11Error::Call {
            function: "C_GetSessionInfo".into(),
            rv: Ckr::new(RvError::UserNotLoggedIn),
            token: self.name.clone(),
        };
        self.recover(&cause, seen)
    }

    /// Whether the token still answers `C_GetTokenInfo`; the error says why not.
    ///
    /// A failure is asked again once, a moment later: SoftHSM sometimes fails the call while it
    /// reloads a token that another process just changed (seen after `pkcs11-tool
    /// --delete-object`), and a token that is really gone fails both times.
    pub(crate) fn check_present(&self) -> Result<TokenInfo, Pkcs11Error> {
        let slot = self.slot();
        self.pkcs11
            .get_token_info(slot)
            .or_else(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                self.pkcs11.get_token_info(slot)
            })
            .map_err(|e| Pkcs11Error::TokenGone {
                token: self.name.clone(),
                detail: format!(
                    "C_GetTokenInfo failed with {}",
                    match &e {
                        CkError::Pkcs11(rv, _) => crate::error::ckr_name(*rv),
                        other => other.to_string(),
                    }
                ),
            })
    }

    /// Whether the token lists a mechanism.
    pub(crate) fn has(&self, m: MechanismType) -> bool {
        self.mechanisms.contains(&m)
    }

    /// The module path.
    pub(crate) fn module(&self) -> &Path {
        &self.module
    }

    /// Sessions open now (idle and leased), for tests and reports.
    pub(crate) fn open_sessions(&self) -> usize {
        self.state().open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cap_is_at_least_one() {
        // 0 is a public field's value away: it must not panic (clamp(1, 0) would) nor deadlock
        assert_eq!(session_cap(Limit::Max(4), 0), 1);
        assert_eq!(session_cap(Limit::Infinite, 0), 1);
        assert_eq!(session_cap(Limit::Unavailable, 0), 1);
        assert_eq!(session_cap(Limit::Max(0), 8), 1);
        assert_eq!(session_cap(Limit::Max(4), 8), 4);
        assert_eq!(session_cap(Limit::Max(40), 8), 8);
        assert_eq!(session_cap(Limit::Infinite, 8), 8);
    }
}
