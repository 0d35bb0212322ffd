//! [`FrameError`]: why a client frame or an HTTP publish body was refused, naming the field.

/// A frame (or HTTP publish body) the server cannot act on.
///
/// [`code`](Self::code) is stable and snake_case, for the `error` frame and for clients to
/// match on; the `Display` text is for humans and names the field at fault.
/// [`is_protocol_violation`](Self::is_protocol_violation) tells a frame that makes the
/// connection unusable (close with [`CLOSE_PROTOCOL_VIOLATION`](super::CLOSE_PROTOCOL_VIOLATION))
/// from one the server answers with an `error` frame and carries on.
///
/// ```
/// use tether::protocol::decode_client_frame;
///
/// let err = decode_client_frame(r#"{"type":"ack","seq":"7"}"#).unwrap_err();
/// assert_eq!(err.code(), "invalid_field");
/// assert_eq!(err.field(), Some("seq"));
/// assert!(err.to_string().contains("`seq`"));
/// assert!(!err.is_protocol_violation());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct FrameError {
    kind: FrameErrorKind,
    reference: Option<String>,
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// A frame given as bytes is not UTF-8. Protocol violation.
    #[error("the frame is not valid UTF-8")]
    InvalidUtf8,
    /// Not JSON at all. Protocol violation.
    #[error("the frame is not valid JSON: {detail}")]
    InvalidJson {
        /// The parser's description, with line and column.
        detail: String,
    },
    /// Valid JSON, but not an object. Protocol violation.
    #[error("the frame is not a JSON object")]
    NotAnObject,
    /// A `type` this version does not know (perhaps one a newer client speaks).
    #[error("unknown frame type {name:?}")]
    UnknownType {
        /// The type given, cut to 64 bytes.
        name: String,
    },
    /// A required field is absent or `null`.
    #[error("field `{field}` is missing")]
    MissingField {
        /// The field, as a path: `to`, `resume.seq`, ...
        field: &'static str,
    },
    /// A field appears more than once in the same object.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The field, as a path.
        field: &'static str,
    },
    /// A field has the wrong type or a value out of range.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field, as a path.
        field: &'static str,
        /// What was expected.
        reason: &'static str,
    },
}

impl FrameError {
    /// What is wrong.
    pub fn kind(&self) -> &FrameErrorKind {
        &self.kind
    }

    /// The stable snake_case code: `invalid_utf8`, `invalid_json`, `not_an_object`,
    /// `unknown_type`, `missing_field`, `duplicate_field` or `invalid_field`.
    pub fn code(&self) -> &'static str {
        match self.kind {
            FrameErrorKind::InvalidUtf8 => "invalid_utf8",
            FrameErrorKind::InvalidJson { .. } => "invalid_json",
            FrameErrorKind::NotAnObject => "not_an_object",
            FrameErrorKind::UnknownType { .. } => "unknown_type",
            FrameErrorKind::MissingField { .. } => "missing_field",
            FrameErrorKind::DuplicateField { .. } => "duplicate_field",
            FrameErrorKind::InvalidField { .. } => "invalid_field",
        }
    }

    /// The field at fault, as a path (`to`, `stream.part`, ...), if the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self.kind {
            FrameErrorKind::MissingField { field }
            | FrameErrorKind::DuplicateField { field }
            | FrameErrorKind::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// True if the frame is not a JSON object at all: the peer does not speak the protocol,
    /// so the server should close with
    /// [`CLOSE_PROTOCOL_VIOLATION`](super::CLOSE_PROTOCOL_VIOLATION) rather than answer.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self.kind,
            FrameErrorKind::InvalidUtf8
                | FrameErrorKind::InvalidJson { .. }
                | FrameErrorKind::NotAnObject
        )
    }

    /// The `ref` of the publish this error is about, when it could be read, so that the
    /// client can match the `error` frame to its request
    /// ([`encode_frame_error`](super::encode_frame_error) includes it).
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }

    pub(super) fn with_reference(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }
}

impl From<FrameErrorKind> for FrameError {
    fn from(kind: FrameErrorKind) -> Self {
        Self {
            kind,
            reference: None,
        }
    }
}

pub(super) fn missing(field: &'static str) -> FrameError {
    FrameErrorKind::MissingField { field }.into()
}

pub(super) fn invalid(field: &'static str, reason: &'static str) -> FrameError {
    FrameErrorKind::InvalidField { field, reason }.into()
}

pub(super) const EXPECT_STRING: &str = "expected a string";
pub(super) const EXPECT_U64: &str = "expected an integer from 0 to 18446744073709551615";
pub(super) const EXPECT_U32: &str = "expected an integer from 0 to 4294967295";
pub(super) const EXPECT_BOOL: &str = "expected true or false";
pub(super) const EXPECT_OBJECT: &str = "expected an object";
pub(super) const EXPECT_PRIORITY: &str = r#"expected "critical", "high", "normal" or "low""#;
pub(super) const NOT_EMPTY: &str = "must not be empty";
