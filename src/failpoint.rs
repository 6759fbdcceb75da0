//! Crash injection for tests: `MSB_FAILPOINT=<name>:<action>` makes the named
//! step abort the process (`abort`), fail with an error (`error`), or pause
//! (`pause`, sleeping until killed) so tests can kill -9 at that exact instant.
//! Unset, every failpoint is a no-op.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The environment variable naming the failpoint to trigger.
pub const ENV: &str = "MSB_FAILPOINT";

fn configured() -> Option<&'static (String, String)> {
    static CONFIG: OnceLock<Option<(String, String)>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (name, action) = v.split_once(':').unwrap_or((v.as_str(), "abort"));
            Some((name.to_string(), action.to_string()))
        })
        .as_ref()
}

/// Trigger the failpoint `name` if it is the configured one.
pub fn hit(name: &str) -> Result<()> {
    let Some((wanted, action)) = configured() else {
        return Ok(());
    };
    if wanted != name {
        return Ok(());
    }
    match action.as_str() {
        "pause" => {
            eprintln!("failpoint {name}: paused (pid {})", std::process::id());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        "error" => Err(Error::Failpoint(name.to_string())),
        _ => std::process::abort(),
    }
}
