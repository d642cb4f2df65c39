//! The `--json` shapes documented in `src/json.rs`: each command's output has exactly the fields
//! documented there, so a script written against them keeps working (a snapshot of the names).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::Home;

fn fields(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

const KEY: &[&str] = &[
    "backend",
    "backend_type",
    "id",
    "label",
    "algorithm",
    "jose_algorithm",
    "protection",
    "fingerprint",
    "created_at",
    "default",
    "public_key_pem",
];

#[test]
fn every_json_output_has_exactly_its_documented_fields() {
    let h = Home::with_encrypted();
    let made = h.json(&["key", "generate", "--label", "api", "--json"]);
    assert_eq!(fields(&made), set(KEY), "key generate");

    let shown = h.json(&["key", "show", "api", "--json"]);
    let mut show = set(KEY);
    show.extend(["location", "role", "security_level"]);
    assert_eq!(
        fields(&shown),
        show,
        "key show (an encrypted key: no file, no device)"
    );

    let listed = h.json(&["key", "list", "--json"]);
    let mut list = set(KEY);
    list.extend(["version", "state", "logical_key"]);
    assert_eq!(fields(&listed[0]), list, "key list");
    assert_eq!(listed[0]["version"], 1);
    assert!(listed[0]["logical_key"].is_null());

    let never = h.json(&["key", "history", "api", "--json"]);
    assert_eq!(fields(&never), set(&["logical_key", "versions", "history"]));
    assert_eq!(
        fields(&never["versions"][0]),
        set(&["version", "key_id", "state", "continuity_proof"]),
        "a key never rotated: its one version"
    );

    let rotated = h.json(&["key", "rotate", "api", "--reason", "shape", "--json"]);
    assert_eq!(
        fields(&rotated),
        set(&[
            "logical_key",
            "old_version",
            "new_version",
            "new_key_id",
            "new_label",
            "new_fingerprint",
            "migration_end",
            "continuity_proof",
            "post_action_error",
        ]),
        "key rotate"
    );
    let history = h.json(&["key", "history", "api", "--json"]);
    assert_eq!(
        fields(&history),
        set(&[
            "logical_key",
            "label",
            "backend",
            "role",
            "algorithm",
            "versions",
            "history"
        ])
    );
    assert_eq!(
        fields(&history["versions"][1]),
        set(&[
            "version",
            "key_id",
            "state",
            "label",
            "fingerprint",
            "since",
            "created_at",
            "continuity_proof",
        ])
    );
    assert_eq!(
        fields(&history["history"][0]),
        set(&["at", "version", "event", "from", "to", "detail"])
    );

    let backends = h.json(&["backend", "list", "--json"]);
    assert_eq!(fields(&backends), set(&["backends", "fallback_allowed"]));
    assert_eq!(
        fields(&backends["backends"][0]),
        set(&[
            "name",
            "type",
            "location",
            "protection",
            "default",
            "fallback"
        ])
    );

    let status = h.json(&["integrity", "status", "--json"]);
    assert_eq!(
        fields(&status),
        set(&[
            "sealed",
            "anchor",
            "rollback_counter",
            "generation",
            "files"
        ]),
        "a sealed home"
    );
    assert!(
        status["rollback_counter"].is_null(),
        "no counter bound: null, not absent"
    );
    let verified = h.json(&["integrity", "verify", "--json"]);
    assert_eq!(fields(&verified), set(&["intact", "problems"]));

    let audit = h.json(&["audit", "verify", "--json"]);
    assert_eq!(
        fields(&audit),
        set(&[
            "ok",
            "files",
            "records",
            "events",
            "checkpoints",
            "last_checkpoint",
            "unsealed",
            "head",
            "problem",
            "breaks",
            "unfinished",
        ])
    );
    let scan = h.json(&["compromise", "scan", "--json"]);
    assert_eq!(fields(&scan), set(&["findings", "filed"]));
}
