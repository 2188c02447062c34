//! TLS for the suites: test certificates made with rcgen (a CA and the leaves it signs), rustls
//! client configurations (trusting the test CA, or accepting any certificate to look at which
//! one is served), a synchronous client handshake, and server configurations for TLS backends.

use std::{
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    StreamOwned,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A certificate authority that issues the test certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate (the leaf, then any intermediates) and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A CA whose certificate this one issues: leaves it signs chain through it to this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &self.issuer).unwrap() }
    }

    /// A leaf for `names` issued by this (intermediate) CA, its certificate followed by this
    /// CA's: the chain a server sends.
    pub fn chained_leaf(&self, names: &[&str]) -> Leaf {
        let mut leaf = self.leaf(names);
        leaf.cert.push_str(&self.pem());
        leaf
    }

    /// A leaf for `names` (the first is also its common name).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// A leaf for `names` whose parameters `adjust` changes first (validity, key usage...).
    pub fn leaf_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("client"));
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

impl Leaf {
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap().to_vec()
    }

    /// Every certificate of `cert`, the leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert.as_bytes()).map(Result::unwrap).collect()
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap()
    }
}

/// A YAML double-quoted scalar (PEM is ASCII; Rust's escapes are YAML's for it).
pub fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// A `certificates:` entry with inline PEM.
pub fn inline_certificate(name: &str, leaf: &Leaf) -> String {
    format!("  - {{name: {name}, cert_pem: {}, key_pem: {}}}\n", quoted(&leaf.cert), quoted(&leaf.key))
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (still checking handshake signatures): for looking at
/// which certificate is served, whatever its names.
#[derive(Debug)]
pub struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

/// How a test client is set up.
#[derive(Default)]
pub struct ClientOptions<'a> {
    /// Verify against this CA; `None` accepts any certificate.
    pub trust: Option<&'a Ca>,
    pub alpn: &'a [&'a [u8]],
    pub client_certificate: Option<&'a Leaf>,
    /// Keep sessions for resumption (the default rustls client does).
    pub resume: bool,
    /// Only TLS 1.2.
    pub tls12_only: bool,
}

pub fn client_config(options: ClientOptions<'_>) -> Arc<ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] =
        if options.tls12_only { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
    let builder = ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions).unwrap();
    let builder = match options.trust {
        Some(ca) => builder.with_root_certificates(ca.roots()),
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        }
    };
    let mut config = match options.client_certificate {
        Some(leaf) => builder.with_client_auth_cert(leaf.chain(), leaf.private_key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.to_vec()).collect();
    if !options.resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake. `sni` is the server name (`None`: an IP address, so
/// no SNI is sent).
pub fn connect(addr: SocketAddr, sni: Option<&str>, config: &Arc<ClientConfig>) -> anyhow::Result<TlsStream> {
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_owned())?,
        None => ServerName::from(addr.ip()),
    };
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    connect_over(tcp, name, config)
}

/// Completes a handshake over a connection already open (after a PROXY protocol header, say).
pub fn connect_over(
    mut tcp: TcpStream,
    name: ServerName<'static>,
    config: &Arc<ClientConfig>,
) -> anyhow::Result<TlsStream> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let mut connection = ClientConnection::new(config.clone(), name)?;
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp)?;
    }
    Ok(StreamOwned::new(connection, tcp))
}

/// The certificate the server presented (empty when it presented none).
pub fn served_certificate(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default()
}

/// The rustls error inside an error chain (rustls reports through `io::Error`).
pub fn tls_error(error: &anyhow::Error) -> Option<rustls::Error> {
    error.chain().find_map(|cause| {
        cause.downcast_ref::<rustls::Error>().cloned().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned()
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// A TLS server configuration for a test backend serving `leaf`, with ALPN h2 and http/1.1.
pub fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain(), leaf.private_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// How a stricter test backend's TLS is set up (see [`strict_server_config`]).
pub struct ServerOptions<'a> {
    pub leaf: &'a Leaf,
    /// Serve the certificate only to a ClientHello naming this server (no SNI: no certificate).
    pub sni_only: Option<&'a str>,
    /// Require a client certificate issued by this CA.
    pub client_ca: Option<&'a Ca>,
    /// Only TLS 1.3.
    pub tls13_only: bool,
}

/// A TLS backend's configuration that refuses what a proxy must get right: a missing SNI, a
/// missing client certificate, an older protocol version.
pub fn strict_server_config(options: ServerOptions<'_>) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] =
        if options.tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions).unwrap();
    let builder = match options.client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = match options.sni_only {
        Some(name) => {
            let key = provider().key_provider.load_private_key(options.leaf.private_key()).unwrap();
            let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
            resolver.add(name, rustls::sign::CertifiedKey::new(options.leaf.chain(), key)).unwrap();
            builder.with_cert_resolver(Arc::new(resolver))
        }
        None => builder.with_single_cert(options.leaf.chain(), options.leaf.private_key()).unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
