//! TLS towards backends: a connector for hyper-util's pooled client that opens TCP with the
//! usual `HttpConnector` and then, for backends with `tls`, runs a rustls client handshake
//! (verifying against the backend's CA bundle, or explicitly not at all). ALPN offers `h2` for
//! `protocol: h2c` (HTTP/2 over TLS, as gRPC) and `http/1.1` otherwise; a negotiated `h2` is
//! reported to hyper so the pool multiplexes. Whether TLS is used comes from the backend's
//! configuration, not the URI scheme.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{certs, provider};
use crate::config::{BackendConfig, BackendProtocol, CertificateConfig, SecretString, TlsVersion};

/// One backend group's TLS client settings, built with the snapshot.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// SNI and the name verified; `None`: the endpoint's IP address.
    server_name: Option<ServerName<'static>>,
    /// Changes when anything that shapes these connections changes (settings or the CA file's
    /// content), so worker pools are rebuilt then and kept otherwise.
    pub identity: String,
}

impl UpstreamTls {
    /// Builds the client configuration for `backend` (which has `tls`); `None` without `tls`.
    pub fn build(backend: &BackendConfig) -> Result<Option<UpstreamTls>, String> {
        let Some(tls) = &backend.tls else { return Ok(None) };
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("backend {:?}: {what}: {e}", backend.name);
        let provider =
            Arc::new(suites(provider(), &tls.cipher_suites).map_err(|e| fail("tls.cipher_suites", &e))?);
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
            .versions
            .iter()
            .map(|v| match v {
                TlsVersion::Tls12 => &rustls::version::TLS12,
                TlsVersion::Tls13 => &rustls::version::TLS13,
            })
            .collect();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| fail("TLS configuration", &e))?;
        let (builder, ca_fingerprint) = if tls.insecure_skip_verify {
            tracing::warn!(backend = %backend.name, "TLS to this backend does not verify its certificates (insecure_skip_verify)");
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider.clone()))),
                0,
            )
        } else {
            let what = format!("backend {:?} CA", backend.name);
            let (roots, pem) =
                certs::load_ca_bundle(&what, tls.ca_path.as_deref(), tls.ca_pem.as_deref(), "ca_pem")
                    .map_err(|e| e.to_string())?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| fail("CA", &e))?;
            let verifier: Arc<dyn ServerCertVerifier> = match tls.verify_depth {
                Some(depth) => Arc::new(DepthLimited { verifier, depth }),
                None => verifier,
            };
            (builder.dangerous().with_custom_certificate_verifier(verifier), certs::fingerprint(&pem))
        };
        let (mut config, client_fingerprint) = match (&tls.client_cert_pem, &tls.client_key_pem) {
            (Some(cert_pem), Some(key_pem)) => {
                let identity = client_identity(&backend.name, cert_pem, key_pem, &provider)?;
                let fingerprint = certs::fingerprint(format!("{cert_pem}{}", key_pem.0).as_bytes());
                (builder.with_client_cert_resolver(Arc::new(identity)), fingerprint)
            }
            _ => (builder.with_no_client_auth(), 0),
        };
        config.alpn_protocols = match backend.protocol {
            BackendProtocol::H2c => vec![b"h2".to_vec()],
            BackendProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        config.enable_sni = tls.sni;
        let server_name = match &tls.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| fail(&format!("tls.server_name {name:?}"), &e))?,
            ),
            None => None,
        };
        Ok(Some(UpstreamTls {
            config: Arc::new(config),
            server_name,
            identity: format!("{tls:?}|{ca_fingerprint:016x}|{client_fingerprint:016x}"),
        }))
    }
}

/// The provider with only the named TLS 1.2 suites (all when none is named) and every TLS 1.3
/// suite; a name rustls does not implement is an error that lists what it does.
fn suites(provider: Arc<CryptoProvider>, names: &[String]) -> Result<CryptoProvider, String> {
    let mut provider = CryptoProvider::clone(&provider);
    if names.is_empty() {
        return Ok(provider);
    }
    let name = |suite: &rustls::SupportedCipherSuite| format!("{:?}", suite.suite());
    if let Some(unknown) = names.iter().find(|n| !provider.cipher_suites.iter().any(|s| &name(s) == *n)) {
        let known: Vec<String> = provider.cipher_suites.iter().map(name).collect();
        return Err(format!("{unknown:?} is not one of rustls' suites ({})", known.join(", ")));
    }
    provider.cipher_suites.retain(|s| s.tls13().is_some() || names.contains(&name(s)));
    Ok(provider)
}

/// The client certificate presented to every endpoint of a backend.
#[derive(Debug)]
struct ClientIdentity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Loads and checks the client certificate (parses, matches its key, not expired).
fn client_identity(
    backend: &str,
    cert_pem: &str,
    key_pem: &SecretString,
    provider: &CryptoProvider,
) -> Result<ClientIdentity, String> {
    let config = CertificateConfig {
        name: format!("{backend} client certificate"),
        cert_path: None,
        cert_pem: Some(cert_pem.to_owned()),
        key_path: None,
        key_pem: Some(key_pem.clone()),
    };
    let loaded = certs::load_certificate(&config, provider, super::now_unix()).map_err(|e| e.to_string())?;
    Ok(ClientIdentity(loaded.key))
}

/// The strict verifier, and a chain no longer than OpenSSL's verify depth: the certificates
/// between the endpoint's and the CA (the CA itself, if sent, not counted) are fewer than
/// `depth`.
#[derive(Debug)]
struct DepthLimited {
    verifier: Arc<WebPkiServerVerifier>,
    depth: u8,
}

impl ServerCertVerifier for DepthLimited {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let steps = intermediates.iter().filter(|c| !super::client_cert::self_issued(c)).count();
        if steps >= usize::from(self.depth) {
            return Err(rustls::Error::General(format!(
                "certificate chain longer than verify depth {}",
                self.depth
            )));
        }
        self.verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

impl UpstreamTls {
    /// Runs the client handshake on `tcp` to `endpoint` (its IP is the server name unless
    /// `server_name` is set). For anything that talks to these endpoints outside the pooled
    /// client, such as active health checks.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        endpoint: std::net::SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = self.server_name.clone().unwrap_or_else(|| ServerName::from(endpoint.ip()));
        TlsConnector::from(self.config.clone()).connect(name, tcp).await
    }
}

/// Accepts any server certificate but still checks the handshake signatures (so the session is
/// at least bound to the key the server presented). Only for `insecure_skip_verify: true`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream connector: TCP, then TLS when the backend has it.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<UpstreamTls>>,
    /// Bounds the TLS handshake (the TCP connect has its own bound in `http`).
    handshake_timeout: Duration,
}

impl Connector {
    pub fn new(http: HttpConnector, tls: Option<Arc<UpstreamTls>>, handshake_timeout: Duration) -> Connector {
        Connector { http, tls, handshake_timeout }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned());
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let tcp = connecting.await?;
            let Some(tls) = tls else { return Ok(UpstreamStream::Plain(tcp)) };
            let name = match &tls.server_name {
                Some(name) => name.clone(),
                None => ServerName::try_from(host.unwrap_or_default())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            };
            let connector = TlsConnector::from(tls.config.clone());
            let stream =
                tokio::time::timeout(timeout, connector.connect(name, tcp.into_inner())).await.map_err(
                    |_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake with the backend timed out"),
                )??;
            Ok(UpstreamStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to an endpoint, plain or TLS.
pub enum UpstreamStream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: the TLS state is large, and most pooled connections are plain.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(io) => io.connected(),
            UpstreamStream::Tls(io) => {
                let (tcp, session) = io.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") { connected.negotiated_h2() } else { connected }
            }
        }
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamStream::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(io) => Pin::new(io).poll_write(cx, data),
            UpstreamStream::Tls(io) => Pin::new(&mut **io).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(io) => Pin::new(io).poll_flush(cx),
            UpstreamStream::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamStream::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(io) => io.is_write_vectored(),
            UpstreamStream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::{RootCertStore, pki_types::pem::PemObject};

    use super::*;

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, name: &str) -> CertificateDer<'static> {
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap();
        CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()
    }

    /// OpenSSL's verify depth: 1 takes a certificate the CA signed (the CA itself may come
    /// along), and refuses one more link before the strict check runs.
    #[test]
    fn verify_depth_counts_the_links_below_the_ca() {
        let root = ca("root");
        let mut roots = RootCertStore::empty();
        roots.add(root.der().clone()).unwrap();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let limited = |depth| DepthLimited { verifier: verifier.clone(), depth };
        let name = ServerName::try_from("web.internal").unwrap();
        let end = leaf(&root, "web.internal");
        let check = |depth: u8, chain: &[CertificateDer<'_>]| {
            limited(depth).verify_server_cert(&end, chain, &name, &[], UnixTime::now()).map(|_| ())
        };
        assert!(check(1, &[]).is_ok());
        assert!(check(1, &[root.der().clone()]).is_ok(), "the CA sent along is not a link");
        let link = leaf(&ca("intermediate"), "intermediate");
        let refused = check(1, std::slice::from_ref(&link)).unwrap_err();
        assert!(refused.to_string().contains("verify depth 1"), "{refused}");
        // Depth 2 lets the link through to the strict check, which still wants a known issuer.
        assert!(check(2, &[link]).is_ok(), "the leaf is the root's; the extra certificate is unused");
    }

    #[test]
    fn cipher_suites_are_rustls_names_and_tls13_stays() {
        let only = suites(provider(), &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()]).unwrap();
        let names: Vec<String> = only.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert!(names.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()));
        assert!(
            names.iter().all(|n| n.starts_with("TLS13_") || n == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
        );
        let unknown = suites(provider(), &["TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()]).unwrap_err();
        assert!(unknown.contains("is not one of rustls' suites"), "{unknown}");
    }
}
