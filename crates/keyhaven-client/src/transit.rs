//! The key broker's transit routes (Vault's shape), as typed calls.

use base64ct::{Base64, Encoding};
use keyhaven_core::SecretBytes;
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::wire::{TransitCiphertext, TransitDataKey, TransitKeyView, TransitSignature, VaultData};

/// A transit key name as a path segment: the server checks it too, this keeps a name with
/// `/` or `?` from becoming another route.
fn segment(name: &str) -> Result<&str> {
    if !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != ".."
    {
        Ok(name)
    } else {
        Err(ClientError::InvalidInput(format!(
            "'{name}' is not a transit key name: use 1 to 128 letters, digits, '.', '_' or '-'"
        )))
    }
}

impl Client {
    /// Creates the transit key `name` (a second create changes nothing).
    ///
    /// # Errors
    /// [`ClientError::Problem`] (`no-broker` when the server has no key broker), and as
    /// [`Client::send`].
    pub async fn transit_create(&self, name: &str) -> Result<TransitKeyView> {
        self.transit_create_of(name, "aes256-gcm96").await
    }

    /// Creates the transit key `name` of type `key_type`: `aes256-gcm96` (encrypts),
    /// `ed25519`, `ecdsa-p256` or `ecdsa-p384` (sign). A second create changes nothing.
    ///
    /// # Errors
    /// As [`Client::transit_create`]; 400 (`unsupported`) for another type.
    pub async fn transit_create_of(&self, name: &str, key_type: &str) -> Result<TransitKeyView> {
        let path = format!("v1/transit/keys/{}", segment(name)?);
        let body = json!({ "type": key_type });
        let out: VaultData<TransitKeyView> = self.call("POST", &path, Some(&body)).await?;
        Ok(out.data)
    }

    /// Signs `input` with the latest version of the signing key `name`; `hash` is Vault's
    /// name of the hash ECDSA signs (`sha2-256` when `None`; Ed25519 signs the input itself).
    ///
    /// # Errors
    /// As [`Client::transit_read`]; 400 for a key that does not sign or another hash.
    pub async fn transit_sign(
        &self,
        name: &str,
        input: &[u8],
        hash: Option<&str>,
    ) -> Result<TransitSignature> {
        let path = format!("v1/transit/sign/{}", segment(name)?);
        let mut body = json!({ "input": Base64::encode_string(input) });
        if let Some(h) = hash {
            body["hash_algorithm"] = json!(h);
        }
        let out: VaultData<TransitSignature> = self.call("POST", &path, Some(&body)).await?;
        Ok(out.data)
    }

    /// Whether `signature` (`vault:vN:...`) is the signing key `name`'s over `input`.
    ///
    /// # Errors
    /// As [`Client::transit_sign`]; 400 for a malformed signature or a version below
    /// `min_decryption_version`. A signature that does not verify is `Ok(false)`.
    pub async fn transit_verify(
        &self,
        name: &str,
        input: &[u8],
        signature: &str,
        hash: Option<&str>,
    ) -> Result<bool> {
        #[derive(serde::Deserialize)]
        struct Valid {
            valid: bool,
        }
        let path = format!("v1/transit/verify/{}", segment(name)?);
        let mut body = json!({ "input": Base64::encode_string(input), "signature": signature });
        if let Some(h) = hash {
            body["hash_algorithm"] = json!(h);
        }
        let out: VaultData<Valid> = self.call("POST", &path, Some(&body)).await?;
        Ok(out.data.valid)
    }

    /// The transit key `name`.
    ///
    /// # Errors
    /// As [`Client::transit_create`]; 404 for an unknown key.
    pub async fn transit_read(&self, name: &str) -> Result<TransitKeyView> {
        let path = format!("v1/transit/keys/{}", segment(name)?);
        let out: VaultData<TransitKeyView> = self.call("GET", &path, None::<&()>).await?;
        Ok(out.data)
    }

    /// The names of this client's transit keys (none is an empty list).
    ///
    /// # Errors
    /// As [`Client::transit_create`].
    pub async fn transit_list(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Keys {
            keys: Vec<String>,
        }
        match self
            .call::<(), VaultData<Keys>>("GET", "v1/transit/keys?list=true", None)
            .await
        {
            Ok(out) => Ok(out.data.keys),
            Err(ClientError::Problem(p)) if p.status == 404 && p.kind.ends_with(":not-found") => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Adds a version to the transit key `name`; new encryptions use it.
    ///
    /// # Errors
    /// As [`Client::transit_read`].
    pub async fn transit_rotate(&self, name: &str) -> Result<TransitKeyView> {
        let path = format!("v1/transit/keys/{}/rotate", segment(name)?);
        let out: VaultData<TransitKeyView> = self.call("POST", &path, Some(&json!({}))).await?;
        Ok(out.data)
    }

    /// Sets `min_decryption_version`: ciphertexts of older versions no longer decrypt.
    ///
    /// # Errors
    /// As [`Client::transit_read`]; 400 for a version the key does not have.
    pub async fn transit_set_min_decryption_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<TransitKeyView> {
        let path = format!("v1/transit/keys/{}/config", segment(name)?);
        let body = json!({ "min_decryption_version": version });
        let out: VaultData<TransitKeyView> = self.call("POST", &path, Some(&body)).await?;
        Ok(out.data)
    }

    /// Encrypts `plaintext` under the transit key `name` (made if it does not exist, as Vault
    /// does): `vault:vN:...`.
    ///
    /// # Errors
    /// As [`Client::transit_create`].
    pub async fn transit_encrypt(&self, name: &str, plaintext: &[u8]) -> Result<TransitCiphertext> {
        let path = format!("v1/transit/encrypt/{}", segment(name)?);
        let b64 = Zeroizing::new(Base64::encode_string(plaintext));
        let body = Zeroizing::new(
            serde_json::to_vec(&json!({ "plaintext": b64.as_str() }))
                .map_err(|e| ClientError::InvalidInput(e.to_string()))?,
        );
        let url = self.url(&path)?.as_str().to_owned();
        let out: VaultData<TransitCiphertext> =
            self.send("POST", &url, Some(body.to_vec())).await?.json()?;
        Ok(out.data)
    }

    /// Decrypts a ciphertext of the transit key `name`.
    ///
    /// # Errors
    /// As [`Client::transit_read`]; 400 (`undecryptable`) for a changed ciphertext or one of
    /// another key, and for a version below `min_decryption_version`.
    pub async fn transit_decrypt(&self, name: &str, ciphertext: &str) -> Result<SecretBytes> {
        #[derive(serde::Deserialize)]
        struct Plain {
            plaintext: String,
        }
        let path = format!("v1/transit/decrypt/{}", segment(name)?);
        let body = json!({ "ciphertext": ciphertext });
        let url = self.url(&path)?.as_str().to_owned();
        let response = self
            .send("POST", &url, Some(body.to_string().into_bytes()))
            .await?;
        let mut out: VaultData<Plain> = response.json()?;
        let decoded = Base64::decode_vec(&out.data.plaintext)
            .map_err(|_| ClientError::BadResponse("the plaintext is not base64".into()));
        zeroize::Zeroize::zeroize(&mut out.data.plaintext);
        let mut wiped = response;
        zeroize::Zeroize::zeroize(&mut wiped.body);
        Ok(SecretBytes::new(decoded?))
    }

    /// Moves a ciphertext to the latest version of the transit key `name` (the plaintext
    /// stays inside the server).
    ///
    /// # Errors
    /// As [`Client::transit_decrypt`].
    pub async fn transit_rewrap(&self, name: &str, ciphertext: &str) -> Result<TransitCiphertext> {
        let path = format!("v1/transit/rewrap/{}", segment(name)?);
        let body = json!({ "ciphertext": ciphertext });
        let out: VaultData<TransitCiphertext> = self.call("POST", &path, Some(&body)).await?;
        Ok(out.data)
    }

    /// A fresh data key of `bits` (128, 256 or 512) under the transit key `name`: its
    /// ciphertext, and its plaintext when `with_plaintext`.
    ///
    /// # Errors
    /// As [`Client::transit_read`]; 400 for another size.
    pub async fn transit_data_key(
        &self,
        name: &str,
        bits: u32,
        with_plaintext: bool,
    ) -> Result<TransitDataKey> {
        let kind = if with_plaintext {
            "plaintext"
        } else {
            "wrapped"
        };
        let path = format!("v1/transit/datakey/{kind}/{}", segment(name)?);
        let body = json!({ "bits": bits });
        let url = self.url(&path)?.as_str().to_owned();
        let mut response = self
            .send("POST", &url, Some(body.to_string().into_bytes()))
            .await?;
        let out: Result<VaultData<TransitDataKey>> = response.json();
        zeroize::Zeroize::zeroize(&mut response.body);
        Ok(out?.data)
    }
}
