//! Resolution: the one function that applies flag > environment > file > default
//! ([`Sources::gather`]), the parse of the winning texts, and the checks, with errors that
//! name the setting and where its value came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Command;

use super::args::ServeArgs;
use super::settings::{setting, ServerConfig, Setting, SETTINGS};
use super::syntax::Kind;
use super::{ConfigError, Origin, CONFIG_ENV};

struct Sources {
    /// For each setting given anywhere, the value that wins and where it came from.
    chosen: BTreeMap<&'static str, (String, Origin)>,
}

impl Sources {
    fn gather(
        args: &ServeArgs,
        env: &BTreeMap<String, OsString>,
        file: Option<(&Path, &toml::Table)>,
    ) -> Result<Self, ConfigError> {
        let mut chosen = BTreeMap::new();
        if let Some((path, table)) = file {
            for (key, value) in table {
                let Some(s) = SETTINGS.iter().find(|s| s.name == key) else {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        key: key.clone(),
                    });
                };
                let origin = Origin::File(path.to_owned());
                // Only the TOML type is shown: rendering TOML back needs toml's `display`.
                let text = toml_to_text(s, value).map_err(|reason| {
                    invalid(
                        s,
                        origin.clone(),
                        &format!("<{}>", value.type_str()),
                        reason,
                    )
                })?;
                chosen.insert(s.name, (text, origin));
            }
        }
        for s in SETTINGS {
            let name = s.env();
            if let Some(value) = env.get(name) {
                let origin = Origin::Env(name.to_owned());
                let text = value
                    .to_str()
                    .ok_or_else(|| ConfigError::Invalid {
                        setting: s.name,
                        origin: origin.clone(),
                        value: value.to_string_lossy().into_owned(),
                        reason: "not valid UTF-8".into(),
                    })?
                    .to_owned();
                chosen.insert(s.name, (text, origin));
            }
            if let Some(value) = args.values.get(s.name) {
                chosen.insert(s.name, (value.clone(), Origin::Flag(s.flag)));
            }
        }
        Ok(Self { chosen })
    }

    fn origin(&self, s: &Setting) -> (Origin, Option<&str>) {
        match self.chosen.get(s.name) {
            Some((text, origin)) => (origin.clone(), Some(text)),
            None => (Origin::Default, None),
        }
    }
}

fn invalid(s: &Setting, origin: Origin, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        setting: s.name,
        origin,
        value: if s.secret {
            "<redacted>".into()
        } else {
            value.to_owned()
        },
        reason,
    }
}

fn toml_to_text(s: &Setting, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) if s.kind == Kind::List => items
            .iter()
            .map(|item| match item {
                toml::Value::String(text) if !text.contains(',') => Ok(text.as_str()),
                _ => Err("expected an array of strings without commas".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        _ if s.kind == Kind::List => Err("expected an array of strings".into()),
        _ => Err("expected a string, an integer or a boolean".into()),
    }
}

impl ServerConfig {
    /// Parses `tether serve` arguments (`args[0]` is the program name) with `env` as the
    /// environment (pass [`std::env::vars_os`] for the real one; only `TETHER_*` names are
    /// looked at), reading the TOML file named by `--config` or `TETHER_CONFIG` if any.
    pub fn parse_from<I, A, E, K, V>(args: I, env: E) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString> + Clone,
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let cmd = ServeArgs::add_args(Command::new("serve"));
        let matches = cmd.try_get_matches_from(args)?;
        let args = <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches)?;
        Self::load(&args, env)
    }

    /// Resolves parsed flags with `env` (see [`parse_from`](Self::parse_from)), reading the
    /// TOML file named by `--config` or `TETHER_CONFIG` if any.
    pub fn load<E, K, V>(args: &ServeArgs, env: E) -> Result<Self, ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let env = tether_env(env);
        let path = match (&args.config, env.get(CONFIG_ENV)) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) => Some(PathBuf::from(path)),
            (None, None) => None,
        };
        let text = match &path {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let file = path.as_deref().zip(text.as_deref());
        Self::resolve(args, &env, file)
    }

    /// Resolves the settings from flags, `env` and the text of a TOML file (its path is only
    /// for messages), without any I/O: flag beats environment beats file beats default.
    /// Validates the result like [`validate`](Self::validate).
    ///
    /// ```
    /// use std::path::Path;
    /// use tether::server::config::{ServeArgs, ServerConfig};
    ///
    /// let file = (Path::new("tether.toml"), "publish_rate = 5\nwindow = 64\n");
    /// let env = [("TETHER_PUBLISH_RATE", "7")];
    /// let config = ServerConfig::from_sources(&ServeArgs::default(), env, Some(file))?;
    /// assert_eq!(config.publish_rate, 7); // the environment beats the file
    /// assert_eq!(config.window, Some(64));
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn from_sources<E, K, V>(
        args: &ServeArgs,
        env: E,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        Self::resolve(args, &tether_env(env), file)
    }

    fn resolve(
        args: &ServeArgs,
        env: &BTreeMap<String, OsString>,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError> {
        let table = match file {
            Some((path, text)) => Some((
                path,
                text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    reason: e.to_string().trim_end().to_owned(),
                })?,
            )),
            None => None,
        };
        let src = Sources::gather(args, env, table.as_ref().map(|(p, t)| (*p, t)))?;

        let mut config = ServerConfig::default();
        for s in SETTINGS {
            match src.chosen.get(s.name) {
                Some((text, origin)) => (s.set)(&mut config, text.trim())
                    .map_err(|reason| invalid(s, origin.clone(), text, reason))?,
                None => {
                    if let Some(follow) = s.follow {
                        follow(&mut config);
                    }
                }
            }
        }
        config.check(|s| src.origin(s))?;
        Ok(config)
    }

    /// Checks what parsing cannot: limits of zero, `ping_interval < idle_timeout`, secret
    /// lengths, origins, the log filter. [`parse_from`](Self::parse_from),
    /// [`load`](Self::load) and [`from_sources`](Self::from_sources) already call it; call it
    /// after changing fields in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(|_| (Origin::Code, None))
    }

    fn check<'a>(
        &'a self,
        origin_of: impl Fn(&'static Setting) -> (Origin, Option<&'a str>),
    ) -> Result<(), ConfigError> {
        let fail = |s: &'static Setting, shown: String, reason: String| {
            let (origin, text) = origin_of(s);
            Err(invalid(s, origin, text.unwrap_or(&shown), reason))
        };
        for s in SETTINGS {
            if let Err(reason) = (s.check)(self) {
                return fail(s, (s.show)(self), reason);
            }
        }
        if self.ping_interval >= self.idle_timeout {
            if let Some(s) = setting("ping_interval") {
                return fail(
                    s,
                    (s.show)(self),
                    format!(
                        "must be shorter than idle_timeout ({:?}), or quiet clients are \
                         closed between pings",
                        self.idle_timeout
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The `TETHER_*` names in `env` that are no setting (nor `TETHER_CONFIG`): most likely
/// typos, worth a warning.
pub fn unknown_env_vars<E, K, V>(env: E) -> Vec<String>
where
    E: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    tether_env(env)
        .into_keys()
        .filter(|name| name != CONFIG_ENV && !SETTINGS.iter().any(|s| s.env() == *name))
        .collect()
}

fn tether_env<E, K, V>(env: E) -> BTreeMap<String, OsString>
where
    E: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    env.into_iter()
        .filter_map(|(k, v)| {
            let k = k.into().into_string().ok()?;
            k.starts_with("TETHER_").then(|| (k, v.into()))
        })
        .collect()
}
