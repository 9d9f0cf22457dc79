//! Error type of the client library.

use tsunagu_protocol::frames::ErrorFrame;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered a request with an `error` frame.
    #[error("server error {}: {}", .0.code.as_str(), .0.message)]
    Server(ErrorFrame),
    /// An HTTP request (enrolment) failed with a server error body.
    #[error("http error {status}: {message}")]
    Http { status: u16, message: String },
    /// The operation needs a websocket connection; call `connect` first.
    #[error("not connected")]
    NotConnected,
    /// The connection was closed or failed while waiting.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// MLS processing failed locally.
    #[error("mls: {0}")]
    Mls(String),
    /// Reading or writing local state failed.
    #[error("io: {0}")]
    Io(String),
    /// The saved state could not be read.
    #[error("corrupt state: {0}")]
    CorruptState(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A caller-side mistake: unknown timeline, no group, bad id.
    #[error("invalid: {0}")]
    Invalid(String),
    /// An attachment's blob does not match its reference (tampered with,
    /// truncated, the wrong blob) or uses an unknown cipher.
    #[error("attachment rejected: {0}")]
    Attachment(String),
    /// The timeline's policy requires the patient's consent record before
    /// this change (someone from another organisation, or family).
    #[error("consent required: {0}")]
    ConsentRequired(String),
    /// This person's role in the timeline does not allow the change (or the
    /// post: readers only read).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// A commit could not be placed after repeated conflicts.
    #[error("gave up after {0} attempts")]
    TooManyRetries(u32),
}

impl ClientError {
    /// The server error code, when this is a server error.
    pub fn server_code(&self) -> Option<tsunagu_protocol::ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

impl From<tsunagu_protocol::policy::PolicyError> for ClientError {
    fn from(e: tsunagu_protocol::policy::PolicyError) -> Self {
        use tsunagu_protocol::policy::PolicyError as P;
        match e {
            P::ConsentRequired(m) => ClientError::ConsentRequired(m),
            P::NotAllowed(m) | P::Unlisted(m) => ClientError::NotAllowed(m),
            P::Malformed(m) => ClientError::Invalid(format!("timeline policy: {m}")),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

pub(crate) fn mls<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> ClientError {
    move |e| ClientError::Mls(format!("{what}: {e:?}"))
}
