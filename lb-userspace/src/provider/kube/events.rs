//! Kubernetes Events on Ingresses (`events.k8s.io/v1`), written by the elected leader only
//! (`leader::run` calls [`Recorder::record`] while it may write):
//!
//! - `Normal` `Sync` ("Scheduled for sync", ingress-nginx's words) when an Ingress is served;
//! - `Warning` for each translation note about an Ingress, its reason by [`NoteKind`]:
//!   `Refused`, `InvalidValue`, `Conflict`, `AnnotationIgnored`, `TranslationWarning`.
//!
//! Aggregated as client-go's recorders do: an Event stands for a (Ingress, reason, message); it
//! is created when that first appears, and when it disappears and comes back its
//! `series.count` is raised (and `series.lastObservedTime` moved) instead of a new Event being
//! made. While it stays, nothing is written: a rebuild every few seconds writes nothing.
//! Rate-limited per Ingress as client-go's spam filter: a burst of 25 writes, then one per
//! five minutes; a write held back is tried again at a later round.
//!
//! Why `events.k8s.io/v1` rather than core `v1`: its `series` is the aggregation itself, and
//! `reportingController`/`reportingInstance` name the writer (the leader's identity); the API
//! server serves the same objects through core `v1`, so `kubectl describe ingress` and
//! `kubectl get events` show them.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
        networking::v1::Ingress,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};

use super::translate::{CONTROLLER, IngressId, Note, NoteKind};

/// Writes per Ingress before the rate applies (client-go's spam filter burst).
const BURST: f64 = 25.0;
/// Then one write per this long.
const REFILL: Duration = Duration::from_secs(300);
/// Writes per round at most (a round follows each change and each renewal), so thousands of
/// Ingresses after an election do not become a burst of thousands of writes.
pub const WRITES_PER_ROUND: usize = 50;
/// `note` must stay under 1 kB.
const MAX_NOTE: usize = 1000;

/// One Event wanted on an Ingress.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Wanted {
    pub ingress: IngressId,
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new Event.
    Create(Wanted),
    /// The Event `name` happened again: its series count is now `count`.
    Repeat { wanted: Wanted, name: String, count: i32 },
}

/// The Events wanted now: `Sync` for each served Ingress, a Warning per note about one.
pub fn wanted(served: &[IngressId], notes: &[Note]) -> BTreeSet<Wanted> {
    let mut out: BTreeSet<Wanted> = served
        .iter()
        .map(|id| Wanted {
            ingress: id.clone(),
            warning: false,
            reason: "Sync",
            message: "Scheduled for sync".into(),
        })
        .collect();
    for note in notes {
        let Some(ingress) = &note.ingress else { continue };
        let reason = match note.kind {
            NoteKind::Refused => "Refused",
            NoteKind::Invalid => "InvalidValue",
            NoteKind::Conflict { .. } => "Conflict",
            NoteKind::Ignored => "AnnotationIgnored",
            NoteKind::Warning => "TranslationWarning",
        };
        out.insert(Wanted { ingress: ingress.clone(), warning: true, reason, message: note.message.clone() });
    }
    out
}

/// What has been written (the pure half of the recorder).
#[derive(Debug, Default)]
pub struct Correlator {
    /// Every Event written: its name and count.
    written: HashMap<Wanted, (String, i32)>,
    /// What was wanted, and written, at the last round.
    present: BTreeSet<Wanted>,
    buckets: HashMap<IngressId, (f64, Instant)>,
}

impl Correlator {
    /// The writes for this round: each wanted Event that was not present at the last round,
    /// as long as its Ingress has budget. `existing` are the Ingresses that still exist (what
    /// is remembered of the others is dropped).
    pub fn next(
        &mut self,
        wanted: &BTreeSet<Wanted>,
        existing: &BTreeSet<IngressId>,
        now: Instant,
        limit: usize,
    ) -> Vec<Write> {
        self.written.retain(|w, _| existing.contains(&w.ingress));
        self.buckets.retain(|id, _| existing.contains(id));
        self.present.retain(|w| wanted.contains(w));
        let mut writes = Vec::new();
        for w in wanted {
            if writes.len() == limit {
                break;
            }
            if self.present.contains(w) || !self.take_token(&w.ingress, now) {
                continue;
            }
            writes.push(match self.written.get(w) {
                Some((name, count)) => {
                    Write::Repeat { wanted: w.clone(), name: name.clone(), count: count + 1 }
                }
                None => Write::Create(w.clone()),
            });
        }
        writes
    }

    /// Records a write that took (`name` of the Event, its count).
    pub fn written(&mut self, wanted: Wanted, name: String, count: i32) {
        self.present.insert(wanted.clone());
        self.written.insert(wanted, (name, count));
    }

    /// A write that failed gives its token back, to be tried at the next round.
    pub fn failed(&mut self, ingress: &IngressId) {
        if let Some((tokens, _)) = self.buckets.get_mut(ingress) {
            *tokens = (*tokens + 1.0).min(BURST);
        }
    }

    fn take_token(&mut self, ingress: &IngressId, now: Instant) -> bool {
        let (tokens, since) = self.buckets.entry(ingress.clone()).or_insert((BURST, now));
        let refilled = now.saturating_duration_since(*since).as_secs_f64() / REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(BURST);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Writes the Events (the API half).
pub struct Recorder {
    client: Client,
    identity: String,
    correlator: Correlator,
}

impl Recorder {
    pub fn new(client: Client, identity: String) -> Recorder {
        Recorder { client, identity, correlator: Correlator::default() }
    }

    /// One round: writes what changed since the last, at most [`WRITES_PER_ROUND`] and until
    /// `stop` (before the leader's deadline, so the next renewal is not starved); what is left
    /// is written at the next rounds.
    pub async fn record(
        &mut self,
        ingresses: &Store<Ingress>,
        served: &[IngressId],
        notes: &[Note],
        stop: tokio::time::Instant,
    ) {
        let existing: BTreeSet<IngressId> =
            ingresses.state().iter().map(|i| super::translate::id_of(i)).collect();
        let wanted = wanted(served, notes);
        let writes = self.correlator.next(&wanted, &existing, Instant::now(), WRITES_PER_ROUND);
        for write in writes {
            let wanted = match &write {
                Write::Create(w) | Write::Repeat { wanted: w, .. } => w.clone(),
            };
            if tokio::time::Instant::now() >= stop {
                self.correlator.failed(&wanted.ingress);
                continue;
            }
            let Some(ingress) =
                ingresses.get(&ObjectRef::new(&wanted.ingress.name).within(&wanted.ingress.namespace))
            else {
                continue;
            };
            match tokio::time::timeout_at(stop, self.write(&write, &ingress)).await {
                Ok(Ok((name, count))) => self.correlator.written(wanted, name, count),
                Ok(Err(e)) => {
                    tracing::warn!(ingress = %wanted.ingress, reason = wanted.reason, error = %e, "could not write an Event");
                    self.correlator.failed(&wanted.ingress);
                }
                Err(_) => self.correlator.failed(&wanted.ingress),
            }
        }
    }

    async fn write(&self, write: &Write, ingress: &Ingress) -> Result<(String, i32), kube::Error> {
        let now = now_micros();
        match write {
            Write::Create(w) => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &w.ingress.namespace);
                let event = self.event(w, ingress, now);
                let created = api.create(&PostParams::default(), &event).await?;
                Ok((created.metadata.name.unwrap_or_default(), 1))
            }
            Write::Repeat { wanted, name, count } => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &wanted.ingress.namespace);
                let series = EventSeries { count: *count, last_observed_time: now };
                let patch = serde_json::json!({ "series": series });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                Ok((name.clone(), *count))
            }
        }
    }

    fn event(&self, w: &Wanted, ingress: &Ingress, now: MicroTime) -> Event {
        // As client-go names Events: the object's name and a unique suffix.
        let stem: String = w.ingress.name.chars().take(200).collect();
        let name = format!("{stem}.{:x}", now.0.as_nanosecond());
        let mut note = w.message.clone();
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(w.ingress.namespace.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(now),
            type_: Some(if w.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(w.reason.into()),
            action: Some(if w.warning { "Translate" } else { "Sync" }.into()),
            note: Some(note),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.identity.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                namespace: Some(w.ingress.namespace.to_string()),
                name: Some(w.ingress.name.to_string()),
                uid: ingress.metadata.uid.clone(),
                resource_version: ingress.metadata.resource_version.clone(),
                ..ObjectReference::default()
            }),
            ..Event::default()
        }
    }
}

fn now_micros() -> MicroTime {
    let now = k8s_openapi::jiff::Timestamp::now();
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> IngressId {
        IngressId { namespace: "default".into(), name: name.into() }
    }

    fn note(name: &str, kind: NoteKind, message: &str) -> Note {
        Note { ingress: Some(id(name)), message: message.into(), kind }
    }

    #[test]
    fn sync_once_warnings_by_kind_and_notes_without_an_ingress_skipped() {
        let notes = vec![
            note("a", NoteKind::Ignored, "annotation x is unknown; ignored"),
            note("b", NoteKind::Refused, "not served: annotation configuration-snippet: ..."),
            Note { ingress: None, message: "controller ConfigMap".into(), kind: NoteKind::Warning },
        ];
        let wanted = wanted(&[id("a")], &notes);
        let reasons: Vec<(&str, bool, &str)> =
            wanted.iter().map(|w| (&*w.ingress.name, w.warning, w.reason)).collect();
        assert_eq!(reasons, [("a", false, "Sync"), ("a", true, "AnnotationIgnored"), ("b", true, "Refused")]);
    }

    #[test]
    fn an_event_is_written_once_while_it_stays_and_counted_when_it_comes_back() {
        let mut c = Correlator::default();
        let existing: BTreeSet<IngressId> = [id("a")].into();
        let now = Instant::now();
        let one = wanted(&[id("a")], &[note("a", NoteKind::Ignored, "m")]);
        let writes = c.next(&one, &existing, now, 50);
        assert_eq!(writes.len(), 2);
        for (i, w) in writes.into_iter().enumerate() {
            let Write::Create(w) = w else { panic!("created first") };
            c.written(w, format!("e{i}"), 1);
        }
        assert!(c.next(&one, &existing, now, 50).is_empty(), "nothing while it stays");
        let without = wanted(&[id("a")], &[]);
        assert!(c.next(&without, &existing, now, 50).is_empty());
        let writes = c.next(&one, &existing, now, 50);
        assert_eq!(writes.len(), 1);
        let Write::Repeat { name, count, wanted } = &writes[0] else { panic!("{writes:?}") };
        assert_eq!((name.as_str(), *count, wanted.reason), ("e1", 2, "AnnotationIgnored"));
        // A deleted Ingress is forgotten.
        assert!(c.next(&BTreeSet::new(), &BTreeSet::new(), now, 50).is_empty());
        assert!(c.written.is_empty() && c.buckets.is_empty());
    }

    #[test]
    fn each_ingress_gets_a_burst_then_one_write_per_five_minutes() {
        let mut c = Correlator::default();
        let existing: BTreeSet<IngressId> = [id("a"), id("b")].into();
        let start = Instant::now();
        let notes: Vec<Note> = (0..40).map(|i| note("a", NoteKind::Warning, &format!("m{i}"))).collect();
        let mut all = wanted(&[], &notes);
        all.insert(Wanted { ingress: id("b"), warning: true, reason: "Conflict", message: "x".into() });
        let writes = c.next(&all, &existing, start, 50);
        let for_a = writes.iter().filter(|w| matches!(w, Write::Create(w) if w.ingress == id("a"))).count();
        assert_eq!((for_a, writes.len()), (25, 26), "a burst of 25 for a; b has its own budget");
        for w in writes {
            let Write::Create(w) = w else { unreachable!() };
            c.written(w, "n".into(), 1);
        }
        assert!(c.next(&all, &existing, start + Duration::from_secs(299), 50).is_empty());
        assert_eq!(c.next(&all, &existing, start + Duration::from_secs(301), 50).len(), 1);
        // A failed write gives its token back.
        c.failed(&id("a"));
        assert_eq!(c.next(&all, &existing, start + Duration::from_secs(302), 50).len(), 1);
    }

    #[test]
    fn a_round_writes_at_most_its_limit_and_the_rest_follows() {
        let mut c = Correlator::default();
        let ids: Vec<IngressId> = (0..120).map(|i| id(&format!("i{i}"))).collect();
        let existing: BTreeSet<IngressId> = ids.iter().cloned().collect();
        let all = wanted(&ids, &[]);
        let now = Instant::now();
        let mut rounds = 0;
        loop {
            let writes = c.next(&all, &existing, now, WRITES_PER_ROUND);
            if writes.is_empty() {
                break;
            }
            assert!(writes.len() <= WRITES_PER_ROUND);
            for w in writes {
                let Write::Create(w) = w else { unreachable!() };
                c.written(w, "n".into(), 1);
            }
            rounds += 1;
        }
        assert_eq!((rounds, c.present.len()), (3, 120));
    }
}
