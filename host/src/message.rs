//! The requests callers send and the responses they get: plain bytes. Inside
//! a call the bodies are `types.body` handles the component passes along
//! without reading (see `body`).

/// An HTTP request to send with a credential's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// In order, duplicates kept. Any `Authorization` is replaced by rekey's.
    pub headers: Vec<(String, String)>,
    /// Empty: no body.
    pub body: Vec<u8>,
}

/// The API's response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// In order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// As received (within the host's response cap).
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// With one more header (order and duplicates are kept).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With this body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}
