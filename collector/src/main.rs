//! `lockdown-collector`: not built yet (issue 4); says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!("lockdown-collector: the collector is not built yet (see issue 4)");
    std::process::ExitCode::from(2)
}
