//! Loading PKCS#11 modules: one initialized [`Pkcs11`] per module file, shared by every store in
//! the process and never finalized.
//!
//! A PKCS#11 module is process-global state: `C_Initialize` may run once per process (a second
//! call returns `CKR_CRYPTOKI_ALREADY_INITIALIZED`) and `C_Finalize` would invalidate every
//! session of every other user of the module. So the first store that needs a module loads and
//! initializes it; later stores (and other code that initialized it first) share it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::{Slot, TokenInfo};

use crate::config::TokenSelector;
use crate::error::Pkcs11Error;

fn registry() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The initialized module at `path`, loading and initializing it on first use.
pub(crate) fn load(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    if !path.exists() {
        return Err(Pkcs11Error::ModuleMissing {
            module: path.to_owned(),
        });
    }
    if !path.is_file() {
        return Err(Pkcs11Error::NotAModule {
            module: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    // A poisoned lock only means another thread panicked while loading: the map is still sound.
    let mut modules = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = modules.get(&key) {
        return Ok(m.clone());
    }
    let not_a_module = |reason: String| Pkcs11Error::NotAModule {
        module: path.to_owned(),
        reason,
    };
    let pkcs11 = Pkcs11::new(&key).map_err(|e| match e {
        CkError::LibraryLoading(e) => not_a_module(format!("cannot load it: {e}")),
        CkError::MissingSymbol(s) => not_a_module(format!("it does not export {s}")),
        other => not_a_module(other.to_string()),
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(Pkcs11Error::from_cryptoki(
                &format!("module {}", path.display()),
                e,
            ));
        }
    }
    modules.insert(key, pkcs11.clone());
    Ok(pkcs11)
}

/// Trims the blank padding PKCS#11 puts in fixed-width text fields.
pub(crate) fn trim(s: &str) -> &str {
    s.trim_end_matches([' ', '\0'])
}

/// Finds the slot holding the token `selector` names, with its token info.
///
/// Several tokens matching (two tokens with the same label, say) is an error listing them: which
/// token holds the keys must never depend on slot order.
/// Why a token's information cannot be read, for humans.
fn unreadable(e: &cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::ParseInt(_) | cryptoki::error::Error::Utf8(_) => format!(
            "C_GetTokenInfo answered, but the cryptoki library cannot parse the answer: {e}"
        ),
        other => format!("C_GetTokenInfo failed: {other}"),
    }
}

pub(crate) fn find_token(
    pkcs11: &Pkcs11,
    module: &Path,
    selector: &TokenSelector,
) -> Result<(Slot, TokenInfo), Pkcs11Error> {
    let module_name = format!("module {}", module.display());
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| Pkcs11Error::from_cryptoki(&module_name, e))?;
    let describe = |slot: Slot, info: &TokenInfo| {
        format!(
            "'{}' (slot {}, serial {})",
            trim(info.label()),
            slot.id(),
            trim(info.serial_number())
        )
    };
    let mut present = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        // A slot whose token cannot be read cannot be the one asked for, but it is named with
        // its error: a token `pkcs11-tool -L` lists must not look absent. (cryptoki 0.12 fails
        // to parse the token information of some modules, such as opencryptoki's soft token,
        // whose clock field is not digits: `ParseInt`.)
        let info = match pkcs11.get_token_info(slot) {
            Ok(info) => info,
            Err(e) => {
                present.push(format!(
                    "a token in slot {} whose information cannot be read ({})",
                    slot.id(),
                    unreadable(&e)
                ));
                continue;
            }
        };
        let matches = match selector {
            TokenSelector::Label(l) => info.token_initialized() && trim(info.label()) == l,
            TokenSelector::SlotId(id) => slot.id() == *id,
            TokenSelector::Serial(s) => trim(info.serial_number()) == s,
        };
        if matches {
            found.push((slot, info));
        } else if info.token_initialized() {
            present.push(describe(slot, &info));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Pkcs11Error::TokenNotFound {
            module: module.to_owned(),
            selector: selector.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        }),
        count => Err(Pkcs11Error::AmbiguousToken {
            module: module.to_owned(),
            selector: selector.to_string(),
            count,
            matches: found
                .iter()
                .map(|(slot, info)| describe(*slot, info))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
