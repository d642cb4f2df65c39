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

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Limit, Slot, TokenInfo};
use secrecy::SecretString;

use crate::config::{Pkcs11Config, TokenSelector, pin_is_empty};
use crate::error::Pkcs11Error;
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

/// A logged-in token with its session pool.
pub(crate) struct Token {
    pub(crate) pkcs11: Pkcs11,
    pub(crate) module: PathBuf,
    selector: TokenSelector,
    pin: SecretString,
    /// For messages: `token 'label' of module /path`.
    pub(crate) name: String,
    pub(crate) label: String,
    pub(crate) mechanisms: Vec<MechanismType>,
    max_sessions: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
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
        let max_sessions = match info.max_rw_session_count() {
            Limit::Max(n) => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .clamp(1, config.max_sessions),
            Limit::Unavailable | Limit::Infinite => config.max_sessions,
        };
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
            mechanisms,
            max_sessions,
            state: Mutex::new(PoolState {
                slot,
                idle: Vec::new(),
                open: 1,
                epoch: 0,
            }),
            freed: Condvar::new(),
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

    /// Logs the user in through `session`: one `C_Login`, never retried.
    fn login(&self, session: &Session, info: &TokenInfo) -> Result<(), Pkcs11Error> {
        let pin = if pin_is_empty(&self.pin) && info.protected_authentication_path() {
            None // PIN pad or other protected path: the token asks the user itself
        } else {
            Some(&self.pin)
        };
        match session.login(UserType::User, pin) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLenRange), _)) => {
                let count_low = self
                    .pkcs11
                    .get_token_info(self.slot())
                    .is_ok_and(|i| i.user_pin_count_low() || i.user_pin_final_try());
                Err(Pkcs11Error::WrongPin {
                    token: self.name.clone(),
                    rv,
                    count_low,
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked {
                token: self.name.clone(),
            }),
            Err(e) => Err(Pkcs11Error::from_cryptoki(&self.name, e)),
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

    /// Re-finds the token, opens a fresh session, logs in, and starts a new epoch so that every
    /// older session is closed. Called after `cause` showed the session or login was lost.
    fn recover(&self, cause: &Pkcs11Error) -> Result<(), Pkcs11Error> {
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
        self.login(&session, &info)?;
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
                lease.discard();
                self.recover(&e)?;
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
                second
            }
            other => other,
        }
    }

    /// Makes sure the user is still logged in (another part of the process may have logged out,
    /// or closed every session). Returns whether it had to recover: then private objects that
    /// seemed missing may be visible again.
    pub(crate) fn ensure_login(&self) -> Result<bool, Pkcs11Error> {
        let lease = self.lease()?;
        let state = match lease.get_session_info() {
            Ok(info) => Some(info.session_state()),
            Err(e) => {
                let e = Pkcs11Error::from_cryptoki(&self.name, e);
                if !e.session_lost() {
                    return Err(e);
                }
                lease.discard();
                self.recover(&e)?;
                return Ok(true);
            }
        };
        if matches!(state, Some(SessionState::RwUser | SessionState::RoUser)) {
            return Ok(false);
        }
        drop(lease);
        let cause = Pkcs11Error::Call {
            function: "C_GetSessionInfo".into(),
            rv: RvError::UserNotLoggedIn,
            token: self.name.clone(),
        };
        self.recover(&cause)?;
        Ok(true)
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
