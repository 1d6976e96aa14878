//! switchboard-bench: load generators and measurements (results go to bench/RESULTS.md).
//!
//! `switchboard-bench <scenario> [options]`; each scenario lives in a module of its own.

mod journal;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("journal") => journal::main(&args[1..]),
        _ => Err("usage: switchboard-bench journal [--store sqlite|postgres] [--secs N] [--sync full|normal]".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
