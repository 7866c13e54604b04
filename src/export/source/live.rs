//! Live source: discovery of every namespaced type that supports `list` and `watch`
//! (preferred versions, custom resources included) and paged lists. A failing API group or
//! type is reported and isolated, never fatal, so its files are kept rather than deleted.

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::export::NamespaceInput;
use crate::export::object::{Origin, SourceObject};
use crate::export::policy::Policy;
use crate::export::resource::{Registry, ResourceType};
use crate::export::summary::Failure;

/// Page size of list calls (as Velero): bounded memory per request, few round trips.
const PAGE_SIZE: u32 = 500;

/// What discovery found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Every discovered type (namespaced or not).
    pub registry: Registry,
    /// Namespaced types that support list and watch.
    pub listable: Vec<ResourceType>,
    /// Groups whose discovery failed.
    pub failures: Vec<Failure>,
}

/// Discovers the API. Only a failure to list the groups themselves is an error.
pub async fn discover(client: &Client) -> Result<Discovery, kube::Error> {
    let mut versions: Vec<(String, String)> = client
        .list_core_api_versions()
        .await?
        .versions
        .into_iter()
        .map(|v| (String::new(), v))
        .collect();
    for g in client.list_api_groups().await?.groups {
        let preferred = g.preferred_version.or_else(|| g.versions.first().cloned());
        if let Some(v) = preferred {
            versions.push((g.name, v.version));
        }
    }
    let results: Vec<_> = stream::iter(versions)
        .map(|(group, version)| async move {
            let res = if group.is_empty() {
                client.list_core_api_resources(&version).await
            } else {
                client
                    .list_api_group_resources(&format!("{group}/{version}"))
                    .await
            };
            (group, version, res)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut d = Discovery {
        registry: Registry::default(),
        ..Default::default()
    };
    for (group, version, res) in results {
        match res {
            Ok(list) => add_resources(&mut d, &group, &version, list),
            Err(e) => d.failures.push(Failure {
                what: if group.is_empty() {
                    "core".into()
                } else {
                    group
                },
                namespace: None,
                error: e.to_string(),
            }),
        }
    }
    d.listable.sort();
    Ok(d)
}

fn add_resources(d: &mut Discovery, group: &str, version: &str, list: APIResourceList) {
    for r in list.resources {
        if r.name.contains('/') {
            continue; // subresources
        }
        let rt = ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: r.kind.clone(),
            plural: r.name.clone(),
            singular: if r.singular_name.is_empty() {
                r.kind.to_ascii_lowercase()
            } else {
                r.singular_name.clone()
            },
            short_names: r.short_names.clone().unwrap_or_default(),
            namespaced: r.namespaced,
        };
        let verbs = &r.verbs;
        if rt.namespaced && verbs.iter().any(|v| v == "list") && verbs.iter().any(|v| v == "watch")
        {
            d.listable.push(rt.clone());
        }
        d.registry.add(rt);
    }
}

/// The pages of `rt` in `namespace`, listed one after the other as they are consumed; a
/// failed call ends the stream with its error.
fn type_pages(
    client: Client,
    namespace: String,
    rt: ResourceType,
) -> impl Stream<Item = Result<Vec<SourceObject>, kube::Error>> + Send + 'static {
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &rt.api_resource());
    let first = ListParams::default().limit(PAGE_SIZE);
    stream::unfold(Some(first), move |params| {
        let (api, rt) = (api.clone(), rt.clone());
        async move {
            let params = params?;
            match api.list(&params).await {
                Ok(page) => {
                    let next = page
                        .metadata
                        .continue_
                        .filter(|c| !c.is_empty())
                        .map(|token| params.clone().continue_token(&token));
                    let objects = page.items.into_iter().map(|o| source_object(&rt, o));
                    Some((Ok(objects.collect()), next))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// A listed object with the `apiVersion` and `kind` a list leaves out of its items.
fn source_object(rt: &ResourceType, item: DynamicObject) -> SourceObject {
    let mut value = serde_json::to_value(&item).expect("object serializes");
    if let Some(o) = value.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(rt.api_version()));
        o.insert("kind".into(), Value::String(rt.kind.clone()));
    }
    SourceObject {
        rt: rt.clone(),
        value,
        origin: Origin::Live,
    }
}

/// Lists every object of `rt` in `namespace`, page by page.
pub async fn list_type(
    client: &Client,
    namespace: &str,
    rt: &ResourceType,
) -> Result<Vec<SourceObject>, kube::Error> {
    type_pages(client.clone(), namespace.to_string(), rt.clone())
        .try_concat()
        .await
}

/// The pages of every type in `types` in `namespace` as they arrive, `concurrency` lists
/// at a time: a streamed export holds a few pages at once, never the namespace. A failing
/// type ends with its failure (the pages before it were already yielded).
pub fn pages(
    client: Client,
    namespace: String,
    types: Vec<ResourceType>,
    concurrency: usize,
) -> BoxStream<'static, Result<Vec<SourceObject>, Failure>> {
    stream::iter(types)
        .map(move |rt| {
            let what = rt.qualified();
            let ns = namespace.clone();
            type_pages(client.clone(), namespace.clone(), rt)
                .map(move |page| {
                    page.map_err(|e| Failure {
                        what: what.clone(),
                        namespace: Some(ns.clone()),
                        error: e.to_string(),
                    })
                })
                .boxed()
        })
        .flatten_unordered(concurrency.max(1))
        .boxed()
}

/// Lists all `types` in `namespace` concurrently; failing types are returned separately.
pub async fn list_namespace(
    client: &Client,
    namespace: &str,
    types: &[ResourceType],
    concurrency: usize,
    on_type_done: &(dyn Fn() + Sync),
) -> (Vec<SourceObject>, Vec<Failure>) {
    // Owned items: a stream over borrowed ones is not `Send` for every lifetime, which a
    // spawned reconcile needs.
    let results: Vec<_> = stream::iter(types.iter().cloned())
        .map(|rt| async move {
            let r = list_type(client, namespace, &rt).await;
            on_type_done();
            (rt, r)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut objects = Vec::new();
    let mut failures = Vec::new();
    for (rt, r) in results {
        match r {
            Ok(mut objs) => objects.append(&mut objs),
            Err(e) => failures.push(Failure {
                what: rt.qualified(),
                namespace: Some(namespace.to_string()),
                error: e.to_string(),
            }),
        }
    }
    (objects, failures)
}

/// Reads the CustomResourceDefinitions named `names` (`plural.group`). A name without a
/// CRD (a built-in or aggregated API) is skipped; a failed read is returned as a failure, so
/// the CRD files already written are kept rather than deleted.
pub async fn get_crds(
    client: &Client,
    names: std::collections::BTreeSet<String>,
) -> (crate::export::crds::Available, Vec<Failure>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let results: Vec<_> = stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                let r = api.get_opt(&name).await;
                (name, r)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut found = crate::export::crds::Available::new();
    let mut failures = Vec::new();
    for (name, r) in results {
        match r {
            Ok(Some(crd)) => {
                found.insert(name, serde_json::to_value(&crd).expect("CRD serializes"));
            }
            Ok(None) => {}
            Err(e) => failures.push(Failure {
                what: crate::export::crds::crd_type().qualified(),
                namespace: None,
                error: format!("reading CustomResourceDefinition {name}: {e}"),
            }),
        }
    }
    (found, failures)
}

/// The Namespace object, if it exists.
pub async fn get_namespace(client: &Client, name: &str) -> Result<Option<Value>, kube::Error> {
    Ok(Api::<Namespace>::all(client.clone())
        .get_opt(name)
        .await?
        .map(namespace_value))
}

/// Namespaces matching a label selector (`kubectl -l` syntax).
pub async fn select_namespaces(client: &Client, selector: &str) -> Result<Vec<Value>, kube::Error> {
    let api = Api::<Namespace>::all(client.clone());
    let list = api.list(&ListParams::default().labels(selector)).await?;
    Ok(list.items.into_iter().map(namespace_value).collect())
}

fn namespace_value(ns: Namespace) -> Value {
    let mut v = serde_json::to_value(ns).expect("namespace serializes");
    v["apiVersion"] = "v1".into();
    v["kind"] = "Namespace".into();
    v
}

/// Errors that stop a live read (a failing type or group does not).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A call the read cannot do without failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The error.
        source: kube::Error,
    },
    /// A named namespace does not exist.
    #[error("namespace {0} does not exist in the source cluster")]
    NoNamespace(String),
    /// Neither names nor a selector matched anything.
    #[error("nothing to export: no namespace given or selected")]
    Nothing,
}

/// Everything a live read produced.
#[derive(Debug, Default)]
pub struct LiveRead {
    /// Objects per namespace.
    pub inputs: Vec<NamespaceInput>,
    /// Discovered types.
    pub registry: Registry,
    /// Types and groups that failed (their files must be kept).
    pub failures: Vec<Failure>,
    /// The types that were listed (wanted by the policy), failed ones included.
    pub types: Vec<ResourceType>,
}

/// Progress callbacks: the number of list calls once known, then one call per list.
pub struct Progress<'a> {
    /// Called once with the total.
    pub total: &'a (dyn Fn(u64) + Sync),
    /// Called after each list.
    pub step: &'a (dyn Fn() + Sync),
}

/// What a read covers: the namespaces (with their Namespace objects) and the types the
/// policy wants, from discovery.
#[derive(Debug, Default)]
pub struct Plan {
    /// Namespace name and its Namespace object, sorted by name.
    pub namespaces: Vec<(String, Value)>,
    /// Discovered types.
    pub registry: Registry,
    /// Groups whose discovery failed (their files must be kept).
    pub failures: Vec<Failure>,
    /// The namespaced types to list (wanted by the policy).
    pub types: Vec<ResourceType>,
}

/// Resolves the namespaces `names` plus those matching `selector` (label selector string)
/// and picks the types `policy` wants from `discovery`; lists nothing else.
pub async fn plan(
    client: &Client,
    discovery: &Discovery,
    mut names: Vec<String>,
    selector: Option<&str>,
    policy: &Policy,
) -> Result<Plan, LiveError> {
    let kube_err = |context: &str| {
        let context = context.to_string();
        move |source| LiveError::Kube { context, source }
    };
    let mut ns_objects = std::collections::BTreeMap::new();
    if let Some(sel) = selector {
        for ns in select_namespaces(client, sel)
            .await
            .map_err(kube_err("listing namespaces"))?
        {
            let name = ns["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            names.push(name.clone());
            ns_objects.insert(name, ns);
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() && selector.is_none() {
        return Err(LiveError::Nothing);
    }
    let types: Vec<_> = discovery
        .listable
        .iter()
        .filter(|rt| policy.wants_type(rt).is_ok())
        .cloned()
        .collect();
    let mut namespaces = Vec::with_capacity(names.len());
    for name in names {
        let object = match ns_objects.remove(&name) {
            Some(o) => o,
            None => get_namespace(client, &name)
                .await
                .map_err(kube_err(&format!("reading namespace {name}")))?
                .ok_or_else(|| LiveError::NoNamespace(name.clone()))?,
        };
        namespaces.push((name, object));
    }
    Ok(Plan {
        namespaces,
        registry: discovery.registry.clone(),
        failures: discovery.failures.clone(),
        types,
    })
}

/// Reads the namespaces `names` plus those matching `selector` (label selector string):
/// [`plan`], then every type `policy` wants, listed with `concurrency` calls at once. Holds
/// every object; a controller's git sync streams instead (`controller::streamed`).
pub async fn read(
    client: &Client,
    names: Vec<String>,
    selector: Option<&str>,
    policy: &Policy,
    concurrency: usize,
    progress: &Progress<'_>,
) -> Result<LiveRead, LiveError> {
    let discovery = discover(client).await.map_err(|source| LiveError::Kube {
        context: "API discovery".into(),
        source,
    })?;
    let plan = plan(client, &discovery, names, selector, policy).await?;
    (progress.total)((plan.types.len() * plan.namespaces.len()) as u64);
    let mut read = LiveRead {
        registry: plan.registry,
        failures: plan.failures,
        inputs: Vec::new(),
        types: plan.types.clone(),
    };
    for (name, object) in plan.namespaces {
        let (objects, failures) =
            list_namespace(client, &name, &plan.types, concurrency, progress.step).await;
        read.failures.extend(failures);
        read.inputs.push(NamespaceInput {
            name,
            object: Some(object),
            objects,
        });
    }
    Ok(read)
}
