//! Golden tests of the export pipeline: `tests/golden/<case>/input/` (objects as
//! `kubectl get -o yaml` prints them) and an optional `mapping.yaml` go in; the rendered
//! files and the summary must equal `expected.txt`. `UPDATE_GOLDEN=1 cargo test --test
//! export_golden` rewrites the expectations — review the diff before committing it.

use std::path::Path;

use dr_syncer::api::NamespaceMapping;
use dr_syncer::export::source::offline;
use dr_syncer::export::{self, Policy, Summary, crds};

fn run_case(dir: &Path) -> String {
    let mapping: Option<NamespaceMapping> = std::fs::read_to_string(dir.join("mapping.yaml"))
        .ok()
        .map(|t| serde_saphyr::from_str(&t).expect("mapping.yaml is a NamespaceMapping"));
    let policy = mapping
        .as_ref()
        .map(|m| Policy::from_spec(&m.spec).expect("valid mapping"))
        .unwrap_or_default();
    let mut input = offline::read_dir(&dir.join("input")).expect("input reads");
    let available = crds::index(std::mem::take(&mut input.crds));
    let (namespaces, registry) = input.into_namespaces(&[], None).unwrap();
    let mut summary = Summary::default();
    let mut objects = export::process(namespaces, &policy, &registry, &mut summary);
    let needed = crds::needed(&objects, &available, &policy, &mut summary);
    objects.extend(needed);
    let tree = export::build_tree(&objects, None, Default::default(), &mut summary).unwrap();
    let mut out = String::new();
    for (path, content) in &tree.files {
        if path.ends_with("kustomization.yaml") {
            continue;
        }
        out.push_str(&format!(
            "# == {path}\n{}",
            String::from_utf8_lossy(content)
        ));
    }
    out.push_str("# == summary\n");
    out.push_str(&summary.table());
    out
}

#[test]
fn export_golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases present");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for case in &cases {
        let actual = run_case(case);
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            let line = actual
                .lines()
                .zip(expected.lines())
                .position(|(a, e)| a != e)
                .unwrap_or(0)
                + 1;
            mismatches.push(format!(
                "{}: differs from expected.txt at line {line}",
                case.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 and review the diff)",
        mismatches.join("\n")
    );
}
