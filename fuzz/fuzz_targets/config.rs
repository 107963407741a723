//! Config loading: the agent's config and the collector's, from arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = lockdown_agent::config::Config::parse(text, Path::new("/fuzz/agent.yaml"));
    let _ = lockdown_collector::config::Config::parse(text, Path::new("/fuzz/collector.yaml"));
});
