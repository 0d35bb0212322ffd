//! The machinery of the table of settings: [`settings!`] turns one declaration per setting
//! into the [`ServerConfig`](super::ServerConfig) struct, its `Default`, and a `Setting` row
//! that everything else (flags, `--help`, variables, file keys, parsing, checks, `Debug`, the
//! engine builder, the docs table) reads.

/// `name` respelled at compile time, as a flag (`max-frame-bytes`) or, with a prefix and in
/// upper case, a variable (`TETHER_MAX_FRAME_BYTES`): clap and [`Origin::Flag`](super::Origin)
/// want `&'static str`, and a name written once cannot be misspelled in its other forms.
pub(super) const fn respell<const N: usize>(prefix: &str, name: &str, upper: bool) -> [u8; N] {
    let (prefix, name) = (prefix.as_bytes(), name.as_bytes());
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < prefix.len() {
            prefix[i]
        } else if upper {
            name[i - prefix.len()].to_ascii_uppercase()
        } else if name[i - prefix.len()] == b'_' {
            b'-'
        } else {
            name[i - prefix.len()]
        };
        i += 1;
    }
    out
}

/// Evaluated at compile time only, so a non-ASCII name fails the build, never a run.
pub(super) const fn ascii(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => panic!("setting names are ASCII"),
    }
}

/// The given tokens, or the fallback when none are given: how an optional clause of a
/// declaration becomes a value.
macro_rules! given_or {
    ($fallback:expr;) => {
        $fallback
    };
    ($fallback:expr; $($given:tt)+) => {
        $($given)+
    };
}

/// Declares every setting once. Each entry is the setting's doc comment (its help text),
/// `name: field type = default, syntax` and optional clauses:
///
/// - `value "NAME"`: the placeholder in `--help` (default: the syntax's);
/// - `shown expr`: what `--help` and the docs give as the default (default: the default value
///   in the setting's syntax);
/// - `follows other`: when no source gives it, it takes `other`'s value;
/// - `check f`: `f(&field)` refuses a value out of range with the reason;
/// - `engine method` / `user_limit field`: the value, when given, is handed to
///   `EngineBuilder::method` or set on the engine's `UserLimits::field`.
macro_rules! settings {
    (
        $(#[$struct_meta:meta])*
        pub struct $config:ident;
        $(
            $heading:literal {
                $(
                    $(#[doc = $doc:literal])+
                    $name:ident: $ty:ty = $default:expr, $syntax:ty
                    $(, value $value_name:literal)?
                    $(, shown $shown:expr)?
                    $(, follows $follows:ident)?
                    $(, check $check:expr)?
                    $(, engine $method:ident)?
                    $(, user_limit $limit:ident)?
                    ;
                )+
            }
        )+
    ) => {
        $(#[$struct_meta])*
        #[derive(Clone, PartialEq)]
        #[non_exhaustive]
        pub struct $config {
            $($(
                $(#[doc = $doc])+
                pub $name: $ty,
            )+)+
        }

        impl Default for $config {
            fn default() -> Self {
                Self { $($($name: $default,)+)+ }
            }
        }

        /// Every setting, in the order of `--help` and the docs.
        pub(super) static SETTINGS: &[Setting] = &[$($(Setting {
            name: stringify!($name),
            flag: {
                const FLAG: [u8; stringify!($name).len()] =
                    respell("", stringify!($name), false);
                ascii(&FLAG)
            },
            env: {
                const ENV: [u8; "TETHER_".len() + stringify!($name).len()] =
                    respell("TETHER_", stringify!($name), true);
                ascii(&ENV)
            },
            heading: $heading,
            help: concat!($($doc),+).trim_ascii(),
            value_name: given_or!(<$syntax as Syntax>::VALUE_NAME; $($value_name)?),
            kind: <$syntax as Syntax>::KIND,
            secret: <$syntax as Syntax>::SECRET,
            default_text: given_or!(
                |c| <$syntax as Syntax>::show(&c.$name);
                $(|_| stringify!($follows).to_owned())?
                $(|_| ($shown).to_string())?
            ),
            set: |c, text| {
                c.$name = <$syntax as Syntax>::parse(text)?;
                Ok(())
            },
            show: |c| <$syntax as Syntax>::show(&c.$name),
            check: given_or!(|_| Ok(()); $(|c| check::apply($check, &c.$name))?),
            follow: given_or!(None; $(Some(|c| c.$name = c.$follows.clone()))?),
            forward: given_or!(
                None;
                $(Some(|c, to| {
                    if let Some(value) = c.$name.clone() {
                        to.builder = std::mem::take(&mut to.builder).$method(value);
                    }
                }))?
                $(Some(|c, to| {
                    if let Some(value) = c.$name.clone() {
                        to.limits().$limit = value;
                    }
                }))?
            ),
        },)+)+];
    };
}

pub(super) use {given_or, settings};
