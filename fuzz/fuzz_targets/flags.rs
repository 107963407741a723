//! The flag reader: argv words (one per line) and `sh -c` scripts, as each component reads
//! them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lockdown_agent::manifest::flags::{Arg, ArgSource, Flags};
use lockdown_agent::manifest::{Component, shell};
use lockdown_agent::rules::Catalogue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let cat = Catalogue::builtin();
    let args: Vec<Arg> = text
        .split('\n')
        .map(|w| Arg { text: w.to_string(), span: None, source: ArgSource::Args, expanded: false })
        .collect();
    for c in Component::ALL {
        let flags = Flags::parse(args.clone(), &|name| cat.kind(c, name));
        for u in &flags.uses {
            let _ = flags.value(&u.name);
            let _ = flags.list(&u.name);
            let _ = flags.map(&u.name);
        }
    }
    for words in shell::split_commands(text) {
        for w in words {
            assert!(w.range.end <= text.len());
        }
    }
});
