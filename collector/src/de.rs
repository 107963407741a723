//! Deserializers shared by the config files' types.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as humans do ("30s", "12h", "30d").
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like 30d or 12h: {e}"))
    })
}
