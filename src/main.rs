//! The `msb-registry` binary: parse arguments, run the command, map the
//! outcome to an exit code. Everything else lives in the library.

use msb_registry::cli::{Cli, run};
use msb_registry::exit;

fn main() {
    let cli = Cli::parse_args();
    let code = match run(cli) {
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
    };
    std::process::exit(code);
}
