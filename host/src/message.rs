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

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::Response;

    #[test]
    fn a_response_reads_its_headers_text_and_json() {
        let resp = Response {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("content-type".into(), "text/plain".into()),
            ],
            body: br#"{"id":7}"#.to_vec(),
        };
        assert_eq!(resp.header("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(resp.header("x-missing"), None);
        assert_eq!(resp.text().unwrap(), r#"{"id":7}"#);
        assert_eq!(resp.json::<serde_json::Value>().unwrap()["id"], 7);
        let bad = Response {
            body: vec![0xff],
            ..resp
        };
        assert!(bad.text().is_err() && bad.json::<serde_json::Value>().is_err());
    }
}
