//! `switchboard-bench`: load generators and measurements (bench/RESULTS.md records the runs).
//!
//! Each scenario family lives in its own module and takes the arguments after its name.

mod amqp;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("amqp") => amqp::main(&args[1..]),
        _ => {
            eprintln!("usage: switchboard-bench amqp (publish|consume|latency|buckets|all) [options]");
            Ok(())
        }
    }
}
