//! The contract stays readable one version back (DESIGN section 9: a control plane serves
//! proxies one minor version older, and proxies meet newer control planes during upgrades).
//!
//! 1. Every field, enum value and RPC of the released `v1` contract (`contract/v1.txt`) is
//!    still in the `.proto` files with the same number, type, label and name: a change
//!    that would misread an older peer's bytes fails here. Additions are fine.
//! 2. Bytes an older peer wrote (`contract/v1-*.hex`, encoded by the release) decode to the
//!    same messages today, also with fields from a newer peer appended (unknown fields are
//!    skipped, as proxies of version N skip what N+1 adds).
//!
//! `UPDATE_CONTRACT=1 cargo test -p warden-api --test contract` rewrites the files, at a
//! release only.

use prost::Message;
use warden_api::discovery::v1 as discovery;
use warden_api::policy::v1 as policy;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contract");

/// One line per field, enum value and RPC of the contract, sorted.
fn listing() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let fds = protox::compile(
        [
            "warden/policy/v1/policy.proto",
            "warden/discovery/v1/discovery.proto",
        ],
        [root],
    )
    .unwrap();
    let mut lines = Vec::new();
    for file in &fds.file {
        let package = file.package();
        let mut messages: Vec<(String, _)> = file
            .message_type
            .iter()
            .map(|m| (format!("{package}.{}", m.name()), m.clone()))
            .collect();
        while let Some((name, message)) = messages.pop() {
            for field in &message.field {
                let oneof = field
                    .oneof_index
                    .map(|i| format!(" oneof {}", message.oneof_decl[i as usize].name()))
                    .unwrap_or_default();
                lines.push(format!(
                    "message {name} field {} = {} {:?} {:?} {}{oneof}",
                    field.name(),
                    field.number(),
                    field.label(),
                    field.r#type(),
                    field.type_name()
                ));
            }
            for nested in &message.nested_type {
                messages.push((format!("{name}.{}", nested.name()), nested.clone()));
            }
            for e in &message.enum_type {
                for v in &e.value {
                    lines.push(format!(
                        "enum {name}.{} value {} = {}",
                        e.name(),
                        v.name(),
                        v.number()
                    ));
                }
            }
        }
        for e in &file.enum_type {
            for v in &e.value {
                lines.push(format!(
                    "enum {package}.{} value {} = {}",
                    e.name(),
                    v.name(),
                    v.number()
                ));
            }
        }
        for service in &file.service {
            for method in &service.method {
                lines.push(format!(
                    "service {package}.{} rpc {}({}{}) returns ({}{})",
                    service.name(),
                    method.name(),
                    if method.client_streaming() {
                        "stream "
                    } else {
                        ""
                    },
                    method.input_type(),
                    if method.server_streaming() {
                        "stream "
                    } else {
                        ""
                    },
                    method.output_type()
                ));
            }
        }
    }
    lines.sort();
    lines
}

fn update() -> bool {
    std::env::var("UPDATE_CONTRACT").as_deref() == Ok("1")
}

#[test]
fn nothing_of_the_released_contract_changed_or_went_away() {
    let path = format!("{DIR}/v1.txt");
    let current = listing();
    if update() {
        std::fs::write(&path, current.join("\n") + "\n").unwrap();
    }
    let released = std::fs::read_to_string(&path).unwrap();
    let missing: Vec<&str> = released
        .lines()
        .filter(|l| !l.is_empty() && !current.iter().any(|c| c == l))
        .collect();
    assert!(
        missing.is_empty(),
        "changed or removed from the released v1 contract (an older peer would misread it; add new fields with new numbers instead):\n{}",
        missing.join("\n")
    );
    assert!(released.lines().count() > 30, "{released}");
}

/// The messages the golden bytes hold: what a proxy and a controller of the release send.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let snapshot = policy::Snapshot {
        version: "42".into(),
        policies: vec![policy::Policy {
            namespace: "shop".into(),
            name: "backend-allow-frontend".into(),
            mesh: false,
            selector: Some(policy::Strings {
                values: vec!["backend".into()],
            }),
            action: policy::Action::Allow as i32,
            rules: vec![policy::Rule {
                identities: Some(policy::Strings {
                    values: vec!["spiffe://cluster.local/ns/shop/sa/frontend".into()],
                }),
                ports: Some(policy::Ports { values: vec![8080] }),
                methods: Some(policy::Strings {
                    values: vec!["GET".into()],
                }),
                paths: Some(policy::Strings {
                    values: vec!["/api/*".into()],
                }),
                ..Default::default()
            }],
        }],
        default: policy::MeshDefault::Audit as i32,
        mesh_only: true,
        allowed_annotations: vec!["warden.dev/inbound-mode".into()],
        refuse_unknown_destinations: true,
    };
    let watch = policy::WatchRequest {
        pod: "backend-7d9f-abcde".into(),
    };
    vec![
        ("v1-watch-request", watch.encode_to_vec()),
        ("v1-snapshot", snapshot.encode_to_vec()),
        ("v1-subscription", subscription().encode_to_vec()),
        ("v1-update", update_message().encode_to_vec()),
    ]
}

fn subscription() -> discovery::Subscription {
    discovery::Subscription {
        add: vec!["10.0.0.7:8080".into(), "[fd00::7]:8080".into()],
        remove: vec!["10.0.0.9:80".into()],
    }
}

fn update_message() -> discovery::Update {
    discovery::Update {
        address: "10.0.0.7:8080".into(),
        destination: Some(discovery::Destination {
            kind: discovery::Kind::Service as i32,
            name: "shop/backend".into(),
            meshed: true,
            identities: vec!["spiffe://cluster.local/ns/shop/sa/backend".into()],
            protocol: discovery::Protocol::Http2 as i32,
            no_endpoints: false,
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn bytes_of_the_release_decode_the_same_also_with_fields_a_newer_peer_adds() {
    for (name, bytes) in samples() {
        let path = format!("{DIR}/{name}.hex");
        if update() {
            std::fs::write(&path, hex(&bytes) + "\n").unwrap();
        }
        let released = unhex(&std::fs::read_to_string(&path).unwrap());
        // A newer peer's extra field (number 99, a string): skipped, not an error.
        let mut newer = released.clone();
        newer.extend([0x9a, 0x06, 0x03, b'n', b'e', b'w']);
        match name {
            "v1-watch-request" => {
                let old = policy::WatchRequest::decode(released.as_slice()).unwrap();
                assert_eq!(old.pod, "backend-7d9f-abcde");
                assert_eq!(policy::WatchRequest::decode(newer.as_slice()).unwrap(), old);
                assert_eq!(
                    old.encode_to_vec(),
                    bytes,
                    "{name}: the release and today encode alike"
                );
            }
            "v1-snapshot" => {
                let old = policy::Snapshot::decode(released.as_slice()).unwrap();
                assert_eq!(
                    old.policies[0].rules[0].ports.as_ref().unwrap().values,
                    [8080]
                );
                assert_eq!(old.default, policy::MeshDefault::Audit as i32);
                assert!(old.refuse_unknown_destinations);
                assert_eq!(policy::Snapshot::decode(newer.as_slice()).unwrap(), old);
                assert_eq!(old.encode_to_vec(), bytes, "{name}");
            }
            "v1-subscription" => {
                let old = discovery::Subscription::decode(released.as_slice()).unwrap();
                assert_eq!(old, subscription());
                assert_eq!(
                    discovery::Subscription::decode(newer.as_slice()).unwrap(),
                    old
                );
            }
            "v1-update" => {
                let old = discovery::Update::decode(released.as_slice()).unwrap();
                assert_eq!(old, update_message());
                assert_eq!(discovery::Update::decode(newer.as_slice()).unwrap(), old);
            }
            _ => unreachable!(),
        }
    }
}
