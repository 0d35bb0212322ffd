//! How values are written, the same in every source: each setting names a [`Syntax`] that
//! parses its text, shows its value back (in `--help`, `Debug` and errors), and tells clap
//! how the flag takes it.
//!
//! Durations and sizes use our own parsers rather than humantime and bytesize: both would
//! accept what is refused here on purpose (`5 s`, `5sec`, `1kib`, and `64KB` as 64,000, where
//! the person meant 65,536 as often as not), and ours are about 60 lines.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::server::auth;

/// How the flag of a setting takes its value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Value,
    /// A flag that may stand alone (`--dashboard` = `--dashboard=true`).
    Bool,
    /// Comma-separated; the flag may repeat and the file may give a TOML array.
    List,
}

/// The text form of one type of value.
pub(super) trait Syntax {
    type Value;
    /// The placeholder in `--help`.
    const VALUE_NAME: &'static str;
    const KIND: Kind = Kind::Value;
    const SECRET: bool = false;
    fn parse(text: &str) -> Result<Self::Value, String>;
    fn show(value: &Self::Value) -> String;
}

/// `IP:PORT`.
pub(super) struct Addr;

impl Syntax for Addr {
    type Value = SocketAddr;
    const VALUE_NAME: &'static str = "IP:PORT";
    fn parse(text: &str) -> Result<SocketAddr, String> {
        text.parse()
            .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:7700 or [::1]:7700".to_owned())
    }
    fn show(value: &SocketAddr) -> String {
        value.to_string()
    }
}

/// Any text.
pub(super) struct Text;

impl Syntax for Text {
    type Value = String;
    const VALUE_NAME: &'static str = "TEXT";
    fn parse(text: &str) -> Result<String, String> {
        Ok(text.to_owned())
    }
    fn show(value: &String) -> String {
        value.clone()
    }
}

/// Text never shown: errors say `<redacted>`, `Debug` a SHA-256 prefix to tell secrets apart.
pub(super) struct Secret;

impl Syntax for Secret {
    type Value = String;
    const VALUE_NAME: &'static str = "SECRET";
    const SECRET: bool = true;
    fn parse(text: &str) -> Result<String, String> {
        Ok(text.to_owned())
    }
    fn show(value: &String) -> String {
        format!("sha256:{}", auth::fingerprint(value))
    }
}

/// Comma-separated text; empty items are dropped.
pub(super) struct List;

impl Syntax for List {
    type Value = Vec<String>;
    const VALUE_NAME: &'static str = "LIST";
    const KIND: Kind = Kind::List;
    fn parse(text: &str) -> Result<Vec<String>, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }
    fn show(value: &Vec<String>) -> String {
        value.join(",")
    }
}

/// `true`/`false`, also `yes`/`no`, `on`/`off`, `1`/`0`.
pub(super) struct Bool;

impl Syntax for Bool {
    type Value = bool;
    const VALUE_NAME: &'static str = "BOOL";
    const KIND: Kind = Kind::Bool;
    fn parse(text: &str) -> Result<bool, String> {
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
    fn show(value: &bool) -> String {
        value.to_string()
    }
}

/// The unsigned integer types that counts and sizes are held in.
pub(super) trait Whole: Copy + fmt::Display + TryFrom<usize> {
    const MAX: Self;
    fn to_u64(self) -> u64;
}

macro_rules! whole {
    ($($t:ty),+) => {$(
        impl Whole for $t {
            const MAX: Self = <$t>::MAX;
            fn to_u64(self) -> u64 {
                self as u64
            }
        }
    )+};
}
whole!(usize, u32, u64);

fn narrow<T: Whole>(n: usize) -> Result<T, String> {
    T::try_from(n).map_err(|_| format!("must be at most {}", T::MAX))
}

/// A whole number; `_` may separate digits.
pub(super) struct Count<T = usize>(PhantomData<T>);

impl<T: Whole> Syntax for Count<T> {
    type Value = T;
    const VALUE_NAME: &'static str = "N";
    fn parse(text: &str) -> Result<T, String> {
        narrow(parse_count(text)?)
    }
    fn show(value: &T) -> String {
        value.to_string()
    }
}

/// A size in bytes: see [`parse_size`].
pub(super) struct Size<T = usize>(PhantomData<T>);

impl<T: Whole> Syntax for Size<T> {
    type Value = T;
    const VALUE_NAME: &'static str = "SIZE";
    fn parse(text: &str) -> Result<T, String> {
        narrow(parse_size(text)?)
    }
    fn show(value: &T) -> String {
        show_size(value.to_u64())
    }
}

/// A duration: see [`parse_duration`].
pub(super) struct Time;

impl Syntax for Time {
    type Value = Duration;
    const VALUE_NAME: &'static str = "DURATION";
    fn parse(text: &str) -> Result<Duration, String> {
        parse_duration(text)
    }
    fn show(value: &Duration) -> String {
        show_duration(*value)
    }
}

/// A type's own names, through its `FromStr` and `Display`.
pub(super) struct Named<T>(PhantomData<T>);

impl<T> Syntax for Named<T>
where
    T: FromStr + fmt::Display,
    T::Err: fmt::Display,
{
    type Value = T;
    const VALUE_NAME: &'static str = "NAME";
    fn parse(text: &str) -> Result<T, String> {
        text.parse().map_err(|e: T::Err| e.to_string())
    }
    fn show(value: &T) -> String {
        value.to_string()
    }
}

/// A setting that may be left unset, written as its inner syntax.
pub(super) struct Opt<S>(PhantomData<S>);

impl<S: Syntax> Syntax for Opt<S> {
    type Value = Option<S::Value>;
    const VALUE_NAME: &'static str = S::VALUE_NAME;
    const KIND: Kind = S::KIND;
    const SECRET: bool = S::SECRET;
    fn parse(text: &str) -> Result<Self::Value, String> {
        S::parse(text).map(Some)
    }
    fn show(value: &Self::Value) -> String {
        value.as_ref().map_or_else(|| "none".to_owned(), S::show)
    }
}

const UNITS_MS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a duration: one or more `<integer><unit>` with units `ms`, `s`, `m`, `h`, `d`, e.g.
/// `500ms`, `5s`, `1m30s`. A bare number is refused: the unit is never guessed.
///
/// ```
/// use std::time::Duration;
/// use tether::server::config::parse_duration;
///
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("30").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration like 500ms, 5s, 2m, 1h, 1d or 1m30s";
    let text = text.trim();
    if text.is_empty() {
        return Err(HINT.into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(HINT.into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| HINT.to_owned())?;
        let unit = &rest[digits..digits + unit_len];
        let Some(&(_, unit_ms)) = UNITS_MS.iter().find(|(u, _)| *u == unit) else {
            return Err(HINT.into());
        };
        let part = n
            .checked_mul(unit_ms)
            .map(Duration::from_millis)
            .ok_or_else(|| "duration is too large".to_owned())?;
        total = total
            .checked_add(part)
            .ok_or_else(|| "duration is too large".to_owned())?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// In the largest unit that divides it (`90s`, `1m`), as [`parse_duration`] reads it back.
fn show_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (unit, size) = UNITS_MS
        .iter()
        .find(|(_, size)| ms % size == 0 && ms > 0)
        .copied()
        .unwrap_or(("ms", 1));
    format!("{}{unit}", ms / size)
}

const UNITS_BYTES: [(&str, usize); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("", 1),
];

/// Parses a size in bytes: an integer, optionally with a binary suffix `KiB`, `MiB` or `GiB`
/// (`64KiB` = 65536). `_` may separate digits.
///
/// ```
/// use tether::server::config::parse_size;
///
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("1_000"), Ok(1000));
/// assert!(parse_size("64KB").is_err()); // KB or KiB? Say which.
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    const HINT: &str = "expected a size like 65536, 64KiB, 1MiB or 1GiB";
    let text = text.trim();
    let digits = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'_')
        .count();
    let (number, suffix) = text.split_at(digits);
    let Some(&(_, multiplier)) = UNITS_BYTES.iter().find(|(u, _)| *u == suffix.trim()) else {
        return Err(HINT.into());
    };
    let n = parse_count(number).map_err(|_| HINT.to_owned())?;
    n.checked_mul(multiplier)
        .ok_or_else(|| "size is too large".to_owned())
}

/// With the largest binary suffix that divides it (`64KiB`), as [`parse_size`] reads it back.
fn show_size(n: u64) -> String {
    let (unit, size) = UNITS_BYTES
        .iter()
        .find(|(_, size)| n % (*size as u64) == 0 && n > 0)
        .copied()
        .unwrap_or(("", 1));
    format!("{}{unit}", n / size as u64)
}

fn parse_count(text: &str) -> Result<usize, String> {
    let digits: String = text.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number".into());
    }
    digits.parse().map_err(|_| "number is too large".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_show_as_they_parse() {
        for text in ["500ms", "5s", "90s", "1m", "1h", "2d"] {
            assert_eq!(parse_duration(text).map(show_duration).as_deref(), Ok(text));
        }
        assert_eq!(show_duration(Duration::from_secs(60)), "1m");
        assert_eq!(show_duration(Duration::ZERO), "0ms");
        for text in ["0", "1000", "64KiB", "1MiB", "3GiB"] {
            let n = parse_size(text).map(|n| n as u64);
            assert_eq!(n.map(show_size).as_deref(), Ok(text));
        }
    }

    #[test]
    fn narrower_integers_refuse_what_does_not_fit() {
        assert_eq!(Count::<u32>::parse("4294967295"), Ok(u32::MAX));
        assert!(Count::<u32>::parse("4294967296").is_err());
        assert_eq!(Size::<u64>::parse("1GiB"), Ok(1 << 30));
    }
}
