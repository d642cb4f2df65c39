//! Configuration: which TPM (the TCTI), where keyhaven keeps its per-key files, and the options
//! a key can be made with (passphrase, PCR policy, persistent handle).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use keyhaven_core::{Error, Result};
use secrecy::SecretString;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::tcti_ldr::TctiNameConf;

use crate::error::TpmError;

/// How a TPM is reached: a TCTI string, as tpm2-tools take it.
///
/// Accepted forms (tss-esapi 7.7 over Debian's tpm2-tss 3.2):
/// - `device:/dev/tpmrm0` (the kernel's resource manager; `device` alone means `/dev/tpm0`),
/// - `swtpm:host=127.0.0.1,port=2321` (swtpm's TCP server; its control channel is `port + 1`),
/// - `mssim:host=...,port=...` (the Microsoft/IBM simulator),
/// - `tabrmd` or `tabrmd:bus_name=com.intel.tss2.Tabrmd,bus_type=system`.
///
/// `swtpm:path=/run/swtpm/sock` (swtpm on a Unix socket) is refused with an explanation: the
/// tss-esapi 7.x line can only hand the TCTI loader a host and port, and would silently connect
/// to `localhost:2321` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcti {
    text: String,
    conf: TctiNameConf,
}

impl Tcti {
    /// The string as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn name_conf(&self) -> TctiNameConf {
        self.conf.clone()
    }

    /// What to do when this TCTI cannot reach its TPM.
    pub(crate) fn unreachable_hint(&self) -> &'static str {
        match self.conf {
            TctiNameConf::Device(_) => {
                "is there a TPM, and may this user open the device (Debian: add the user to the \
                 'tss' group for /dev/tpmrm0)?"
            }
            TctiNameConf::Swtpm(_) => {
                "is swtpm running with that TCP server port (and its control channel on the \
                 next port)? Start it with `swtpm socket --tpm2 --tpmstate dir=DIR --server \
                 type=tcp,port=P,bindaddr=127.0.0.1 --ctrl type=tcp,port=P+1,bindaddr=127.0.0.1 \
                 --flags not-need-init,startup-clear`"
            }
            TctiNameConf::Mssim(_) => "is the TPM simulator running on that host and port?",
            TctiNameConf::Tabrmd(_) => {
                "is tpm2-abrmd running and reachable on that D-Bus bus (`systemctl status \
                 tpm2-abrmd`)?"
            }
        }
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn invalid(text: &str, reason: impl Into<String>) -> Error {
    TpmError::InvalidTcti {
        tcti: text.to_owned(),
        reason: reason.into(),
    }
    .into()
}

/// Checks `k=v,k=v` options against the keys an interface accepts. tss-esapi ignores unknown
/// keys, so a typo (`prot=2322`) would silently connect somewhere else.
fn check_keys(text: &str, options: &str, allowed: &[&str]) -> Result<()> {
    if options.is_empty() {
        return Ok(());
    }
    for pair in options.split(',') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(invalid(text, format!("'{pair}' is not key=value")));
        };
        if value.is_empty() {
            return Err(invalid(text, format!("'{key}' has no value")));
        }
        if !allowed.contains(&key) {
            return Err(invalid(
                text,
                format!(
                    "unknown option '{key}' (this interface takes {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

impl FromStr for Tcti {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (name, options) = text.split_once(':').unwrap_or((text, ""));
        match name {
            "device" => {}
            "swtpm" | "mssim" => {
                if options.split(',').any(|kv| kv.starts_with("path=")) {
                    return Err(Error::Unsupported {
                        operation: "reach swtpm on a Unix socket",
                        reason: format!(
                            "'{text}': the tss-esapi 7.x TCTI loader only passes a host and \
                             port to swtpm (it would silently connect to localhost:2321); run \
                             swtpm with `--server type=tcp,port=P,bindaddr=127.0.0.1 --ctrl \
                             type=tcp,port=P+1,bindaddr=127.0.0.1` and use \
                             `swtpm:host=127.0.0.1,port=P`"
                        ),
                    });
                }
                check_keys(text, options, &["host", "port"])?;
            }
            "tabrmd" => check_keys(text, options, &["bus_name", "bus_type"])?,
            _ => {
                return Err(invalid(
                    text,
                    "use device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P or tabrmd",
                ));
            }
        }
        let conf = TctiNameConf::from_str(text)
            .map_err(|e| invalid(text, format!("tss-esapi rejects it: {e}")))?;
        Ok(Tcti {
            text: text.to_owned(),
            conf,
        })
    }
}

/// Where the store's storage primary key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StorageKey {
    /// An ECC P-256 storage key (the TCG provisioning guidance's SRK template) re-created under
    /// the owner hierarchy each time the store connects: the same template on the same TPM
    /// always gives the same key, so nothing needs to be kept in the TPM. Needs an empty owner
    /// authorization.
    #[default]
    Derived,
    /// A storage key already persisted at this handle (for example `0x81000001`, made with
    /// `tpm2_createprimary` and `tpm2_evictcontrol`).
    Persistent(PersistentHandle),
}

/// What a [`crate::TpmStore`] needs: the TPM and the metadata directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TpmConfig {
    /// How to reach the TPM.
    pub tcti: Tcti,
    /// Where keyhaven keeps each key's wrapped private blob, public area and metadata (created
    /// 0700 if missing; refused if others may read or write it).
    pub dir: PathBuf,
    /// The storage primary key.
    pub storage_key: StorageKey,
    /// How many keys to keep loaded at once (least recently used are flushed); `None` asks the
    /// TPM (`TPM_PT_HR_TRANSIENT_MIN` less one for the storage key: 2 on swtpm).
    pub max_loaded_keys: Option<usize>,
}

impl TpmConfig {
    /// A configuration with a derived storage key and the TPM's own object limit.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (or [`Error::Unsupported`]) for a TCTI string keyhaven cannot use.
    pub fn new(tcti: &str, dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(TpmConfig {
            tcti: tcti.parse()?,
            dir: dir.into(),
            storage_key: StorageKey::Derived,
            max_loaded_keys: None,
        })
    }

    /// Uses a storage key persisted at `handle` instead of deriving one.
    pub fn with_storage_key(mut self, storage_key: StorageKey) -> Self {
        self.storage_key = storage_key;
        self
    }

    /// Keeps at most `n` (at least 1) keys loaded.
    pub fn with_max_loaded_keys(mut self, n: usize) -> Self {
        self.max_loaded_keys = Some(n.max(1));
        self
    }
}

/// A persistent object handle in the owner range `0x81000000..=0x817FFFFF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersistentHandle(u32);

impl PersistentHandle {
    /// The handle, if it is in the owner's persistent range.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside `0x81000000..=0x817FFFFF`.
    pub fn new(handle: u32) -> Result<Self> {
        if (0x8100_0000..=0x817F_FFFF).contains(&handle) {
            Ok(PersistentHandle(handle))
        } else {
            Err(Error::InvalidInput(format!(
                "{handle:#010x} is not an owner persistent handle (0x81000000 to 0x817fffff)"
            )))
        }
    }

    /// The raw handle.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PersistentHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

impl FromStr for PersistentHandle {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "'{s}' is not a handle: write it in hex, 0x81000010"
                ))
            })?;
        let value = u32::from_str_radix(digits, 16)
            .map_err(|_| Error::InvalidInput(format!("'{s}' is not a hex handle")))?;
        PersistentHandle::new(value)
    }
}

/// A PCR bank a policy can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PcrBank {
    /// The SHA-1 bank.
    Sha1,
    /// The SHA-256 bank.
    Sha256,
    /// The SHA-384 bank.
    Sha384,
}

impl PcrBank {
    /// `sha1`, `sha256` or `sha384`.
    pub fn name(self) -> &'static str {
        match self {
            PcrBank::Sha1 => "sha1",
            PcrBank::Sha256 => "sha256",
            PcrBank::Sha384 => "sha384",
        }
    }

    pub(crate) fn hashing_algorithm(self) -> HashingAlgorithm {
        match self {
            PcrBank::Sha1 => HashingAlgorithm::Sha1,
            PcrBank::Sha256 => HashingAlgorithm::Sha256,
            PcrBank::Sha384 => HashingAlgorithm::Sha384,
        }
    }
}

/// PCRs a key is bound to: `sha256:0,7` binds it to PCRs 0 and 7 of the SHA-256 bank as they
/// are when the key is created. Signing with it fails when any of them has changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PcrPolicy {
    bank: PcrBank,
    pcrs: Vec<u8>,
}

impl PcrPolicy {
    /// A policy over `pcrs` (0 to 23) of `bank`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no PCRs or a PCR above 23.
    pub fn new(bank: PcrBank, pcrs: &[u8]) -> Result<Self> {
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        if pcrs.is_empty() {
            return Err(Error::InvalidInput(
                "a PCR policy needs at least one PCR".into(),
            ));
        }
        if let Some(bad) = pcrs.iter().find(|&&p| p > 23) {
            return Err(Error::InvalidInput(format!(
                "PCR {bad} does not exist (a TPM has PCRs 0 to 23)"
            )));
        }
        Ok(PcrPolicy { bank, pcrs })
    }

    /// The bank.
    pub fn bank(&self) -> PcrBank {
        self.bank
    }

    /// The PCR indexes, ascending.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }
}

impl fmt::Display for PcrPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.pcrs.iter().map(u8::to_string).collect();
        write!(f, "{}:{}", self.bank.name(), list.join(","))
    }
}

impl FromStr for PcrPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let usage = || {
            Error::InvalidInput(format!(
                "'{s}' is not a PCR policy: write BANK:PCR[,PCR...], e.g. sha256:0,7"
            ))
        };
        let (bank, list) = s.split_once(':').ok_or_else(usage)?;
        let bank = match bank.to_ascii_lowercase().as_str() {
            "sha1" => PcrBank::Sha1,
            "sha256" => PcrBank::Sha256,
            "sha384" => PcrBank::Sha384,
            other => {
                return Err(Error::InvalidInput(format!(
                    "unknown PCR bank '{other}': use sha1, sha256 or sha384"
                )));
            }
        };
        let pcrs = list
            .split(',')
            .map(|p| p.trim().parse::<u8>().map_err(|_| usage()))
            .collect::<Result<Vec<u8>>>()?;
        PcrPolicy::new(bank, &pcrs)
    }
}

/// Options for [`crate::TpmStore::generate_with_options`]; through the [`KeyStore`] trait
/// they are the [`keyhaven_core::KeySpec`] options named in [`KeyOptions::NAMES`].
///
/// [`KeyStore`]: keyhaven_core::KeyStore
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct KeyOptions {
    /// A passphrase the TPM checks before each signature (its SHA-256 is the key's
    /// authorization value). Wrong passphrases count toward the TPM's dictionary-attack lockout.
    pub auth: Option<SecretString>,
    /// Bind the key to the current values of these PCRs.
    pub pcr_policy: Option<PcrPolicy>,
    /// Also make the key persistent at this handle (`TPM2_EvictControl`), where
    /// `tpm2_readpublic -c HANDLE` and other TPM tools find it.
    pub persistent: Option<PersistentHandle>,
}

impl KeyOptions {
    /// The names of the [`keyhaven_core::KeySpec`] options a TPM backend takes:
    /// `persistent` (a handle in hex, `0x81000010`), `pcr-policy` (`BANK:PCR[,PCR...]`, e.g.
    /// `sha256:0,7`) and `auth` (a key passphrase, given as a secret).
    pub const NAMES: [&'static str; 3] = ["persistent", "pcr-policy", "auth"];

    /// The TPM options of a [`keyhaven_core::KeySpec`], parsed.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an option a TPM does not take; [`Error::InvalidInput`] for a
    /// malformed handle or policy.
    pub fn from_spec(options: &keyhaven_core::KeyOptions) -> Result<Self> {
        options.only("tpm", &Self::NAMES)?;
        let mut out = KeyOptions::new();
        if let Some(h) = options.text("persistent")? {
            out = out.persistent(h.parse()?);
        }
        if let Some(p) = options.text("pcr-policy")? {
            out = out.pcr_policy(p.parse()?);
        }
        if let Some(a) = options.secret("auth")? {
            out = out.auth(a);
        }
        Ok(out)
    }

    /// No passphrase, no policy, not persistent.
    pub fn new() -> Self {
        KeyOptions::default()
    }

    /// With a passphrase.
    pub fn auth(mut self, passphrase: SecretString) -> Self {
        self.auth = Some(passphrase);
        self
    }

    /// Bound to PCRs.
    pub fn pcr_policy(mut self, policy: PcrPolicy) -> Self {
        self.pcr_policy = Some(policy);
        self
    }

    /// Persistent at a handle.
    pub fn persistent(mut self, handle: PersistentHandle) -> Self {
        self.persistent = Some(handle);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven_core::ErrorKind;

    #[test]
    fn tcti_forms() {
        for ok in [
            "device:/dev/tpmrm0",
            "device",
            "swtpm:host=127.0.0.1,port=2321",
            "swtpm:port=2321",
            "mssim:host=localhost,port=2321",
            "tabrmd",
            "tabrmd:bus_name=com.intel.tss2.Tabrmd,bus_type=session",
        ] {
            let t: Tcti = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(t.as_str(), ok);
        }
        assert!(matches!(
            "swtpm:path=/tmp/sock".parse::<Tcti>(),
            Err(e) if e.is(ErrorKind::Unsupported) && e.to_string().contains("type=tcp")));
        for bad in [
            "",
            "tpm",
            "swtpm:prot=1",
            "swtpm:port=x",
            "swtpm:host=",
            "tabrmd:bus=x",
        ] {
            assert!(
                matches!(bad.parse::<Tcti>(), Err(e) if e.is(ErrorKind::InvalidInput)),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn pcr_policies() {
        let p: PcrPolicy = "sha256:7,0".parse().unwrap();
        assert_eq!(p.pcrs(), &[0, 7]);
        assert_eq!(p.to_string(), "sha256:0,7");
        for bad in ["sha256:", "sha256:24", "md5:1", "0,7", "sha256:a"] {
            assert!(bad.parse::<PcrPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn persistent_handles() {
        assert_eq!(
            "0x81000010".parse::<PersistentHandle>().unwrap().value(),
            0x8100_0010
        );
        assert_eq!(
            PersistentHandle::new(0x8100_0010).unwrap().to_string(),
            "0x81000010"
        );
        for bad in ["81000010", "0x80000000", "0x81800000", "0xzz"] {
            assert!(bad.parse::<PersistentHandle>().is_err(), "{bad}");
        }
    }
}
