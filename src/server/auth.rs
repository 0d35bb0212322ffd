//! Who may talk to the server: HS256 JSON Web Tokens for WebSocket clients, an API key for the
//! HTTP publish API, and the random credentials of development mode.
//!
//! # Why HS256 by hand on RustCrypto, and not the `jsonwebtoken` crate
//!
//! Measured on the project machine (2 cores, rustc 1.95, debug profile), each in a fresh
//! scratch crate with its own target directory; build times vary with what else the machine
//! compiles, so both a quiet and a busy run are given:
//!
//! | choice | `cargo tree -e normal` lines | clean `cargo build` |
//! |---|---|---|
//! | `jsonwebtoken` 11.1, `default-features = false, features = ["rust_crypto"]`, + serde | 157 | 25.5 s quiet, 38-49 s busy |
//! | `hmac` 0.13 + `sha2` 0.11 + `base64`, + serde | 26 | 6.7 s quiet |
//! | `hmac` 0.13 + `sha2` 0.11 + `data-encoding` (what we use) | 16 | 4.4-6.5 s busy |
//!
//! Since version 10 `jsonwebtoken` requires a crypto backend: `rust_crypto` brings rsa, p256,
//! p384, ed25519-dalek, num-bigint-dig and a second `sha2`/`digest` (0.10, beside the 0.11 the
//! crate already uses); `aws_lc_rs` is a C and assembly build. All of it would be dead code:
//! the server accepts one algorithm. In `tether` the three crates add 15 lines to
//! `cargo tree -e normal -p tether --features server` (34 before the server's dependencies).
//! `data-encoding` does the base64url because tungstenite already builds it for its handshake.
//!
//! What a JWT library would have given us is exactly where JWT libraries have had their
//! notorious bugs, so each property is deliberate here and has a test:
//! - only `HS256`: the header's `alg` is checked before any key is used, so `none`, `HS384`,
//!   `RS256` (the "algorithm confusion" attack) and anything else are refused, and the MAC is
//!   always HMAC-SHA256 whatever the header says;
//! - the signature is checked before the payload is parsed, in constant time (`hmac`'s
//!   `verify_slice`), over the header and payload exactly as received;
//! - strict base64url (no padding, no stray trailing bits), exactly three segments, JSON
//!   objects only, duplicate claims refused, a `crit` header refused (we implement no
//!   extension), tokens over 8 KiB refused before any work;
//! - `sub` required and non-empty; `exp` and `nbf` enforced when present, with no leeway
//!   unless [`JwtVerifier::with_leeway`] asks for one;
//! - secrets shorter than 32 bytes refused (RFC 7518 section 3.2: an HS256 key must be at
//!   least as long as the hash output).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::UserId;

type HmacSha256 = Hmac<Sha256>;

/// Longest token [`JwtVerifier::verify`] looks at, in bytes. Real tokens are a few hundred
/// bytes; the cap bounds the work an unauthenticated client can cause.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Shortest JWT secret accepted, in bytes (RFC 7518 section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// `base64url({"alg":"HS256","typ":"JWT"})`, the header of every token we issue.
const ISSUED_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Why a token was refused. Every variant means "unauthenticated"; they differ so that logs
/// and tests can tell the cases apart. None of them carries attacker-chosen text except
/// [`AlgorithmNotAllowed`](Self::AlgorithmNotAllowed), whose `alg` is truncated to 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a well-formed JWS compact token: wrong number of segments, bad base64url, header
    /// or payload not a JSON object, a claim of the wrong type, a duplicate claim.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than HS256 (including `none`).
    #[error("token algorithm {alg:?} is not allowed; only HS256 is")]
    AlgorithmNotAllowed {
        /// The header's `alg`, cut to 32 bytes.
        alg: String,
    },
    /// The header lists critical extensions (`crit`), none of which this server implements
    /// (RFC 7515 section 4.1.11 says such a token must be refused).
    #[error("token header has critical extensions (crit), which are not supported")]
    CriticalHeader,
    /// The signature is not HMAC-SHA256 of the token under the server's secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// `sub` is absent, null or empty.
    #[error("token has no subject (sub)")]
    MissingSubject,
}

/// A JWT secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the JWT secret is {len} bytes; HS256 needs at least {min} (RFC 7518 section 3.2)")]
pub struct SecretTooShort {
    /// Its length in bytes.
    pub len: usize,
    /// The minimum.
    pub min: usize,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// The `sub` claim: the user this connection acts as.
    pub user: UserId,
    /// The `exp` claim in seconds since the Unix epoch, rounded up (a session that ends at
    /// this time never ends before the token expired), if any.
    pub expires_at: Option<u64>,
    /// The `nbf` claim in seconds since the Unix epoch, if any.
    pub not_before: Option<u64>,
    /// The `iat` claim in seconds since the Unix epoch, if any. Informational only.
    pub issued_at: Option<u64>,
}

/// Checks and issues HS256 tokens under one secret.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tether::server::auth::{AuthError, JwtVerifier};
/// use tether::UserId;
///
/// let jwt = JwtVerifier::new(b"a secret of at least thirty-two bytes!!")?;
/// let alice = UserId::new("alice")?;
/// let now = SystemTime::now();
///
/// let token = jwt.issue(&alice, Some(Duration::from_secs(3600)), now);
/// assert_eq!(jwt.verify(&token, now)?.user, alice);
///
/// // An hour and a second later it has expired.
/// let later = now + Duration::from_secs(3601);
/// assert_eq!(jwt.verify(&token, later), Err(AuthError::Expired));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct JwtVerifier {
    // Keyed once: cloning it per token skips re-hashing the secret into the HMAC pads.
    mac: HmacSha256,
    leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("secret", &"<redacted>")
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for tokens signed with `secret` (its bytes are the HMAC key, as in every
    /// JWT library; it is not base64-decoded). Refuses secrets shorter than
    /// [`MIN_SECRET_BYTES`]. No leeway on `exp` and `nbf`.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SecretTooShort> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretTooShort {
                len: secret.len(),
                min: MIN_SECRET_BYTES,
            });
        }
        // HMAC takes keys of any length, so this cannot fail; the branch keeps a panic out.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| SecretTooShort {
            len: secret.len(),
            min: MIN_SECRET_BYTES,
        })?;
        Ok(Self {
            mac,
            leeway: Duration::ZERO,
        })
    }

    /// Tolerates clocks that differ by up to `leeway`: a token counts as expired only once
    /// `exp + leeway` has passed, and as valid from `nbf - leeway`. Default zero: the server
    /// issues and checks with the same clock, and a client's clock does not matter.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Checks `token` at time `now` and returns its claims.
    ///
    /// The checks run cheapest and least trusting first: size, shape, algorithm, signature;
    /// only a token whose signature verifies has its payload parsed.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge {
                len: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        let mut parts = token.splitn(4, '.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "a token has three dot-separated parts",
            ));
        };

        let header = decode_segment(header_b64, "header is not base64url")?;
        let header: Header<'_> = parse_object(&header, "header is not a JSON object")?;
        match header.alg.as_deref() {
            Some("HS256") => {}
            Some(other) => {
                return Err(AuthError::AlgorithmNotAllowed {
                    alg: truncate(other, 32).to_owned(),
                })
            }
            None => return Err(AuthError::Malformed("header has no alg")),
        }
        if header.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }

        let signature = decode_segment(signature_b64, "signature is not base64url")?;
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        let mut mac = self.mac.clone();
        mac.update(&token.as_bytes()[..signed_len]);
        // Constant time, and also refuses a signature of the wrong length.
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;

        let payload = decode_segment(payload_b64, "payload is not base64url")?;
        let raw: RawClaims = parse_object(&payload, "payload is not a JSON object of claims")?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        if let Some(exp) = raw.exp {
            // RFC 7519 4.1.4: the current time must be *before* exp.
            if now >= exp + leeway {
                return Err(AuthError::Expired);
            }
        }
        if let Some(nbf) = raw.nbf {
            if now < nbf - leeway {
                return Err(AuthError::NotYetValid);
            }
        }
        let user = match raw.sub {
            Some(sub) if !sub.is_empty() => {
                UserId::new(sub).map_err(|_| AuthError::MissingSubject)?
            }
            _ => return Err(AuthError::MissingSubject),
        };
        Ok(Claims {
            user,
            expires_at: raw.exp.map(|exp| unix_secs(exp.ceil())),
            not_before: raw.nbf.map(unix_secs),
            issued_at: raw.iat.map(unix_secs),
        })
    }

    /// A token for `user`, issued at `now` (`iat`), expiring after `ttl` (`exp`; none if
    /// `ttl` is `None`). Its header is `{"alg":"HS256","typ":"JWT"}`.
    pub fn issue(&self, user: &UserId, ttl: Option<Duration>, now: SystemTime) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let claims = IssuedClaims {
            sub: user.as_str(),
            iat: iat.as_secs(),
            exp: ttl.map(|ttl| iat.saturating_add(ttl).as_secs()),
        };
        // A struct of a string and integers always serializes; the fallback is never taken.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let mut token = String::with_capacity(ISSUED_HEADER.len() + 2 + payload.len() * 2);
        token.push_str(ISSUED_HEADER);
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&payload));
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&signature));
        token
    }
}

/// A token for `user` signed with `secret`; see [`JwtVerifier::issue`]. Used by
/// `tether token` and development mode.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tether::server::auth::{issue_token, JwtVerifier};
/// use tether::UserId;
///
/// let secret = "0123456789abcdef0123456789abcdef";
/// let bob = UserId::new("bob")?;
/// let token = issue_token(secret, &bob, Some(Duration::from_secs(60)), SystemTime::now())?;
/// let claims = JwtVerifier::new(secret)?.verify(&token, SystemTime::now())?;
/// assert_eq!(claims.user.as_str(), "bob");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn issue_token(
    secret: impl AsRef<[u8]>,
    user: &UserId,
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<String, SecretTooShort> {
    Ok(JwtVerifier::new(secret)?.issue(user, ttl, now))
}

/// The API key of the HTTP publish API. Only a SHA-256 digest of the key is kept.
///
/// ```
/// use tether::server::auth::ApiKey;
///
/// let key = ApiKey::new("k3y-of-the-publisher");
/// assert!(key.check(Some("Bearer k3y-of-the-publisher")));
/// assert!(!key.check(Some("Bearer guess")));
/// assert!(!key.check(None));
/// ```
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
    empty: bool,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// Holds `key`. An empty key matches nothing.
    pub fn new(key: &str) -> Self {
        Self {
            digest: sha256(key.as_bytes()),
            empty: key.is_empty(),
        }
    }

    /// Whether an `Authorization` header value presents this key: `Bearer <key>`, the scheme
    /// matched without regard to case (RFC 9110 section 11.1), one space, then exactly the
    /// key. `None` (no header), other schemes (`Basic ...`) and anything else are refused.
    ///
    /// The comparison takes the same time whatever the presented value: both sides are
    /// SHA-256 digests, compared without an early exit. Hashing first also hides the key's
    /// length, and the digest of a guess says nothing useful about the key.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, presented)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") || presented.is_empty() || self.empty {
            return false;
        }
        constant_time_eq(&sha256(presented.as_bytes()), &self.digest)
    }
}

/// 32 bytes from the operating system's CSPRNG, as 43 characters of unpadded base64url: a
/// JWT secret or API key for development mode (256 bits, and at least
/// [`MIN_SECRET_BYTES`] long as a string).
///
/// ```
/// let secret = tether::server::auth::generate_secret()?;
/// assert_eq!(secret.len(), 43);
/// assert_ne!(secret, tether::server::auth::generate_secret()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn generate_secret() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(BASE64URL_NOPAD.encode(&bytes))
}

// The settings' `Debug` output redacts secrets with it; it lives with the protocol so that the
// client can use it without the server.
pub use crate::protocol::fingerprint;

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Option<std::borrow::Cow<'a, str>>,
    crit: Option<serde::de::IgnoredAny>,
}

// Unknown claims are ignored; known ones must have the right type, and a repeated claim is
// an error (serde's derive refuses duplicate fields), so `{"sub":"a","sub":"b"}` cannot mean
// different things to different parsers.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

fn decode_segment(segment: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    BASE64URL_NOPAD
        .decode(segment.as_bytes())
        .map_err(|_| AuthError::Malformed(what))
}

fn parse_object<'a, T: Deserialize<'a>>(
    json: &'a [u8],
    what: &'static str,
) -> Result<T, AuthError> {
    // serde's derive would also accept a JSON array for a struct; a JOSE header and a claims
    // set are objects (RFC 7515 4, RFC 7519 4), so anything else is refused up front.
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(AuthError::Malformed(what));
    }
    serde_json::from_slice(json).map_err(|_| AuthError::Malformed(what))
}

fn unix_secs(t: f64) -> u64 {
    // `as` saturates: negative times become 0, huge ones u64::MAX.
    t as u64
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-test-secret-test-secret!";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(SECRET).expect("secret is long enough")
    }

    fn b64(json: &str) -> String {
        BASE64URL_NOPAD.encode(json.as_bytes())
    }

    /// A token with any header and payload, correctly signed with SECRET.
    fn signed(header: &str, payload: &str) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(payload));
        let mut mac = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(signing_input.as_bytes());
        let sig = BASE64URL_NOPAD.encode(&mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn alice() -> UserId {
        UserId::new("alice").expect("non-empty")
    }

    #[test]
    fn valid_token_round_trips() {
        let token = verifier().issue(&alice(), Some(Duration::from_secs(60)), at(1000));
        let claims = verifier().verify(&token, at(1030)).expect("valid");
        assert_eq!(claims.user, alice());
        assert_eq!(claims.issued_at, Some(1000));
        assert_eq!(claims.expires_at, Some(1060));
        assert_eq!(claims.not_before, None);
    }

    /// RFC 7515 appendix A.1: an HS256 token made by another implementation. It has no
    /// `sub`, so reaching `MissingSubject` (rather than `BadSignature`) proves the signature
    /// verified.
    #[test]
    fn rfc7515_example_signature_verifies() {
        let key = BASE64URL_NOPAD
            .decode(
                b"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
            )
            .expect("the RFC's key");
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
                     .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
                     .dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let rfc = JwtVerifier::new(&key).expect("64-byte key");
        assert_eq!(
            rfc.verify(token, at(1_300_819_379)),
            Err(AuthError::MissingSubject)
        );
        assert_eq!(
            rfc.verify(token, at(1_300_819_380)),
            Err(AuthError::Expired)
        );
        let tampered = token.replace("dBjftJeZ4", "dBjftJeZ5");
        assert_eq!(rfc.verify(&tampered, at(0)), Err(AuthError::BadSignature));
    }

    #[test]
    fn issued_header_constant_matches_its_json() {
        assert_eq!(ISSUED_HEADER, b64(HS256));
    }

    #[test]
    fn token_without_exp_never_expires() {
        let token = verifier().issue(&alice(), None, at(1000));
        assert!(verifier().verify(&token, at(u32::MAX as u64)).is_ok());
        // Hand-crafted, no iat either.
        let token = signed(HS256, r#"{"sub":"alice"}"#);
        assert!(verifier().verify(&token, at(5)).is_ok());
    }

    #[test]
    fn bad_signature_is_refused() {
        let token = JwtVerifier::new("another-secret-another-secret-another")
            .expect("long enough")
            .issue(&alice(), None, at(0));
        assert_eq!(
            verifier().verify(&token, at(0)),
            Err(AuthError::BadSignature)
        );
        // A signature cut short, and one that is empty.
        let good = verifier().issue(&alice(), None, at(0));
        let (head, sig) = good.rsplit_once('.').expect("three parts");
        let short = format!("{head}.{}", &sig[..8]);
        assert_eq!(
            verifier().verify(&short, at(0)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verifier().verify(&format!("{head}."), at(0)),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let good = verifier().issue(&alice(), None, at(0));
        let sig = good.rsplit('.').next().expect("three parts");
        let forged = format!("{}.{}.{sig}", b64(HS256), b64(r#"{"sub":"admin","iat":0}"#));
        assert_eq!(
            verifier().verify(&forged, at(0)),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn expired_is_refused_at_exp_exactly_and_after() {
        let token = verifier().issue(&alice(), Some(Duration::from_secs(10)), at(100));
        assert!(verifier().verify(&token, at(109)).is_ok());
        assert_eq!(verifier().verify(&token, at(110)), Err(AuthError::Expired));
        assert_eq!(verifier().verify(&token, at(5000)), Err(AuthError::Expired));
    }

    #[test]
    fn leeway_extends_exp_and_nbf() {
        let lenient = verifier().with_leeway(Duration::from_secs(5));
        let token = signed(HS256, r#"{"sub":"alice","exp":100,"nbf":50}"#);
        assert!(lenient.verify(&token, at(104)).is_ok());
        assert_eq!(lenient.verify(&token, at(105)), Err(AuthError::Expired));
        assert!(lenient.verify(&token, at(45)).is_ok());
        assert_eq!(lenient.verify(&token, at(44)), Err(AuthError::NotYetValid));
    }

    #[test]
    fn not_before_is_honoured() {
        let token = signed(HS256, r#"{"sub":"alice","nbf":200}"#);
        assert_eq!(
            verifier().verify(&token, at(199)),
            Err(AuthError::NotYetValid)
        );
        assert!(verifier().verify(&token, at(200)).is_ok());
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let token = signed(HS256, r#"{"sub":"alice","exp":100.5}"#);
        let claims = verifier()
            .verify(&token, at(100))
            .expect("valid until 100.5");
        assert_eq!(
            claims.expires_at,
            Some(101),
            "rounded up: a session never ends early"
        );
        assert_eq!(verifier().verify(&token, at(101)), Err(AuthError::Expired));
    }

    #[test]
    fn alg_none_is_refused() {
        // The classic: alg none, no signature.
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice"}"#)
        );
        assert_eq!(
            verifier().verify(&token, at(0)),
            Err(AuthError::AlgorithmNotAllowed { alg: "none".into() })
        );
        // Even when a valid HS256 signature is attached.
        let token = signed(r#"{"alg":"none"}"#, r#"{"sub":"alice"}"#);
        assert!(matches!(
            verifier().verify(&token, at(0)),
            Err(AuthError::AlgorithmNotAllowed { .. })
        ));
    }

    #[test]
    fn other_algorithms_are_refused_even_when_correctly_signed() {
        for alg in ["HS384", "HS512", "RS256", "ES256", "hs256", "NONE", ""] {
            let token = signed(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"sub":"alice"}"#);
            assert_eq!(
                verifier().verify(&token, at(0)),
                Err(AuthError::AlgorithmNotAllowed { alg: alg.into() }),
                "{alg}"
            );
        }
    }

    #[test]
    fn long_alg_is_cut_in_the_error() {
        let alg = "é".repeat(40);
        let token = signed(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"sub":"alice"}"#);
        match verifier().verify(&token, at(0)) {
            Err(AuthError::AlgorithmNotAllowed { alg }) => assert!(alg.len() <= 32),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_without_alg_or_with_crit_is_refused() {
        let token = signed(r#"{"typ":"JWT"}"#, r#"{"sub":"alice"}"#);
        assert!(matches!(
            verifier().verify(&token, at(0)),
            Err(AuthError::Malformed(_))
        ));
        let token = signed(r#"{"alg":"HS256","crit":["exp"]}"#, r#"{"sub":"alice"}"#);
        assert_eq!(
            verifier().verify(&token, at(0)),
            Err(AuthError::CriticalHeader)
        );
    }

    #[test]
    fn missing_or_empty_sub_is_refused() {
        for payload in [
            r#"{"exp":1000}"#,
            r#"{"sub":""}"#,
            r#"{"sub":null}"#,
            r#"{}"#,
        ] {
            let token = signed(HS256, payload);
            assert_eq!(
                verifier().verify(&token, at(0)),
                Err(AuthError::MissingSubject),
                "{payload}"
            );
        }
    }

    #[test]
    fn wrongly_typed_or_duplicate_claims_are_malformed() {
        for payload in [
            r#"{"sub":42}"#,
            r#"{"sub":"alice","exp":"tomorrow"}"#,
            r#"{"sub":"alice","sub":"admin"}"#,
            r#"["alice",null,null,null]"#,
            r#""alice""#,
            "not json",
        ] {
            let token = signed(HS256, payload);
            assert!(
                matches!(
                    verifier().verify(&token, at(0)),
                    Err(AuthError::Malformed(_))
                ),
                "{payload}"
            );
        }
        let token = signed(r#"{"alg":"HS256","alg":"HS256"}"#, r#"{"sub":"a"}"#);
        assert!(matches!(
            verifier().verify(&token, at(0)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let good = verifier().issue(&alice(), None, at(0));
        let padded = format!("{}=", good);
        let cases = [
            "",
            "garbage",
            "a.b",
            "a.b.c.d",
            "!!!.###.$$$",
            "...",
            &padded,
        ];
        for token in cases {
            assert!(
                matches!(
                    verifier().verify(token, at(0)),
                    Err(AuthError::Malformed(_))
                ),
                "{token:?}"
            );
        }
        // Four segments where the first three are a valid token.
        let four = format!("{good}.extra");
        assert!(matches!(
            verifier().verify(&four, at(0)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_token_is_refused_before_parsing() {
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verifier().verify(&big, at(0)),
            Err(AuthError::TooLarge {
                len: MAX_TOKEN_BYTES + 1,
                max: MAX_TOKEN_BYTES
            })
        );
        // A correctly signed token just over the cap is refused too.
        let padding = "x".repeat(MAX_TOKEN_BYTES);
        let token = signed(HS256, &format!(r#"{{"sub":"alice","pad":"{padding}"}}"#));
        assert!(matches!(
            verifier().verify(&token, at(0)),
            Err(AuthError::TooLarge { .. })
        ));
    }

    #[test]
    fn short_secret_is_refused() {
        assert_eq!(
            JwtVerifier::new("short").map(|_| ()),
            Err(SecretTooShort { len: 5, min: 32 })
        );
        assert!(issue_token("short", &alice(), None, at(0)).is_err());
        assert!(JwtVerifier::new([0u8; 32]).is_ok());
    }

    #[test]
    fn debug_does_not_show_secrets() {
        let shown = format!("{:?} {:?}", verifier(), ApiKey::new("hunter2-hunter2"));
        assert!(
            !shown.contains(SECRET) && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn api_key_right_key_is_accepted() {
        let key = ApiKey::new("s3cret-key");
        assert!(key.check(Some("Bearer s3cret-key")));
        assert!(key.check(Some("bearer s3cret-key")));
    }

    #[test]
    fn api_key_wrong_missing_or_other_scheme_is_refused() {
        let key = ApiKey::new("s3cret-key");
        for header in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer s3cret-kez"),
            Some("Bearer s3cret-key "),
            Some("Bearer  s3cret-key"),
            Some("s3cret-key"),
            Some("Basic s3cret-key"),
            Some("Basic czNjcmV0LWtleTo="),
            Some("Token s3cret-key"),
        ] {
            assert!(!key.check(header), "{header:?}");
        }
    }

    #[test]
    fn api_key_of_different_length_is_refused() {
        let key = ApiKey::new("s3cret-key");
        assert!(!key.check(Some("Bearer s3cret")));
        assert!(!key.check(Some("Bearer s3cret-key-and-more")));
        assert!(!key.check(Some(&format!("Bearer {}", "k".repeat(10_000)))));
    }

    #[test]
    fn empty_api_key_matches_nothing() {
        let key = ApiKey::new("");
        assert!(!key.check(Some("Bearer ")));
        assert!(!key.check(Some("Bearer x")));
    }

    #[test]
    fn generated_secrets_are_long_distinct_and_usable() {
        let a = generate_secret().expect("OS RNG");
        let b = generate_secret().expect("OS RNG");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let token = issue_token(&a, &alice(), None, at(0)).expect("long enough");
        assert!(JwtVerifier::new(&a)
            .expect("long enough")
            .verify(&token, at(0))
            .is_ok());
    }
}
