//! The editor: every catalogue fix of the manifest's component applied to arbitrary
//! manifests; a successful edit must still parse.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lockdown_agent::{fix::edit, rules::Catalogue};

fuzz_target!(|data: &[u8]| {
    let cat = Catalogue::builtin();
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(m) = lockdown_agent::rules::parse_manifest(cat, data) else { return };
    let Some(cp) = &m.control_plane else { return };
    for rule in &cat.rules {
        if let Some(fix) = &rule.fix
            && let Ok(edited) = edit::apply(src, cp, cat, fix)
        {
            let _ = lockdown_agent::rules::parse_manifest(cat, edited.text.as_bytes());
        }
    }
});
