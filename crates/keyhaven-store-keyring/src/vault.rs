//! The keyrings themselves, behind one small trait: named opaque items that can be written,
//! read and removed. Everything keyhaven-specific (encryption, the index) is above it.

use zeroize::Zeroizing;

use crate::error::KeyringError;

/// Whether a keyring can be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyringStatus {
    /// Reachable and unlocked.
    Ready {
        /// Which keyring, in words.
        keyring: String,
    },
    /// Reachable but locked: keyhaven does not prompt.
    Locked {
        /// Which keyring, in words.
        keyring: String,
        /// How to unlock it.
        hint: String,
    },
    /// Not reachable here.
    Unreachable {
        /// Which keyring, in words.
        keyring: String,
        /// Why, with what to do.
        reason: String,
    },
}

pub(crate) type Result<T> = std::result::Result<T, KeyringError>;

/// A keyring holding items of one keyhaven store, each named within the store.
pub(crate) trait Vault: Send + Sync {
    /// The keyring in words, for messages (`Secret Service collection 'default'`).
    fn describe(&self) -> String;
    /// The item's bytes, or `None` when there is no such item.
    fn read(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>>;
    /// Creates or replaces the item (atomically, as the keyring allows).
    fn write(&self, name: &str, label: &str, data: &[u8]) -> Result<()>;
    /// Removes the item; whether there was one.
    fn remove(&self, name: &str) -> Result<bool>;
    /// The names of the store's items, where the keyring can enumerate them.
    fn names(&self) -> Result<Option<Vec<String>>>;
    /// Reachable, locked or not.
    fn status(&self) -> KeyringStatus;
}

#[cfg(target_os = "linux")]
pub(crate) mod secret_service {
    //! The freedesktop.org Secret Service over D-Bus (GNOME Keyring, KWallet, KeePassXC).

    use std::collections::HashMap;

    use secret_service::EncryptionType;
    use secret_service::blocking::{Collection, SecretService};
    use zeroize::Zeroizing;

    use super::{KeyringStatus, Result, Vault};
    use crate::error::KeyringError;

    /// The attribute every keyhaven item carries.
    pub(crate) const APPLICATION: &str = "keyhaven";

    /// Items of store `store` in the collection with alias `alias`, on the bus at `address`
    /// (the session bus when `None`).
    pub(crate) struct SecretServiceVault {
        pub(crate) alias: String,
        pub(crate) address: Option<String>,
        pub(crate) store: String,
    }

    impl SecretServiceVault {
        fn keyring(&self) -> String {
            format!("Secret Service collection '{}'", self.alias)
        }

        fn connect<'s>(&self) -> Result<SecretService<'s>> {
            let unreachable = |reason: String| KeyringError::Unreachable {
                keyring: self.keyring(),
                reason,
            };
            let conn = match &self.address {
                Some(a) => {
                    zbus::blocking::connection::Builder::address(a.as_str()).and_then(|b| b.build())
                }
                None => zbus::blocking::Connection::session(),
            }
            .map_err(|e| {
                unreachable(format!(
                    "no D-Bus session bus ({e}): run inside a desktop session, or set \
                     DBUS_SESSION_BUS_ADDRESS"
                ))
            })?;
            SecretService::connect_with_existing(EncryptionType::Dh, conn).map_err(|e| {
                unreachable(format!(
                    "no Secret Service on the session bus ({e}): start gnome-keyring-daemon \
                     --components=secrets (or KWallet, KeePassXC with its Secret Service \
                     integration)"
                ))
            })
        }

        fn with_collection<T>(&self, f: impl FnOnce(&Collection<'_>) -> Result<T>) -> Result<T> {
            let ss = self.connect()?;
            let collection =
                ss.get_collection_by_alias(&self.alias)
                    .map_err(|e| KeyringError::Unreachable {
                        keyring: self.keyring(),
                        reason: format!(
                            "the Secret Service has no collection '{}' ({e}): create one, or \
                         name another with `collection = ...`",
                            self.alias
                        ),
                    })?;
            if collection
                .is_locked()
                .map_err(|e| KeyringError::call(&self.keyring(), "ask whether it is locked", e))?
            {
                return Err(KeyringError::Locked {
                    keyring: self.keyring(),
                    hint: self.unlock_hint(),
                });
            }
            f(&collection)
        }

        fn unlock_hint(&self) -> String {
            "unlock it (log in to the desktop session, or open Seahorse / KWallet Manager and \
             unlock it; headless: gnome-keyring-daemon --unlock reads the password on stdin), \
             then run the command again; `keyhaven doctor` shows its state"
                .into()
        }

        fn attributes<'a>(&'a self, name: &'a str) -> HashMap<&'a str, &'a str> {
            HashMap::from([
                ("application", APPLICATION),
                ("keyhaven-store", self.store.as_str()),
                ("keyhaven-item", name),
            ])
        }

        fn map(&self, operation: &str, e: secret_service::Error) -> KeyringError {
            match e {
                secret_service::Error::Locked => KeyringError::Locked {
                    keyring: self.keyring(),
                    hint: self.unlock_hint(),
                },
                other => KeyringError::call(&self.keyring(), operation, other),
            }
        }
    }

    impl Vault for SecretServiceVault {
        fn describe(&self) -> String {
            self.keyring()
        }

        fn read(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            self.with_collection(|c| {
                let items = c
                    .search_items(self.attributes(name))
                    .map_err(|e| self.map(&format!("search for item {name}"), e))?;
                match items.as_slice() {
                    [] => Ok(None),
                    [item] => item
                        .get_secret()
                        .map(|s| Some(Zeroizing::new(s)))
                        .map_err(|e| self.map(&format!("read item {name}"), e)),
                    more => Err(KeyringError::call(
                        &self.keyring(),
                        format!("read item {name}"),
                        std::io::Error::other(format!(
                            "{} items carry its attributes: another program added some",
                            more.len()
                        )),
                    )),
                }
            })
        }

        fn write(&self, name: &str, label: &str, data: &[u8]) -> Result<()> {
            self.with_collection(|c| {
                c.create_item(label, self.attributes(name), data, true, "text/plain")
                    .map(|_| ())
                    .map_err(|e| self.map(&format!("write item {name}"), e))
            })
        }

        fn remove(&self, name: &str) -> Result<bool> {
            self.with_collection(|c| {
                let items = c
                    .search_items(self.attributes(name))
                    .map_err(|e| self.map(&format!("search for item {name}"), e))?;
                for item in &items {
                    item.delete()
                        .map_err(|e| self.map(&format!("delete item {name}"), e))?;
                }
                Ok(!items.is_empty())
            })
        }

        fn names(&self) -> Result<Option<Vec<String>>> {
            self.with_collection(|c| {
                let attrs = HashMap::from([
                    ("application", APPLICATION),
                    ("keyhaven-store", self.store.as_str()),
                ]);
                let items = c
                    .search_items(attrs)
                    .map_err(|e| self.map("list the store's items", e))?;
                let mut names = Vec::new();
                for item in &items {
                    let attrs = item
                        .get_attributes()
                        .map_err(|e| self.map("read an item's attributes", e))?;
                    if let Some(n) = attrs.get("keyhaven-item") {
                        names.push(n.clone());
                    }
                }
                Ok(Some(names))
            })
        }

        fn status(&self) -> KeyringStatus {
            match self.with_collection(|_| Ok(())) {
                Ok(()) => KeyringStatus::Ready {
                    keyring: self.keyring(),
                },
                Err(KeyringError::Locked { keyring, hint }) => {
                    KeyringStatus::Locked { keyring, hint }
                }
                Err(KeyringError::Unreachable { keyring, reason }) => {
                    KeyringStatus::Unreachable { keyring, reason }
                }
                Err(e) => KeyringStatus::Unreachable {
                    keyring: self.keyring(),
                    reason: error_chain(&e),
                },
            }
        }
    }

    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }
}

#[cfg(target_os = "linux")]
pub(crate) mod kernel {
    //! The Linux kernel key retention service (keyutils): `user` keys in the user or session
    //! keyring. Kept in kernel memory, never on disk: gone at reboot (the user keyring) or at
    //! the end of the login session (the session keyring).

    use linux_keyutils::{KeyError, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission};
    use zeroize::Zeroizing;

    use super::{KeyringStatus, Result, Vault};
    use crate::error::KeyringError;

    /// Which kernel keyring.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum KernelKeyring {
        /// The user keyring (`@u`): shared by the user's processes until reboot.
        User,
        /// The session keyring (`@s`): this login session's.
        Session,
    }

    impl KernelKeyring {
        fn id(self) -> KeyRingIdentifier {
            match self {
                KernelKeyring::User => KeyRingIdentifier::User,
                KernelKeyring::Session => KeyRingIdentifier::Session,
            }
        }

        /// `user` or `session`.
        pub fn name(self) -> &'static str {
            match self {
                KernelKeyring::User => "user",
                KernelKeyring::Session => "session",
            }
        }
    }

    pub(crate) struct KernelVault {
        pub(crate) keyring: KernelKeyring,
        pub(crate) store: String,
    }

    /// The most keys of a store's keyring read when enumerating.
    const MAX_LINKS: usize = 65_536;

    impl KernelVault {
        fn keyring_name(&self) -> String {
            format!("kernel {} keyring", self.keyring.name())
        }

        fn prefix(&self) -> String {
            format!("keyhaven:{}:", self.store)
        }

        fn ring(&self) -> Result<KeyRing> {
            KeyRing::from_special_id(self.keyring.id(), true).map_err(|e| self.unreachable(e))
        }

        fn unreachable(&self, e: KeyError) -> KeyringError {
            let reason = match e {
                KeyError::AccessDenied | KeyError::PermissionDenied => {
                    "the kernel refused keyctl (EPERM/EACCES: a container or sandbox that \
                     forbids kernel keyrings): use the Secret Service or the encrypted file store"
                        .to_owned()
                }
                KeyError::OperationNotSupported => {
                    "this kernel has no key retention service (ENOSYS/EOPNOTSUPP)".to_owned()
                }
                other => format!("{other:?}"),
            };
            KeyringError::Unreachable {
                keyring: self.keyring_name(),
                reason,
            }
        }

        fn call(&self, operation: String, e: KeyError) -> KeyringError {
            match e {
                KeyError::AccessDenied
                | KeyError::PermissionDenied
                | KeyError::OperationNotSupported => self.unreachable(e),
                other => KeyringError::call(
                    &self.keyring_name(),
                    operation,
                    std::io::Error::other(format!("{other:?}")),
                ),
            }
        }
    }

    impl Vault for KernelVault {
        fn describe(&self) -> String {
            self.keyring_name()
        }

        fn read(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            let ring = self.ring()?;
            match ring.search(&format!("{}{name}", self.prefix())) {
                Ok(key) => key
                    .read_to_vec()
                    .map(|v| Some(Zeroizing::new(v)))
                    .map_err(|e| self.call(format!("read key {name}"), e)),
                Err(KeyError::KeyDoesNotExist) => Ok(None),
                Err(e) => Err(self.call(format!("search for key {name}"), e)),
            }
        }

        fn write(&self, name: &str, _label: &str, data: &[u8]) -> Result<()> {
            let ring = self.ring()?;
            let description = format!("{}{name}", self.prefix());
            match ring.search(&description) {
                // An existing key's payload is replaced atomically, its permissions kept:
                // add_key updates a key of the same type and description in place (and takes
                // payloads up to 1 MiB, where KEYCTL_UPDATE stops at one page).
                Ok(_) => ring
                    .add_key(&description, data)
                    .map(|_| ())
                    .map_err(|e| self.call(format!("write key {name}"), e)),
                Err(KeyError::KeyDoesNotExist) => {
                    let key = ring
                        .add_key(&description, data)
                        .map_err(|e| self.call(format!("write key {name}"), e))?;
                    // The possessor (this user's processes holding the keyring) may do
                    // anything; the user may see, read and write it; nobody else anything.
                    let perms = KeyPermissionsBuilder::builder()
                        .posessor(Permission::ALL)
                        .user(
                            Permission::VIEW
                                | Permission::READ
                                | Permission::SEARCH
                                | Permission::WRITE,
                        )
                        .build();
                    if let Err(e) = key.set_perms(perms) {
                        // A new key nothing depends on yet: take it back.
                        let _ = key.invalidate();
                        return Err(self.call(format!("set the permissions of key {name}"), e));
                    }
                    Ok(())
                }
                Err(e) => Err(self.call(format!("search for key {name}"), e)),
            }
        }

        fn remove(&self, name: &str) -> Result<bool> {
            let ring = self.ring()?;
            match ring.search(&format!("{}{name}", self.prefix())) {
                Ok(key) => {
                    key.invalidate()
                        .map_err(|e| self.call(format!("remove key {name}"), e))?;
                    Ok(true)
                }
                Err(KeyError::KeyDoesNotExist) => Ok(false),
                Err(e) => Err(self.call(format!("search for key {name}"), e)),
            }
        }

        fn names(&self) -> Result<Option<Vec<String>>> {
            let ring = self.ring()?;
            let links = ring
                .get_links(MAX_LINKS)
                .map_err(|e| self.call("list the keyring".into(), e))?;
            let prefix = self.prefix();
            let mut names = Vec::new();
            for link in links.iter() {
                let Some(key) = link.as_key() else { continue };
                let Ok(meta) = key.metadata() else { continue };
                if let Some(n) = meta.get_description().strip_prefix(&prefix) {
                    names.push(n.to_owned());
                }
            }
            Ok(Some(names))
        }

        fn status(&self) -> KeyringStatus {
            match self.ring().and_then(|r| {
                r.metadata()
                    .map_err(|e| self.call("read the keyring".into(), e))
            }) {
                Ok(_) => KeyringStatus::Ready {
                    keyring: self.keyring_name(),
                },
                Err(KeyringError::Unreachable { keyring, reason }) => {
                    KeyringStatus::Unreachable { keyring, reason }
                }
                Err(e) => KeyringStatus::Unreachable {
                    keyring: self.keyring_name(),
                    reason: e.to_string(),
                },
            }
        }
    }
}

#[cfg(target_os = "macos")]
pub(crate) mod keychain {
    //! The macOS login Keychain, as generic passwords (service `keyhaven:<store>`, account the
    //! item's name). Compiled, not tested, on this project's machines.

    use zeroize::Zeroizing;

    use super::{KeyringStatus, Result, Vault};
    use crate::error::KeyringError;

    /// errSecItemNotFound.
    const NOT_FOUND: i32 = -25300;

    pub(crate) struct KeychainVault {
        pub(crate) store: String,
    }

    impl KeychainVault {
        fn service(&self) -> String {
            format!("keyhaven:{}", self.store)
        }
    }

    impl Vault for KeychainVault {
        fn describe(&self) -> String {
            "macOS Keychain".into()
        }

        fn read(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            match security_framework::passwords::get_generic_password(&self.service(), name) {
                Ok(v) => Ok(Some(Zeroizing::new(v))),
                Err(e) if e.code() == NOT_FOUND => Ok(None),
                Err(e) => Err(KeyringError::call(
                    &self.describe(),
                    format!("read {name}"),
                    e,
                )),
            }
        }

        fn write(&self, name: &str, _label: &str, data: &[u8]) -> Result<()> {
            security_framework::passwords::set_generic_password(&self.service(), name, data)
                .map_err(|e| KeyringError::call(&self.describe(), format!("write {name}"), e))
        }

        fn remove(&self, name: &str) -> Result<bool> {
            match security_framework::passwords::delete_generic_password(&self.service(), name) {
                Ok(()) => Ok(true),
                Err(e) if e.code() == NOT_FOUND => Ok(false),
                Err(e) => Err(KeyringError::call(
                    &self.describe(),
                    format!("delete {name}"),
                    e,
                )),
            }
        }

        fn names(&self) -> Result<Option<Vec<String>>> {
            Ok(None)
        }

        fn status(&self) -> KeyringStatus {
            KeyringStatus::Ready {
                keyring: self.describe(),
            }
        }
    }
}
