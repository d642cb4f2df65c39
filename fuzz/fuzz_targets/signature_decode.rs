//! Signature decoding (DER and raw) for every algorithm: never panics, and what decodes
//! re-encodes to the same bytes in the same format (DER is strict).
#![no_main]

use keyhaven_core::{Algorithm, SignatureFormat};
use keyhaven_crypto::encoding::{decode_signature, encode_signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for alg in Algorithm::ALL {
        for fmt in [SignatureFormat::Der, SignatureFormat::Raw] {
            if let Ok(sig) = decode_signature(alg, data, fmt) {
                if let Ok(bytes) = encode_signature(&sig, fmt) {
                    assert_eq!(bytes, data, "{alg} {fmt}");
                }
            }
        }
    }
});
