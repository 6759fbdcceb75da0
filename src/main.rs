//! The `msb-registry` binary: parse arguments, run the command, map the
//! outcome to an exit code. Everything else lives in the library.

use std::io::Write;

use msb_registry::cli::{Cli, report_usage, run};
use msb_registry::exit;

fn main() {
    let code = match Cli::parse_args() {
        Err(e) => report_usage(&e),
        Ok(cli) => match run(cli) {
            Ok(Ok(())) => exit::OK,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
            Ok(Err(e)) => {
                eprintln!("error: write to stdout: {e}");
                exit::UNEXPECTED
            }
            Err(e) => {
                eprintln!("error: {}", e.report_line());
                e.exit_code()
            }
        },
    };
    // Help and version text may still sit in stdout's buffer.
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
