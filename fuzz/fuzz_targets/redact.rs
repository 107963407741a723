//! Redaction alone: whatever it returns for a pod must not hold a value it was asked to hide.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lockdown_agent::redact;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let _ = redact::manifest_text(src, &|f| f.contains("token") || redact::sensitive_by_name(f));
});
