//! `sluice webhook`: the validating admission webhook. It lists and watches the cluster's
//! IngressClasses, Ingresses, Services and ConfigMaps, then serves AdmissionReviews over TLS
//! (the certificate and key files of a mounted Secret, reloaded when they rotate), each decided
//! by the controller's translation (`provider::kube::admission`). See docs/KUBERNETES.md.

use std::{
    convert::Infallible, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{LogFormat, init_logging, namespaced_name};
use crate::{
    config::Config,
    provider::kube::{
        admission::{AdmissionStores, Reviewer},
        api,
        translate::{Settings, Translator},
    },
    proxy::body::{self, ProxyBody},
    tls::file_cert::FileCertificate,
};

/// The largest review accepted: ingress-nginx's limit (three times the API server's 3 MiB).
const MAX_BODY: usize = 9 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain to serve (e.g. `tls.crt` of the mounted Secret); reloaded when it
    /// changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate (`tls.key`).
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: PathBuf,
    /// Kubeconfig file to reach the API server with (default: in-cluster, then KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// IngressClass name served, as `sluice run --ingress-class`.
    #[arg(long, default_value = "sluice")]
    pub ingress_class: String,
    /// ingress-nginx's controller ConfigMap, as `sluice run --nginx-configmap`.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = namespaced_name)]
    pub nginx_configmap: Option<String>,
    /// The controller's default backend Service, as `sluice run --default-backend-service`
    /// (whether `custom-http-errors` has an error backend depends on it).
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = namespaced_name)]
    pub default_backend_service: Option<String>,
    /// As `sluice run --default-ssl-certificate`, so the controller's arguments can be given
    /// unchanged; the webhook reads no Secret, and none of its decisions depends on the
    /// certificate.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = namespaced_name)]
    pub default_ssl_certificate: Option<String>,
    /// The base configuration Ingresses are translated onto, as `sluice check --ingress FILE`
    /// (default: listeners on 80 and 443 with TLS, as deploy/ ships them).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub fn run(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let base = match &args.config {
        Some(file) => Config::from_file(file)?,
        None => Config::from_yaml(super::check::KUBERNETES_BASE, "the default base")?,
    };
    let certificate = Arc::new(
        FileCertificate::load(&args.tls_cert_file, &args.tls_key_file)
            .context("the webhook's TLS certificate")?,
    );
    let tls = Arc::new(certificate.server_config(&[b"h2", b"http/1.1"])?);
    let reviewer = Arc::new(Reviewer::new(
        Translator::new(Settings {
            ingress_class: args.ingress_class.clone(),
            controller_configmap: args.nginx_configmap.clone(),
            default_backend_service: args.default_backend_service.clone(),
            default_ssl_certificate: args.default_ssl_certificate.clone(),
            ..Settings::default()
        }),
        base,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let settings = api::ApiSettings::default();
        let client = api::client(args.kubeconfig.as_deref(), &settings).await?;
        let stores = AdmissionStores::start(&client, settings.watch_timeout);
        tracing::info!("listing IngressClasses, Ingresses, Services and ConfigMaps");
        tokio::select! {
            () = stores.ready() => {}
            () = stop_signal() => return Ok(ExitCode::SUCCESS),
        }
        // Bound only now: a review before the first listing would judge an empty cluster.
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(address = %args.listen, "serving admission reviews");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::select! {
            () = serve(listener, acceptor, reviewer, stores) => {}
            () = stop_signal() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    reviewer: Arc<Reviewer>,
    stores: AdmissionStores,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (acceptor, reviewer, stores) = (acceptor.clone(), reviewer.clone(), stores.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            let service = service_fn(move |request| {
                let (reviewer, stores) = (reviewer.clone(), stores.clone());
                async move { Ok::<_, Infallible>(answer(request, reviewer, stores).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// `POST` (any path: one webhook serves every kind) with an AdmissionReview; `GET /healthz`.
async fn answer(
    request: Request<Incoming>,
    reviewer: Arc<Reviewer>,
    stores: AdmissionStores,
) -> Response<ProxyBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, _) => {}
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n".into()),
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the review is over {MAX_BODY} bytes\n"));
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}\n")),
    };
    // The translation is CPU work of up to tens of milliseconds on a large cluster.
    let decided = tokio::task::spawn_blocking(move || reviewer.review(&body, &stores.state())).await;
    match decided {
        Ok(Ok(review)) => {
            let mut response = Response::new(body::text(Bytes::from(review.to_string())));
            response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        Ok(Err(bad)) => {
            tracing::warn!(error = %bad, "admission: malformed review");
            text(StatusCode::BAD_REQUEST, format!("{bad}\n"))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("the review failed: {e}\n")),
    }
}

fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(body::text(message));
    *response.status_mut() = status;
    response
}
