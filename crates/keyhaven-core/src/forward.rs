//! [`forward_key_store!`](crate::forward_key_store): pass-through `KeyStore` methods for decorators.

/// Writes `KeyStore` methods that forward to a field, for decorators: list the methods a
/// decorator does not change, and write the others by hand.
///
/// ```
/// use keyhaven_core::{Algorithm, KeyId, KeyStore, Result, Signature};
///
/// /// Refuses to sign on Sundays (say); everything else passes through.
/// struct Guarded<S> {
///     inner: S,
/// }
///
/// impl<S: KeyStore> KeyStore for Guarded<S> {
///     keyhaven_core::forward_key_store!(inner; info, generate, generate_with, details, unlock,
///         list, get, find_by_label, resolve, public_key, sign_digest, agree, delete, check,
///         import_pkcs8, export_pkcs8);
///
///     fn sign(&self, id: &KeyId, message: &[u8]) -> Result<Signature> {
///         self.inner.sign(id, message)
///     }
/// }
/// ```
#[macro_export]
macro_rules! forward_key_store {
    ($field:ident; $($method:ident),+ $(,)?) => {
        $( $crate::forward_key_store!(@one $field $method); )+
    };
    (@one $f:ident info) => {
        fn info(&self) -> $crate::BackendInfo { self.$f.info() }
    };
    (@one $f:ident generate) => {
        fn generate(&self, algorithm: $crate::Algorithm, label: &str)
            -> $crate::Result<$crate::KeyInfo> { self.$f.generate(algorithm, label) }
    };
    (@one $f:ident generate_with) => {
        fn generate_with(&self, spec: &$crate::KeySpec) -> $crate::Result<$crate::KeyInfo> {
            self.$f.generate_with(spec)
        }
    };
    (@one $f:ident details) => {
        fn details(&self, id: &$crate::KeyId) -> $crate::Result<$crate::KeyDetails> {
            self.$f.details(id)
        }
    };
    (@one $f:ident unlock) => {
        fn unlock(&self, id: &$crate::KeyId, secret: &$crate::SecretString)
            -> $crate::Result<()> { self.$f.unlock(id, secret) }
    };
    (@one $f:ident list) => {
        fn list(&self) -> $crate::Result<::std::vec::Vec<$crate::KeyInfo>> { self.$f.list() }
    };
    (@one $f:ident get) => {
        fn get(&self, id: &$crate::KeyId) -> $crate::Result<$crate::KeyInfo> { self.$f.get(id) }
    };
    (@one $f:ident find_by_label) => {
        fn find_by_label(&self, label: &str) -> $crate::Result<$crate::KeyInfo> {
            self.$f.find_by_label(label)
        }
    };
    (@one $f:ident resolve) => {
        fn resolve(&self, id_or_label: &str) -> $crate::Result<$crate::KeyInfo> {
            self.$f.resolve(id_or_label)
        }
    };
    (@one $f:ident public_key) => {
        fn public_key(&self, id: &$crate::KeyId) -> $crate::Result<$crate::PublicKey> {
            self.$f.public_key(id)
        }
    };
    (@one $f:ident sign) => {
        fn sign(&self, id: &$crate::KeyId, message: &[u8]) -> $crate::Result<$crate::Signature> {
            self.$f.sign(id, message)
        }
    };
    (@one $f:ident sign_digest) => {
        fn sign_digest(&self, id: &$crate::KeyId, digest: &[u8])
            -> $crate::Result<$crate::Signature> { self.$f.sign_digest(id, digest) }
    };
    (@one $f:ident agree) => {
        fn agree(&self, id: &$crate::KeyId, peer: &$crate::PublicKey)
            -> $crate::Result<$crate::SecretBytes> { self.$f.agree(id, peer) }
    };
    (@one $f:ident delete) => {
        fn delete(&self, id: &$crate::KeyId) -> $crate::Result<()> { self.$f.delete(id) }
    };
    (@one $f:ident check) => {
        fn check(&self) -> $crate::Result<::std::vec::Vec<$crate::Error>> { self.$f.check() }
    };
    (@one $f:ident import_pkcs8) => {
        fn import_pkcs8(&self, label: &str, pkcs8_der: &$crate::SecretBytes)
            -> $crate::Result<$crate::KeyInfo> { self.$f.import_pkcs8(label, pkcs8_der) }
    };
    (@one $f:ident restore_pkcs8) => {
        fn restore_pkcs8(&self, original: &$crate::KeyInfo, label: &str,
            pkcs8_der: &$crate::SecretBytes) -> $crate::Result<$crate::KeyInfo> {
            self.$f.restore_pkcs8(original, label, pkcs8_der)
        }
    };
    (@one $f:ident attest_key) => {
        fn attest_key(&self, id: &$crate::KeyId, challenge: &[u8])
            -> $crate::Result<$crate::KeyAttestation> { self.$f.attest_key(id, challenge) }
    };
    (@one $f:ident export_wrapped) => {
        fn export_wrapped(&self, id: &$crate::KeyId) -> $crate::Result<::std::vec::Vec<u8>> {
            self.$f.export_wrapped(id)
        }
    };
    (@one $f:ident restore_wrapped) => {
        fn restore_wrapped(&self, original: &$crate::KeyInfo, label: &str, wrapped: &[u8])
            -> $crate::Result<$crate::KeyInfo> {
            self.$f.restore_wrapped(original, label, wrapped)
        }
    };
    (@one $f:ident export_pkcs8) => {
        fn export_pkcs8(&self, id: &$crate::KeyId) -> $crate::Result<$crate::SecretBytes> {
            self.$f.export_pkcs8(id)
        }
    };
}
