//! The module's tests: precedence, every source, bad values, help, credentials.

use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::Command;

use super::credentials::{API_KEY, JWT_SECRET};
use super::settings::{setting, Setting, SETTINGS};
use super::syntax::Kind;
use super::table;
use super::*;
use crate::{DedupMode, OverflowPolicy, UserLimits};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
    let argv = std::iter::once("serve").chain(args.iter().copied());
    ServerConfig::parse_from(argv, env.iter().copied())
}

fn with_file(args: &[&str], env: &[(&str, &str)], toml: &str) -> Result<ServerConfig, ConfigError> {
    let argv = std::iter::once("serve").chain(args.iter().copied());
    let matches = ServeArgs::add_args(Command::new("serve"))
        .try_get_matches_from(argv)
        .expect("flags parse");
    let args =
        <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches).expect("flags extract");
    ServerConfig::from_sources(
        &args,
        env.iter().copied(),
        Some((Path::new("test.toml"), toml)),
    )
}

/// The setting an error names, or a panic.
fn setting_of(result: Result<ServerConfig, ConfigError>) -> &'static str {
    match result {
        Err(ConfigError::Invalid { setting, .. }) => setting,
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

#[test]
fn defaults_are_as_documented() {
    let parsed = parse(&[], &[]).expect("defaults are valid");
    assert_eq!(parsed, ServerConfig::default());
    let d = ServerConfig::default();
    assert_eq!(d.listen, "127.0.0.1:7700".parse().expect("addr"));
    assert_eq!(d.max_frame_bytes, 65536);
    assert_eq!(d.max_body_bytes, d.max_frame_bytes);
    assert_eq!(d.max_connections, 10_000);
    assert_eq!(d.connect_timeout, Duration::from_secs(5));
    assert_eq!(d.idle_timeout, Duration::from_secs(60));
    assert_eq!(d.ping_interval, Duration::from_secs(20));
    assert_eq!(d.write_buffer_bytes, 16 * 1024);
    assert_eq!(d.write_timeout, Duration::from_secs(10));
    assert_eq!((d.publish_rate, d.publish_burst), (100, 200));
    assert_eq!(d.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(d.log, "info");
    assert_eq!(d.log_format, LogFormat::Human);
    assert!(!d.allow_client_publish && !d.echo_route && !d.dashboard_enabled());
    assert_eq!(d.dashboard, None, "unset: development mode decides");
    assert!(d.allowed_origins.is_empty());
    assert!(d.jwt_secret.is_none() && d.api_key.is_none());
    d.validate().expect("defaults validate");
}

#[test]
fn engine_defaults_shown_in_help_are_the_engines() {
    let engine = ServerConfig::default()
        .engine_builder()
        .shards(1)
        .build()
        .expect("engine builds");
    let c = engine.config();
    let limits = c.user_limits();
    let shown = |name: &str| {
        let s = setting(name).expect("a setting");
        (s.default_text)(&ServerConfig::default())
    };
    assert_eq!(shown("window"), c.window().to_string());
    assert_eq!(
        shown("max_messages_per_user"),
        limits.max_messages.to_string()
    );
    assert_eq!(
        parse_size(&shown("max_bytes_per_user")),
        Ok(limits.max_bytes)
    );
    assert_eq!(
        parse_size(&shown("memory_budget_bytes")).map(|n| n as u64),
        Ok(c.memory_budget_bytes())
    );
    assert_eq!(
        shown("overflow").parse::<OverflowPolicy>(),
        Ok(OverflowPolicy::default())
    );
    assert_eq!(
        shown("dedup").parse::<DedupMode>(),
        Ok(DedupMode::default())
    );
    assert_eq!(shown("max_users"), "10000000");
    drop(engine);
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let toml = "publish_rate = 1\npublish_burst = 2\nmax_connections = 3\n";
    let env = [
        ("TETHER_PUBLISH_RATE", "10"),
        ("TETHER_PUBLISH_BURST", "20"),
    ];
    let c = with_file(&["--publish-rate", "100"], &env, toml).expect("valid");
    assert_eq!(c.publish_rate, 100, "flag beats env and file");
    assert_eq!(c.publish_burst, 20, "env beats file");
    assert_eq!(c.max_connections, 3, "file beats default");
    assert_eq!(c.connect_timeout, Duration::from_secs(5), "default");
}

#[test]
fn flag_and_env_names_follow_the_setting_name() {
    for s in SETTINGS {
        assert_eq!(s.flag, s.name.replace('_', "-"), "{}", s.name);
        assert_eq!(s.env(), format!("TETHER_{}", s.name.to_uppercase()));
    }
    let names: std::collections::BTreeSet<_> = SETTINGS.iter().map(|s| s.name).collect();
    assert_eq!(names.len(), SETTINGS.len(), "no setting twice");
}

#[test]
fn every_setting_reads_from_every_source() {
    // A valid non-default value per setting, given by flag, by env and by file in turn.
    let value = |s: &Setting| match s.name {
        "listen" => "127.0.0.2:1",
        "jwt_secret" => SECRET,
        "api_key" => "0123456789abcdef",
        "allowed_origins" => "https://a.example",
        "allow_client_publish" | "echo_route" | "dashboard" => "true",
        "log" => "debug",
        "log_format" => "json",
        "overflow" => "reject",
        "dedup" => "off",
        "connect_timeout" | "idle_timeout" | "write_timeout" | "shutdown_timeout" => "3m",
        "header_timeout" | "body_timeout" | "linger_time" => "3m",
        "ping_interval" => "5s",
        _ => "7",
    };
    for s in SETTINGS {
        let flag = format!("--{}={}", s.flag, value(s));
        let by_flag = parse(&[&flag], &[]).expect(s.name);
        let env = [(s.env(), value(s).to_owned())];
        let argv = ["serve"];
        let by_env = ServerConfig::parse_from(argv, env).expect(s.name);
        let toml = if s.kind == Kind::List {
            format!("{} = [\"{}\"]", s.name, value(s))
        } else {
            format!("{} = \"{}\"", s.name, value(s))
        };
        let by_file = with_file(&[], &[], &toml).expect(s.name);
        assert_ne!(by_flag, ServerConfig::default(), "{}", s.name);
        assert_eq!(by_flag, by_env, "{}", s.name);
        assert_eq!(by_flag, by_file, "{}", s.name);
    }
}

#[test]
fn bool_flags_stand_alone_or_take_a_value() {
    let c = parse(&["--dashboard", "--echo-route=false"], &[]).expect("valid");
    assert_eq!(c.dashboard, Some(true));
    assert!(!c.echo_route);
    let c = parse(&[], &[("TETHER_ALLOW_CLIENT_PUBLISH", "yes")]).expect("valid");
    assert!(c.allow_client_publish);
}

#[test]
fn lists_from_repeated_flags_commas_and_arrays() {
    let a = "https://a.example";
    let b = "http://b.example:8080";
    let expected = vec![a.to_owned(), b.to_owned()];
    let both = format!("{a},{b}");
    let by_repeat = parse(&["--allowed-origins", a, "--allowed-origins", b], &[]);
    assert_eq!(by_repeat.expect("valid").allowed_origins, expected);
    let by_env = parse(&[], &[("TETHER_ALLOWED_ORIGINS", &both)]);
    assert_eq!(by_env.expect("valid").allowed_origins, expected);
    let toml = format!("allowed_origins = [\"{a}\", \"{b}\"]");
    assert_eq!(
        with_file(&[], &[], &toml).expect("valid").allowed_origins,
        expected
    );
}

#[test]
fn each_parse_error_names_its_setting() {
    let cases: &[(&str, &str)] = &[
        ("listen", "localhost"),
        ("max_frame_bytes", "lots"),
        ("max_frame_bytes", "64KB"),
        ("connect_timeout", "5"),
        ("idle_timeout", "soon"),
        ("ping_interval", "-1s"),
        ("write_timeout", "1x"),
        ("shutdown_timeout", ""),
        ("publish_rate", "99999999999"),
        ("dashboard", "maybe"),
        ("log_format", "xml"),
        ("overflow", "drop-all"),
        ("dedup", "everything"),
        ("shards", "two"),
        ("window", "-1"),
        ("memory_budget_bytes", "1TiB"),
        ("log", "info,tether=loud"),
        ("allowed_origins", "example.com"),
        ("allowed_origins", "https://a.example/"),
    ];
    for (name, bad) in cases {
        let env_name = format!("TETHER_{}", name.to_uppercase());
        let result = parse(&[], &[(env_name.as_str(), bad)]);
        assert_eq!(setting_of(result), *name, "{name}={bad:?}");
    }
}

#[test]
fn errors_say_where_the_value_came_from() {
    let err = parse(&["--idle-timeout", "nope"], &[]).expect_err("invalid");
    assert!(matches!(
        &err,
        ConfigError::Invalid { origin: Origin::Flag("idle-timeout"), value, .. } if value == "nope"
    ));
    assert!(err.to_string().contains("--idle-timeout"), "{err}");
    let err = with_file(&[], &[], "idle_timeout = \"nope\"").expect_err("invalid");
    assert!(err.to_string().contains("test.toml"), "{err}");
}

#[test]
fn zero_limits_are_refused() {
    for name in [
        "max_frame_bytes",
        "max_body_bytes",
        "max_connections",
        "write_buffer_bytes",
        "publish_rate",
        "publish_burst",
        "shards",
        "window",
        "max_users",
        "memory_budget_bytes",
        "max_messages_per_user",
        "max_bytes_per_user",
    ] {
        let flag = format!("--{}=0", name.replace('_', "-"));
        assert_eq!(setting_of(parse(&[&flag], &[])), name);
    }
    for name in ["connect_timeout", "idle_timeout", "write_timeout"] {
        let flag = format!("--{}=0ms", name.replace('_', "-"));
        assert_eq!(setting_of(parse(&[&flag], &[])), name);
    }
}

#[test]
fn size_limits_stop_at_1_gib() {
    for name in ["max_frame_bytes", "max_body_bytes", "write_buffer_bytes"] {
        let flag = |v: &str| format!("--{}={v}", name.replace('_', "-"));
        assert!(parse(&[&flag("1GiB")], &[]).is_ok(), "{name} at the limit");
        let over = (MAX_BUFFER_BYTES + 1).to_string();
        assert_eq!(setting_of(parse(&[&flag(&over)], &[])), name);
    }
}

#[test]
fn ping_interval_must_be_shorter_than_idle_timeout() {
    let result = parse(&["--ping-interval", "1m", "--idle-timeout", "1m"], &[]);
    assert_eq!(setting_of(result), "ping_interval");
}

#[test]
fn short_secrets_are_refused_and_not_echoed() {
    let err = parse(&["--jwt-secret", "hunter2"], &[]).expect_err("too short");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(matches!(
        err,
        ConfigError::Invalid {
            setting: "jwt_secret",
            ..
        }
    ));
    let result = parse(&[], &[("TETHER_API_KEY", "short")]);
    assert_eq!(setting_of(result), "api_key");
}

#[test]
fn unknown_toml_key_is_refused() {
    let err =
        with_file(&[], &[], "listen = \"127.0.0.1:1\"\nlisen = \"x\"\n").expect_err("unknown key");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "lisen"),
        "{err:?}"
    );
    let err = with_file(&[], &[], "[limits]\nmax_frame_bytes = 5\n").expect_err("table");
    assert!(matches!(err, ConfigError::UnknownKey { .. }));
}

#[test]
fn invalid_toml_and_wrong_toml_types_are_refused() {
    let err = with_file(&[], &[], "listen = ").expect_err("not toml");
    assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
    let result = with_file(&[], &[], "max_frame_bytes = 1.5");
    assert_eq!(setting_of(result), "max_frame_bytes");
    let result = with_file(&[], &[], "allowed_origins = [1]");
    assert_eq!(setting_of(result), "allowed_origins");
    let result = with_file(&[], &[], "allowed_origins = [\"https://a.example,x\"]");
    assert_eq!(setting_of(result), "allowed_origins");
    let c = with_file(&[], &[], "allowed_origins = \"https://a.example\"").expect("valid");
    assert_eq!(c.allowed_origins, ["https://a.example"]);
    // TOML integers and booleans are fine where the setting wants them.
    let c = with_file(&[], &[], "max_connections = 5\ndashboard = true").expect("valid");
    assert_eq!((c.max_connections, c.dashboard), (5, Some(true)));
}

#[test]
fn config_file_is_read_from_flag_or_env() {
    let path = std::env::temp_dir().join(format!(
        "tether-config-test-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, "max_connections = 42\n").expect("write temp file");
    let path_str = path.to_str().expect("temp path is UTF-8");
    let by_flag = parse(&["--config", path_str], &[]).map(|c| c.max_connections);
    let by_env = parse(&[], &[(CONFIG_ENV, path_str)]).map(|c| c.max_connections);
    let _ = std::fs::remove_file(&path);
    assert_eq!(by_flag.expect("valid"), 42);
    assert_eq!(by_env.expect("valid"), 42);
    let missing = parse(&["--config", "/nonexistent/tether.toml"], &[]);
    assert!(matches!(missing, Err(ConfigError::File { .. })));
}

#[test]
fn non_tether_env_is_ignored_and_unknown_tether_env_is_reported() {
    let env = [
        ("PATH", "/bin"),
        ("TETHER_LISTN", "x"),
        ("TETHER_LISTEN", "127.0.0.1:1"),
        ("TETHER_CONFIG", "/x"),
    ];
    assert_eq!(unknown_env_vars(env), vec!["TETHER_LISTN".to_owned()]);
    assert!(parse(&[], &[("LISTEN", "nonsense")]).is_ok());
}

#[test]
fn unknown_flag_is_a_clap_error() {
    assert!(matches!(
        parse(&["--lisen", "x"], &[]),
        Err(ConfigError::Args(_))
    ));
}

#[test]
fn help_names_every_setting_with_env_and_default() {
    let help = ServeArgs::add_args(Command::new("serve"))
        .render_help()
        .to_string();
    for s in SETTINGS {
        assert!(help.contains(&format!("--{}", s.flag)), "{}", s.name);
        assert!(help.contains(s.env()), "{}", s.name);
    }
    assert!(help.contains("[default: 127.0.0.1:7700]"), "{help}");
    assert!(help.contains("[default: 64KiB]"), "{help}");
    assert_eq!(
        help.matches("[default: ").count(),
        SETTINGS.len() + 1,
        "{help}"
    );
}

#[test]
fn duration_syntax() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
    assert_eq!(parse_duration(" 1h30m "), Ok(Duration::from_secs(5400)));
    for bad in [
        "",
        "s",
        "5",
        "5 s",
        "5sec",
        "1.5s",
        "-5s",
        "99999999999999999999d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn size_syntax() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1MiB"), Ok(1 << 20));
    assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
    for bad in [
        "",
        "KiB",
        "1kib",
        "1.5MiB",
        "-1",
        "1e6",
        "99999999999999999999",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn dev_mode_only_when_both_credentials_are_absent() {
    let mut dev = ServerConfig::default();
    let creds = dev.ensure_credentials().expect("rng").expect("dev mode");
    assert_eq!(dev.api_key.as_deref(), Some(creds.api_key.as_str()));
    assert_eq!(creds.demo_user.as_str(), DEMO_USER);
    let claims = dev
        .jwt_verifier()
        .expect("secret")
        .verify(&creds.demo_token, SystemTime::now())
        .expect("demo token verifies");
    assert_eq!(claims.user.as_str(), "demo");
    assert!(dev
        .api_key_checker()
        .expect("key")
        .check(Some(&format!("Bearer {}", creds.api_key))));
    dev.validate().expect("generated credentials are valid");
    assert!(
        dev.dashboard_enabled(),
        "development mode turns the dashboard on"
    );
    let mut dev_off = parse(&["--dashboard=false"], &[]).expect("valid");
    dev_off
        .ensure_credentials()
        .expect("rng")
        .expect("dev mode");
    assert!(!dev_off.dashboard_enabled(), "unless it was turned off");
    let banner = creds.banner();
    assert!(banner.contains(&creds.jwt_secret) && banner.contains(&creds.demo_token));
    assert!(banner.contains("DEVELOPMENT MODE"));
    assert!(!format!("{creds:?}").contains(&creds.jwt_secret));

    let mut both = parse(&["--jwt-secret", SECRET, "--api-key", SECRET], &[]).expect("valid");
    assert!(both.ensure_credentials().expect("no rng needed").is_none());
    assert!(
        !both.dashboard_enabled(),
        "off by default outside development mode"
    );
    assert_eq!(both.jwt_secret.as_deref(), Some(SECRET));

    let mut only_secret = parse(&[], &[("TETHER_JWT_SECRET", SECRET)]).expect("valid");
    assert!(matches!(
        only_secret.ensure_credentials(),
        Err(ConfigError::MissingCredential {
            missing: "api_key",
            ..
        })
    ));
    let mut only_key = parse(&[], &[("TETHER_API_KEY", SECRET)]).expect("valid");
    assert!(matches!(
        only_key.ensure_credentials(),
        Err(ConfigError::MissingCredential {
            missing: "jwt_secret",
            ..
        })
    ));
}

#[test]
fn debug_redacts_secrets() {
    let c = parse(
        &["--jwt-secret", SECRET, "--api-key", "api-key-api-key-1"],
        &[],
    )
    .expect("valid");
    let shown = format!("{c:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains("api-key-api-key-1"),
        "{shown}"
    );
    let matches = ServeArgs::add_args(Command::new("serve"))
        .try_get_matches_from(["serve", "--jwt-secret", SECRET])
        .expect("parses");
    let args = <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches).expect("ok");
    assert!(!format!("{args:?}").contains(SECRET));
}

#[test]
fn engine_builder_forwards_given_settings_only() {
    let c = parse(
        &[
            "--shards=1",
            "--window=8",
            "--max-messages-per-user=3",
            "--overflow=reject",
        ],
        &[],
    )
    .expect("valid");
    let engine = c.engine_builder().build().expect("engine builds");
    assert_eq!(engine.config().shards(), 1);
    assert_eq!(engine.config().window(), 8);
    let limits = engine.config().user_limits();
    assert_eq!(limits.max_messages, 3);
    assert_eq!(limits.max_bytes, UserLimits::default().max_bytes);
    assert_eq!(limits.overflow, OverflowPolicy::Reject);
    drop(engine);
}

#[test]
fn validate_catches_changes_made_in_code() {
    let c = ServerConfig {
        max_connections: 0,
        ..ServerConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            setting: "max_connections",
            origin: Origin::Code,
            ..
        })
    ));
}

#[test]
fn credential_errors_name_settings() {
    assert!(setting(JWT_SECRET).is_some_and(|s| s.secret));
    assert!(setting(API_KEY).is_some_and(|s| s.secret));
}

#[test]
fn setting_names_are_spelled_at_compile_time() {
    let flag: [u8; 9] = table::respell("", "max_users", false);
    assert_eq!(&flag, b"max-users");
    let env: [u8; 16] = table::respell("TETHER_", "max_users", true);
    assert_eq!(&env, b"TETHER_MAX_USERS");
}

/// The settings table of docs/configuration.md, as the declaration renders it.
fn docs_table() -> String {
    let defaults = ServerConfig::default();
    let mut table = String::from("| setting | default | what it does |\n|---|---|---|\n");
    for s in SETTINGS {
        let default = (s.default_text)(&defaults);
        table.push_str(&format!("| `{}` | {default} | {} |\n", s.name, s.help));
    }
    table
}

#[test]
fn docs_list_every_setting_with_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let docs = std::fs::read_to_string(&path).expect("docs/configuration.md is readable");
    let table = docs_table();
    assert!(
        docs.contains(&table),
        "{} must hold the settings table as declared; replace it with:\n\n{table}",
        path.display()
    );
    for s in SETTINGS {
        assert_eq!(
            docs.matches(&format!("| `{}` |", s.name)).count(),
            1,
            "{}",
            s.name
        );
    }
}
