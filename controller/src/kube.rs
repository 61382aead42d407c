//! Kubernetes mode: watch ModelRoutes, ModelServers and Pods (and Kthena's router configuration
//! ConfigMap, for the scheduler), and keep one object (a ConfigMap with the Envoy files, or an
//! Istio EnvoyFilter) server-side applied from them.
//!
//! Shape (kube-rs controller style): reflectors keep warm caches of the three kinds; any change,
//! debounced, runs one [`reconcile`] of the whole world (convert -> validate -> compile ->
//! render -> apply only when changed -> status conditions and Warning Events); a failed
//! reconcile is retried with exponential backoff ([`backoff`]). Only the holder of the Lease
//! ([`lease`]) writes anything; the others keep their caches warm. An invalid input never
//! replaces the last good object.
//!
//! Owns only the I/O with the API server; parsing, validation, compile and rendering are the
//! file mode's ([`convert`] and [`render`] adapt them). Must not touch the filter.

pub mod backoff;
pub mod cli;
pub mod convert;
pub mod crd;
pub mod lease;
mod reflect;
pub mod render;
pub mod status;

use self::reflect::{reflect, reflect_dynamic};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use filter_config::Settings;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{store::Writer, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use self::backoff::Backoff;
use self::convert::{ROUTE_KIND, SERVER_KIND};
pub use self::render::{render_for_kube, OutputKind, Target};
use crate::compile::Compiled;
use crate::diag::Diagnostics;
use crate::kthena::API_GROUP;

/// Where Kthena's Helm chart puts its router configuration.
pub const DEFAULT_ROUTER_CONFIG: (&str, &str) = ("kthena-system", "kthena-router-config");

/// Version of the Kthena resources we watch.
pub const KTHENA_VERSION: &str = "v1alpha1";

/// Every API call the controller makes, as RBAC rules `(apiGroup, resource, verbs)`.
/// `deploy/` must grant at least these; the fake-API-server test checks every call it sees is
/// covered. SSA creates with PATCH, but `create` is listed too for API servers that check it.
pub const REQUIRED_PERMISSIONS: &[(&str, &str, &[&str])] = &[
    (API_GROUP, "modelroutes", &["get", "list", "watch"]),
    (API_GROUP, "modelservers", &["get", "list", "watch"]),
    (API_GROUP, "modelroutes/status", &["get", "patch", "update"]),
    (
        API_GROUP,
        "modelservers/status",
        &["get", "patch", "update"],
    ),
    ("", "pods", &["get", "list", "watch"]),
    (
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "networking.istio.io",
        "envoyfilters",
        &["get", "create", "patch"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "patch", "update"],
    ),
];

/// Everything `kube` mode needs besides the client.
#[derive(Debug, Clone)]
pub struct Options {
    /// What to apply and where.
    pub target: Target,
    pub settings: Settings,
    pub gateway: crate::gateway::Gateway,
    /// Kthena's router configuration ConfigMap (`namespace`, `name`), watched so scheduler
    /// changes apply live; `None`: the scheduler settings stay as given.
    pub router_config: Option<(String, String)>,
    /// Namespace whose ModelRoutes / ModelServers / Pods are watched (`None`: all).
    pub watch_namespace: Option<String>,
    pub field_manager: String,
    /// Lease (in `target.namespace`) and our identity in it.
    pub lease_name: String,
    pub identity: String,
    pub lease_timing: lease::Timing,
    /// Quiet time after a change before rebuilding (bursts become one apply).
    pub debounce: Duration,
    /// Retry delays for failed API calls: doubling from the first to the second.
    pub backoff: (Duration, Duration),
}

impl Options {
    /// Production defaults for `target`.
    pub fn new(target: Target) -> Self {
        Options {
            target,
            settings: Settings::default(),
            gateway: crate::gateway::Gateway::default(),
            router_config: Some((
                DEFAULT_ROUTER_CONFIG.0.into(),
                DEFAULT_ROUTER_CONFIG.1.into(),
            )),
            watch_namespace: None,
            field_manager: "modelroute-controller".into(),
            lease_name: "modelroute-controller".into(),
            identity: default_identity(),
            lease_timing: lease::Timing::default(),
            debounce: Duration::from_millis(500),
            backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        }
    }

    fn new_backoff(&self) -> Backoff {
        Backoff::new(self.backoff.0, self.backoff.1)
    }
}

/// `$POD_NAME` or `$HOSTNAME` (unique per replica in a Deployment), else a name with the pid.
pub fn default_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("modelroute-controller-{}", std::process::id()))
}

/// API resource of ModelRoute / ModelServer.
pub fn kthena_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(API_GROUP, KTHENA_VERSION, kind))
}

fn dynamic_api(client: &Client, ns: Option<&str>, ar: &ApiResource) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// The warm caches.
#[derive(Clone)]
struct Stores {
    routes: Store<DynamicObject>,
    servers: Store<DynamicObject>,
    pods: Store<Pod>,
    /// The router configuration ConfigMap (empty when not watched or absent).
    router_config: Store<ConfigMap>,
}

/// What the reconciler remembers between runs.
#[derive(Default)]
struct State {
    /// Hash of the object last applied successfully (apply only on change).
    applied: Option<u64>,
    /// Diagnostics last logged (log a set once, not every run).
    logged: Option<Diagnostics>,
    /// Per object (`Kind ns/name`): the errors last published as Events.
    evented: BTreeMap<String, Vec<String>>,
    /// Per object: conditions whose status patch was refused as unsupported (404): not retried
    /// until they change.
    status_refused: BTreeMap<String, Vec<status::Condition>>,
}

struct Ctx {
    client: Client,
    opts: Options,
    stores: Stores,
    recorder: Recorder,
}

/// One build of the whole world from the caches.
struct Build {
    diags: Diagnostics,
    compiled: Option<Compiled>,
}

fn build(stores: &Stores, opts: &Options) -> Build {
    let mut diags = Diagnostics::default();
    let mut settings = opts.settings.clone();
    if let Some(scheduler) = router_config(stores, opts, &mut diags) {
        settings.scheduler = scheduler;
    }
    let inputs = convert::inputs(
        &stores.routes.state(),
        &stores.servers.state(),
        &stores.pods.state(),
        &mut diags,
    );
    crate::validate::validate(&inputs, &mut diags);
    let compiled = (!diags.has_errors()).then(|| {
        crate::compile::compile(&inputs, settings, &mut diags)
            .with_gateway(opts.gateway.clone(), &mut diags)
    });
    Build { diags, compiled }
}

/// The scheduler settings of Kthena's router configuration ConfigMap, when it exists (its
/// metrics timing stays the flags'); an invalid one is an error, so the last good object stays.
fn router_config(
    stores: &Stores,
    opts: &Options,
    diags: &mut Diagnostics,
) -> Option<filter_config::Scheduler> {
    let (ns, name) = opts.router_config.as_ref()?;
    let cm = stores.router_config.state().into_iter().find(|cm| {
        cm.metadata.name.as_deref() == Some(name.as_str())
            && cm.metadata.namespace.as_deref() == Some(ns.as_str())
    })?;
    let mut doc = serde_json::to_value(cm.as_ref()).ok()?;
    if let Some(o) = doc.as_object_mut() {
        o.insert("apiVersion".into(), json!("v1"));
        o.insert("kind".into(), json!("ConfigMap"));
    }
    let source = crate::load::Source {
        path: format!("ConfigMap {ns}/{name}").into(),
        content: serde_json::to_vec(&doc).ok()?,
    };
    crate::router_config::from_source(&source, &opts.settings.scheduler, diags)
}

/// One reconcile: build, apply when changed (leader only), then conditions and Events.
/// An `Err` is retried with backoff; status and Event failures are logged and retried too,
/// except a status subresource the CRD does not have.
async fn reconcile(ctx: &Ctx, state: &mut State, leader: bool) -> Result<(), kube::Error> {
    let b = build(&ctx.stores, &ctx.opts);
    if state.logged.as_ref() != Some(&b.diags) {
        for w in &b.diags.warnings {
            log::warn!("{w}");
        }
        for e in &b.diags.errors {
            log::error!("{e}");
        }
        state.logged = Some(b.diags.clone());
    }
    if !leader {
        return Ok(());
    }
    let target = &ctx.opts.target;
    match &b.compiled {
        Some(compiled) => {
            let obj = match render_for_kube(compiled, target) {
                Ok(obj) => obj,
                Err(e) => {
                    log::error!("cannot render {}/{}: {e}", target.namespace, target.name);
                    return report(ctx, state, &b.diags).await;
                }
            };
            let hash = render::object_hash(&obj);
            if state.applied != Some(hash) {
                let api: Api<DynamicObject> = Api::namespaced_with(
                    ctx.client.clone(),
                    &target.namespace,
                    &target.api_resource(),
                );
                let pp = PatchParams::apply(&ctx.opts.field_manager).force();
                api.patch(&target.name, &pp, &Patch::Apply(&obj)).await?;
                state.applied = Some(hash);
                log::info!(
                    "applied {} {}/{}: {}",
                    obj["kind"].as_str().unwrap_or(""),
                    target.namespace,
                    target.name,
                    crate::summary(compiled)
                );
            }
        }
        None => log::error!(
            "invalid input ({} errors); keeping the last applied {}/{}",
            b.diags.errors.len(),
            target.namespace,
            target.name
        ),
    }
    report(ctx, state, &b.diags).await
}

/// Status conditions and Events for every ModelRoute and ModelServer.
async fn report(ctx: &Ctx, state: &mut State, diags: &Diagnostics) -> Result<(), kube::Error> {
    let servers = ctx.stores.servers.state();
    let server_keys: BTreeSet<String> = servers.iter().map(|s| convert::key(s)).collect();
    let mut first_err = None;
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let kinds = [
        (ROUTE_KIND, ctx.stores.routes.state()),
        (SERVER_KIND, servers),
    ];
    let mut seen = BTreeSet::new();
    for (kind, objs) in kinds {
        let ar = kthena_resource(kind);
        for obj in objs {
            let key = convert::key(&obj);
            let id = format!("{kind} {key}");
            seen.insert(id.clone());
            let errors = status::object_errors(diags, kind, &key);
            let missing = (kind == ROUTE_KIND).then(|| {
                let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                status::missing_servers(&obj.data["spec"], ns, &server_keys)
            });
            let current = status::current(obj.data.get("status"));
            let desired = status::with_transition_times(
                status::conditions(&errors, missing.as_deref(), obj.metadata.generation),
                &current,
                &now,
            );
            if let Err(e) = events(ctx, state, &obj, &ar, &id, &errors).await {
                first_err.get_or_insert(e);
            }
            let refused = state
                .status_refused
                .get(&id)
                .is_some_and(|c| status::up_to_date(&desired, c));
            if status::up_to_date(&desired, &current) || refused {
                continue;
            }
            match patch_status(ctx, &obj, &ar, &desired).await {
                Ok(()) => {
                    state.status_refused.remove(&id);
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {
                    log::warn!(
                        "{id}: cannot write status ({}); is the status subresource missing?",
                        s.message
                    );
                    state.status_refused.insert(id, desired);
                }
                Err(e) => {
                    log::warn!("{id}: status patch failed: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    state.evented.retain(|id, _| seen.contains(id));
    state.status_refused.retain(|id, _| seen.contains(id));
    first_err.map_or(Ok(()), Err)
}

/// One Warning Event per error, when the object's set of errors changed since last published.
async fn events(
    ctx: &Ctx,
    state: &mut State,
    obj: &DynamicObject,
    ar: &ApiResource,
    id: &str,
    errors: &[String],
) -> Result<(), kube::Error> {
    if state.evented.get(id).map(Vec::as_slice).unwrap_or(&[]) == errors {
        return Ok(());
    }
    let reference = obj.object_ref(ar);
    for e in errors {
        let note: String = e.chars().take(1000).collect();
        let ev = Event {
            type_: EventType::Warning,
            reason: status::EVENT_REASON.into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        };
        ctx.recorder.publish(&ev, &reference).await?;
    }
    state.evented.insert(id.to_string(), errors.to_vec());
    Ok(())
}

async fn patch_status(
    ctx: &Ctx,
    obj: &DynamicObject,
    ar: &ApiResource,
    conditions: &[status::Condition],
) -> Result<(), kube::Error> {
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let name = obj.metadata.name.as_deref().unwrap_or("");
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
    let body = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": name, "namespace": ns},
        "status": {"conditions": conditions},
    });
    let pp = PatchParams::apply(&ctx.opts.field_manager).force();
    api.patch_status(name, &pp, &Patch::Apply(&body)).await?;
    Ok(())
}

/// The controller: runs until `shutdown` resolves, then stops the watchers, releases the
/// Lease and returns. API failures never end it.
pub async fn run(client: Client, opts: Options, shutdown: impl Future<Output = ()>) {
    let ns = opts.watch_namespace.as_deref();
    let route_ar = kthena_resource(ROUTE_KIND);
    let server_ar = kthena_resource(SERVER_KIND);
    let route_w = Writer::new(route_ar.clone());
    let server_w = Writer::new(server_ar.clone());
    let pod_w: Writer<Pod> = Writer::default();
    let router_config_w: Writer<ConfigMap> = Writer::default();
    let stores = Stores {
        routes: route_w.as_reader(),
        servers: server_w.as_reader(),
        pods: pod_w.as_reader(),
        router_config: router_config_w.as_reader(),
    };
    let changed = Arc::new(Notify::new());
    let pods: Api<Pod> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut tasks = vec![
        tokio::spawn(reflect_dynamic(
            "ModelRoutes",
            dynamic_api(&client, ns, &route_ar),
            route_w,
            opts.new_backoff(),
            changed.clone(),
        )),
        tokio::spawn(reflect_dynamic(
            "ModelServers",
            dynamic_api(&client, ns, &server_ar),
            server_w,
            opts.new_backoff(),
            changed.clone(),
        )),
        tokio::spawn(reflect(
            "Pods",
            pods,
            watcher::Config::default(),
            pod_w,
            opts.new_backoff(),
            changed.clone(),
            convert::slim_pod,
        )),
    ];
    if let Some((ns, name)) = &opts.router_config {
        // One object: the field selector keeps the watch (and the RBAC it needs) to it.
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        tasks.push(tokio::spawn(reflect(
            "the router configuration ConfigMap",
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            config,
            router_config_w,
            opts.new_backoff(),
            changed.clone(),
            |_: &mut ConfigMap| {},
        )));
    }

    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let candidate = lease::Candidate {
        namespace: opts.target.namespace.clone(),
        name: opts.lease_name.clone(),
        identity: opts.identity.clone(),
        timing: opts.lease_timing,
    };
    let election = tokio::spawn(lease::run(
        client.clone(),
        candidate,
        leader_tx,
        stop_rx,
        opts.new_backoff(),
    ));

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: opts.field_manager.clone(),
            instance: Some(opts.identity.clone()),
        },
    );
    let mut backoff = opts.new_backoff();
    let debounce = opts.debounce;
    let ctx = Ctx {
        client,
        opts,
        stores: stores.clone(),
        recorder,
    };
    let mut shutdown = std::pin::pin!(shutdown);

    let ready = async {
        let _ = stores.routes.wait_until_ready().await;
        let _ = stores.servers.wait_until_ready().await;
        let _ = stores.pods.wait_until_ready().await;
    };
    let started = tokio::select! {
        _ = ready => true,
        _ = &mut shutdown => false,
    };
    if started {
        log::info!("caches synced; reconciling");
        let mut state = State::default();
        let mut retry_at: Option<Instant> = None;
        let mut dirty = true;
        loop {
            if dirty && retry_at.is_none_or(|t| Instant::now() >= t) {
                dirty = false;
                let leader = *leader_rx.borrow_and_update();
                match reconcile(&ctx, &mut state, leader).await {
                    Ok(()) => {
                        backoff.reset();
                        retry_at = None;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        log::warn!("reconcile failed: {e}; retrying in {delay:?}");
                        retry_at = Some(Instant::now() + delay);
                        dirty = true;
                    }
                }
            }
            let retry = async {
                match retry_at {
                    Some(t) if dirty => tokio::time::sleep_until(t).await,
                    _ => futures::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = changed.notified() => {
                    tokio::select! {
                        _ = tokio::time::sleep(debounce) => {}
                        _ = &mut shutdown => break,
                    }
                    dirty = true;
                }
                r = leader_rx.changed() => {
                    if r.is_err() {
                        break;
                    }
                    if *leader_rx.borrow() {
                        log::info!("leading: applying from now on");
                        // A new term: re-apply and re-report what this replica sees.
                        state = State::default();
                    } else {
                        log::info!("not leading: standing by");
                    }
                    dirty = true;
                }
                _ = retry => {}
            }
        }
    }
    log::info!("shutting down");
    for t in &tasks {
        t.abort();
    }
    let _ = stop_tx.send(true);
    let _ = election.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kthena_resources_use_the_plural_names_rbac_grants() {
        assert_eq!(kthena_resource(ROUTE_KIND).plural, "modelroutes");
        assert_eq!(kthena_resource(SERVER_KIND).plural, "modelservers");
        assert_eq!(
            kthena_resource(ROUTE_KIND).api_version,
            "networking.serving.volcano.sh/v1alpha1"
        );
    }

    #[test]
    fn every_output_kind_is_covered_by_the_permissions() {
        for output in [OutputKind::ConfigMap, OutputKind::Istio] {
            let t = Target {
                output,
                namespace: "n".into(),
                name: "x".into(),
                wasm: "/w".into(),
                wasm_sha256: None,
                mount_path: "/m".into(),
                istio_selector: vec![],
                istio_context: Default::default(),
            };
            let ar = t.api_resource();
            assert!(
                REQUIRED_PERMISSIONS
                    .iter()
                    .any(|(g, r, v)| *g == ar.group && *r == ar.plural && v.contains(&"patch")),
                "{}",
                ar.plural
            );
        }
    }
}
