//! The tenancy rules from YAML fixtures: each case is an attack (or a legitimate use) and
//! the field a refusal must name.

use super::*;
use crate::api::{ClusterMapping, TenantPolicy};

fn mapping(ns: &str, spec: &str) -> NamespaceMapping {
    let yaml = format!(
        "apiVersion: dr-syncer.io/v1alpha1\nkind: NamespaceMapping\nmetadata: {{name: m, namespace: {ns}}}\n{spec}"
    );
    serde_saphyr::from_str(&yaml).expect("fixture is a NamespaceMapping")
}

fn policy(yaml: &str) -> TenantPolicy {
    serde_saphyr::from_str(yaml).expect("fixture is a TenantPolicy")
}

const POLICY: &str = r#"
apiVersion: dr-syncer.io/v1alpha1
kind: TenantPolicy
metadata: {name: team-a, namespace: dr-syncer}
spec:
  namespaces: [team-a]
  git:
    - urlPrefix: "ssh://git@git.example.com/dr/team-a"
      pathPrefix: apps
  sourceClusters: [prod]
  destinationClusters: [dr]
  destinationNamespaces: [team-a, "team-a-*"]
"#;

const TENANT_CM: &str = r#"
apiVersion: dr-syncer.io/v1alpha1
kind: ClusterMapping
metadata: {name: mine, namespace: team-a}
spec:
  sourceCluster: prod
  targetCluster: dr
  defaults:
    git: {url: "ssh://git@git.example.com/dr/team-a/state.git", path: apps, credentialsSecretRef: {name: deploy-key}}
"#;

fn tenant_scope() -> Scope {
    Scope::Tenant {
        controller_namespace: "dr-syncer".into(),
        grants: grants_for("team-a", &[policy(POLICY)]).expect("the policy names team-a"),
    }
}

const GIT: &str = "destination: {git: {url: 'ssh://git@git.example.com/dr/team-a/state.git', path: apps/shop, credentialsSecretRef: {name: deploy-key}}}";

/// `Ok(())` or the refused field.
fn judge(nm: &NamespaceMapping, cm: Option<&ClusterMapping>, scope: &Scope) -> Result<(), String> {
    let refs = MappingRefs::new(nm, cm).scoped(scope);
    authorize(refs, scope).map_err(|r| r.field)
}

#[test]
fn authorize_tenant_table() {
    let cm: ClusterMapping = serde_saphyr::from_str(TENANT_CM).unwrap();
    let cases: Vec<(&str, String, bool, Result<(), &str>)> = vec![
        (
            "own namespace to an allowed repository and path",
            format!("spec: {{sourceNamespace: team-a, {GIT}}}"),
            false,
            Ok(()),
        ),
        (
            "kube-system exported with the tenant's own recipient",
            format!("spec: {{sourceNamespace: kube-system, secrets: {{ageRecipients: [age1x]}}, {GIT}}}"),
            false,
            Err("spec.sourceNamespace"),
        ),
        (
            "a namespaceSelector reaching other namespaces",
            format!("spec: {{namespaceSelector: {{matchLabels: {{dr: enabled}}}}, {GIT}}}"),
            false,
            Err("spec.namespaceSelector"),
        ),
        (
            "another team's git token sent along",
            "spec: {sourceNamespace: team-a, destination: {git: {url: 'ssh://git@git.example.com/dr/team-a/s.git', path: apps, credentialsSecretRef: {name: token, namespace: team-b}}}}".into(),
            false,
            Err("spec.destination.git.credentialsSecretRef.namespace"),
        ),
        (
            "another team's recipients Secret",
            format!("spec: {{sourceNamespace: team-a, secrets: {{ageRecipientsSecretRef: {{name: r, namespace: team-b}}}}, {GIT}}}"),
            false,
            Err("spec.secrets.ageRecipientsSecretRef.namespace"),
        ),
        (
            "a repository outside the granted prefix",
            "spec: {sourceNamespace: team-a, destination: {git: {url: 'https://attacker.example/x.git', path: apps}}}".into(),
            false,
            Err("spec.destination.git"),
        ),
        (
            "a sibling prefix (team-a-evil) is not team-a",
            "spec: {sourceNamespace: team-a, destination: {git: {url: 'ssh://git@git.example.com/dr/team-a-evil/x.git', path: apps}}}".into(),
            false,
            Err("spec.destination.git"),
        ),
        (
            "dot segments climbing out of the prefix",
            "spec: {sourceNamespace: team-a, destination: {git: {url: 'ssh://git@git.example.com/dr/team-a/../team-b/x.git', path: apps}}}".into(),
            false,
            Err("spec.destination.git"),
        ),
        (
            "a path outside the granted path prefix",
            "spec: {sourceNamespace: team-a, destination: {git: {url: 'ssh://git@git.example.com/dr/team-a/x.git', path: platform}}}".into(),
            false,
            Err("spec.destination.git"),
        ),
        (
            "a DR namespace not granted",
            format!("spec: {{sourceNamespace: team-a, destinationNamespace: kube-system, {GIT}}}"),
            false,
            Err("spec.destinationNamespace"),
        ),
        (
            "a granted DR namespace pattern",
            format!("spec: {{sourceNamespace: team-a, destinationNamespaceSuffix: -dr, {GIT}}}"),
            false,
            Ok(()),
        ),
        (
            "direct apply into a cluster not granted",
            "spec: {sourceNamespace: team-a, destination: {cluster: {remoteClusterRef: {name: other}}}}".into(),
            false,
            Err("spec.destination.cluster.remoteClusterRef"),
        ),
        (
            "direct apply into a granted cluster",
            "spec: {sourceNamespace: team-a, destination: {cluster: {remoteClusterRef: {name: dr}}}}".into(),
            false,
            Ok(()),
        ),
        (
            "a RemoteCluster of another namespace",
            "spec: {sourceNamespace: team-a, destination: {cluster: {remoteClusterRef: {name: dr, namespace: team-b}}}}".into(),
            false,
            Err("spec.destination.cluster.remoteClusterRef.namespace"),
        ),
        (
            "a source cluster not granted",
            format!("spec: {{sourceNamespace: team-a, sourceCluster: staging, {GIT}}}"),
            false,
            Err("spec.sourceCluster"),
        ),
        (
            "the admin's ClusterMapping",
            "spec: {sourceNamespace: team-a, clusterMappingRef: {name: prod-to-dr, namespace: dr-syncer}}".into(),
            false,
            Err("spec.clusterMappingRef.namespace"),
        ),
        (
            "the tenant's own ClusterMapping naming granted clusters",
            "spec: {sourceNamespace: team-a, clusterMappingRef: {name: mine}}".into(),
            true,
            Ok(()),
        ),
        (
            "volume hooks (exec in pods) without an execHooks grant",
            "spec: {sourceNamespace: team-a, clusterMappingRef: {name: mine}, pvcConfig: {syncData: true, dataSyncConfig: {hooks: [{name: h, pre: {command: [sh, -c, id]}}]}}}".into(),
            true,
            Err("spec.pvcConfig.dataSyncConfig.hooks"),
        ),
    ];
    let scope = tenant_scope();
    for (name, spec, with_cm, want) in cases {
        let nm = mapping("team-a", &spec);
        let got = judge(&nm, with_cm.then_some(&cm), &scope);
        assert_eq!(got, want.map_err(str::to_string), "{name}");
    }
}

#[test]
fn authorize_tenant_cluster_mapping_reaching_out() {
    let mut cm: ClusterMapping = serde_saphyr::from_str(TENANT_CM).unwrap();
    cm.spec.target_cluster = Some("other".into());
    let nm = mapping(
        "team-a",
        "spec: {sourceNamespace: team-a, clusterMappingRef: {name: mine}}",
    );
    assert_eq!(
        judge(&nm, Some(&cm), &tenant_scope()),
        Err("ClusterMapping team-a/mine spec.targetCluster".into())
    );
    let mut cm: ClusterMapping = serde_saphyr::from_str(TENANT_CM).unwrap();
    cm.spec
        .defaults
        .as_mut()
        .unwrap()
        .git
        .as_mut()
        .unwrap()
        .credentials_secret_ref = Some(crate::api::ObjectRef {
        name: "t".into(),
        namespace: Some("team-b".into()),
    });
    assert_eq!(
        judge(&nm, Some(&cm), &tenant_scope()),
        Err("ClusterMapping spec.defaults.git.credentialsSecretRef.namespace".into())
    );
}

#[test]
fn authorize_tenant_clusters_resolve_in_controller_namespace() {
    let nm = mapping(
        "team-a",
        "spec: {sourceNamespace: team-a, sourceCluster: prod, destination: {cluster: {remoteClusterRef: {name: dr}}}}",
    );
    let scope = tenant_scope();
    let refs = MappingRefs::new(&nm, None).scoped(&scope);
    assert_eq!(refs.source().unwrap().namespace, "dr-syncer");
    assert_eq!(refs.dr_cluster().unwrap().namespace, "dr-syncer");
}

#[test]
fn authorize_admin_table() {
    let strict = Scope::Admin {
        cross_namespace_refs: false,
    };
    let open = Scope::Admin {
        cross_namespace_refs: true,
    };
    let cases = [
        (
            "any source namespace and repository",
            "spec: {sourceNamespace: kube-system, destination: {git: {url: 'https://x.example/r.git'}}}",
            &strict,
            Ok(()),
        ),
        (
            "another namespace's git Secret without the flag",
            "spec: {sourceNamespace: shop, destination: {git: {url: 'https://x.example/r.git', credentialsSecretRef: {name: t, namespace: team-b}}}}",
            &strict,
            Err("spec.destination.git.credentialsSecretRef.namespace"),
        ),
        (
            "another namespace's git Secret with the flag",
            "spec: {sourceNamespace: shop, destination: {git: {url: 'https://x.example/r.git', credentialsSecretRef: {name: t, namespace: team-b}}}}",
            &open,
            Ok(()),
        ),
        (
            "another namespace's RemoteCluster without the flag",
            "spec: {sourceNamespace: shop, destination: {cluster: {remoteClusterRef: {name: dr, namespace: team-b}}}}",
            &strict,
            Err("spec.destination.cluster.remoteClusterRef.namespace"),
        ),
    ];
    for (name, spec, scope, want) in cases {
        let nm = mapping("dr-syncer", spec);
        assert_eq!(
            judge(&nm, None, scope),
            want.map_err(str::to_string),
            "{name}"
        );
    }
}

#[test]
fn grants_for_only_policies_naming_the_namespace() {
    assert!(grants_for("team-b", &[policy(POLICY)]).is_none());
    let other = policy(
        "apiVersion: dr-syncer.io/v1alpha1\nkind: TenantPolicy\nmetadata: {name: extra, namespace: dr-syncer}\nspec: {namespaces: [team-a, team-c], destinationClusters: [dr2]}",
    );
    let g = grants_for("team-a", &[policy(POLICY), other]).unwrap();
    assert_eq!(
        g.destination_clusters.into_iter().collect::<Vec<_>>(),
        ["dr", "dr2"]
    );
}

#[test]
fn url_allowed_table() {
    let p = "https://git.example.com/dr/team-a";
    let cases = [
        ("https://git.example.com/dr/team-a/state.git", true),
        ("https://git.example.com/dr/team-a.git", true),
        ("https://git.example.com/dr/team-a", true),
        ("https://git.example.com/dr/team-ab/state.git", false),
        ("https://git.example.com/dr/team-a/../team-b/x.git", false),
        (
            "https://git.example.com/dr/team-a/%2e%2e/team-b/x.git",
            false,
        ),
        ("https://git.example.com/dr/team-a/./x.git", false),
        ("https://git.example.com/dr/team-a/x.git?u=1", false),
        (
            "https://git.example.com.evil.example/dr/team-a/x.git",
            false,
        ),
        (
            "https://git.example.com/dr/team-a@evil.example/x.git",
            false,
        ),
        ("https://git.example.com/dr/TEAM-A/x.git", false),
    ];
    for (url, want) in cases {
        assert_eq!(url_allowed(url, p), want, "{url}");
    }
    assert!(
        !url_allowed("https://anything", ""),
        "an empty prefix allows nothing"
    );
    assert!(url_allowed(
        "git@git.example.com:dr/team-a/x.git",
        "git@git.example.com:dr/team-a/"
    ));
    assert!(!url_allowed(
        "git@git.example.com:dr/team-a/../b.git",
        "git@git.example.com:dr/team-a/"
    ));
}

#[test]
fn namespace_matches_table() {
    let cases = [
        ("team-a", "team-a", true),
        ("team-a-dr", "team-a-*", true),
        ("team-a", "team-a-*", false),
        ("team-ab", "team-a", false),
        ("kube-system", "*", true),
    ];
    for (ns, pattern, want) in cases {
        assert_eq!(namespace_matches(ns, pattern), want, "{ns} ~ {pattern}");
    }
}

#[test]
fn tenancy_role_table() {
    let t = Tenancy {
        controller_namespace: "dr-syncer".into(),
        tenants: TenantNamespaces::parse("team-a, team-b"),
        cross_namespace_refs: false,
    };
    assert_eq!(t.role("dr-syncer"), Role::Admin);
    assert_eq!(t.role("team-b"), Role::Tenant);
    assert_eq!(t.role("kube-system"), Role::Unwatched);
    assert_eq!(TenantNamespaces::parse(""), TenantNamespaces::None);
    assert_eq!(TenantNamespaces::parse("a,*"), TenantNamespaces::All);
}

#[test]
fn valid_name_table() {
    let cases = [
        ("deploy-key", true),
        ("a.b-c", true),
        ("../../dr-syncer/secrets/admin-git", false),
        ("a/b", false),
        ("a..b", false),
        ("Upper", false),
        ("-a", false),
        ("", false),
    ];
    for (name, want) in cases {
        assert_eq!(valid_name(name), want, "{name:?}");
    }
}

#[test]
fn authorize_refuses_path_names_and_tenant_data_without_dr_cluster() {
    let scope = tenant_scope();
    let nm = mapping(
        "team-a",
        "spec: {sourceNamespace: team-a, destination: {git: {url: 'ssh://git@git.example.com/dr/team-a/s.git', path: apps, credentialsSecretRef: {name: '../../dr-syncer/secrets/admin-git'}}}}",
    );
    assert_eq!(
        judge(&nm, None, &scope),
        Err("spec.destination.git.credentialsSecretRef.name".into())
    );
    let admin = Scope::Admin {
        cross_namespace_refs: true,
    };
    let nm = mapping(
        "dr-syncer",
        "spec: {sourceNamespace: shop, clusterMappingRef: {name: '../../x/clustermappings/y'}}",
    );
    assert_eq!(
        judge(&nm, None, &admin),
        Err("spec.clusterMappingRef.name".into())
    );
    let nm = mapping(
        "team-a",
        &format!("spec: {{sourceNamespace: team-a, pvcConfig: {{syncData: true}}, {GIT}}}"),
    );
    assert_eq!(
        judge(&nm, None, &scope),
        Err("spec.pvcConfig.syncData".into())
    );
    let nm = mapping(
        "team-a",
        "spec: {sourceNamespace: team-a, pvcConfig: {syncData: true}, destination: {cluster: {remoteClusterRef: {name: dr}}}}",
    );
    assert_eq!(judge(&nm, None, &scope), Ok(()));
}

#[test]
fn authorize_tenant_hooks_need_an_exec_hooks_grant() {
    let cm: ClusterMapping = serde_saphyr::from_str(TENANT_CM).unwrap();
    let nm = mapping(
        "team-a",
        "spec: {sourceNamespace: team-a, clusterMappingRef: {name: mine}, pvcConfig: {syncData: true, dataSyncConfig: {hooks: [{name: h, pre: {command: [sh, -c, id]}}]}}}",
    );
    let grant = policy(
        "apiVersion: dr-syncer.io/v1alpha1\nkind: TenantPolicy\nmetadata: {name: hooks, namespace: dr-syncer}\nspec: {namespaces: [team-a], execHooks: true}\n",
    );
    let scope = Scope::Tenant {
        controller_namespace: "dr-syncer".into(),
        grants: grants_for("team-a", &[policy(POLICY), grant]).unwrap(),
    };
    assert_eq!(judge(&nm, Some(&cm), &scope), Ok(()));
    assert_eq!(
        judge(&nm, Some(&cm), &tenant_scope()),
        Err("spec.pvcConfig.dataSyncConfig.hooks".into())
    );
}
