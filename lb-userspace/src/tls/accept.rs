//! The server side of a handshake on one accepted connection, run in the connection's own task
//! (never in the accept loop), bounded by one deadline for the whole handshake.
//!
//! 1. The ClientHello is read (not consumed from rustls' point of view: the bytes are kept
//!    and replayed) and parsed: a client offering only TLS 1.1 or older gets the
//!    `protocol_version` alert; a passthrough host's connection is handed back for splicing
//!    with those bytes.
//! 2. Otherwise rustls reads the ClientHello (the kept bytes first), the SNI selects the host
//!    and with it the configuration (client certificates or not; one ticket instead of two when
//!    the client offers a session to resume); an unknown SNI on a rejecting listener gets the
//!    `unrecognized_name` alert.
//! 3. rustls finishes the handshake. Every failure is classified, counted, and ends only this
//!    connection; rustls sends the alert that fits (`decode_error`, `protocol_version`,
//!    `unknown_ca`, `certificate_required`, ...).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{Error as TlsError, HandshakeKind, PeerIncompatible};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

use super::{Failure, ListenerTls, TlsSnapshot, resolver::Selection, shared, sni};

/// What the handshake established, for the connection's requests.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The name of the virtual host the SNI selected, when it has `tls`; `None` when the
    /// default certificate was served. (A name, not an index: indices move with reloads.)
    pub host: Option<String>,
    /// The client CA bundle (fingerprint) the client certificate was verified against, for
    /// hosts that require one.
    pub client_ca: Option<u64>,
    pub server_name: Option<String>,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    pub resumed: bool,
    /// The client presented a verified certificate.
    pub client_certificate: bool,
    /// The client certificate as the host's nginx-style policy found it (hosts with
    /// `client_verify` other than `handshake`).
    pub client: Option<std::sync::Arc<super::client_cert::ClientCertificate>>,
}

/// How a connection left the handshake.
pub enum Accepted {
    /// TLS is up; serve HTTP over the stream.
    Terminated(Box<TlsStream<Rewind<TcpStream>>>, Session),
    /// The SNI selected a passthrough host: splice `client` (after replaying `hello`, the bytes
    /// already read, behind a PROXY protocol header of `proxy_protocol`'s version when set) to
    /// the backend group with this index.
    Passthrough {
        client: TcpStream,
        hello: Vec<u8>,
        backend: usize,
        proxy_protocol: Option<crate::config::ProxyProtocolVersion>,
    },
    /// The handshake failed; it was counted and the connection is closed.
    Failed(Failure),
    /// The client closed without sending a byte (a port probe, a health check): no handshake
    /// was attempted, so nothing is counted.
    Closed,
}

/// Runs the handshake on `stream` for `listener`, within `limit`.
pub async fn accept(
    stream: TcpStream,
    listener: &ListenerTls,
    tls: &TlsSnapshot,
    limit: Duration,
) -> Accepted {
    let refused = match tokio::time::timeout(limit, handshake(stream, listener, tls)).await {
        Ok(Ok(accepted)) => return accepted,
        Ok(Err(refused)) => refused,
        Err(_elapsed) => Refused { failure: Failure::Timeout, io: None },
    };
    shared().counters.fail(refused.failure);
    if let Some(io) = refused.io {
        linger(io).await;
    }
    Accepted::Failed(refused.failure)
}

/// A refused handshake: why, and the connection when it is still ours, to close it gently.
struct Refused {
    failure: Failure,
    io: Option<Rewind<TcpStream>>,
}

impl From<Failure> for Refused {
    fn from(failure: Failure) -> Refused {
        Refused { failure, io: None }
    }
}

/// How long, and how much, a refused client is read from after the alert.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// After a refused handshake the alert is on its way: half-close, then read (and drop) what
/// the client still sends, briefly. Closing with unread data would send a reset, and the
/// client's kernel would discard the alert before the client reads it (a TLS 1.3 client sends
/// its first request right behind its certificate, before it learns it was refused).
async fn linger(mut io: Rewind<TcpStream>) {
    let _ = io.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Writes a plaintext alert record and hands the connection back for [`linger`].
async fn refuse(mut io: Rewind<TcpStream>, description: u8, failure: Failure) -> Refused {
    let _ = io.write_all(&alert(description)).await;
    Refused { failure, io: Some(io) }
}

async fn handshake(
    mut stream: TcpStream,
    listener: &ListenerTls,
    tls: &TlsSnapshot,
) -> Result<Accepted, Refused> {
    let mut hello = Vec::new();
    let mut offers_resumption = false;
    match read_client_hello(&mut stream, &mut hello).await? {
        None => return Ok(Accepted::Closed),
        Some(sni::Parsed::Hello(parsed)) => {
            offers_resumption = parsed.offers_resumption;
            if !parsed.modern {
                let io = Rewind::new(stream, Vec::new());
                return Err(refuse(io, PROTOCOL_VERSION, Failure::UnsupportedVersion).await);
            }
            if listener.passthrough
                && let Some((_, host)) = tls.host(parsed.server_name.as_deref())
                && let Some(backend) = host.passthrough
            {
                let proxy_protocol = host.passthrough_proxy_protocol;
                return Ok(Accepted::Passthrough { client: stream, hello, backend, proxy_protocol });
            }
        }
        // Not a ClientHello we can read: rustls reads the same bytes and answers with the
        // right alert.
        Some(sni::Parsed::NotTls | sni::Parsed::Malformed | sni::Parsed::Incomplete) => {}
    }
    let mut acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Rewind::new(stream, hello));
    let start = match (&mut acceptor).await {
        Ok(start) => start,
        Err(e) => return Err(Refused { failure: classify(&e), io: acceptor.take_io() }),
    };
    let hello = start.client_hello();
    let server_name = hello.server_name().map(str::to_owned);
    let selection = listener.resolver.select(server_name.as_deref());
    let host = match selection {
        Selection::Host(host) => Some(host),
        _ => None,
    };
    if host
        .is_some_and(|h| tls.hosts.get(h).and_then(Option::as_ref).is_some_and(|h| h.passthrough.is_some()))
    {
        // The SNI parser and rustls disagreed about this hello (only possible with a hello the
        // parser found malformed): it cannot be spliced any more, and must not be terminated
        // with a certificate the host does not have.
        return Err(refuse(start.io, HANDSHAKE_FAILURE, Failure::Malformed).await);
    }
    let Some(config) = listener.config_for(selection, offers_resumption) else {
        // RFC 6066 section 3: a server that does not recognise the name may abort with a
        // fatal unrecognized_name alert.
        return Err(refuse(start.io, UNRECOGNIZED_NAME, Failure::UnknownSni).await);
    };
    let host_tls = host.and_then(|h| tls.hosts.get(h)).and_then(Option::as_ref);
    let client_ca = host_tls.and_then(|h| h.client_ca);
    let stream = match start.into_stream(config).into_fallible().await {
        Ok(stream) => stream,
        // rustls wrote its alert already.
        Err((e, io)) => return Err(Refused { failure: classify(&e), io: Some(io) }),
    };
    let (_, connection) = stream.get_ref();
    let session = Session {
        host: host_tls.map(|h| h.name.clone()),
        client_ca,
        server_name,
        h2: connection.alpn_protocol() == Some(b"h2"),
        resumed: connection.handshake_kind() == Some(HandshakeKind::Resumed),
        client_certificate: connection.peer_certificates().is_some_and(|c| !c.is_empty()),
        client: host_tls
            .and_then(|h| h.client_policy.as_ref())
            .map(|policy| std::sync::Arc::new(policy.check(connection.peer_certificates()))),
    };
    let handshake_checked = host_tls.is_some_and(|h| h.client_policy.is_none());
    if client_ca.is_some() && handshake_checked && !session.client_certificate {
        // rustls verified one at the full handshake; a resumed session must carry it too.
        return Err(Failure::ClientCertificate.into());
    }
    let counters = &shared().counters;
    counters.completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if session.resumed {
        counters.resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Accepted::Terminated(Box::new(stream), session))
}

const HANDSHAKE_FAILURE: u8 = 40;
const PROTOCOL_VERSION: u8 = 70;
const UNRECOGNIZED_NAME: u8 = 112;

/// A fatal alert as a plaintext record (before any keys exist).
fn alert(description: u8) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description]
}

/// Reads until the ClientHello is whole (or clearly not one). EOF after some bytes is a
/// truncated handshake; EOF before any is `None` (no handshake at all).
async fn read_client_hello(
    stream: &mut TcpStream,
    hello: &mut Vec<u8>,
) -> Result<Option<sni::Parsed>, Failure> {
    let mut chunk = [0u8; 4096];
    loop {
        let parsed = sni::parse(hello);
        if parsed != sni::Parsed::Incomplete || hello.len() > sni::MAX_HELLO + 1024 {
            return Ok(Some(parsed));
        }
        match stream.read(&mut chunk).await {
            Ok(0) if hello.is_empty() => return Ok(None),
            Ok(0) => return Err(Failure::Truncated),
            Ok(n) => hello.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(classify(&e)),
        }
    }
}

/// Why a handshake failed, from the error tokio-rustls reports (rustls' own error inside an
/// `io::Error`, or a plain I/O error). Matched by variant, never by message text.
fn classify(error: &io::Error) -> Failure {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Truncated,
            _ => Failure::Other,
        };
    };
    match tls {
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::PeerMisbehaved(_)
        | TlsError::DecryptError => Failure::Malformed,
        TlsError::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired,
        ) => Failure::UnsupportedVersion,
        TlsError::PeerIncompatible(_) | TlsError::NoApplicationProtocol => Failure::Incompatible,
        TlsError::InvalidCertificate(_) | TlsError::NoCertificatesPresented => Failure::ClientCertificate,
        TlsError::AlertReceived(_) => Failure::ClientAlert,
        _ => Failure::Other,
    }
}

/// A stream that first yields bytes already read from it (the ClientHello that was inspected),
/// then reads on. Writes go straight through.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Rewind<S> {
        Rewind { prefix, position: 0, inner }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.position < this.prefix.len() {
            let n = (this.prefix.len() - this.position).min(buf.remaining());
            buf.put_slice(&this.prefix[this.position..this.position + n]);
            this.position += n;
            if this.position == this.prefix.len() {
                // Replayed: give the memory back for the connection's lifetime.
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
