//! What each fuzz target checks, shared by the cargo-fuzz targets (`fuzz_targets/*.rs`) and
//! by `tests/fuzz_regressions.rs`, which replays every saved input under `cargo test`.
//! Beyond "never panics", each check states a property the function must keep.

use warden_core::policy::evaluate::{DefaultPolicy, PolicySet, Request, Workload};
use warden_core::policy::{self, path};
use warden_core::SpiffeId;
use warden_injector::config::InjectorConfig;
use warden_proxy::detect::{detect, Detection};

/// A fuzz target's check of one input.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, for the regression replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("spiffe_id", spiffe_id),
    ("policy", policy),
    ("path", path),
    ("admission_review", admission_review),
    ("csr", csr),
    ("detect", protocol_detection),
];

/// A SPIFFE ID that parses prints back to itself.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let printed = id.to_string();
        assert_eq!(printed, text, "a parsed ID prints back unchanged");
        assert_eq!(SpiffeId::parse(&printed).as_ref(), Ok(&id));
    }
}

/// Any policy file that parses can be linted and evaluated; evaluation is deterministic.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policies) = policy::parse(text, "fuzz.yaml") else {
        return;
    };
    let _ = policy::lint::lint(&policies);
    let set = PolicySet::new(policies);
    let client = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").expect("a valid ID");
    let server = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/db").expect("a valid ID");
    let workload = Workload::from_id(&server);
    for (caller, http) in [
        (Some(&client), Some(("GET", "/"))),
        (Some(&client), Some(("POST", "/admin/users"))),
        (Some(&client), None),
        (None, Some(("DELETE", "/x"))),
    ] {
        let request = Request {
            client: caller,
            port: 8080,
            http,
        };
        for default in [
            DefaultPolicy::Deny,
            DefaultPolicy::AllAuthenticated,
            DefaultPolicy::Audit,
        ] {
            let first = set.evaluate(&workload, &request, default);
            let again = set.evaluate(&workload, &request, default);
            assert_eq!(first.allowed, again.allowed, "evaluation is deterministic");
        }
    }
}

/// A normalized path starts with `/` and normalizes to itself.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = path::normalize(text) {
        assert!(normal.starts_with('/'), "{normal:?} is absolute");
        assert_eq!(path::normalize(&normal).as_deref(), Ok(normal.as_str()));
    }
}

/// Any body gets an answer or an error, and an answer is a v1 AdmissionReview response that
/// allows the pod or refuses it with a reason.
pub fn admission_review(data: &[u8]) {
    let config = InjectorConfig::new("warden:fuzz", "");
    if let Ok(answer) = warden_injector::webhook::review(data, &config) {
        assert_eq!(answer.review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer.review["kind"], "AdmissionReview");
        let refused = answer.outcome == "refused"
            && answer.review["response"]["status"]["code"] == 403
            && answer.review["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
        assert!(
            answer.review["response"]["allowed"] == true || refused,
            "allows the pod, or refuses it with a 403 and a reason"
        );
    }
}

/// CSR public-key extraction never panics, from DER or PEM.
pub fn csr(data: &[u8]) {
    let _ = warden_identity::csr::public_key_from_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = warden_identity::csr::public_key_from_pem(text);
    }
}

/// A protocol decided on a prefix of the first bytes stays decided as more bytes arrive.
pub fn protocol_detection(data: &[u8]) {
    let cut = data.first().map_or(0, |b| *b as usize) % (data.len() + 1);
    if let Detection::Known(protocol) = detect(&data[..cut]) {
        assert_eq!(
            detect(data),
            Detection::Known(protocol),
            "more bytes changed the verdict on {:?}",
            &data[..cut]
        );
    }
}
