//! The TPM's identity and curves, for `doctor` and the store's report.

use super::*;

/// Reads the TPM's identity and ECC curves.
pub(crate) fn read_report(ctx: &mut Context) -> Result<crate::TpmReport, TpmError> {
    let prop = |ctx: &mut Context, tag| {
        ctx.get_tpm_property(tag)
            .map_err(wrap_call("TPM2_GetCapability", None))
            .map(Option::unwrap_or_default)
    };
    let ascii = |v: u32| -> String {
        v.to_be_bytes()
            .iter()
            .filter(|b| b.is_ascii_graphic() || **b == b' ')
            .map(|&b| char::from(b))
            .collect()
    };
    let manufacturer = ascii(prop(ctx, PropertyTag::Manufacturer)?)
        .trim()
        .to_owned();
    let mut vendor = String::new();
    for tag in [
        PropertyTag::VendorString1,
        PropertyTag::VendorString2,
        PropertyTag::VendorString3,
        PropertyTag::VendorString4,
    ] {
        vendor.push_str(&ascii(prop(ctx, tag)?));
    }
    let fw1 = prop(ctx, PropertyTag::FirmwareVersion1)?;
    let fw2 = prop(ctx, PropertyTag::FirmwareVersion2)?;
    let revision = prop(ctx, PropertyTag::Revision)?;
    let transient_slots = prop(ctx, PropertyTag::HrTransientMin)?;
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::EccCurves, 0, 64))
        .map_err(wrap_call("TPM2_GetCapability", None))?;
    let ecc_curves = match data {
        CapabilityData::EccCurves(list) => list
            .into_inner()
            .into_iter()
            .map(|c| {
                use tss_esapi::constants::EccCurveIdentifier as C;
                match c {
                    C::NistP192 => "NIST P-192",
                    C::NistP224 => "NIST P-224",
                    C::NistP256 => "NIST P-256",
                    C::NistP384 => "NIST P-384",
                    C::NistP521 => "NIST P-521",
                    C::BnP256 => "BN P-256",
                    C::BnP638 => "BN P-638",
                    C::Sm2P256 => "SM2 P-256",
                }
                .to_owned()
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(crate::TpmReport {
        tcti: String::new(),
        manufacturer,
        vendor: vendor.trim().to_owned(),
        firmware_version: format!(
            "{}.{}.{}.{}",
            fw1 >> 16,
            fw1 & 0xFFFF,
            fw2 >> 16,
            fw2 & 0xFFFF
        ),
        spec_revision: format!("{}.{:02}", revision / 100, revision % 100),
        transient_slots,
        ecc_curves,
    })
}
