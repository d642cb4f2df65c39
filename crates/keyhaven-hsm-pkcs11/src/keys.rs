//! Key objects: curve parameters, public points to SPKI, ids, dates.

use keyhaven_core::{Algorithm, KeyId};

/// DER of the named-curve OIDs (`CKA_EC_PARAMS`) we write.
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
pub(crate) const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
pub(crate) const OID_X25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x6e];
/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// The `CKA_EC_PARAMS` keyhaven writes for an algorithm.
pub(crate) fn ec_params(algorithm: Algorithm) -> &'static [u8] {
    match algorithm {
        Algorithm::EcdsaP384 | Algorithm::EcdhP384 => OID_P384,
        Algorithm::EcdsaP256 | Algorithm::EcdhP256 => OID_P256,
        Algorithm::Ed25519 => OID_ED25519,
        _ => OID_X25519,
    }
}

/// The ECDH algorithm on an ECDSA algorithm's curve.
pub(crate) fn ecdh_of(algorithm: Algorithm) -> Algorithm {
    match algorithm {
        Algorithm::EcdsaP384 => Algorithm::EcdhP384,
        Algorithm::EcdsaP256 => Algorithm::EcdhP256,
        other => other,
    }
}

/// A PrintableString (tag 0x13) with this text.
fn printable(params: &[u8], text: &str) -> bool {
    params.len() == text.len() + 2
        && params[0] == 0x13
        && usize::from(params[1]) == text.len()
        && &params[2..] == text.as_bytes()
}

/// The algorithm a `CKA_EC_PARAMS` value names: a named-curve OID, or for the Edwards and
/// Montgomery curves the PrintableString names PKCS#11 3.0 also allows (`pkcs11-tool` writes
/// `edwards25519`).
pub(crate) fn algorithm_of_params(params: &[u8]) -> Option<Algorithm> {
    if params == OID_P384 {
        Some(Algorithm::EcdsaP384)
    } else if params == OID_P256 {
        Some(Algorithm::EcdsaP256)
    } else if params == OID_ED25519 || printable(params, "edwards25519") {
        Some(Algorithm::Ed25519)
    } else if params == OID_X25519 || printable(params, "curve25519") {
        Some(Algorithm::X25519)
    } else {
        None
    }
}

/// The length of a raw public point: uncompressed SEC1 for the NIST curves, 32 bytes for the
/// 25519 curves.
fn raw_point_len(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::EcdsaP384 | Algorithm::EcdhP384 => 97,
        Algorithm::EcdsaP256 | Algorithm::EcdhP256 => 65,
        _ => 32,
    }
}

/// The raw point from `CKA_EC_POINT`, which tokens return either raw or wrapped in a DER OCTET
/// STRING (the PKCS#11 2.40 form, what SoftHSM returns). The two are told apart by length, since
/// an uncompressed SEC1 point also starts with 0x04.
pub(crate) fn raw_point(algorithm: Algorithm, ec_point: &[u8]) -> Result<&[u8], String> {
    let n = raw_point_len(algorithm);
    let body = if ec_point.len() == n {
        ec_point
    } else if ec_point.len() == n + 2 && ec_point[0] == 0x04 && usize::from(ec_point[1]) == n {
        &ec_point[2..]
    } else if ec_point.len() == n + 3
        && ec_point[..2] == [0x04, 0x81]
        && usize::from(ec_point[2]) == n
    {
        // the long length form, legal for 128..=255 bytes and sometimes used below
        &ec_point[3..]
    } else {
        return Err(format!(
            "CKA_EC_POINT is {} bytes: neither a {n}-byte {} point nor one wrapped in an OCTET \
             STRING",
            ec_point.len(),
            algorithm.jose_name()
        ));
    };
    if n != 32 && body[0] != 0x04 {
        return Err("the point is not in uncompressed form".into());
    }
    Ok(body)
}

/// A DER TLV.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xff {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// SubjectPublicKeyInfo DER for a raw point.
pub(crate) fn spki_der(algorithm: Algorithm, point: &[u8]) -> Vec<u8> {
    let alg_id = match algorithm {
        Algorithm::EcdsaP384 | Algorithm::EcdhP384 => {
            tlv(0x30, &[OID_EC_PUBLIC_KEY, OID_P384].concat())
        }
        Algorithm::EcdsaP256 | Algorithm::EcdhP256 => {
            tlv(0x30, &[OID_EC_PUBLIC_KEY, OID_P256].concat())
        }
        Algorithm::Ed25519 => tlv(0x30, OID_ED25519),
        _ => tlv(0x30, OID_X25519),
    };
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    tlv(0x30, &[alg_id, tlv(0x03, &bits)].concat())
}

/// Our key id for a `CKA_ID`: its lowercase hex. `None` for an empty id or one too long to be a
/// [`KeyId`] (more than 64 bytes).
pub(crate) fn key_id_of(cka_id: &[u8]) -> Option<KeyId> {
    if cka_id.is_empty() || cka_id.len() > 64 {
        return None;
    }
    hex::encode(cka_id).parse().ok()
}

/// The `CKA_ID` a key id stands for: `None` unless it is the lowercase hex of 1 to 64 bytes
/// (then no key on the token can have it).
pub(crate) fn cka_id_of(id: &KeyId) -> Option<Vec<u8>> {
    let s = id.as_str();
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s)
        .ok()
        .filter(|b| !b.is_empty() && b.len() <= 64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `CKA_START_DATE` digits (`YYYY`, `MM`, `DD`) for a Unix time (UTC).
pub(crate) fn date_of_unix(secs: u64) -> ([u8; 4], [u8; 2], [u8; 2]) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = civil_from_days(days);
    let ys = format!("{:04}", y.clamp(0, 9999));
    let ms = format!("{m:02}");
    let ds = format!("{d:02}");
    let mut year = [b'0'; 4];
    year.copy_from_slice(&ys.as_bytes()[..4]);
    let mut month = [b'0'; 2];
    month.copy_from_slice(&ms.as_bytes()[..2]);
    let mut day = [b'0'; 2];
    day.copy_from_slice(&ds.as_bytes()[..2]);
    (year, month, day)
}

/// The Unix time of midnight UTC of a `CKA_START_DATE`, or `None` if it is empty or not digits.
pub(crate) fn unix_of_date(year: &[u8; 4], month: &[u8; 2], day: &[u8; 2]) -> Option<u64> {
    let num = |b: &[u8]| -> Option<u32> {
        if b.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(b).ok()?.parse().ok()
        } else {
            None
        }
    };
    let (y, m, d) = (num(year)?, num(month)?, num(day)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    u64::try_from(days_from_civil(i64::from(y), m, d) * 86_400).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for secs in [0u64, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let (y, m, d) = date_of_unix(secs);
            let back = unix_of_date(&y, &m, &d).unwrap();
            assert_eq!(back, secs - secs % 86_400, "{secs}");
        }
        assert_eq!(date_of_unix(951_782_400), (*b"2000", *b"02", *b"29"));
        assert_eq!(unix_of_date(&[0; 4], &[0; 2], &[0; 2]), None);
    }

    #[test]
    fn points_raw_and_wrapped() {
        let raw384 = [[0x04].as_slice(), &[7u8; 96]].concat();
        let wrapped384 = [[0x04, 0x61].as_slice(), &raw384].concat();
        assert_eq!(
            raw_point(Algorithm::EcdsaP384, &raw384).unwrap(),
            &raw384[..]
        );
        assert_eq!(
            raw_point(Algorithm::EcdsaP384, &wrapped384).unwrap(),
            &raw384[..]
        );
        let ed = [9u8; 32];
        let wrapped_ed = [[0x04, 0x20].as_slice(), &ed].concat();
        assert_eq!(raw_point(Algorithm::Ed25519, &ed).unwrap(), &ed[..]);
        assert_eq!(raw_point(Algorithm::Ed25519, &wrapped_ed).unwrap(), &ed[..]);
        // long-form length
        let long384 = [[0x04, 0x81, 0x61].as_slice(), &raw384].concat();
        assert_eq!(
            raw_point(Algorithm::EcdsaP384, &long384).unwrap(),
            &raw384[..]
        );
        // compressed and truncated points are refused
        assert!(raw_point(Algorithm::EcdsaP256, &[0x02; 33]).is_err());
        assert!(raw_point(Algorithm::EcdsaP256, &[0x04; 10]).is_err());
        assert!(raw_point(Algorithm::EcdsaP256, &[]).is_err());
    }

    #[test]
    fn params() {
        assert_eq!(
            algorithm_of_params(b"\x13\x0cedwards25519"),
            Some(Algorithm::Ed25519)
        );
        assert_eq!(algorithm_of_params(OID_ED25519), Some(Algorithm::Ed25519));
        assert_eq!(algorithm_of_params(OID_P256), Some(Algorithm::EcdsaP256));
        assert_eq!(algorithm_of_params(b"\x13\x0cedwards448xx"), None);
        assert_eq!(algorithm_of_params(&[]), None);
    }

    #[test]
    fn ids() {
        let id = key_id_of(&[1, 2, 0xab]).unwrap();
        assert_eq!(id.as_str(), "0102ab");
        assert_eq!(cka_id_of(&id).unwrap(), vec![1, 2, 0xab]);
        assert!(key_id_of(&[]).is_none());
        assert!(key_id_of(&[0; 65]).is_none());
        assert!(cka_id_of(&"0102AB".parse().unwrap()).is_none());
        assert!(cka_id_of(&"release".parse().unwrap()).is_none());
        assert!(cka_id_of(&"abc".parse().unwrap()).is_none());
    }

    #[test]
    fn spki_parses() {
        // the Ed25519 SPKI of RFC 8410's example key
        let point = hex::decode("19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
            .unwrap();
        let der = spki_der(Algorithm::Ed25519, &point);
        assert_eq!(
            hex::encode(&der),
            "302a300506032b657003210019bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        let pk = keyhaven_crypto::default_provider()
            .parse_public_key_der(&der)
            .unwrap();
        assert_eq!(pk.algorithm(), Algorithm::Ed25519);
    }
}
