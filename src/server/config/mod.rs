//! The server's settings: from flags, `TETHER_*` environment variables and an optional TOML
//! file, in that order of precedence, over built-in defaults.
//!
//! Every setting has one name used everywhere: `max_frame_bytes` is the flag
//! `--max-frame-bytes`, the variable `TETHER_MAX_FRAME_BYTES` and the file key
//! `max_frame_bytes`. The file is flat (no tables) and may set any setting; an unknown key
//! is an error, so a typo never silently falls back to a default.
//!
//! Values are read the same way from every source: durations as `500ms`, `5s`, `2m`, `1h`,
//! `1d` or sums like `1m30s`; sizes as a byte count or with a binary suffix (`64KiB`, `1MiB`,
//! `1GiB`); booleans as `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`); lists
//! comma-separated (in the file also a TOML array of strings). In the TOML file, numbers and
//! booleans may also be written as TOML integers and booleans.
//!
//! # One declaration per setting
//!
//! `settings.rs` declares each setting once: its doc comment (the field's rustdoc, its
//! `--help` line and its row in docs/configuration.md), name, type, default, syntax, limits
//! and how it reaches the engine. The `settings!` macro (`table.rs`) turns that into the
//! [`ServerConfig`] struct, its `Default`, and one row per setting that the flags, the help,
//! the precedence, the checks, `Debug` and [`ServerConfig::engine_builder`] read. The
//! precedence flag > environment > file > default is one function (`resolve::Sources::gather`).
//!
//! Why a macro of our own rather than a configuration crate, measured: crates that
//! `cargo tree -e normal,build` lists beyond the server's own tree, and the clean build of
//! those added crates alone (the shared ones built first) on the 2-core development machine.
//!
//! | | crates added | their clean build | what it would take over |
//! |---|---|---|---|
//! | figment 0.10 (`toml`, `env`) | 17, among them a second `toml` (0.8), a second `syn` (2) and `pear`'s proc macros | 8.8 s | merging the sources; but its `Env` reads only the process environment, so tests would take turns in its `Jail` instead of each handing a map |
//! | config 0.15 (`toml`) | 2 (`config`, `pathdiff`) | 2.8 s | merging the sources (it takes an environment map); a flag's provenance must be set by hand on each override, and it keeps every `TETHER_*` variable as a key, typos included, beside the file's |
//! | `settings!` (ours) | 0 | 0 s | the seven places per setting the module had before |
//!
//! Neither crate knows clap, our value syntax or our limits, so the flags, `--help`, parsing
//! and checks stay ours with either; what one would take over is gathering the sources with
//! their provenance, `Sources::gather` and `toml_to_text`: about 95 lines, while either crate
//! needs glue of its own to map its values and errors back to a flag, a variable or a file key.
//! (The build times are with the machine quiet; under a load average of 5 they were 21.1 s and
//! 7.4 s.) The code of this module, tests apart and without comments and blank lines, went
//! from 1224 lines in one file to about 1100 in eight; `max_connections` is named once in it
//! instead of nine times.
//!
//! # Why the environment is read here and not by clap
//!
//! clap's `env` feature reads the process environment when the argument is defined, with no
//! way to hand it another one. Reading `TETHER_*` here means the whole precedence chain is
//! one function ([`ServerConfig::from_sources`]) that tests feed with a map, safely in
//! parallel, and the file can slot in between the environment and the defaults. `--help`
//! still names each variable and default: the table generates both the flags and the help
//! text, so they cannot drift apart.

mod args;
mod check;
mod credentials;
mod resolve;
mod settings;
mod syntax;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

pub use args::ServeArgs;
pub use credentials::{DevCredentials, DEMO_USER};
pub use resolve::unknown_env_vars;
pub use settings::{LogFormat, ServerConfig};
pub use syntax::{parse_duration, parse_size};

/// Shortest API key accepted, in bytes: long enough that guessing is hopeless, short enough
/// for any key a person would generate.
pub const MIN_API_KEY_BYTES: usize = 16;

/// The environment variable naming the config file (like `--config`).
pub const CONFIG_ENV: &str = "TETHER_CONFIG";

/// The largest value of the size limits (`max_frame_bytes`, `max_body_bytes`,
/// `write_buffer_bytes`): 1 GiB.
pub const MAX_BUFFER_BYTES: usize = 1 << 30;

/// Where a value came from; errors name it so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (its long name, without the dashes).
    Flag(&'static str),
    /// An environment variable (its name).
    Env(String),
    /// A key in the TOML file at this path.
    File(PathBuf),
    /// The built-in default.
    Default,
    /// Set in code on a [`ServerConfig`] (checked by [`ServerConfig::validate`]).
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => f.write_str("the built-in default"),
            Origin::Code => f.write_str("the configuration set in code"),
        }
    }
}

/// Why the server's settings cannot be used. Each variant names the setting (or file) at
/// fault. Distinct from the engine's [`tether::ConfigError`](crate::ConfigError), which
/// [`EngineBuilder::build`](crate::EngineBuilder::build) returns for the engine settings the server forwards.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid {setting} {value:?} (from {origin}): {reason}")]
    Invalid {
        /// The setting's name (as in the config file).
        setting: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// The value as given (`<redacted>` for secrets).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TOML file has a key that is no setting.
    #[error("config file {}: unknown setting {key:?}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The TOML file cannot be read or is not valid TOML.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Exactly one of `jwt_secret` and `api_key` is set. Development mode needs both absent;
    /// anything else needs both present, so that a half-configured production server never
    /// starts with a generated credential nobody knows.
    #[error(
        "{missing} is not set but {present} is: set both, or neither to run in development mode"
    )]
    MissingCredential {
        /// The setting that is missing.
        missing: &'static str,
        /// The one that is set.
        present: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate development credentials: {0}")]
    Random(#[source] std::io::Error),
    /// The command line did not parse (only from [`ServerConfig::parse_from`]; the binary
    /// lets clap report these itself).
    #[error("{0}")]
    Args(#[from] clap::Error),
}
