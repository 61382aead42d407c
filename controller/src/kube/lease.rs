//! Leader election over a `coordination.k8s.io/v1` Lease: a pure state machine ([`decide`],
//! [`next_record`], [`release`]) and the thin client loop ([`run`]) that reads the Lease, writes
//! what the state machine says and publishes "am I the leader" on a watch channel.
//!
//! Times are Unix milliseconds so the decisions are testable without a clock. Expiry uses the
//! Lease's own `renewTime` (like client-go without its observed-time refinement): clocks of the
//! replicas are assumed to agree to well within the lease duration. Writes carry the read
//! `resourceVersion`, so two candidates racing for a free Lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use tokio::sync::watch;

use super::backoff::Backoff;

/// The parts of a Lease the election reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub acquire_ms: Option<i64>,
    pub renew_ms: Option<i64>,
    pub duration_s: Option<i32>,
    pub transitions: i32,
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it holding it.
    Create,
    /// Free (no holder) or expired: take it over.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else holds a live Lease: stay a follower.
    Follow { holder: String },
}

/// Timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `leaseDurationSeconds` written into the Lease.
    pub duration: Duration,
    /// How often the Lease is read and renewed (or contested).
    pub renew_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

fn is_empty(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(str::is_empty)
}

/// The decision for candidate `me` at `now_ms`, given the Lease as read (`None`: not found).
/// A Lease without a duration expires `default_duration_s` after its renewal; one without a
/// renewal time is expired.
pub fn decide(
    current: Option<&Record>,
    me: &str,
    now_ms: i64,
    default_duration_s: i32,
) -> Decision {
    let Some(rec) = current else {
        return Decision::Create;
    };
    if is_empty(&rec.holder) {
        return Decision::Acquire;
    }
    if rec.holder.as_deref() == Some(me) {
        return Decision::Renew;
    }
    let duration_ms = i64::from(rec.duration_s.unwrap_or(default_duration_s).max(0)) * 1000;
    match rec.renew_ms {
        Some(renew) if renew.saturating_add(duration_ms) > now_ms => Decision::Follow {
            holder: rec.holder.clone().unwrap_or_default(),
        },
        _ => Decision::Acquire,
    }
}

/// The record to write for `decision` (`None` for [`Decision::Follow`]).
pub fn next_record(
    current: Option<&Record>,
    decision: &Decision,
    me: &str,
    now_ms: i64,
    duration_s: i32,
) -> Option<Record> {
    let base = current.cloned().unwrap_or_default();
    match decision {
        Decision::Follow { .. } => None,
        Decision::Renew => Some(Record {
            renew_ms: Some(now_ms),
            duration_s: Some(duration_s),
            acquire_ms: base.acquire_ms.or(Some(now_ms)),
            ..base
        }),
        Decision::Create | Decision::Acquire => Some(Record {
            holder: Some(me.to_string()),
            acquire_ms: Some(now_ms),
            renew_ms: Some(now_ms),
            duration_s: Some(duration_s),
            transitions: if matches!(decision, Decision::Create) {
                0
            } else {
                base.transitions.saturating_add(1)
            },
        }),
    }
}

/// The record that gives the Lease up (`None` when `me` does not hold it).
pub fn release(current: &Record, me: &str) -> Option<Record> {
    (current.holder.as_deref() == Some(me)).then(|| Record {
        holder: None,
        ..current.clone()
    })
}

/// Whether a leader whose last successful renewal was at `last_renew_ms` may still act: it
/// steps down two thirds into the lease, before anyone else may take over.
pub fn still_leader(last_renew_ms: i64, now_ms: i64, duration: Duration) -> bool {
    let deadline_ms = i64::try_from(duration.as_millis() * 2 / 3).unwrap_or(i64::MAX);
    now_ms < last_renew_ms.saturating_add(deadline_ms)
}

// ---------------------------------------------------------------- client side

fn to_ms(t: &MicroTime) -> i64 {
    t.0.as_millisecond()
}

fn from_ms(ms: i64) -> Option<MicroTime> {
    Timestamp::from_millisecond(ms).ok().map(MicroTime)
}

/// The election fields of a Lease.
pub fn record_of(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        acquire_ms: spec.acquire_time.as_ref().map(to_ms),
        renew_ms: spec.renew_time.as_ref().map(to_ms),
        duration_s: spec.lease_duration_seconds,
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

fn spec_of(rec: &Record) -> LeaseSpec {
    LeaseSpec {
        holder_identity: rec.holder.clone(),
        acquire_time: rec.acquire_ms.and_then(from_ms),
        renew_time: rec.renew_ms.and_then(from_ms),
        lease_duration_seconds: rec.duration_s,
        lease_transitions: Some(rec.transitions),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub timing: Timing,
}

impl Candidate {
    fn duration_s(&self) -> i32 {
        i32::try_from(self.timing.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: read, decide, write. `Ok(true)` when we hold the Lease afterwards.
    async fn round(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let now = now_ms();
        let lease = api.get_opt(&self.name).await?;
        let current = lease.as_ref().map(record_of);
        let decision = decide(current.as_ref(), &self.identity, now, self.duration_s());
        let Some(next) = next_record(
            current.as_ref(),
            &decision,
            &self.identity,
            now,
            self.duration_s(),
        ) else {
            if let Decision::Follow { holder } = decision {
                log::debug!("lease {}/{} held by {holder}", self.namespace, self.name);
            }
            return Ok(false);
        };
        match lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec_of(&next)),
                };
                api.create(&PostParams::default(), &lease).await?;
            }
            Some(lease) => self.write(api, &lease, &next).await?,
        }
        if decision != Decision::Renew {
            log::info!(
                "lease {}/{} acquired by {}",
                self.namespace,
                self.name,
                self.identity
            );
        }
        Ok(true)
    }

    /// A merge patch guarded by the read `resourceVersion` (a conflict means someone else won).
    async fn write(&self, api: &Api<Lease>, read: &Lease, rec: &Record) -> Result<(), kube::Error> {
        let spec = spec_of(rec);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": read.metadata.resource_version},
            "spec": {
                // Explicit null clears the holder on release.
                "holderIdentity": spec.holder_identity,
                "acquireTime": spec.acquire_time,
                "renewTime": spec.renew_time,
                "leaseDurationSeconds": spec.lease_duration_seconds,
                "leaseTransitions": spec.lease_transitions,
            }
        });
        api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Gives the Lease up if we hold it (best effort, logged).
    async fn give_up(&self, api: &Api<Lease>) {
        let result = async {
            let Some(lease) = api.get_opt(&self.name).await? else {
                return Ok(false);
            };
            let Some(rec) = release(&record_of(&lease), &self.identity) else {
                return Ok(false);
            };
            self.write(api, &lease, &rec).await.map(|()| true)
        }
        .await;
        match result {
            Ok(true) => log::info!("lease {}/{} released", self.namespace, self.name),
            Ok(false) => {}
            Err(e) => log::warn!(
                "lease {}/{}: release failed: {e}",
                self.namespace,
                self.name
            ),
        }
    }
}

/// Runs the election until `stop` fires, publishing leadership on `leader`; releases the
/// Lease on the way out.
pub async fn run(
    client: Client,
    cand: Candidate,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    mut backoff: Backoff,
) {
    let api: Api<Lease> = Api::namespaced(client, &cand.namespace);
    let mut last_renew: Option<i64> = None;
    loop {
        let wait = match cand.round(&api).await {
            Ok(held) => {
                backoff.reset();
                last_renew = held.then(now_ms);
                leader.send_if_modified(|l| std::mem::replace(l, held) != held);
                cand.timing.renew_every
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!(
                    "lease {}/{}: {e}; retrying in {delay:?}",
                    cand.namespace,
                    cand.name
                );
                let held =
                    last_renew.is_some_and(|t| still_leader(t, now_ms(), cand.timing.duration));
                if !held {
                    last_renew = None;
                }
                leader.send_if_modified(|l| std::mem::replace(l, held) != held);
                delay.min(cand.timing.renew_every)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    leader.send_replace(false);
    cand.give_up(&api).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(holder: &str, renew_ms: i64, duration_s: i32) -> Record {
        Record {
            holder: Some(holder.into()),
            acquire_ms: Some(renew_ms),
            renew_ms: Some(renew_ms),
            duration_s: Some(duration_s),
            transitions: 3,
        }
    }

    #[test]
    fn missing_lease_is_created() {
        assert_eq!(decide(None, "a", 1000, 15), Decision::Create);
        let rec = next_record(None, &Decision::Create, "a", 1000, 15).unwrap();
        assert_eq!(rec.holder.as_deref(), Some("a"));
        assert_eq!(rec.transitions, 0);
        assert_eq!(rec.renew_ms, Some(1000));
    }

    #[test]
    fn free_lease_is_acquired() {
        let mut rec = held("b", 1000, 15);
        rec.holder = None;
        assert_eq!(decide(Some(&rec), "a", 2000, 15), Decision::Acquire);
        rec.holder = Some(String::new());
        assert_eq!(decide(Some(&rec), "a", 2000, 15), Decision::Acquire);
    }

    #[test]
    fn live_lease_of_another_is_followed() {
        let rec = held("b", 10_000, 15);
        assert_eq!(
            decide(Some(&rec), "a", 24_999, 15),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            next_record(
                Some(&rec),
                &decide(Some(&rec), "a", 24_999, 15),
                "a",
                24_999,
                15
            ),
            None
        );
    }

    #[test]
    fn expired_lease_is_taken_over_and_counts_a_transition() {
        let rec = held("b", 10_000, 15);
        let d = decide(Some(&rec), "a", 25_000, 15);
        assert_eq!(d, Decision::Acquire);
        let next = next_record(Some(&rec), &d, "a", 25_000, 15).unwrap();
        assert_eq!(next.holder.as_deref(), Some("a"));
        assert_eq!(next.transitions, 4);
        assert_eq!(next.acquire_ms, Some(25_000));
    }

    #[test]
    fn lease_without_renew_time_is_expired() {
        let mut rec = held("b", 0, 15);
        rec.renew_ms = None;
        assert_eq!(decide(Some(&rec), "a", 1, 15), Decision::Acquire);
    }

    #[test]
    fn lease_without_duration_uses_the_default() {
        let mut rec = held("b", 10_000, 15);
        rec.duration_s = None;
        assert!(matches!(
            decide(Some(&rec), "a", 14_000, 5),
            Decision::Follow { .. }
        ));
        assert_eq!(decide(Some(&rec), "a", 15_000, 5), Decision::Acquire);
    }

    #[test]
    fn own_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let rec = held("a", 10_000, 15);
        let d = decide(Some(&rec), "a", 99_000, 15);
        assert_eq!(d, Decision::Renew);
        let next = next_record(Some(&rec), &d, "a", 99_000, 15).unwrap();
        assert_eq!(next.renew_ms, Some(99_000));
        assert_eq!(next.acquire_ms, Some(10_000));
        assert_eq!(next.transitions, 3);
    }

    #[test]
    fn release_clears_only_our_own_holder() {
        let rec = held("a", 10_000, 15);
        assert_eq!(release(&rec, "a").unwrap().holder, None);
        assert_eq!(release(&rec, "b"), None);
    }

    #[test]
    fn leader_steps_down_before_the_lease_can_be_taken() {
        let d = Duration::from_secs(15);
        assert!(still_leader(0, 9_999, d));
        assert!(!still_leader(0, 10_000, d));
    }

    #[test]
    fn record_round_trips_through_a_lease() {
        let rec = held("a", 1_700_000_000_123, 15);
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(spec_of(&rec)),
        };
        assert_eq!(record_of(&lease), rec);
    }
}
