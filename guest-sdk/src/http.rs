//! Outbound HTTP through the standard `wasi:http/outgoing-handler`.
//!
//! The host serves these requests from its pooled client, only to the hosts
//! the plugin's `allowed_hosts` lists; a refused host comes back as an
//! error naming `HTTP-request-denied`. Requests block the plugin until the
//! answer is in; the host bounds them with its own deadline and retries
//! 429/503 answers itself.

/// Why a request brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The host refused it: the destination is not in the plugin's
    /// `allowed_hosts`. Retrying cannot help.
    Refused(String),
    /// Anything else: a bad URL, no connection, a time-out.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(m) | Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Failed(m)
    }
}

/// An answer: status code and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The whole response body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    request("GET", url, &[], &[])
}

/// `POST url` with a body of the given content type.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, Error> {
    request("POST", url, &[("content-type", content_type)], body)
}

/// Splits `scheme://authority/path?query`.
fn split(url: &str) -> Result<(&str, &str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an absolute http(s) URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok((scheme, authority, path))
}

/// Sends one request and reads the whole answer.
#[cfg(target_arch = "wasm32")]
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Error> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    let (scheme, authority, path) = split(url)?;
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(k, v.as_bytes())
            .map_err(|e| format!("header {k}: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    req.set_method(&method)
        .map_err(|()| "invalid method".to_string())?;
    req.set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme".to_string())?;
    req.set_authority(Some(authority))
        .map_err(|()| format!("invalid host {authority:?}"))?;
    req.set_path_with_query(Some(path))
        .map_err(|()| format!("invalid path {path:?}"))?;
    let out = req.body().map_err(|()| "request body taken".to_string())?;
    // Hand the request over first: the host reads the body while it is written.
    let pending =
        outgoing_handler::handle(req, None).map_err(|e| format!("request refused: {e:?}"))?;
    {
        let stream = out
            .write()
            .map_err(|()| "request body stream taken".to_string())?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the request body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(|e| format!("finishing the request: {e:?}"))?;
    let resp = loop {
        match pending.get() {
            Some(r) => break r,
            None => pending.subscribe().block(),
        }
    };
    let resp = resp
        .map_err(|()| "response already taken".to_string())?
        .map_err(|e| match e {
            wasi::http::types::ErrorCode::HttpRequestDenied => Error::Refused(format!(
                "the host refused the request: {authority} is not in this plugin's allowed_hosts"
            )),
            e => Error::Failed(format!("request failed: {e:?}")),
        })?;
    let status = resp.status();
    let incoming = resp
        .consume()
        .map_err(|()| "response body taken".to_string())?;
    let mut data = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| "response stream taken".to_string())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(b) => data.extend_from_slice(&b),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the response: {e:?}").into()),
            }
        }
    }
    let _ = IncomingBody::finish(incoming);
    Ok(Response { status, body: data })
}

/// Sends one request: only inside WebAssembly.
#[cfg(not(target_arch = "wasm32"))]
pub fn request(
    _method: &str,
    url: &str,
    _headers: &[(&str, &str)],
    _body: &[u8],
) -> Result<Response, Error> {
    split(url)?;
    Err(Error::Failed(
        "wasi:http is only available inside WebAssembly".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split("http://127.0.0.1:8080/a/b?c=1"),
            Ok(("http", "127.0.0.1:8080", "/a/b?c=1"))
        );
        assert_eq!(split("https://x.test"), Ok(("https", "x.test", "/")));
        assert!(split("x.test/a").is_err());
        assert!(split("http:///a").is_err());
    }
}
