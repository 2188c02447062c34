//! Watches: a chunked stream of JSON lines resumed from a resourceVersion, with ADDED events
//! for the current state, bookmarks, timeouts, `410 Gone` past the history, and selector
//! transitions turned into ADDED and DELETED.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::{Response, StatusCode, body::Frame};
use serde_json::{Value, json};

use super::{
    Shared,
    http::{Body, Target, status_body},
    lock,
    store::{Change, EventType, Filter},
};

/// Starts a watch: events after the version asked for (or the current state as `ADDED`
/// events when none), then live changes, bookmarks and the timeout.
pub(super) fn watch_response(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let filter = Filter::new(target.resource, target.namespace.clone(), query);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut first = Vec::new();
    let start_rv;
    {
        let store = lock(&shared.store);
        let resumable = store.resumable(target.resource);
        match from {
            Some(rv) if rv < resumable => {
                let event = json!({
                    "type": "ERROR",
                    "object": status_body(410, "Expired", &format!("too old resource version: {rv} ({resumable})")),
                });
                first.push(line(&event));
                start_rv = None;
            }
            Some(rv) => {
                for change in store.changes_after(rv) {
                    if let Some(event) = event_for(&filter, change) {
                        first.push(line(&event));
                    }
                }
                start_rv = Some(store.rv);
            }
            None => {
                for (key, object) in &store.objects {
                    if filter.in_scope(key) && filter.matches(object) {
                        first.push(line(&json!({"type": "ADDED", "object": object})));
                    }
                }
                start_rv = Some(store.rv);
            }
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        shared.open_watches.fetch_add(1, Ordering::Relaxed);
        for chunk in first {
            if sender.send(chunk).await.is_err() {
                shared.open_watches.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(mut sent_rv) = start_rv {
            let mut changed = shared.changed.subscribe();
            let mut cut = shared.cut_watches.subscribe();
            let mut cut_all = shared.cut_connections.subscribe();
            let deadline = tokio::time::Instant::now() + timeout;
            let interval = *lock(&shared.bookmark_interval);
            let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                // A cut wins over changes that came after it.
                if cut.has_changed().unwrap_or(true) || cut_all.has_changed().unwrap_or(true) {
                    break;
                }
                // Send whatever happened since the last look.
                let pending: Vec<Bytes> = {
                    let store = lock(&shared.store);
                    let events = store
                        .changes_after(sent_rv)
                        .filter_map(|c| event_for(&filter, c))
                        .map(|e| line(&e))
                        .collect();
                    sent_rv = store.rv;
                    events
                };
                for chunk in pending {
                    if sender.send(chunk).await.is_err() {
                        shared.open_watches.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
                tokio::select! {
                    biased;
                    _ = cut.changed() => break,
                    _ = cut_all.changed() => break,
                    r = changed.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = bookmark.tick(), if bookmarks => {
                        let event = json!({
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": filter.resource.api_version(),
                                "kind": filter.resource.kind,
                                "metadata": {"resourceVersion": sent_rv.to_string()},
                            },
                        });
                        if sender.send(line(&event)).await.is_err() {
                            break;
                        }
                    }
                    _ = sender.closed() => break,
                }
            }
        }
        shared.open_watches.fetch_sub(1, Ordering::Relaxed);
    });
    streaming(receiver)
}

/// A watch that answers its head and then says nothing (no events, no bookmarks) until it is
/// cut, its black hole is lifted or the client goes: a black-holed stream.
pub(super) fn silent_watch(shared: &Arc<Shared>, _target: &Target) -> Response<Body> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
    let shared = shared.clone();
    tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        shared.open_watches.fetch_add(1, Ordering::Relaxed);
        let (mut cut, mut cut_all, mut lifted) =
            (shared.cut_watches.subscribe(), shared.cut_connections.subscribe(), shared.lifted.subscribe());
        tokio::select! {
            _ = cut.changed() => {}
            _ = cut_all.changed() => {}
            _ = lifted.changed() => {}
            _ = sender.closed() => {}
        }
        shared.open_watches.fetch_sub(1, Ordering::Relaxed);
    });
    streaming(receiver)
}

/// A 200 whose body is the chunks sent on `receiver`, ending when its sender is dropped.
fn streaming(receiver: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), receiver))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

pub(super) fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The event a watcher with `filter` sees for `change`, if any: a change that makes an object
/// match is `ADDED`, one that makes it stop matching is `DELETED`.
pub(super) fn event_for(filter: &Filter, change: &Change) -> Option<Value> {
    if !filter.in_scope(&change.key) {
        return None;
    }
    let now = filter.matches(&change.object);
    let kind = match change.kind {
        EventType::Modified => {
            let before = change.previous.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            }
        }
        kind if now => kind,
        _ => return None,
    };
    Some(json!({"type": kind.name(), "object": change.object}))
}
