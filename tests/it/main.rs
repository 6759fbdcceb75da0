//! Integration tests: the real `msb-registry` binary against temporary
//! registries, plus library-level checks. One binary, one module per area.

mod core;
mod import;
mod tarcraft;
mod util;
