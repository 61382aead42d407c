//! The watchers behind the warm caches: a kube-rs reflector per kind, waking the reconciler on
//! every change; watch errors are logged and retried with backoff, never fatal.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use tokio::sync::Notify;

use super::backoff::Backoff;

/// Runs a reflector for `api` into `writer`, waking `changed` on every event; errors are
/// logged once per attempt and retried with backoff.
pub(super) async fn reflect<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    backoff: Backoff,
    changed: Arc<Notify>,
    modify: impl FnMut(&mut K) + Send + 'static,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let stream = watcher(api, config).modify(modify).backoff(backoff);
    wake_on_events(what, reflector::reflector(writer, stream), changed).await;
}

/// [`reflect`] for Kthena's kinds, which have no compiled-in type.
pub(super) async fn reflect_dynamic(
    what: &'static str,
    api: Api<DynamicObject>,
    writer: Writer<DynamicObject>,
    backoff: Backoff,
    changed: Arc<Notify>,
) {
    let stream = watcher(api, watcher::Config::default()).backoff(backoff);
    wake_on_events(what, reflector::reflector(writer, stream), changed).await;
}

async fn wake_on_events<T>(
    what: &str,
    events: impl Stream<Item = Result<T, watcher::Error>>,
    changed: Arc<Notify>,
) {
    events
        .for_each(|ev| {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => log::warn!("watching {what}: {e}; retrying with backoff"),
            }
            futures::future::ready(())
        })
        .await;
}
