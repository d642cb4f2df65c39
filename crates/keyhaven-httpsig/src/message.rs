//! The HTTP messages a signature covers, as RFC 9421 sees them: a request (method, target URI,
//! fields) or a response (status, fields, and the request it answers, for `;req`).

use crate::error::{HttpSigError, Result};

/// The field-line methods requests and responses share.
macro_rules! field_methods {
    () => {
        /// Adds a field line (names are case-insensitive; repeated names are combined in
        /// order).
        #[must_use]
        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.push_header(name, value);
            self
        }

        /// Adds a field line in place.
        pub fn push_header(&mut self, name: &str, value: &str) {
            self.fields.push((name.to_owned(), value.to_owned()));
        }

        /// The field lines, in order.
        pub fn fields(&self) -> &[(String, String)] {
            &self.fields
        }
    };
}

/// A request: its method, its absolute target URI and its field lines, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    target_uri: String,
    uri: Uri,
    fields: Vec<(String, String)>,
}

/// A response: its status and field lines, and the request it answers (for components with
/// `;req`, which bind the response to the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    fields: Vec<(String, String)>,
    request: Option<Request>,
}

/// The parts of an absolute URI a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uri {
    pub(crate) scheme: String,
    /// Lowercase host, with the port unless it is the scheme's default.
    pub(crate) authority: String,
    /// The path, `/` when empty.
    pub(crate) path: String,
    /// The query without its `?`, if the URI has one.
    pub(crate) query: Option<String>,
}

impl Uri {
    /// Parses an absolute `http` or `https` URI (a fragment is not part of a target URI and is
    /// refused).
    pub(crate) fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: &str| HttpSigError::Malformed {
            what: "target URI",
            reason: format!("{reason}: {uri:?}"),
        };
        if uri.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(bad("it holds a space, a control or a non-ASCII character"));
        }
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("it is not an absolute URI (scheme://authority/path)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port: u16 = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(bad("only http and https URIs are signed")),
        };
        if rest.contains('#') {
            return Err(bad("a target URI has no fragment"));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("a target URI carries no user information"));
        }
        // `[v6]:port`, `host:port`, or a host alone; a colon in a host outside brackets, a
        // port that is not a number in range, or characters no host has are refused, so two
        // different URIs never give one authority.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let close = v6
                    .find(']')
                    .ok_or_else(|| bad("an IPv6 host is not closed"))?;
                let after = &v6[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => return Err(bad("text after an IPv6 host")),
                };
                (&authority[..close + 2], port)
            }
            None => match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad(
                        "a host with a colon must be an IPv6 address in brackets",
                    ));
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None | Some("") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            ),
        };
        let host_ok = if host.starts_with('[') {
            host.len() > 2
                && host[1..host.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        } else {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
        };
        if !host_ok {
            return Err(bad("the host holds characters no host has"));
        }
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let mut authority = host.to_ascii_lowercase();
        if let Some(p) = port.filter(|p| *p != default_port) {
            authority.push(':');
            authority.push_str(&p.to_string());
        }
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path_query, None),
        };
        Ok(Uri {
            scheme,
            authority,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
            query,
        })
    }
}

impl Request {
    /// A request to `target_uri` (absolute: `https://host/path?query`), with no fields yet.
    ///
    /// # Errors
    /// [`HttpSigError::Malformed`] for a URI that is not an absolute `http(s)` URI, or a
    /// method that is not a token.
    pub fn new(method: &str, target_uri: &str) -> Result<Self> {
        if method.is_empty() || !method.bytes().all(is_tchar) {
            return Err(HttpSigError::Malformed {
                what: "method",
                reason: format!("{method:?} is not an HTTP method"),
            });
        }
        Ok(Request {
            method: method.to_owned(),
            uri: Uri::parse(target_uri)?,
            target_uri: target_uri.to_owned(),
            fields: Vec::new(),
        })
    }

    field_methods!();

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The target URI as given.
    pub fn target_uri(&self) -> &str {
        &self.target_uri
    }

    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }
}

impl Response {
    /// A response with `status`, answering `request` (if known).
    pub fn new(status: u16, request: Option<Request>) -> Self {
        Response {
            status,
            fields: Vec::new(),
            request,
        }
    }

    field_methods!();

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The request it answers.
    pub fn request(&self) -> Option<&Request> {
        self.request.as_ref()
    }
}

/// A request or a response: what a signature base is computed over.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A request.
    Request(&'a Request),
    /// A response.
    Response(&'a Response),
}

impl<'a> Message<'a> {
    pub(crate) fn fields(&self) -> &'a [(String, String)] {
        match self {
            Message::Request(r) => r.fields(),
            Message::Response(r) => r.fields(),
        }
    }

    /// The combined value of every field line named `name` (RFC 9421 section 2.1: each line's
    /// value trimmed, obsolete line folding replaced by a space, joined by `, `), or `None`
    /// when the message has no such field.
    pub fn field(&self, name: &str) -> Option<String> {
        let lines: Vec<String> = self
            .fields()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unfold(v))
            .collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    }

    /// Each field line named `name`, trimmed (for `;bs`).
    pub(crate) fn field_lines(&self, name: &str) -> Vec<String> {
        self.fields()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unfold(v))
            .collect()
    }
}

/// A `tchar` of RFC 9110: what methods and field names are made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field line's value as a signature sees it: obsolete line folding (a line break followed
/// by a space or tab) replaced by one space, leading and trailing whitespace removed. Any other
/// CR, LF or NUL is left in place, so the signature base refuses the value.
fn unfold(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(at) = rest.find(['\r', '\n']) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let after_break = after
            .strip_prefix("\r\n")
            .or_else(|| after.strip_prefix('\n'));
        match after_break {
            Some(next) if next.starts_with([' ', '\t']) => {
                out.push(' ');
                rest = next.trim_start_matches([' ', '\t']);
            }
            _ => {
                // not a fold: keep the raw character for the base to refuse
                let c = &after[..1];
                out.push_str(c);
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out.trim_matches([' ', '\t']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_normalize_as_rfc_9421_says() {
        let u = Uri::parse("https://Example.COM:443/foo?param=Value&Pet=dog").unwrap();
        assert_eq!(u.authority, "example.com");
        assert_eq!(u.path, "/foo");
        assert_eq!(u.query.as_deref(), Some("param=Value&Pet=dog"));
        let u = Uri::parse("http://example.com:8080").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("example.com:8080", "/")
        );
        assert!(u.query.is_none());
        let u = Uri::parse("https://[::1]:8443/x?").unwrap();
        assert_eq!(u.authority, "[::1]:8443");
        assert_eq!(u.query.as_deref(), Some(""));
        for bad in [
            "/relative",
            "ftp://x/",
            "https://user@x/",
            "https:///path",
            "https://x/a b",
            "https://x/#frag",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_values_are_trimmed_unfolded_and_combined() {
        let r = Request::new("GET", "https://e/")
            .unwrap()
            .header("X-A", "  one ")
            .header("x-a", "two,\r\n  three")
            .header("Other", "z");
        let m = Message::Request(&r);
        assert_eq!(m.field("x-a").as_deref(), Some("one, two, three"));
        assert_eq!(m.field("missing"), None);
    }
}
