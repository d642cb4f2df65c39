//! The notification webhook: one JSON POST over HTTP or HTTPS (rustls), signed by whoever the
//! caller trusts to sign (the home's authority key, through [`WebhookSigner`]), each attempt
//! bounded by a timeout, retried with exponential back-off on what a retry can fix.
//!
//! What a retry can fix: no connection, a timeout, an answer of 408, 425, 429 or 5xx. What it
//! cannot: a bad URL, a certificate that does not verify, any other answer (a 3xx is not
//! followed: a receiver that moved is a configuration to fix, not a redirect to trust). Every
//! attempt is in the result's text, so the report records what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::error::{CompromiseError, Result};

/// The longest a back-off wait grows to, whatever the attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The most attempts after the first a configuration may ask for.
pub const MAX_RETRIES: u32 = 10;
/// The most bytes of an answer's status line and headers read (the body is never read).
const MAX_HEAD: usize = 16 * 1024;

/// One webhook POST to sign: what a signature must cover.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Delivery<'a> {
    /// The absolute URL posted to.
    pub url: &'a str,
    /// The body's media type.
    pub content_type: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// This delivery's id: the same in every attempt (a receiver de-duplicates retries on it),
    /// different for every delivery.
    pub id: &'a str,
}

/// Signs webhook deliveries: the header fields that let a receiver check who sent the POST and
/// that its body is the one signed (the facade signs RFC 9421 message signatures with the
/// home's authority key). Signed once per delivery: every retry carries the same fields.
pub trait WebhookSigner {
    /// The header fields to add to the POST of `delivery` (name, value).
    ///
    /// # Errors
    /// The key cannot sign (locked, unreachable, revoked): the delivery is not sent unsigned.
    fn sign(&self, delivery: &Delivery<'_>) -> keyhaven_core::Result<Vec<(String, String)>>;
}

/// Where and how to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Origin-form target (`/path?query`).
    pub(crate) path: String,
}

impl Target {
    /// Parses an absolute `http://` or `https://` URL: a host name, an IPv4 address or a
    /// bracketed IPv6 address, an optional port, a path; no user information, no fragment, no
    /// space or control character anywhere.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| CompromiseError::Invalid(format!("webhook URL '{url}': {why}"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        if url
            .chars()
            .any(|c| c.is_control() || c == ' ' || !c.is_ascii())
        {
            return Err(bad(
                "contains a space, a control or a non-ASCII character (percent-encode it)",
            ));
        }
        if url.contains('#') {
            return Err(bad("a fragment (#...) is never sent: leave it out"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if authority.contains('@') {
            return Err(bad("user information (user@host) is not allowed"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (ip, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in brackets"))?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| bad("bad port"))?,
            };
            (ip.to_owned(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
                None => (authority, default_port),
            };
            (host.to_ascii_lowercase(), port)
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(bad("malformed host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Target {
            https,
            host,
            port,
            path,
        })
    }

    /// The URI as the request carries it (`Host` and request target): what a receiver
    /// rebuilds, so what the signature covers.
    pub(crate) fn uri(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.host_field(),
            self.path
        )
    }

    /// The `Host` field: the host, bracketed if IPv6, with the port unless it is the default.
    fn host_field(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// How deliveries are made: per-attempt timeout, retries, back-off, the certificates trusted.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    /// PEM certificates trusted for HTTPS instead of the system's roots, and where they came
    /// from (for messages).
    pub(crate) ca: Option<(String, PathBuf)>,
}

/// Why one attempt failed, and whether another may do better.
struct Failure {
    reason: String,
    retry: bool,
    /// A `Retry-After` the receiver asked for.
    after: Option<Duration>,
}

impl Failure {
    fn retry(reason: String) -> Self {
        Failure {
            reason,
            retry: true,
            after: None,
        }
    }
    fn fatal(reason: String) -> Self {
        Failure {
            reason,
            retry: false,
            after: None,
        }
    }
}

/// POSTs `body` to `url` as `content_type`: signed by `signer` if given, retried as `policy`
/// says. Returns what happened (the status, and the attempts it took).
///
/// # Errors
/// [`CompromiseError::Invalid`] for a bad URL or CA file; [`CompromiseError::Hook`] when no
/// attempt succeeded (naming each attempt's failure) or the signer failed.
pub(crate) fn deliver(
    url: &str,
    content_type: &str,
    body: &[u8],
    delivery_id: &str,
    signer: Option<&dyn WebhookSigner>,
    policy: &Policy,
    sleep: &dyn Fn(Duration),
) -> Result<String> {
    let target = Target::parse(url)?;
    let fail = |reason: String| CompromiseError::Hook {
        hook: format!("webhook {url}"),
        reason,
    };
    let tls = if target.https {
        Some(client_config(policy.ca.as_ref())?)
    } else {
        None
    };
    if delivery_id.is_empty()
        || !delivery_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(CompromiseError::Invalid(format!(
            "delivery id {delivery_id:?}: only letters, digits, '-', '.' and '_'"
        )));
    }
    // What is signed is what is sent: the normalised URI, not the text as configured.
    let uri = target.uri();
    let signed = match signer {
        Some(s) => s
            .sign(&Delivery {
                url: &uri,
                content_type,
                body,
                id: delivery_id,
            })
            .map_err(|e| fail(format!("cannot sign the delivery: {e}")))?,
        None => Vec::new(),
    };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keyhaven/{}\r\nContent-Type: \
         {content_type}\r\nContent-Length: {}\r\nKeyhaven-Delivery: {delivery_id}\r\n",
        target.path,
        target.host_field(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (name, value) in &signed {
        if name.contains([':', '\r', '\n']) || value.contains(['\r', '\n']) {
            return Err(fail(format!("the signer gave a malformed field '{name}'")));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);

    let mut attempts: Vec<String> = Vec::new();
    let mut wait = policy.backoff;
    for attempt in 0..=policy.retries {
        if attempt > 0 {
            sleep(wait);
            wait = (wait * 2).min(MAX_BACKOFF.max(policy.backoff));
        }
        match attempt_once(&target, tls.as_ref(), &request, policy.timeout) {
            Ok(status) => {
                let tries = if attempt == 0 {
                    String::new()
                } else {
                    format!(
                        " at attempt {} (before: {})",
                        attempt + 1,
                        attempts.join("; ")
                    )
                };
                return Ok(format!("webhook answered {status}{tries}"));
            }
            Err(f) => {
                attempts.push(format!("{}: {}", attempt + 1, f.reason));
                if !f.retry {
                    break;
                }
                if let Some(after) = f.after {
                    // The receiver's wish, within our own bounds: never sooner than the
                    // configured back-off, never longer than the cap.
                    wait = after.clamp(policy.backoff, MAX_BACKOFF.max(policy.backoff));
                }
            }
        }
    }
    let n = attempts.len();
    Err(fail(format!(
        "{} ({n} attempt{})",
        attempts.join("; "),
        if n == 1 { "" } else { "s" }
    )))
}

/// The TLS client configuration: the CA certificates given, or the system's roots.
fn client_config(ca: Option<&(String, PathBuf)>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some((text, path)) => {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
                let cert = cert.map_err(|e| {
                    CompromiseError::Invalid(format!(
                        "compromise.notify.ca_file {}: not PEM certificates ({e})",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    CompromiseError::Invalid(format!(
                        "compromise.notify.ca_file {}: a certificate is unusable ({e})",
                        path.display()
                    ))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(CompromiseError::Invalid(format!(
                    "compromise.notify.ca_file {} holds no certificate (it must hold PEM \
                     `CERTIFICATE` blocks)",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root rustls cannot use is skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(CompromiseError::Invalid(
                    "no system root certificate could be loaded for an https webhook: install \
                     ca-certificates, or set compromise.notify.ca_file to the receiver's CA"
                        .into(),
                ));
            }
        }
    }
    // ring, as the server: it builds with a C compiler alone; the deprecation says only that
    // ring has no post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CompromiseError::Invalid(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A stream whose every read and write ends by the attempt's deadline: the socket's timeout
/// is set to what is left before each call, so a peer trickling a byte at a time (during the
/// TLS handshake too, where rustls loops over reads) cannot stretch an attempt.
struct Timed {
    tcp: TcpStream,
    deadline: Instant,
}

impl Timed {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the attempt's time is up",
            ))
        } else {
            Ok(left)
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Resolves `host` on a helper thread, waiting at most until `deadline` (the system resolver
/// has no timeout of its own).
fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> std::result::Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>),
        );
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(Failure::retry(format!("cannot resolve {host}: {e}"))),
        Err(_) => Err(Failure::retry(format!("resolving {host} timed out"))),
    }
}

/// One attempt: resolve, connect, (handshake,) send, read the answer's head, all by one
/// deadline.
fn attempt_once(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    request: &[u8],
    timeout: Duration,
) -> std::result::Result<u16, Failure> {
    let deadline = Instant::now() + timeout;
    let addrs = resolve(&target.host, target.port, deadline)?;
    let mut last = None;
    let mut stream = None;
    for (i, addr) in addrs.iter().enumerate() {
        // Each address gets an equal share of what is left, so one that swallows packets
        // does not keep the next from being tried.
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        if share.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, share) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    let tcp = stream.ok_or_else(|| {
        Failure::retry(last.unwrap_or_else(|| format!("{} has no address", target.host)))
    })?;
    let timed = Timed { tcp, deadline };
    match tls {
        None => exchange(timed, request, timeout),
        Some(config) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                Failure::fatal(format!("'{}' is not a TLS server name: {e}", target.host))
            })?;
            let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                .map_err(|e| Failure::fatal(format!("TLS: {e}")))?;
            exchange(rustls::StreamOwned::new(conn, timed), request, timeout)
        }
    }
}

/// Whether an I/O error is a TLS failure no retry can mend (a certificate that does not
/// verify, a protocol the peer does not speak).
fn tls_failure(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn io_failure(what: &str, e: &std::io::Error, timeout: Duration) -> Failure {
    if let Some(t) = tls_failure(e) {
        return Failure::fatal(format!("TLS: {t}"));
    }
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        Failure::retry(format!("timed out after {}", show(timeout)))
    } else {
        Failure::retry(format!("{what}: {e}"))
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The head of an HTTP/1.x answer, as far as a webhook client cares.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub struct AnswerHead {
    /// The status code.
    pub status: u16,
    /// The status line (at most 120 characters), for messages.
    pub line: String,
    /// `Retry-After` in seconds, if the answer has one.
    pub retry_after: Option<u64>,
    /// How many bytes the head took, its blank line included.
    pub len: usize,
}

/// Parses the head at the start of `bytes` (status line and fields, up to the blank line):
/// `Ok(None)` if it is not all there yet. Public for the fuzz target only.
///
/// # Errors
/// What is there is not an HTTP/1.x answer.
#[doc(hidden)]
pub fn parse_answer_head(bytes: &[u8]) -> std::result::Result<Option<AnswerHead>, String> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let line: String = status_line.chars().take(120).collect();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.split(' ').nth(1))
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    let retry_after = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok());
    Ok(Some(AnswerHead {
        status,
        line,
        retry_after,
        len: end + 4,
    }))
}

fn exchange(
    mut stream: impl Read + Write,
    request: &[u8],
    timeout: Duration,
) -> std::result::Result<u16, Failure> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| io_failure("cannot send", &e, timeout))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match parse_answer_head(&head).map_err(Failure::fatal)? {
            // An interim answer (100 Continue, 103 Early Hints): the final one follows.
            Some(h) if (100..200).contains(&h.status) && h.status != 101 => {
                head.drain(..h.len);
                continue;
            }
            Some(h) if (200..300).contains(&h.status) => return Ok(h.status),
            Some(h) => {
                let retry = matches!(h.status, 408 | 425 | 429 | 500..=599);
                return Err(Failure {
                    reason: format!("answered {}", h.line),
                    retry,
                    after: h.retry_after.map(Duration::from_secs).filter(|_| retry),
                });
            }
            None => {}
        }
        if head.len() > MAX_HEAD {
            return Err(Failure::fatal(format!(
                "the answer's header is over {MAX_HEAD} bytes"
            )));
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| io_failure("cannot read the answer", &e, timeout))?;
        if n == 0 {
            return Err(Failure::retry("connection closed before an answer".into()));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::{Target, parse_answer_head};

    #[test]
    fn answer_heads_parse_strictly() {
        let h = parse_answer_head(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.retry_after, h.len), (503, Some(7), 37));
        assert_eq!(parse_answer_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        for bad in [
            &b"SMTP 220 hi\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 +20 OK\r\n\r\n",
            b"HTTP/1.1 999 OK\r\n\r\n",
        ] {
            assert!(parse_answer_head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_parse_strictly() {
        let t = Target::parse("https://Hooks.Example:8443/a/b?c=d").unwrap();
        assert!(t.https);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("hooks.example", 8443, "/a/b?c=d")
        );
        assert_eq!(t.host_field(), "hooks.example:8443");
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.host_field(), "[::1]:9");
        let t = Target::parse("https://h?x").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.host_field()),
            (443, "/?x", "h".into())
        );
        assert_eq!(t.uri(), "https://h/?x");
        assert_eq!(
            Target::parse("https://Hooks.Example:443/a").unwrap().uri(),
            "https://hooks.example/a"
        );
        for bad in [
            "ftp://h/",
            "https://",
            "https://u@h/",
            "https://h:0/",
            "https://h:99999/",
            "https://h:x/",
            "https://[::1/",
            "https://[nothost]/",
            "https://h/a b",
            "https://h/a\r\nX: y",
            "https://h/#frag",
            "https://h_h/",
            "https://h/caf\u{e9}",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
