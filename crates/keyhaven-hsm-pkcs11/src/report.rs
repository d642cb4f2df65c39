//! What a token is and whether it can do what keyhaven needs (for `keyhaven doctor`).

use std::fmt;
use std::path::{Path, PathBuf};

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;
use keyhaven_core::Result;

use crate::config::TokenSelector;
use crate::error::Pkcs11Error;
use crate::module::{self, trim};

/// One PKCS#11 mechanism keyhaven uses, and whether the token has it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MechanismCheck {
    /// The mechanism's name, e.g. `CKM_ECDSA`.
    pub name: &'static str,
    /// What keyhaven needs it for.
    pub needed_for: &'static str,
    /// Whether the token lists it.
    pub present: bool,
}

/// The mechanisms keyhaven uses: name, constant, purpose.
const NEEDED: &[(&str, MechanismType, &str)] = &[
    (
        "CKM_EC_KEY_PAIR_GEN",
        MechanismType::ECC_KEY_PAIR_GEN,
        "generating P-384 and P-256 keys",
    ),
    (
        "CKM_ECDSA",
        MechanismType::ECDSA,
        "P-384 and P-256 signatures",
    ),
    (
        "CKM_ECDH1_DERIVE",
        MechanismType::ECDH1_DERIVE,
        "ECDH P-384 and P-256 agreement (optional: master keys of the key hierarchy)",
    ),
    (
        "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        "generating Ed25519 keys",
    ),
    ("CKM_EDDSA", MechanismType::EDDSA, "Ed25519 signatures"),
    (
        "CKM_EC_MONTGOMERY_KEY_PAIR_GEN",
        MechanismType::ECC_MONTGOMERY_KEY_PAIR_GEN,
        "X25519 keys (optional: not supported by keyhaven on tokens yet)",
    ),
];

/// A token's identity, state and capabilities, read without logging in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenReport {
    /// The module's path.
    pub module: PathBuf,
    /// The module's own description (`C_GetInfo`).
    pub library: String,
    /// The module's manufacturer.
    pub library_manufacturer: String,
    /// The module's version.
    pub library_version: String,
    /// The slot holding the token.
    pub slot_id: u64,
    /// The token's label.
    pub label: String,
    /// The token's manufacturer.
    pub manufacturer: String,
    /// The token's model.
    pub model: String,
    /// The token's serial number.
    pub serial: String,
    /// The token's hardware version.
    pub hardware_version: String,
    /// The token's firmware version.
    pub firmware_version: String,
    /// Slots the module has.
    pub total_slots: usize,
    /// Slots with no initialized token (SoftHSM always keeps one free).
    pub free_slots: usize,
    /// Free public memory in bytes, if the token says.
    pub free_public_memory: Option<usize>,
    /// Free private memory in bytes, if the token says.
    pub free_private_memory: Option<usize>,
    /// Whether the user PIN is set.
    pub user_pin_initialized: bool,
    /// Whether a wrong user PIN was given recently (the retry count is low).
    pub user_pin_count_low: bool,
    /// Whether the next wrong user PIN locks the token.
    pub user_pin_final_try: bool,
    /// Whether the user PIN is locked.
    pub user_pin_locked: bool,
    /// The mechanisms keyhaven uses and whether each is there.
    pub mechanisms: Vec<MechanismCheck>,
}

impl TokenReport {
    /// Reports on the token `selector` names in `module`, without a PIN.
    ///
    /// # Errors
    /// [`keyhaven_core::Error::Unavailable`] if the module cannot be loaded or has no such token.
    pub fn probe(module: &Path, selector: &TokenSelector) -> Result<Self> {
        let pkcs11 = module::load(module)?;
        let (slot, _) = module::find_token(&pkcs11, module, selector)?;
        // The token was just found: a call failing now means it went away (SoftHSM answers
        // CKR_GENERAL_ERROR when its token directory is removed), not a bug.
        Self::of_slot(&pkcs11, module, slot).map_err(|e| match e {
            Pkcs11Error::Call { ref token, .. } => Pkcs11Error::TokenGone {
                token: token.clone(),
                detail: e.to_string(),
            }
            .into(),
            other => other.into(),
        })
    }

    pub(crate) fn of_slot(
        pkcs11: &Pkcs11,
        module: &Path,
        slot: Slot,
    ) -> std::result::Result<Self, Pkcs11Error> {
        let name = format!("slot {} of module {}", slot.id(), module.display());
        let err = |e| Pkcs11Error::from_cryptoki(&name, e);
        let lib = pkcs11.get_library_info().map_err(err)?;
        let info = pkcs11.get_token_info(slot).map_err(err)?;
        let mechanisms = pkcs11.get_mechanism_list(slot).map_err(err)?;
        let slots = pkcs11.get_all_slots().map_err(err)?;
        let free_slots = slots
            .iter()
            .filter(|s| {
                pkcs11
                    .get_token_info(**s)
                    .map_or(true, |t| !t.token_initialized())
            })
            .count();
        Ok(TokenReport {
            module: module.to_owned(),
            library: trim(lib.library_description()).to_owned(),
            library_manufacturer: trim(lib.manufacturer_id()).to_owned(),
            library_version: lib.library_version().to_string(),
            slot_id: slot.id(),
            label: trim(info.label()).to_owned(),
            manufacturer: trim(info.manufacturer_id()).to_owned(),
            model: trim(info.model()).to_owned(),
            serial: trim(info.serial_number()).to_owned(),
            hardware_version: info.hardware_version().to_string(),
            firmware_version: info.firmware_version().to_string(),
            total_slots: slots.len(),
            free_slots,
            free_public_memory: info.free_public_memory(),
            free_private_memory: info.free_private_memory(),
            user_pin_initialized: info.user_pin_initialized(),
            user_pin_count_low: info.user_pin_count_low(),
            user_pin_final_try: info.user_pin_final_try(),
            user_pin_locked: info.user_pin_locked(),
            mechanisms: NEEDED
                .iter()
                .map(|(name, m, why)| MechanismCheck {
                    name,
                    needed_for: why,
                    present: mechanisms.contains(m),
                })
                .collect(),
        })
    }

    /// The required mechanisms the token lacks (X25519's and ECDH's are optional and not
    /// counted: a token that only signs is healthy).
    pub fn missing(&self) -> Vec<&MechanismCheck> {
        self.mechanisms
            .iter()
            .filter(|m| {
                !m.present
                    && !matches!(
                        m.name,
                        "CKM_EC_MONTGOMERY_KEY_PAIR_GEN" | "CKM_ECDH1_DERIVE"
                    )
            })
            .collect()
    }
}

impl fmt::Display for TokenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mem = |m: Option<usize>| m.map_or("not reported".to_owned(), |b| format!("{b} bytes"));
        writeln!(
            f,
            "module:        {} ({} {}, version {})",
            self.module.display(),
            self.library_manufacturer,
            self.library,
            self.library_version
        )?;
        writeln!(
            f,
            "token:         '{}' in slot {}",
            self.label, self.slot_id
        )?;
        writeln!(f, "manufacturer:  {}", self.manufacturer)?;
        writeln!(f, "model:         {}", self.model)?;
        writeln!(f, "serial:        {}", self.serial)?;
        writeln!(
            f,
            "versions:      hardware {}, firmware {}",
            self.hardware_version, self.firmware_version
        )?;
        writeln!(
            f,
            "slots:         {} free of {}",
            self.free_slots, self.total_slots
        )?;
        writeln!(
            f,
            "memory:        public {}, private {}",
            mem(self.free_public_memory),
            mem(self.free_private_memory)
        )?;
        let pin = if self.user_pin_locked {
            "LOCKED"
        } else if !self.user_pin_initialized {
            "not set"
        } else if self.user_pin_final_try {
            "set, one try left"
        } else if self.user_pin_count_low {
            "set, a wrong PIN was given recently"
        } else {
            "set"
        };
        writeln!(f, "user PIN:      {pin}")?;
        for m in &self.mechanisms {
            writeln!(
                f,
                "  [{}] {:<31} {}",
                if m.present { "x" } else { " " },
                m.name,
                m.needed_for
            )?;
        }
        Ok(())
    }
}
