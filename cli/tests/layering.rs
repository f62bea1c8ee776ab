//! Data flows one way (raw → clean → sorted → events → catalog/model/vectors → serving), and so
//! do the crates' dependencies: each crate may use only the recsys crates listed here, which
//! are the ones its `lib.rs` says it depends on (the workspace hack, which has no code, aside).

const ALLOWED: &[(&str, &[&str])] = &[
    ("proto", &[]),
    ("core", &[]),
    ("datasets", &["recsys-core"]),
    ("minilm", &[]),
    ("jobs", &["recsys-core", "recsys-minilm"]),
    ("ingest", &["recsys-core", "recsys-proto"]),
    ("catalog", &["recsys-core"]),
    ("vectors", &["recsys-core"]),
    (
        "embed",
        &[
            "recsys-core",
            "recsys-catalog",
            "recsys-datasets",
            "recsys-vectors",
            "recsys-minilm",
        ],
    ),
    (
        "serve",
        &[
            "recsys-core",
            "recsys-proto",
            "recsys-catalog",
            "recsys-vectors",
            "recsys-ingest",
        ],
    ),
    (
        "flow",
        &[
            "recsys-core",
            "recsys-datasets",
            "recsys-jobs",
            "recsys-ingest",
            "recsys-catalog",
            "recsys-embed",
            "recsys-vectors",
        ],
    ),
    ("scheduler", &["recsys-jobs", "recsys-core"]),
    ("executor", &["recsys-jobs", "recsys-core"]),
    // Test stand-ins: used only as a dev-dependency.
    ("testkit", &[]),
];

/// The recsys crates named in the `[dependencies]` table of `folder/Cargo.toml`.
fn recsys_dependencies(folder: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(folder)
        .join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let mut table = "";
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line;
        } else if table == "[dependencies]"
            && line.starts_with("recsys-")
            && !line.starts_with("recsys-workspace-hack")
        {
            found.push(line.split(['.', ' ', '=']).next().unwrap().to_string());
        }
    }
    found
}

#[test]
fn crates_depend_only_downstream() {
    let mut wrong = Vec::new();
    for (folder, allowed) in ALLOWED {
        for dep in recsys_dependencies(folder) {
            if !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{folder} depends on {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "against the data flow: {wrong:?}");
}

#[test]
fn every_member_is_checked() {
    let workspace = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"),
    )
    .unwrap();
    let members = workspace
        .lines()
        .find(|l| l.starts_with("members"))
        .unwrap();
    for member in members.split('"').skip(1).step_by(2) {
        assert!(
            member == "cli" || member == "hack" || ALLOWED.iter().any(|(f, _)| f == &member),
            "workspace member {member} has no layering rule"
        );
    }
}
