//! Error pages: a response whose status the route's `error_pages` list is dropped and the
//! request asked again of the error backend, as nginx's `error_page CODE = @custom_...` with
//! `proxy_intercept_errors on` (ingress-nginx's `custom-http-errors`).

use std::time::Duration;

use http::{Response, header::ACCEPT, request::Parts};

use super::{Affinity, Connection, Exchange, Outcome, RequestClient, forward, path_and_query};
use crate::proxy::{
    body::ProxyBody,
    headers::UpstreamHeaders,
    http1::client::{Outgoing, RequestFraming},
    route::Route,
    snapshot::Snapshot,
    upstream::request_body::RequestBody,
};

/// The request as it went upstream: the client's head, the fields sent, who it is for and the
/// request's host.
pub(super) struct Sent<'r> {
    pub parts: &'r Parts,
    pub headers: &'r UpstreamHeaders<'r>,
    pub client: &'r RequestClient<'r>,
    pub host: &'r str,
}

/// `response` unless the route sends its status to the error backend; then the error
/// backend's answer, as it is (nginx does not change it; an error backend that cannot be
/// reached gives Sluice's own 502, 503 or 504, as nginx's would), never intercepted again. The
/// request goes with the same method, path `/`, no body, the client's fields and the error
/// fields.
pub(super) async fn intercept<'s>(
    response: Response<ProxyBody>,
    route: &Route,
    sent: Sent<'_>,
    connection: &Connection,
    snapshot: &'s Snapshot,
    outcome: &mut Outcome<'s>,
) -> Response<ProxyBody> {
    let status = response.status();
    let Some(pages) = route.error_pages.as_ref().filter(|p| p.intercepts(status)) else { return response };
    let Some(group) = snapshot.backends.get(pages.backend) else { return response };
    // The backend's connection and slot go back before the error backend is asked.
    drop(response);
    let request_id = sent.headers.request_id().clone();
    let fields = pages.request_fields(
        status,
        sent.parts.headers.get(ACCEPT),
        path_and_query(&sent.parts.uri),
        &request_id,
    );
    let headers = UpstreamHeaders::new(&sent.parts.headers, &sent.client.forwarded, sent.host, None)
        .with_changes(Some(&fields));
    let exchange = Exchange {
        group,
        outgoing: Outgoing {
            method: &sent.parts.method,
            target: "/",
            headers: &headers,
            framing: RequestFraming::Empty,
        },
        body: RequestBody::empty(),
        request_id,
        hash_key: None,
        timeout: Duration::from_millis(group.config.timeouts.request_ms),
        user_agent: None,
        affinity: Affinity { pinned: None, issue_cookie: false },
        client_upgrade: None,
    };
    group.retry_budget.deposit();
    forward(exchange, connection, snapshot, outcome).await
}
