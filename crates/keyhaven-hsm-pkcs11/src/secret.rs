//! Secrets only the token can compute: HMAC-SHA256 (`CKM_SHA256_HMAC`) under a generic secret
//! key that is made on the token and never leaves it (`CKA_SENSITIVE`, not `CKA_EXTRACTABLE`,
//! a private object, so only a session logged in with the user PIN can use it).
//!
//! keyhaven anchors the integrity of a home whose keys are all on a token this way: the home's
//! manifest key is the HMAC of a fixed context under such a key, so whoever lacks the PIN
//! cannot compute it.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyhaven_core::{Error, Result};
use zeroize::Zeroizing;

use crate::error::Pkcs11Error;
use crate::store::Pkcs11Store;

/// The `CKA_LABEL` of the HMAC keys keyhaven makes (followed by a space and the caller's tag).
pub const SECRET_KEY_LABEL: &str = "keyhaven-hmac";

/// The label of a key made with `tag`.
fn label_of(tag: &str) -> Vec<u8> {
    format!("{SECRET_KEY_LABEL} {tag}").into_bytes()
}

/// The bytes of a secret key's random `CKA_ID`.
const SECRET_ID_LEN: usize = 16;

/// The length of the HMAC keys, in bytes (as long as SHA-256's output).
const SECRET_KEY_LEN: u64 = 32;

impl Pkcs11Store {
    /// Makes a new HMAC-SHA256 key on the token (a 32-byte `CKK_GENERIC_SECRET`, token object,
    /// private, sensitive, never extractable, usable only to sign, that is, to MAC), labelled
    /// `keyhaven-hmac TAG`, and returns its id (the hex of its random `CKA_ID`), by which
    /// [`Pkcs11Store::token_hmac`] finds it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if the token lacks `CKM_GENERIC_SECRET_KEY_GEN` or
    /// `CKM_SHA256_HMAC`, or ignored keyhaven's template (the key is then destroyed); token
    /// errors.
    pub fn create_hmac_key(&self, tag: &str) -> Result<String> {
        for (m, name) in [
            (
                MechanismType::GENERIC_SECRET_KEY_GEN,
                "CKM_GENERIC_SECRET_KEY_GEN",
            ),
            (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC"),
        ] {
            if !self.token().has(m) {
                return Err(Error::Unsupported {
                    operation: "make an HMAC key on the PKCS#11 token",
                    reason: format!("{} does not offer {name}", self.token().name),
                });
            }
        }
        let mut cka_id = [0u8; SECRET_ID_LEN];
        keyhaven_crypto::fill_random(&mut cka_id)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(false),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::ValueLen(SECRET_KEY_LEN.into()),
            Attribute::Id(cka_id.to_vec()),
            Attribute::Label(label_of(tag)),
        ];
        let handle = self
            .token()
            .run(|s| s.generate_key(&Mechanism::GenericSecretKeyGen, &template))?;
        let id = hex::encode(cka_id);
        // Read back: a token that ignored the template made a key that could leave it.
        let guard = self.token().run(|s| {
            s.get_attributes(
                handle,
                &[AttributeType::Sensitive, AttributeType::Extractable],
            )
        });
        let weak = match guard {
            Ok(attrs) => attrs.iter().any(|a| {
                matches!(
                    a,
                    Attribute::Sensitive(false) | Attribute::Extractable(true)
                )
            }),
            Err(e) => {
                let _ = self.token().run(|s| s.destroy_object(handle));
                return Err(e.into());
            }
        };
        if weak {
            let _ = self.token().run(|s| s.destroy_object(handle));
            return Err(Error::Unsupported {
                operation: "make a non-extractable HMAC key on the PKCS#11 token",
                reason: format!(
                    "{} ignored keyhaven's template (CKA_SENSITIVE true, CKA_EXTRACTABLE \
                     false); the key was destroyed",
                    self.token().name
                ),
            });
        }
        Ok(id)
    }

    /// HMAC-SHA256 of `message` on the token, under the key [`Pkcs11Store::create_hmac_key`]
    /// returned as `key_id` for `tag`. The result is a secret: only a session logged in with
    /// the PIN can compute it. Only a key keyhaven made counts: a private, sensitive secret key
    /// generated on the token (`CKA_LOCAL`) that was never extractable, with keyhaven's label
    /// (an object someone made without the PIN, or imported with a value they know, is not).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the token holds no such key (another token, or it was
    /// destroyed); [`Error::Corrupt`] if two objects claim the id, the key is not guarded as
    /// keyhaven made it, or the token answers with something other than 32 bytes; token
    /// errors.
    pub fn token_hmac(
        &self,
        key_id: &str,
        tag: &str,
        message: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>> {
        let not_found = || {
            Error::NotFound(format!(
                "the HMAC key {key_id} ({SECRET_KEY_LABEL}) on {}",
                self.token().name
            ))
        };
        let cka_id = hex::decode(key_id).map_err(|_| not_found())?;
        let find = |s: &Session| -> std::result::Result<Vec<ObjectHandle>, cryptoki::error::Error> {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Id(cka_id.clone()),
                Attribute::Label(label_of(tag)),
            ])
        };
        // Private objects are invisible without a login, which may have been lost.
        self.token().ensure_login()?;
        let found = self.token().run(find)?;
        let handle = match found.as_slice() {
            [] => return Err(not_found()),
            [one] => *one,
            _ => {
                return Err(Error::corrupt(
                    format!("the HMAC key {key_id} on {}", self.token().name),
                    "several secret key objects have this id",
                ));
            }
        };
        // The object may be destroyed between the lookup and its use (another program, or the
        // token's storage going away): that is the key missing, not a bug.
        let gone = |e: Pkcs11Error| {
            if e.stale_handle() {
                not_found()
            } else {
                Error::from(e)
            }
        };
        let guard = self
            .token()
            .run(|s| {
                s.get_attributes(
                    handle,
                    &[
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::Local,
                        AttributeType::Token,
                    ],
                )
            })
            .map_err(gone)?;
        let guarded = guard.len() == 5
            && guard.iter().all(|a| {
                matches!(
                    a,
                    Attribute::Private(true)
                        | Attribute::Sensitive(true)
                        | Attribute::NeverExtractable(true)
                        | Attribute::Local(true)
                        | Attribute::Token(true)
                )
            });
        if !guarded {
            return Err(Error::corrupt(
                format!("the HMAC key {key_id} on {}", self.token().name),
                "it is not a private, sensitive, never extractable key generated on the token: \
                 not one keyhaven made",
            ));
        }
        let mac = self
            .token()
            .run(|s| s.sign(&Mechanism::Sha256Hmac, handle, message))
            .map_err(gone)?;
        let mac = Zeroizing::new(mac);
        let out: [u8; 32] = mac.as_slice().try_into().map_err(|_| {
            Error::from(Pkcs11Error::BadObject {
                token: self.token().name.clone(),
                what: "HMAC-SHA256 value".into(),
                reason: format!("{} bytes, not 32", mac.len()),
            })
        })?;
        Ok(Zeroizing::new(out))
    }

    /// Whether the token holds an HMAC key keyhaven made for `tag` (a private object: looked
    /// for while logged in).
    ///
    /// # Errors
    /// Token errors.
    pub fn has_hmac_key(&self, tag: &str) -> Result<bool> {
        self.token().ensure_login()?;
        let found = self.token().run(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label_of(tag)),
            ])
        })?;
        Ok(!found.is_empty())
    }

    /// Destroys the HMAC key `key_id` (one [`Pkcs11Store::create_hmac_key`] made and no longer
    /// needs). A key already gone is not an error.
    ///
    /// # Errors
    /// Token errors.
    pub fn destroy_hmac_key(&self, key_id: &str) -> Result<()> {
        let Ok(cka_id) = hex::decode(key_id) else {
            return Ok(());
        };
        self.token().run(|s| {
            for h in s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Id(cka_id.clone()),
            ])? {
                s.destroy_object(h)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The token's serial number (from its token info when the store was opened), which
    /// names it in a home's integrity manifest.
    pub fn token_serial(&self) -> &str {
        &self.token().serial
    }
}
