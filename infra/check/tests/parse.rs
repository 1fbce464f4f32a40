//! Every Bicep file parses with the tree-sitter grammar without ERROR or MISSING nodes.

use crdb_delta_infra_check::{Bicep, files_with_ext, repo_root};

#[test]
fn every_bicep_file_parses_cleanly() {
    let infra = repo_root().join("infra");
    let mut files = files_with_ext(&infra, ".bicep");
    files.extend(files_with_ext(&infra, ".bicepparam"));
    assert!(
        files.len() >= 7,
        "expected main.bicep and its modules, found {files:?}"
    );
    let mut failures = Vec::new();
    for f in &files {
        let b = Bicep::load(f).unwrap();
        for p in b.problems() {
            failures.push(format!(
                "{}:{} {} `{}`",
                f.display(),
                p.line,
                p.kind,
                p.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "syntax problems:\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_broken_file_is_detected() {
    // A missing closing brace and a stray token: both must surface as problems.
    let good = "param a string = 'x'\nresource r 'Microsoft.Storage/storageAccounts@2024-01-01' = {\n  name: a\n}\n";
    assert!(
        Bicep::parse("good", good.into())
            .unwrap()
            .problems()
            .is_empty()
    );
    let broken = good.replace("}\n", "").replace("name: a", "name: a ]");
    let problems = Bicep::parse("broken", broken).unwrap().problems();
    assert!(!problems.is_empty(), "a broken file parsed cleanly");
}
