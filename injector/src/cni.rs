//! What Warden's CNI plugin (`warden cni`) does with a pod, as a pure function of the pod as
//! the API server stores it, and the interception settings the injector hands it.
//!
//! In CNI mode (the injector's `--interception cni`) an injected pod has no `warden-init`
//! container: the plugin installs the rules from the node while the pod's network is set
//! up. It decides from the pod's **spec**, never from its annotations: annotations can be
//! changed by anyone who may patch the pod, between admission and the pod's start, while
//! containers cannot change at all. So a pod with the `warden-proxy` container and no
//! `warden-init` is intercepted whatever its annotations say (removing
//! `warden.dev/interception` switches nothing off), and the settings (skipped ports and
//! networks, after the injector applied the operator's allowed-annotations policy) come from
//! the proxy container's environment, which the injector's genuineness check compares with
//! what it would add, like the rest of the container.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};
use warden_core::contract::{self, cni};
use warden_core::Cidr;

/// The interception settings of a CNI-mode pod: what `warden-init`'s arguments would be.
/// Ports, the proxy's UID and the redirect targets are Warden's contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniSettings {
    /// Inbound ports not intercepted (`warden init --skip-inbound-ports`).
    #[serde(default)]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports not intercepted.
    #[serde(default)]
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks not intercepted.
    #[serde(default)]
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl CniSettings {
    /// The JSON the injector writes (compact, fields in a fixed order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the JSON the injector wrote; a port 0 or an unknown field is an error.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let settings: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let ports = settings.skip_inbound_ports.iter();
        if ports.chain(&settings.skip_outbound_ports).any(|p| *p == 0) {
            return Err("port 0 is not a port".into());
        }
        Ok(settings)
    }
}

/// Who intercepts a pod's traffic, as the CNI plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodInterception {
    /// The pod has no Warden proxy: not meshed, the plugin leaves it alone.
    NotInjected,
    /// Injected in init mode: its `warden-init` container installs the rules.
    InitContainer,
    /// Injected in CNI mode: the plugin installs the rules, with these settings.
    Cni(CniSettings),
}

fn named<'a>(containers: Option<&'a [Container]>, name: &str) -> Option<&'a Container> {
    containers.into_iter().flatten().find(|c| c.name == name)
}

/// What the CNI plugin does for `pod`, or why it must refuse to set the pod up (a pod that
/// has Warden's proxy but no way to get its rules: it would run unintercepted).
pub fn interception(pod: &Pod) -> Result<PodInterception, String> {
    let Some(spec) = &pod.spec else {
        return Ok(PodInterception::NotInjected);
    };
    let init = spec.init_containers.as_deref();
    let proxy = named(init, contract::PROXY_CONTAINER)
        .or_else(|| named(Some(&spec.containers), contract::PROXY_CONTAINER));
    let Some(proxy) = proxy else {
        return Ok(PodInterception::NotInjected);
    };
    if named(init, contract::INIT_CONTAINER).is_some() {
        return Ok(PodInterception::InitContainer);
    }
    let env = proxy.env.as_deref().unwrap_or_default();
    let Some(var) = env.iter().find(|e| e.name == cni::SETTINGS_ENV) else {
        return Err(format!(
            "the pod has Warden's {} container but neither {} nor the interception settings \
             ({} in the proxy's environment), so nothing would intercept its traffic; recreate \
             it through an injector running with --interception cni",
            contract::PROXY_CONTAINER,
            contract::INIT_CONTAINER,
            cni::SETTINGS_ENV
        ));
    };
    let text = var.value.as_deref().ok_or_else(|| {
        format!(
            "{} of the {} container is not a literal value",
            cni::SETTINGS_ENV,
            contract::PROXY_CONTAINER
        )
    })?;
    CniSettings::from_json(text)
        .map(PodInterception::Cni)
        .map_err(|e| format!("{} {text:?}: {e}", cni::SETTINGS_ENV))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(spec: Value, annotations: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    fn proxy(env: Value) -> Value {
        json!({"name": "warden-proxy", "image": "warden", "args": ["proxy"], "env": env,
               "restartPolicy": "Always"})
    }

    const APP: &str = "registry.example/app:1";

    #[test]
    fn the_spec_decides_never_the_annotations() {
        let settings = CniSettings {
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![5432, 6379],
            skip_outbound_cidrs: vec![Cidr::parse("169.254.169.254/32").unwrap()],
        };
        let settings_env =
            json!([{"name": "WARDEN_INTERCEPTION_SETTINGS", "value": settings.to_json()}]);
        let marked = json!({"warden.dev/interception": "cni"});
        let app = json!({"name": "app", "image": APP});
        let cases: Vec<(&str, Value, Value, Result<PodInterception, &str>)> = vec![
            (
                "no Warden container",
                json!({"containers": [app]}),
                json!({}),
                Ok(PodInterception::NotInjected),
            ),
            (
                "the annotation alone does not make a pod meshed",
                json!({"containers": [app]}),
                marked.clone(),
                Ok(PodInterception::NotInjected),
            ),
            (
                "CNI mode, native sidecar",
                json!({"initContainers": [proxy(settings_env.clone())], "containers": [app]}),
                marked.clone(),
                Ok(PodInterception::Cni(settings.clone())),
            ),
            (
                "CNI mode, regular container",
                json!({"containers": [proxy(settings_env.clone()), app]}),
                marked.clone(),
                Ok(PodInterception::Cni(settings.clone())),
            ),
            (
                "CNI mode with the annotation removed after admission: still intercepted",
                json!({"initContainers": [proxy(settings_env.clone())], "containers": [app]}),
                json!({}),
                Ok(PodInterception::Cni(settings.clone())),
            ),
            (
                "CNI mode, nothing skipped",
                json!({"initContainers": [proxy(json!([{"name": "WARDEN_INTERCEPTION_SETTINGS",
                    "value": "{\"skipInboundPorts\":[],\"skipOutboundPorts\":[],\"skipOutboundCidrs\":[]}"}]))],
                       "containers": [app]}),
                marked.clone(),
                Ok(PodInterception::Cni(CniSettings::default())),
            ),
            (
                "init mode: warden-init installs the rules",
                json!({"initContainers": [{"name": "warden-init", "image": "warden", "args": ["init"]},
                                          proxy(json!([]))], "containers": [app]}),
                marked.clone(),
                Ok(PodInterception::InitContainer),
            ),
            (
                "a proxy without warden-init or settings",
                json!({"initContainers": [proxy(json!([]))], "containers": [app]}),
                marked.clone(),
                Err("neither warden-init nor the interception settings"),
            ),
            (
                "settings from a ConfigMap (not what the injector writes)",
                json!({"initContainers": [proxy(json!([{"name": "WARDEN_INTERCEPTION_SETTINGS",
                    "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]))], "containers": [app]}),
                marked.clone(),
                Err("not a literal value"),
            ),
            (
                "malformed settings",
                json!({"initContainers": [proxy(json!([{"name": "WARDEN_INTERCEPTION_SETTINGS",
                    "value": "{\"skipInboundPorts\": \"all\"}"}]))], "containers": [app]}),
                marked.clone(),
                Err("WARDEN_INTERCEPTION_SETTINGS"),
            ),
            (
                "an unknown setting",
                json!({"initContainers": [proxy(json!([{"name": "WARDEN_INTERCEPTION_SETTINGS",
                    "value": "{\"interceptNothing\": true}"}]))], "containers": [app]}),
                marked.clone(),
                Err("unknown field"),
            ),
            (
                "port 0",
                json!({"initContainers": [proxy(json!([{"name": "WARDEN_INTERCEPTION_SETTINGS",
                    "value": "{\"skipInboundPorts\": [0]}"}]))], "containers": [app]}),
                marked,
                Err("port 0"),
            ),
        ];
        for (name, spec, annotations, want) in cases {
            let got = interception(&pod(spec, annotations));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{name}: {got}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let no_spec = Pod::default();
        assert_eq!(interception(&no_spec), Ok(PodInterception::NotInjected));
    }

    #[test]
    fn settings_round_trip_through_their_json() {
        let settings = CniSettings {
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![],
            skip_outbound_cidrs: vec![Cidr::parse("fd00:ec2::254/128").unwrap()],
        };
        assert_eq!(
            settings.to_json(),
            r#"{"skipInboundPorts":[22],"skipOutboundPorts":[],"skipOutboundCidrs":["fd00:ec2::254/128"]}"#
        );
        assert_eq!(CniSettings::from_json(&settings.to_json()), Ok(settings));
    }
}
