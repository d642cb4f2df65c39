//! Durations in configuration: humantime strings (`"90s"`, `"1h"`, `"7d"`) or plain seconds.

use serde::{Deserialize, Deserializer, Serializer, de::Error};

/// The longest duration a setting takes (10 years): beyond it, nothing is meaningful.
pub(crate) const MAX_SECS: u64 = 10 * 366 * 86_400;

pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(std::time::Duration::from_secs(*v)).to_string())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Secs(u64),
    Text(String),
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(s),
        Raw::Text(t) => humantime::parse_duration(&t)
            .map(|d| d.as_secs())
            .map_err(|e| D::Error::custom(format!("'{t}' is not a duration ({e})"))),
    }
}

/// Durations kept to the millisecond (`"250ms"`, `"2s"`; a plain number is seconds).
pub(crate) mod precise {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Raw;

    pub(crate) fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map_err(|e| D::Error::custom(format!("'{t}' is not a duration ({e})"))),
        }
    }
}
