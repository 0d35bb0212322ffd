//! The flags of `tether serve`: one per setting, generated from the table with its help
//! text, so that `--help` names every setting, its variable and its default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::settings::SETTINGS;
use super::syntax::Kind;
use super::CONFIG_ENV;

/// The flags of `tether serve`, as given (unparsed: values are parsed with the other
/// sources by [`ServerConfig::from_sources`](super::ServerConfig::from_sources), so errors read the same whatever the source).
///
/// Implements [`clap::Args`], so a binary can embed it as a subcommand:
/// `enum Cmd { Serve(ServeArgs) }` with `#[derive(clap::Subcommand)]`.
#[derive(Clone, Default)]
pub struct ServeArgs {
    pub(super) config: Option<PathBuf>,
    /// The text of each setting given by flag (a repeated list flag joined with commas).
    pub(super) values: BTreeMap<&'static str, String>,
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<_, _> = SETTINGS
            .iter()
            .filter_map(|s| {
                let v = self.values.get(s.name)?;
                Some((s.name, if s.secret { "<redacted>" } else { v.as_str() }))
            })
            .collect();
        f.debug_struct("ServeArgs")
            .field("config", &self.config)
            .field("values", &shown)
            .finish()
    }
}

impl ServeArgs {
    /// The `--config` path, if given.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    pub(super) fn add_args(mut cmd: Command) -> Command {
        cmd = cmd.after_help(
            "Precedence: flag, then environment variable, then config file, then default.\n\
             Durations: 500ms, 5s, 2m, 1h, 1d or sums like 1m30s. Sizes: bytes, or 64KiB, \
             1MiB, 1GiB. Booleans: true or false (a bare --flag means true).",
        );
        cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(ValueParser::path_buf())
                .action(ArgAction::Set)
                .help(format!(
                    "TOML file with settings (keys as the flags, with underscores) \
                     [env: {CONFIG_ENV}] [default: none]"
                )),
        );
        for s in SETTINGS {
            let mut arg = Arg::new(s.name)
                .long(s.flag)
                .value_name(s.value_name)
                .value_parser(ValueParser::string())
                .help_heading(s.heading)
                .help(s.help_text());
            arg = match s.kind {
                Kind::Value => arg.action(ArgAction::Set),
                Kind::List => arg.action(ArgAction::Append),
                Kind::Bool => arg
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        Self::add_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::add_args(cmd)
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let lookup_failed = |e: clap::parser::MatchesError| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, e.to_string())
        };
        if let Some(path) = matches
            .try_get_one::<PathBuf>("config")
            .map_err(lookup_failed)?
        {
            self.config = Some(path.clone());
        }
        for s in SETTINGS {
            if let Some(values) = matches
                .try_get_many::<String>(s.name)
                .map_err(lookup_failed)?
            {
                let joined = values.map(String::as_str).collect::<Vec<_>>().join(",");
                self.values.insert(s.name, joined);
            }
        }
        Ok(())
    }
}
