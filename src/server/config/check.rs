//! The limits a single setting's value must keep, named in its declaration (`check f`).
//! Checks that compare settings are in `resolve`.

use std::time::Duration;

use super::syntax::Whole;
use super::MAX_BUFFER_BYTES;

/// Runs `check` on a field; a function rather than a call so that a closure's argument type
/// is inferred from the field.
pub(super) fn apply<T>(check: impl Fn(&T) -> Result<(), String>, value: &T) -> Result<(), String> {
    check(value)
}

/// A limit: zero would refuse everything (or, for the engine's, fail its build later with a
/// less helpful message).
pub(super) trait Amount {
    /// `None` for an engine setting left to the engine.
    fn amount(&self) -> Option<u64>;
}

impl<T: Whole> Amount for T {
    fn amount(&self) -> Option<u64> {
        Some(self.to_u64())
    }
}

impl<T: Whole> Amount for Option<T> {
    fn amount(&self) -> Option<u64> {
        self.map(Whole::to_u64)
    }
}

pub(super) fn positive(value: &impl Amount) -> Result<(), String> {
    match value.amount() {
        Some(0) => Err("must be at least 1".into()),
        _ => Ok(()),
    }
}

/// Buffers sized from these are allocated per connection, and sums of them must not wrap: a
/// bound far above any sane value keeps the arithmetic honest.
pub(super) fn buffer_size(value: &usize) -> Result<(), String> {
    positive(value)?;
    if *value > MAX_BUFFER_BYTES {
        return Err("must be at most 1GiB".into());
    }
    Ok(())
}

pub(super) fn at_least_1ms(value: &Duration) -> Result<(), String> {
    if *value < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(())
}

/// A secret or key of at least `min` bytes; `why` says where the minimum comes from, if
/// anywhere but here.
pub(super) fn min_bytes(
    min: usize,
    why: &'static str,
) -> impl Fn(&Option<String>) -> Result<(), String> {
    move |value| match value {
        Some(text) if text.len() < min => Err(format!(
            "is {} bytes; at least {min} are required{why}",
            text.len()
        )),
        _ => Ok(()),
    }
}

/// Browsers send `Origin` as `scheme://host[:port]`, nothing more; an entry with a path or a
/// trailing slash would never match, so it is refused here rather than silently.
pub(super) fn origins(value: &[String]) -> Result<(), String> {
    for origin in value {
        let Some((scheme, host)) = origin.split_once("://") else {
            return Err(format!("{origin:?} is not scheme://host[:port]"));
        };
        if scheme.is_empty() || host.is_empty() || host.contains('/') {
            return Err(format!(
                "{origin:?} is not scheme://host[:port] (no path, no trailing slash)"
            ));
        }
    }
    Ok(())
}

pub(super) fn log_filter(value: &str) -> Result<(), String> {
    value
        .parse::<tracing_subscriber::filter::Targets>()
        .map(drop)
        .map_err(|e| e.to_string())
}
