//! Audit checkpoints signed with the proxy's SVID key (which never leaves memory) and checked
//! with the trust bundle alone: the checkpoint carries the SVID chain that signed it, so a
//! chain that spans certificate rotations verifies, each checkpoint with its own SVID, valid
//! at the checkpoint's time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::SignatureScheme;
use warden_core::audit::Checkpoint;
use warden_core::SpiffeId;

use crate::credential::Svid;
use crate::verify::{verify_svid, PeerRole};
use crate::TrustStore;

/// Why a checkpoint could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key is not one rustls can sign with.
    #[error("the SVID key cannot sign: {0}")]
    Key(String),
    /// The key offers none of the schemes checkpoints use.
    #[error("the SVID key offers no supported signature scheme")]
    NoScheme,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Schemes, by preference, and their names in a checkpoint's `alg`.
const SCHEMES: [(SignatureScheme, &str); 3] = [
    (SignatureScheme::ECDSA_NISTP256_SHA256, "ecdsa-p256-sha256"),
    (SignatureScheme::ECDSA_NISTP384_SHA384, "ecdsa-p384-sha384"),
    (SignatureScheme::ED25519, "ed25519"),
];

/// Signs `cp` with `svid`'s key: sets its `workload`, `alg`, `svid` (the chain, base64 DER)
/// and `sig`.
pub fn sign(svid: &Svid, cp: &mut Checkpoint) -> Result<(), SignError> {
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(svid.key())
        .map_err(|e| SignError::Key(e.to_string()))?;
    let schemes: Vec<SignatureScheme> = SCHEMES.iter().map(|(s, _)| *s).collect();
    let signer = key.choose_scheme(&schemes).ok_or(SignError::NoScheme)?;
    let alg = SCHEMES
        .iter()
        .find(|(s, _)| *s == signer.scheme())
        .map(|(_, name)| *name)
        .ok_or(SignError::NoScheme)?;
    cp.workload = svid.id().to_string();
    cp.alg = alg.to_string();
    cp.svid = svid.chain().iter().map(|c| B64.encode(c)).collect();
    let sig = signer
        .sign(&cp.message())
        .map_err(|e| SignError::Sign(e.to_string()))?;
    cp.sig = B64.encode(sig);
    Ok(())
}

/// Checks `cp`'s SVID chain against `store` at the checkpoint's own time and its signature
/// with the leaf's key; returns the signer's SPIFFE ID, or why it cannot be trusted.
pub fn check(store: &TrustStore, cp: &Checkpoint) -> Result<SpiffeId, String> {
    let chain = cp
        .svid
        .iter()
        .map(|c| B64.decode(c).map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("its SVID is not base64: {e}"))?;
    let (leaf, intermediates) = chain.split_first().ok_or("it carries no SVID")?;
    let at = time::OffsetDateTime::parse(&cp.time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("its time {:?} is not RFC 3339: {e}", cp.time))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at.unix_timestamp()).map_err(|_| "its time is before 1970")?,
    ));
    let algorithms = crate::tls::crypto_provider().signature_verification_algorithms;
    let signer = verify_svid(
        store,
        leaf,
        intermediates,
        at,
        PeerRole::Client,
        &algorithms,
    )
    .map_err(|e| format!("its SVID does not verify at {}: {e}", cp.time))?;
    let alg: &dyn rustls::pki_types::SignatureVerificationAlgorithm = match cp.alg.as_str() {
        "ecdsa-p256-sha256" => webpki::aws_lc_rs::ECDSA_P256_SHA256,
        "ecdsa-p384-sha384" => webpki::aws_lc_rs::ECDSA_P384_SHA384,
        "ed25519" => webpki::aws_lc_rs::ED25519,
        other => return Err(format!("unknown signature algorithm {other:?}")),
    };
    let sig = B64
        .decode(&cp.sig)
        .map_err(|e| format!("its signature is not base64: {e}"))?;
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("its SVID is unreadable: {e}"))?
        .verify_signature(alg, &cp.message(), &sig)
        .map_err(|_| "the signature does not match its content (forged or altered)".to_string())?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use warden_core::audit::GENESIS;
    use warden_core::TrustDomain;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            chain: "shop/backend-1/1764144000-aa".into(),
            seq: 5,
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            first: 0,
            dropped: 0,
            last: false,
            workload: String::new(),
            alg: String::new(),
            svid: vec![],
            sig: String::new(),
            prev: GENESIS.into(),
        }
    }

    #[test]
    fn signed_checkpoints_check_and_every_alteration_fails() {
        let generated =
            crate::ca::generate(&crate::ca::InitOptions::new(TrustDomain::default())).unwrap();
        let ca = generated.authority().unwrap();
        let store = TrustStore::single(ca.bundle().clone());
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let mut cp = checkpoint();
        sign(&svid, &mut cp).unwrap();
        assert_eq!(check(&store, &cp), Ok(id.clone()));
        assert_eq!(cp.workload, id.as_str());

        let other_ca = crate::ca::generate(&crate::ca::InitOptions::new(TrustDomain::default()))
            .unwrap()
            .authority()
            .unwrap();
        let mut foreign = checkpoint();
        sign(
            &other_ca.issue(&id, Duration::from_secs(3600)).unwrap(),
            &mut foreign,
        )
        .unwrap();

        let altered: Vec<(&str, Checkpoint, &str)> = vec![
            (
                "head",
                Checkpoint {
                    prev: "1".repeat(64),
                    ..cp.clone()
                },
                "does not match",
            ),
            (
                "range",
                Checkpoint {
                    seq: 6,
                    ..cp.clone()
                },
                "does not match",
            ),
            (
                "dropped",
                Checkpoint {
                    dropped: 1,
                    ..cp.clone()
                },
                "does not match",
            ),
            (
                "final",
                Checkpoint {
                    last: true,
                    ..cp.clone()
                },
                "does not match",
            ),
            (
                "chain",
                Checkpoint {
                    chain: "x".into(),
                    ..cp.clone()
                },
                "does not match",
            ),
            (
                "claimed workload",
                Checkpoint {
                    workload: "spiffe://cluster.local/ns/shop/sa/x".into(),
                    ..cp.clone()
                },
                "does not match",
            ),
            ("foreign CA", foreign, "does not verify"),
            (
                "no SVID",
                Checkpoint {
                    svid: vec![],
                    ..cp.clone()
                },
                "no SVID",
            ),
            (
                "algorithm",
                Checkpoint {
                    alg: "rsa".into(),
                    ..cp.clone()
                },
                "unknown signature",
            ),
            (
                "time after expiry",
                Checkpoint {
                    time: "2099-01-01T00:00:00Z".into(),
                    ..cp.clone()
                },
                "does not verify",
            ),
        ];
        for (what, cp, want) in altered {
            let err = check(&store, &cp).unwrap_err();
            assert!(err.contains(want), "{what}: {err}");
        }
    }
}
