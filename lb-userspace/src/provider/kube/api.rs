//! The Kubernetes API client: bounded time for every request, retries Sluice can see, and a
//! name the API server's audit log can tell instances apart by.
//!
//! kube-client's default stack retries 429, 503 and 504 up to 15 times (delays from 5 ms
//! doubling to 1,000 s, or the server's `Retry-After`) and sets no read timeout, so a throttled
//! or restarting apiserver was invisible for minutes and a black-holed request waited until TCP
//! gave up. Here the stack is, from the outside in:
//!
//! 1. kube's [`RetryPolicy`] with [`ApiSettings::retries`] retries (250 ms doubling to 5 s, or
//!    `Retry-After`), so a caller gets the answer within bounded time and runs its own backoff
//!    (the watcher's, the Lease's period);
//! 2. [`Attempt`], per attempt: the deadline ([`ApiSettings::request_timeout`] for the head and,
//!    except for watches, the whole body), the count of throttled answers and timeouts in
//!    `/metrics` with a warning on the first throttled answer of a streak, a clear line for a
//!    401, and the bearer token read from its file whenever the file changes;
//! 3. kube's own stack without its retry (base URI, auth, headers, tracing, TLS, connect
//!    timeout), behind a [`tower::buffer::Buffer`] so the layers above can clone it.
//!
//! Watches are not cut by the request deadline: their head must come within it, then the
//! watcher's idle timeout (the `timeoutSeconds` asked for, [`ApiSettings::watch_timeout`], plus
//! 5 s) ends a silent one.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use bytes::Bytes;
use hyper::{
    Request, Response,
    body::{Frame, SizeHint},
    header::{AUTHORIZATION, HeaderValue, USER_AGENT},
};
use kube::client::{Body, ClientBuilder, DynBody, retry::RetryPolicy};
use tower::{BoxError, Layer, Service, buffer::BufferLayer, retry::RetryLayer};

use crate::metrics::KUBE_API;

/// How the client talks to the API server.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// One attempt of a request: the response head, and the whole body of a non-watch request.
    pub request_timeout: Duration,
    /// `timeoutSeconds` of watches: the server ends them after this; the client gives a silent
    /// one up 5 s later. Shorter than kube-rs' 290 s so a black-holed watch is noticed in a
    /// minute.
    pub watch_timeout: Duration,
    /// Retries of a 429, 503 or 504 answer before the caller sees it.
    pub retries: u32,
    /// `User-Agent` of every request (names the instance).
    pub user_agent: String,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_timeout: Duration::from_secs(55),
            retries: 3,
            user_agent: format!("sluice/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Where the service-account files are in a pod; `SLUICE_SERVICEACCOUNT_DIR` moves them (the
/// tests put them in a scratch directory).
const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn serviceaccount_dir() -> PathBuf {
    std::env::var_os("SLUICE_SERVICEACCOUNT_DIR")
        .map_or_else(|| PathBuf::from(SERVICEACCOUNT_DIR), PathBuf::from)
}

/// The in-cluster configuration: `KUBERNETES_SERVICE_HOST`/`_PORT`, and the service
/// account's `token`, `ca.crt` and `namespace` in `dir`. The token is not read here: the
/// client reads it from the file whenever the file changes.
pub fn incluster_config(dir: &Path) -> anyhow::Result<(kube::Config, PathBuf)> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").context("KUBERNETES_SERVICE_PORT is not set")?;
    let host = if host.parse::<std::net::Ipv6Addr>().is_ok() { format!("[{host}]") } else { host };
    let url: hyper::Uri = format!("https://{host}:{port}")
        .parse()
        .with_context(|| format!("bad API server address {host}:{port}"))?;
    let ca_path = dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).with_context(|| format!("cannot read {}", ca_path.display()))?;
    let mut roots = Vec::new();
    for certificate in pem_certificates(&ca) {
        roots.push(certificate);
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no PEM certificate", ca_path.display());
    let namespace_path = dir.join("namespace");
    let namespace = std::fs::read_to_string(&namespace_path)
        .with_context(|| format!("cannot read {}", namespace_path.display()))?;
    let token = dir.join("token");
    anyhow::ensure!(token.exists(), "the service-account token {} is missing", token.display());
    let mut config = kube::Config::new(url);
    config.default_namespace = namespace.trim().to_owned();
    config.root_cert = Some(roots);
    // kube re-reads the bundle from here about once a minute (CA rotation).
    config.root_cert_file = Some(ca_path);
    Ok((config, token))
}

/// The DER certificates of a PEM bundle.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).map(|c| c.as_ref().to_vec()).collect()
}

/// A client from a kubeconfig file, or in-cluster (service account), or inferred
/// (`KUBECONFIG`, `~/.kube/config`), with the stack described in the module documentation.
pub async fn client(kubeconfig: Option<&Path>, settings: &ApiSettings) -> anyhow::Result<kube::Client> {
    let dir = serviceaccount_dir();
    let (mut config, token_file) = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            let config =
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?;
            (config, None)
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && dir.join("token").exists() => {
            let (config, token) = incluster_config(&dir)?;
            (config, Some(token))
        }
        None => (
            kube::Config::infer()
                .await
                .context("no Kubernetes configuration (in-cluster or kubeconfig) found")?,
            None,
        ),
    };
    // A kubeconfig naming a token file: read it the same way (on every change).
    let token_file = token_file.or_else(|| config.auth_info.token_file.take().map(PathBuf::from));
    config.connect_timeout = Some(settings.connect_timeout);
    // The per-attempt deadline below replaces it: a read timeout would also cut quiet watches.
    config.read_timeout = None;
    config.default_retry = false;
    let user_agent =
        HeaderValue::from_str(&settings.user_agent).context("the user agent is not a header value")?;
    config.headers.push((USER_AGENT, user_agent));
    let token = match token_file {
        Some(path) => Some(TokenFile::open(path)?),
        None => None,
    };
    let policy = RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(5), settings.retries, true)
        .context("bad retry policy")?;
    let client = ClientBuilder::try_from(config)
        .context("cannot build the Kubernetes client")?
        .with_layer(&BufferLayer::new(256))
        .with_layer(&AttemptLayer(Arc::new(Observer {
            timeout: settings.request_timeout,
            retries: settings.retries,
            token,
            throttled: AtomicBool::new(false),
            unauthorized: AtomicBool::new(false),
        })))
        .with_layer(&RetryLayer::new(policy))
        .build();
    Ok(client)
}

/// The bearer token, read from its file again whenever the file's modification time changes
/// (projected service-account tokens rotate about hourly) or the server refused it.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    current: parking_lot::Mutex<(Option<SystemTime>, HeaderValue)>,
}

impl TokenFile {
    fn open(path: PathBuf) -> anyhow::Result<TokenFile> {
        let (modified, value) = Self::read(&path)?;
        Ok(TokenFile { path, current: parking_lot::Mutex::new((modified, value)) })
    }

    fn read(path: &Path) -> anyhow::Result<(Option<SystemTime>, HeaderValue)> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the service-account token {}", path.display()))?;
        let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .with_context(|| format!("the token in {} is not a header value", path.display()))?;
        Ok((modified, value))
    }

    /// The header for the next request; `force` reads the file even if it looks unchanged.
    fn header(&self, force: bool) -> HeaderValue {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut current = self.current.lock();
        if force || modified != current.0 {
            match Self::read(&self.path) {
                Ok(fresh) => *current = fresh,
                Err(e) => tracing::warn!(error = %e, "keeping the last service-account token"),
            }
        }
        current.1.clone()
    }
}

/// What [`Attempt`]s share: the deadline, the token, and whether the server is throttling us
/// now (so only the first throttled answer of a streak is a warning).
#[derive(Debug)]
struct Observer {
    timeout: Duration,
    retries: u32,
    token: Option<TokenFile>,
    throttled: AtomicBool,
    unauthorized: AtomicBool,
}

impl Observer {
    fn observe(&self, method: &str, path: &str, status: u16, retry_after: Option<&str>) {
        if matches!(status, 429 | 503 | 504) {
            KUBE_API.throttled(status);
            if !self.throttled.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    status,
                    retry_after = retry_after.unwrap_or("-"),
                    method,
                    path,
                    retries = self.retries,
                    "Kubernetes API server is throttling or unavailable; requests are retried (honouring Retry-After), the last configuration keeps serving"
                );
            }
            return;
        }
        if self.throttled.swap(false, Ordering::Relaxed) {
            tracing::info!(status, method, path, "Kubernetes API server answers again");
        }
        if status == 401 {
            KUBE_API.unauthorized();
            if !self.unauthorized.swap(true, Ordering::Relaxed) {
                let token =
                    self.token.as_ref().map_or_else(|| "-".to_owned(), |t| t.path.display().to_string());
                tracing::error!(
                    method,
                    path,
                    token,
                    "Kubernetes API server refused our credentials (401 Unauthorized): the service-account token was rejected (expired, or its account deleted); it is read from its file again on every change"
                );
            }
        } else if status < 400 {
            self.unauthorized.store(false, Ordering::Relaxed);
        }
    }

    fn timed_out(&self, method: &str, path: &str, what: &str) {
        KUBE_API.timed_out();
        tracing::warn!(
            method,
            path,
            timeout_ms = self.timeout.as_millis() as u64,
            "Kubernetes API request abandoned: no {what} within its timeout; the caller retries"
        );
    }
}

#[derive(Clone)]
struct AttemptLayer(Arc<Observer>);

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;

    fn layer(&self, inner: S) -> Attempt<S> {
        Attempt { inner, observer: self.0.clone() }
    }
}

/// One attempt of a request, bounded and observed (see the module documentation).
#[derive(Clone)]
pub struct Attempt<S> {
    inner: S,
    observer: Arc<Observer>,
}

fn is_watch(uri: &hyper::Uri) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

impl<S> Service<Request<Body>> for Attempt<S>
where
    S: Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<DeadlineBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<DeadlineBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let observer = self.observer.clone();
        let watch = is_watch(request.uri());
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        if let Some(token) = &observer.token {
            let force = observer.unauthorized.load(Ordering::Relaxed);
            request.headers_mut().insert(AUTHORIZATION, token.header(force));
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + observer.timeout;
            let Ok(response) = tokio::time::timeout_at(deadline, future).await else {
                observer.timed_out(&method, &path, "response head");
                return Err(TimedOut("the response head").into());
            };
            let response = response?;
            let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok());
            observer.observe(&method, &path, response.status().as_u16(), retry_after);
            let deadline = (!watch).then(|| Box::pin(tokio::time::sleep_until(deadline)));
            Ok(response.map(|inner| DeadlineBody { inner, deadline, observer, method, path }))
        })
    }
}

/// A request abandoned at its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API server sent no {0} within the request timeout")]
pub struct TimedOut(&'static str);

/// A response body that fails once the attempt's deadline passes (none for watches).
pub struct DeadlineBody {
    inner: Box<DynBody>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    observer: Arc<Observer>,
    method: String,
    path: String,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            this.observer.timed_out(&this.method, &this.path, "whole response body");
            return Poll::Ready(Some(Err(TimedOut("whole response body").into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_by_their_query() {
        assert!(is_watch(&"/api/v1/services?watch=true&resourceVersion=5".parse().unwrap()));
        assert!(is_watch(&"/api/v1/services?resourceVersion=5&watch=1".parse().unwrap()));
        assert!(!is_watch(&"/api/v1/services?limit=500".parse().unwrap()));
        assert!(!is_watch(&"/api/v1/services?watchx=true".parse().unwrap()));
    }

    #[test]
    fn the_token_is_read_again_when_its_file_changes() {
        let dir = std::env::temp_dir().join(format!("sluice-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let token = TokenFile::open(path.clone()).unwrap();
        assert_eq!(token.header(false), "Bearer one");
        std::fs::write(&path, "two").unwrap();
        // Same second on a coarse file system: forcing (after a 401) reads it regardless.
        assert_eq!(token.header(true), "Bearer two");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token.header(true), "Bearer two", "a missing file keeps the last token");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
