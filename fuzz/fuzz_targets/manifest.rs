//! The whole path from a manifest's bytes: parse, evaluate, host paths, fix plan (every
//! finding chosen), the plan's diff and redaction.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lockdown_agent::{exercise, rules::Catalogue};

fuzz_target!(|data: &[u8]| {
    exercise::manifest_bytes(Catalogue::builtin(), data);
});
