//! `cargo xtask check-layers`: dependencies between workspace crates must point down the layers.
//!
//! The rules (see `shared/architecture.md`, "Rules of direction"):
//!
//! - normal and build dependencies go to a strictly lower layer (bar the few named, with their
//!   reasons, in [`EXCEPTIONS`]);
//! - dev-dependencies go to a strictly lower layer or to `keyhaven-testkit`, and the testkit is
//!   used only as a dev-dependency;
//! - no backend depends on another backend;
//! - lifecycle crates (L3) see backends only through the `keyhaven-core` traits, never by name:
//!   only the facade `keyhaven` names concrete backends (`keyhaven-audit` is not a backend);
//! - `keyhaven-cli` depends on the faces only: the facade `keyhaven`, `keyhaven-server` and
//!   `keyhaven-client` (not even on `keyhaven-core`);
//! - every workspace member is in [`LAYERS`] (or is tooling, [`TOOLING`]).
//!
//! The workspace graph comes from `cargo metadata --no-deps`, which lists each member's declared
//! dependencies; only dependencies on other workspace members are checked.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::{cargo, output};

/// Every library and binary crate of the workspace and its layer.
const LAYERS: &[(&str, u8)] = &[
    ("keyhaven-core", 0),
    ("keyhaven-crypto", 1),
    ("keyhaven-fs", 1),
    ("keyhaven-testkit", 1),
    ("keyhaven-store-file", 2),
    ("keyhaven-store-memory", 2),
    ("keyhaven-store-keyring", 2),
    ("keyhaven-hsm-pkcs11", 2),
    ("keyhaven-hsm-tpm", 2),
    ("keyhaven-audit", 2),
    ("keyhaven-rotation", 3),
    ("keyhaven-backup", 3),
    ("keyhaven-compromise", 3),
    ("keyhaven-httpsig", 3),
    ("keyhaven-envelope", 3),
    ("keyhaven-attest", 3),
    ("keyhaven", 4),
    ("keyhaven-client", 4),
    ("keyhaven-server", 5),
    // The Python binding (bindings/python): a face over the facade and the client.
    ("keyhaven-python", 5),
    ("keyhaven-cli", 6),
];

/// The concrete key-store backends (L2): only the facade may name them in normal dependencies.
const BACKENDS: &[&str] = &[
    "keyhaven-store-file",
    "keyhaven-store-memory",
    "keyhaven-store-keyring",
    "keyhaven-hsm-pkcs11",
    "keyhaven-hsm-tpm",
];

/// The conformance suite, which any crate's tests may use.
const TESTKIT: &str = "keyhaven-testkit";

/// The facade crate.
const FACADE: &str = "keyhaven";

/// The command-line crate, which may depend on the faces only: [`CLI_DEPENDS_ON`].
const CLI: &str = "keyhaven-cli";

/// What the command line may depend on: the facade (every key it touches goes through it), the
/// server it runs (`keyhaven serve`) and the client it drives (`keyhaven client`).
const CLI_DEPENDS_ON: &[&str] = &[FACADE, "keyhaven-client", "keyhaven-server"];

/// Same-layer dependencies allowed by name, each with its reason: `(from, to, reason)`. Keep this
/// short; every entry is a deliberate exception to "dependencies point strictly down".
const EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "keyhaven-testkit",
    "keyhaven-crypto",
    "the conformance suite checks backend output (signatures, SPKI, agreement) against the \
     software implementation; nothing depends on the testkit outside dev-dependencies",
)];

/// Workspace members outside the layering (developer tooling); nothing may depend on them.
const TOOLING: &[&str] = &["xtask"];

/// How a dependency is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[build-dependencies]`.
    Build,
    /// `[dev-dependencies]`.
    Dev,
}

impl DepKind {
    /// The manifest section name, for messages.
    fn section(self) -> &'static str {
        match self {
            DepKind::Normal => "dependency",
            DepKind::Build => "build-dependency",
            DepKind::Dev => "dev-dependency",
        }
    }
}

/// One declared dependency of a workspace member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dependency {
    /// The depended-on package's name (not a `package = ...` rename).
    pub(crate) name: String,
    /// Which section declares it.
    pub(crate) kind: DepKind,
}

/// A workspace member and its declared dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Package {
    /// The package name.
    pub(crate) name: String,
    /// Its declared dependencies, on anything (external crates included).
    pub(crate) dependencies: Vec<Dependency>,
}

/// The layer of a workspace crate, if it is in [`LAYERS`].
fn layer_of(name: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(crate_name, _)| *crate_name == name)
        .map(|&(_, layer)| layer)
}

/// Whether `name` is a concrete backend crate.
fn is_backend(name: &str) -> bool {
    BACKENDS.contains(&name)
}

/// All rule violations of the workspace graph `packages`, one human-readable line each, in a
/// stable order. Dependencies on crates outside `packages` (external crates) are not checked.
pub(crate) fn violations(packages: &[Package]) -> Vec<String> {
    let members: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    for package in packages {
        let from = package.name.as_str();
        if TOOLING.contains(&from) {
            continue;
        }
        let Some(from_layer) = layer_of(from) else {
            found.push(format!(
                "{from}: workspace member not in the layer table: add it to the layer table in \
                 xtask (xtask/src/layers.rs, LAYERS)"
            ));
            continue;
        };
        for dep in &package.dependencies {
            let to = dep.name.as_str();
            if !members.contains(to) || !seen.insert((from, to, dep.kind)) {
                continue;
            }
            if let Some(message) = edge_violation(from, from_layer, to, dep.kind) {
                found.push(message);
            }
        }
    }
    found
}

/// The violation, if any, of `from` (in layer `from_layer`) declaring `to` (a workspace member) as
/// a dependency of kind `kind`.
fn edge_violation(from: &str, from_layer: u8, to: &str, kind: DepKind) -> Option<String> {
    let section = kind.section();
    if TOOLING.contains(&to) {
        return Some(format!(
            "{from} -> {to} ({section}): nothing may depend on tooling crate {to}"
        ));
    }
    let Some(to_layer) = layer_of(to) else {
        // Already reported once, as a member missing from the layer table.
        return None;
    };
    if kind == DepKind::Dev {
        if to_layer < from_layer || to == TESTKIT {
            return None;
        }
        return Some(format!(
            "{from} (L{from_layer}) -> {to} (L{to_layer}) ({section}): dev-dependencies may only \
             use lower layers or {TESTKIT}"
        ));
    }
    if to == TESTKIT {
        return Some(format!(
            "{from} -> {to} ({section}): {TESTKIT} is for tests only: use it as a dev-dependency"
        ));
    }
    if from == CLI && !CLI_DEPENDS_ON.contains(&to) {
        return Some(format!(
            "{from} -> {to} ({section}): {CLI} depends on the facade `{FACADE}`, the server and \
             the client only; use what {FACADE} re-exports"
        ));
    }
    if is_backend(from) && is_backend(to) {
        return Some(format!(
            "{from} -> {to} ({section}): a backend may not depend on another backend"
        ));
    }
    let excepted = EXCEPTIONS
        .iter()
        .any(|&(f, t, _reason)| f == from && t == to);
    if to_layer >= from_layer && !excepted {
        return Some(format!(
            "{from} (L{from_layer}) -> {to} (L{to_layer}) ({section}): dependencies must point to \
             a strictly lower layer"
        ));
    }
    if is_backend(to) && from != FACADE {
        return Some(format!(
            "{from} (L{from_layer}) -> {to} ({section}): only the facade `{FACADE}` may name a \
             concrete backend; lifecycle crates see backends through keyhaven-core traits"
        ));
    }
    None
}

/// Parses `cargo metadata --format-version 1 --no-deps` output into the workspace's packages.
///
/// # Errors
///
/// Fails when the text is not JSON of the expected shape.
pub(crate) fn parse_metadata(json: &str) -> Result<Vec<Package>> {
    let metadata: Value =
        serde_json::from_str(json).context("cargo metadata printed invalid JSON")?;
    let packages = metadata
        .get("packages")
        .and_then(Value::as_array)
        .context("cargo metadata: no `packages` array")?;
    packages
        .iter()
        .map(|package| {
            let name = package
                .get("name")
                .and_then(Value::as_str)
                .context("cargo metadata: a package without a `name`")?;
            let dependencies = package
                .get("dependencies")
                .and_then(Value::as_array)
                .with_context(|| format!("cargo metadata: {name} has no `dependencies` array"))?
                .iter()
                .map(|dep| {
                    let dep_name = dep
                        .get("name")
                        .and_then(Value::as_str)
                        .with_context(|| format!("cargo metadata: unnamed dependency of {name}"))?;
                    let kind = match dep.get("kind").and_then(Value::as_str) {
                        None => DepKind::Normal,
                        Some("build") => DepKind::Build,
                        Some("dev") => DepKind::Dev,
                        Some(other) => {
                            bail!("cargo metadata: {name} -> {dep_name} has unknown kind `{other}`")
                        }
                    };
                    Ok(Dependency {
                        name: dep_name.to_owned(),
                        kind,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Package {
                name: name.to_owned(),
                dependencies,
            })
        })
        .collect()
}

/// `cargo xtask check-layers`: reads the workspace graph from cargo metadata and checks it.
///
/// # Errors
///
/// Fails when cargo metadata fails or when any rule is violated (each violation is printed).
pub(crate) fn check(root: &Path) -> Result<()> {
    let json = output(cargo(root).args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let packages = parse_metadata(&json)?;
    let found = violations(&packages);
    if !found.is_empty() {
        for violation in &found {
            eprintln!("check-layers: {violation}");
        }
        bail!("check-layers: {} layering violation(s)", found.len());
    }
    let layered = packages
        .iter()
        .filter(|p| !TOOLING.contains(&p.name.as_str()))
        .count();
    println!("check-layers: {layered} crates, all dependencies point down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, deps: &[(&str, DepKind)]) -> Package {
        Package {
            name: name.to_owned(),
            dependencies: deps
                .iter()
                .map(|&(dep, kind)| Dependency {
                    name: dep.to_owned(),
                    kind,
                })
                .collect(),
        }
    }

    use DepKind::{Build, Dev, Normal};

    /// The intended graph, roughly as the architecture describes it.
    fn good_graph() -> Vec<Package> {
        vec![
            package(
                "keyhaven-core",
                &[("thiserror", Normal), ("keyhaven-testkit", Dev)],
            ),
            package(
                "keyhaven-crypto",
                &[("keyhaven-core", Normal), ("keyhaven-testkit", Dev)],
            ),
            package(
                "keyhaven-testkit",
                &[("keyhaven-core", Normal), ("keyhaven-crypto", Normal)],
            ),
            package(
                "keyhaven-store-file",
                &[("keyhaven-crypto", Normal), ("keyhaven-testkit", Dev)],
            ),
            package("keyhaven-store-memory", &[("keyhaven-core", Normal)]),
            package(
                "keyhaven-hsm-pkcs11",
                &[("keyhaven-core", Normal), ("cryptoki", Normal)],
            ),
            package("keyhaven-hsm-tpm", &[("keyhaven-core", Build)]),
            package("keyhaven-audit", &[("keyhaven-core", Normal)]),
            package(
                "keyhaven-rotation",
                &[
                    ("keyhaven-core", Normal),
                    ("keyhaven-audit", Normal),
                    ("keyhaven-store-memory", Dev),
                ],
            ),
            package("keyhaven-backup", &[("keyhaven-crypto", Normal)]),
            package("keyhaven-compromise", &[("keyhaven-audit", Normal)]),
            package(
                "keyhaven",
                &[
                    ("keyhaven-store-file", Normal),
                    ("keyhaven-hsm-tpm", Normal),
                    ("keyhaven-rotation", Normal),
                ],
            ),
            package(
                "keyhaven-client",
                &[("keyhaven-core", Normal), ("keyhaven-httpsig", Normal)],
            ),
            package(
                "keyhaven-server",
                &[
                    ("keyhaven", Normal),
                    ("keyhaven-client", Normal),
                    ("keyhaven-testkit", Dev),
                ],
            ),
            package(
                "keyhaven-cli",
                &[
                    ("keyhaven", Normal),
                    ("keyhaven-client", Normal),
                    ("keyhaven-server", Normal),
                    ("clap", Normal),
                    ("keyhaven-core", Dev),
                ],
            ),
            package("xtask", &[("anyhow", Normal)]),
        ]
    }

    #[test]
    fn the_intended_graph_passes() {
        assert_eq!(violations(&good_graph()), Vec::<String>::new());
    }

    /// `good_graph` with `extra` added to `from`'s dependencies.
    fn with_edge(from: &str, to: &str, kind: DepKind) -> Vec<String> {
        let mut graph = good_graph();
        for package in &mut graph {
            if package.name == from {
                package.dependencies.push(Dependency {
                    name: to.to_owned(),
                    kind,
                });
            }
        }
        violations(&graph)
    }

    fn caught(found: &[String], needle: &str) -> bool {
        found.len() == 1 && found[0].contains(needle)
    }

    #[test]
    fn upward_and_sideways_dependencies_are_caught() {
        assert!(caught(
            &with_edge("keyhaven-core", "keyhaven-crypto", Normal),
            "strictly lower"
        ));
        assert!(caught(
            &with_edge("keyhaven-crypto", "keyhaven-store-memory", Normal),
            "strictly lower"
        ));
        assert!(caught(
            &with_edge("keyhaven-audit", "keyhaven", Build),
            "strictly lower"
        ));
        assert!(caught(
            &with_edge("keyhaven-backup", "keyhaven-rotation", Normal),
            "strictly lower"
        ));
    }

    #[test]
    fn exceptions_are_one_way_and_by_name() {
        // testkit -> crypto is in EXCEPTIONS (and in the good graph); the reverse is not.
        let found = with_edge("keyhaven-crypto", "keyhaven-testkit", Normal);
        assert!(caught(&found, "tests only"), "{found:?}");
        let found = with_edge("keyhaven-testkit", "keyhaven-store-file", Normal);
        assert!(caught(&found, "strictly lower"), "{found:?}");
        // ...and the testkit itself is for tests only.
        let found = with_edge("keyhaven-rotation", "keyhaven-testkit", Normal);
        assert!(caught(&found, "dev-dependency"), "{found:?}");
    }

    #[test]
    fn backend_on_backend_is_caught() {
        let found = with_edge("keyhaven-store-file", "keyhaven-store-memory", Normal);
        assert!(caught(&found, "another backend"), "{found:?}");
    }

    #[test]
    fn lifecycle_naming_a_backend_is_caught() {
        let found = with_edge("keyhaven-rotation", "keyhaven-hsm-pkcs11", Normal);
        assert!(caught(&found, "only the facade"), "{found:?}");
        // ...but a lifecycle crate may use the audit log, and test against a backend.
        assert!(with_edge("keyhaven-backup", "keyhaven-audit", Normal).is_empty());
        assert!(with_edge("keyhaven-backup", "keyhaven-store-file", Dev).is_empty());
    }

    #[test]
    fn cli_depends_on_the_faces_only() {
        let only = "the facade `keyhaven`, the server and the client only";
        let found = with_edge("keyhaven-cli", "keyhaven-core", Normal);
        assert!(caught(&found, only), "{found:?}");
        let found = with_edge("keyhaven-cli", "keyhaven-store-file", Normal);
        assert!(caught(&found, only), "{found:?}");
        // The server is below the command line, never the other way round.
        let found = with_edge("keyhaven-server", "keyhaven-cli", Normal);
        assert!(caught(&found, "strictly lower layer"), "{found:?}");
    }

    #[test]
    fn dev_dependencies_may_use_testkit_but_not_go_up() {
        assert!(with_edge("keyhaven-core", "keyhaven-testkit", Dev).is_empty());
        let found = with_edge("keyhaven-core", "keyhaven-crypto", Dev);
        assert!(caught(&found, "dev-dependencies"), "{found:?}");
        let found = with_edge("keyhaven-store-file", "keyhaven-store-memory", Dev);
        assert!(caught(&found, "dev-dependencies"), "{found:?}");
    }

    #[test]
    fn unknown_members_and_tooling_dependencies_are_caught() {
        let mut graph = good_graph();
        graph.push(package("keyhaven-keyring", &[("keyhaven-core", Normal)]));
        let found = violations(&graph);
        assert!(
            caught(&found, "add it to the layer table in xtask"),
            "{found:?}"
        );

        let found = with_edge("keyhaven", "xtask", Dev);
        assert!(caught(&found, "tooling"), "{found:?}");
    }

    #[test]
    fn a_violating_graph_reports_every_violation_once() {
        let graph = vec![
            package(
                "keyhaven-core",
                &[("keyhaven", Normal), ("keyhaven", Normal)],
            ),
            package("keyhaven-store-memory", &[("keyhaven-store-file", Normal)]),
            package("keyhaven-store-file", &[("keyhaven-core", Normal)]),
            package("keyhaven-compromise", &[("keyhaven-store-file", Normal)]),
            package("keyhaven-cli", &[("keyhaven-core", Normal)]),
            package("keyhaven", &[]),
        ];
        let found = violations(&graph);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("keyhaven-core (L0) -> keyhaven (L4)"));
        assert!(found[1].starts_with("keyhaven-store-memory -> keyhaven-store-file"));
        assert!(found[2].starts_with("keyhaven-compromise (L3) -> keyhaven-store-file"));
        assert!(found[3].starts_with("keyhaven-cli -> keyhaven-core"));
    }

    #[test]
    fn parses_cargo_metadata() {
        let json = r#"{
            "packages": [
                {"name": "keyhaven-crypto", "dependencies": [
                    {"name": "keyhaven-core", "kind": null, "path": "/w/crates/keyhaven-core"},
                    {"name": "keyhaven-testkit", "kind": "dev"},
                    {"name": "cc", "kind": "build"}
                ]},
                {"name": "keyhaven-core", "dependencies": []}
            ],
            "workspace_members": []
        }"#;
        let packages = parse_metadata(json).unwrap();
        assert_eq!(
            packages,
            vec![
                package(
                    "keyhaven-crypto",
                    &[
                        ("keyhaven-core", Normal),
                        ("keyhaven-testkit", Dev),
                        ("cc", Build)
                    ]
                ),
                package("keyhaven-core", &[]),
            ]
        );
        assert!(parse_metadata("{}").is_err());
        assert!(
            parse_metadata(
                r#"{"packages":[{"name":"a","dependencies":[{"name":"b","kind":"weird"}]}]}"#
            )
            .is_err()
        );
    }

    /// The real workspace obeys the rules (this makes `cargo test` enforce the layering too).
    #[test]
    fn the_workspace_dependencies_point_down() {
        let root = crate::workspace_root().unwrap();
        let json =
            output(cargo(&root).args(["metadata", "--format-version", "1", "--no-deps"])).unwrap();
        let found = violations(&parse_metadata(&json).unwrap());
        assert!(
            found.is_empty(),
            "layering violations:\n{}",
            found.join("\n")
        );
    }
}
