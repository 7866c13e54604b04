//! The pure half of the dereference stage, from YAML fixtures: which RemoteCluster, git
//! destination and namespace each reference of a mapping means.

use kube::config::Kubeconfig;

use super::*;

fn mapping(yaml: &str) -> NamespaceMapping {
    serde_saphyr::from_str(yaml).expect("fixture is a NamespaceMapping")
}

fn cluster_mapping(yaml: &str) -> ClusterMapping {
    serde_saphyr::from_str(yaml).expect("fixture is a ClusterMapping")
}

const CM: &str = r#"
apiVersion: dr-syncer.io/v1alpha1
kind: ClusterMapping
metadata: {name: prod-to-dr, namespace: platform}
spec:
  sourceCluster: prod
  targetCluster: dr
  defaults:
    git: {url: "ssh://git@git.example.com/dr.git", branch: main, path: clusters/prod, credentialsSecretRef: {name: deploy-key}}
"#;

fn cref(ns: &str, name: &str, field: &str) -> Option<ClusterRef> {
    Some(ClusterRef {
        namespace: ns.into(),
        name: name.into(),
        field: field.into(),
        cross_namespace_refs: false,
    })
}

#[test]
fn source_table() {
    let cases = [
        (
            "own sourceCluster wins over the ClusterMapping",
            "spec: {sourceCluster: staging, sourceNamespace: a, clusterMappingRef: {name: prod-to-dr, namespace: platform}}",
            true,
            cref("team", "staging", "spec.sourceCluster"),
        ),
        (
            "the ClusterMapping's sourceCluster, in the ClusterMapping's namespace",
            "spec: {sourceNamespace: a, clusterMappingRef: {name: prod-to-dr, namespace: platform}}",
            true,
            cref(
                "platform",
                "prod",
                "ClusterMapping platform/prod-to-dr spec.sourceCluster",
            ),
        ),
        (
            "neither: the controller's own cluster",
            "spec: {sourceNamespace: a, destination: {git: {url: 'file:///r'}}}",
            false,
            None,
        ),
    ];
    let cm = cluster_mapping(CM);
    for (what, spec, with_cm, expected) in cases {
        let nm = mapping(&format!(
            "apiVersion: dr-syncer.io/v1alpha1\nkind: NamespaceMapping\nmetadata: {{name: shop, namespace: team}}\n{spec}\n"
        ));
        let refs = MappingRefs::new(&nm, with_cm.then_some(&cm));
        assert_eq!(refs.source(), expected, "{what}");
        let name = expected.map(|r| r.name).unwrap_or_else(|| "local".into());
        assert_eq!(refs.source_name(), name, "{what}");
    }
}

#[test]
fn dr_cluster_table() {
    let cm = cluster_mapping(CM);
    let cases = [
        (
            "direct destination with its own namespace",
            "spec: {sourceNamespace: a, clusterMappingRef: {name: prod-to-dr}, destination: {cluster: {remoteClusterRef: {name: dr2, namespace: clusters}}}}",
            cref(
                "clusters",
                "dr2",
                "spec.destination.cluster.remoteClusterRef",
            ),
        ),
        (
            "direct destination without a namespace: the mapping's",
            "spec: {sourceNamespace: a, destination: {cluster: {remoteClusterRef: {name: dr2}}}}",
            cref("team", "dr2", "spec.destination.cluster.remoteClusterRef"),
        ),
        (
            "git destination: the ClusterMapping's targetCluster",
            "spec: {sourceNamespace: a, clusterMappingRef: {name: prod-to-dr}}",
            cref(
                "platform",
                "dr",
                "ClusterMapping platform/prod-to-dr spec.targetCluster",
            ),
        ),
    ];
    for (what, spec, expected) in cases {
        let nm = mapping(&format!(
            "apiVersion: dr-syncer.io/v1alpha1\nkind: NamespaceMapping\nmetadata: {{name: shop, namespace: team}}\n{spec}\n"
        ));
        let refs = MappingRefs::new(&nm, Some(&cm));
        assert_eq!(refs.dr_cluster(), expected, "{what}");
    }
}

#[test]
fn git_table() {
    let cm = cluster_mapping(CM);
    let header = "apiVersion: dr-syncer.io/v1alpha1\nkind: NamespaceMapping\nmetadata: {name: shop, namespace: team}\n";
    // Inherited: the default's path gets the mapping's name; credentials resolve in the
    // ClusterMapping's namespace.
    let nm = mapping(&format!(
        "{header}spec: {{sourceNamespace: a, clusterMappingRef: {{name: prod-to-dr}}}}\n"
    ));
    let refs = MappingRefs::new(&nm, Some(&cm));
    let (git, field) = refs.git().expect("inherited destination");
    assert_eq!(git.path.as_deref(), Some("clusters/prod/shop"));
    assert_eq!(
        field,
        "ClusterMapping platform/prod-to-dr spec.defaults.git"
    );
    assert_eq!(refs.git_namespace(), "platform");
    // Own destination: used as is, credentials in the mapping's namespace.
    let nm = mapping(&format!(
        "{header}spec: {{sourceNamespace: a, clusterMappingRef: {{name: prod-to-dr}}, destination: {{git: {{url: 'ssh://git@h/r.git', path: mine}}}}}}\n"
    ));
    let refs = MappingRefs::new(&nm, Some(&cm));
    let (git, field) = refs.git().expect("own destination");
    assert_eq!(
        (git.path.as_deref(), field.as_str()),
        (Some("mine"), "spec.destination.git")
    );
    assert_eq!(refs.git_namespace(), "team");
    // Direct destination: no git at all, even with ClusterMapping defaults.
    let nm = mapping(&format!(
        "{header}spec: {{sourceNamespace: a, clusterMappingRef: {{name: prod-to-dr}}, destination: {{cluster: {{remoteClusterRef: {{name: dr}}}}}}}}\n"
    ));
    assert!(MappingRefs::new(&nm, Some(&cm)).git().is_none());
}

#[test]
fn kubeconfig_refusal_table() {
    let base = |cluster: &str, user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dr\n  cluster:\n    server: https://10.0.0.1:6443\n{cluster}users:\n- name: u\n  user:\n{user}contexts:\n- name: c\n  context: {{cluster: dr, user: u}}\ncurrent-context: c\n"
        )
    };
    let cases = [
        (
            "embedded CA and token",
            "    certificate-authority-data: Zm9v\n",
            "    token: t\n",
            None,
        ),
        (
            "insecure-skip-tls-verify",
            "    insecure-skip-tls-verify: true\n",
            "    token: t\n",
            Some("insecure-skip-tls-verify"),
        ),
        (
            "CA from a file of the controller's pod",
            "    certificate-authority: /etc/ssl/ca.pem\n",
            "    token: t\n",
            Some("certificate-authority names a file"),
        ),
        (
            "the controller's own ServiceAccount token by file",
            "",
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
            Some("tokenFile"),
        ),
        (
            "an exec plugin",
            "",
            "    exec: {command: sh, apiVersion: client.authentication.k8s.io/v1}\n",
            Some("exec and auth-provider"),
        ),
    ];
    for (what, cluster, user, refused) in cases {
        let kc = Kubeconfig::from_yaml(&base(cluster, user)).expect(what);
        let got = kubeconfig_refusal(&kc);
        match refused {
            None => assert_eq!(got, None, "{what}"),
            Some(needle) => assert!(
                got.as_deref().is_some_and(|m| m.contains(needle)),
                "{what}: {got:?}"
            ),
        }
    }
    let plain =
        Kubeconfig::from_yaml(&base("", "    token: t\n").replace("https://", "http://")).unwrap();
    assert!(kubeconfig_refusal(&plain).is_some_and(|m| m.contains("plain http://")));
    let shouting =
        Kubeconfig::from_yaml(&base("", "    token: t\n").replace("https://", "HTTP://")).unwrap();
    assert!(
        kubeconfig_refusal(&shouting).is_some_and(|m| m.contains("not an https:// URL")),
        "HTTP:// is plain http too"
    );
}
