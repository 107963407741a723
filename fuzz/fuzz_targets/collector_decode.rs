//! The collector's decoding of what an agent sends: protobuf, then the hello and batch checks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lockdown_collector::admit::agent_message(data, "cp-1");
});
