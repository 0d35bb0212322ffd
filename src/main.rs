//! The `tether` binary: `tether serve` runs the server, `tether token` issues a client token.
//!
//! Every failure ends as one line on stderr and a non-zero exit code; clap reports usage
//! errors itself (exit code 2).
#![forbid(unsafe_code)]

use std::error::Error;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use tether::server::auth;
use tether::server::config::{self, LogFormat, ServeArgs, ServerConfig};
use tether::UserId;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

// mimalloc keeps per-thread free lists, which suits many tasks allocating and freeing frame
// buffers on a few worker threads better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

/// Keeps a user's messages until the user acknowledges them.
#[derive(Parser)]
#[command(name = "tether", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server. Settings come from flags, then TETHER_* variables, then the --config
    /// file, then the defaults shown.
    Serve(ServeArgs),
    /// Print a client token (HS256 JWT) for a user. One token serves every device of the user:
    /// a client names its device in its connect frame ({"type":"connect","token":..,
    /// "device":"phone"}); without one it is the user's default device.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user the token authenticates as (its `sub` claim).
    #[arg(long, value_name = "ID")]
    user: String,
    /// The server's JWT secret [env: TETHER_JWT_SECRET]. Prefer the variable: flags show in
    /// the process list.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// How long the token is valid (e.g. 15m, 1h, 7d), or `never` for no expiry.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    ttl: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(&args),
        Cmd::Token(args) => token(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), BoxError> {
    let mut config = ServerConfig::load(args, std::env::vars_os())?;
    init_tracing(&config)?;
    for name in config::unknown_env_vars(std::env::vars_os()) {
        tracing::warn!(variable = %name, "ignoring an environment variable that is no tether setting");
    }
    if let Some(dev) = config.ensure_credentials()? {
        tracing::warn!(
            "development mode: no jwt_secret or api_key configured; generated throwaway \
             credentials (printed on stdout) that last until this process exits"
        );
        println!("{}", dev.banner());
    }
    tracing::debug!(?config, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tether-io")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(tether::server::run(config))?;
    Ok(())
}

fn init_tracing(config: &ServerConfig) -> Result<(), BoxError> {
    // Already validated, so this only fails if validation and parsing disagree.
    let filter: Targets = config
        .log
        .parse()
        .map_err(|e| format!("invalid log filter {:?}: {e}", config.log))?;
    // Logs go to stderr so that stdout carries only what a person copies (the dev-mode
    // credentials).
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.log_format {
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}").into())
}

fn token(args: &TokenArgs) -> Result<(), BoxError> {
    let secret = match &args.secret {
        Some(secret) => secret.clone(),
        None => match std::env::var("TETHER_JWT_SECRET") {
            Ok(secret) => secret,
            Err(std::env::VarError::NotPresent) => {
                return Err("no secret: pass --secret or set TETHER_JWT_SECRET".into())
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err("TETHER_JWT_SECRET is not valid UTF-8".into())
            }
        },
    };
    let ttl = match args.ttl.trim() {
        "never" => None,
        text => match config::parse_duration(text) {
            Ok(ttl) if ttl.is_zero() => {
                return Err("invalid --ttl: the token would be born expired".into())
            }
            Ok(ttl) => Some(ttl),
            Err(e) => return Err(format!("invalid --ttl: {e}").into()),
        },
    };
    let user = UserId::new(&args.user).map_err(|e| format!("invalid --user: {e}"))?;
    let token = auth::issue_token(&secret, &user, ttl, SystemTime::now())?;
    println!("{token}");
    Ok(())
}

/// The error and its causes on one line, skipping a cause whose text the error already shows.
fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}
