//! The pod patch, as a pure function: a pod and the injector's settings in, an RFC 6902
//! JSON patch (or the reason not to inject) out. Every port, UID, env name, annotation and
//! path comes from `warden_core::contract`.
//!
//! What an injected pod gets:
//! - `warden-init` first among the init containers: `warden init` with NET_ADMIN and NET_RAW
//!   only (everything else dropped);
//! - `warden-proxy`: a native sidecar (an init container with `restartPolicy: Always` and a
//!   startup probe on `/ready`, placed right after `warden-init` so the app's own init
//!   containers already run meshed), or on request a regular first container whose
//!   postStart hook holds the app until the proxy is ready; UID 2626, read-only root
//!   filesystem, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault;
//!   downward-API env, the trust anchors, the identity service; a projected token with
//!   audience `warden-identity`; the controller's address, where the proxy subscribes to its
//!   pod's policies (no policy ConfigMap: a namespace editor cannot rewrite them);
//! - the app's HTTP, TCP and gRPC probes rewritten to pass through the proxy's admin port;
//! - annotations: the injected version and kubectl's default container.
//!
//! In CNI mode (`InjectorConfig::interception`, `warden injector --interception cni`) there
//! is no `warden-init` (nor its `/run` volume): Warden's CNI plugin installs the same rules
//! from the node, so the pod needs no privileged container and can meet Pod Security
//! `restricted`. The proxy comes first instead (native: the first init container; regular:
//! the first container), with one more environment variable, the effective interception
//! settings as JSON (`contract::cni::SETTINGS_ENV`: what `warden-init`'s arguments would
//! be), which the plugin reads from the stored pod; and the pod is annotated
//! `warden.dev/interception: cni`. See [`crate::cni`] for why the plugin trusts the
//! container and not the annotation.
//!
//! What it refuses (the API server denies the pod, with the reason):
//! - containers under Warden's names (`warden-init`, `warden-proxy`) that are not exactly
//!   what it adds: only a pod whose Warden containers and volumes are its own (a
//!   reinvocation, or a copy of an injected pod) counts as already injected, never one that
//!   merely carries the `warden.dev/injected-version` annotation (that one is injected);
//! - an app container running as the proxy's UID 2626, whose traffic is never intercepted.
//!
//! Security-relevant annotations (skipped ports and networks, permissive inbound) are ignored,
//! with a warning, unless the operator allows them (`InjectorConfig::allowed_annotations`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, PodSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use warden_core::contract::{self, annotations, env};
use warden_core::probe::{self, AppProbe, AppProbes};
use warden_core::Cidr;

use crate::cni::CniSettings;
use crate::config::{
    InjectorConfig, Interception, Resources, SecurityAnnotation, SidecarMode, ALLOW_ANNOTATION_FLAG,
};

/// Why a pod gets no patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInjected {
    /// The pod is allowed unchanged (opted out, already injected, `hostNetwork`, ...).
    #[error("not injected: {0}")]
    Skipped(String),
    /// The pod is refused: admitted as it is, it would get around the mesh.
    #[error("refused: {0}")]
    Refused(String),
}

/// A patch to apply, and warnings for the pod's author.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// The RFC 6902 operations.
    pub patch: Value,
    /// Problems with the pod's annotations (their defaults were used instead).
    pub warnings: Vec<String>,
}

const TOKEN_VOLUME: &str = "warden-token";
const RUN_VOLUME: &str = "warden-run";
const TOKEN_SECONDS: i64 = 3600;

/// JSON Pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn add(path: String, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// The settings a pod may override through `warden.dev/*` annotations.
#[derive(Debug, Clone)]
struct Overrides {
    mode: SidecarMode,
    log_level: String,
    resources: Resources,
    skip_inbound_ports: Vec<u16>,
    skip_outbound_ports: Vec<u16>,
    skip_outbound_cidrs: Vec<Cidr>,
    opaque_ports: Vec<u16>,
    inbound_mode: Option<String>,
}

fn ports(value: &str) -> Result<Vec<u16>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port")),
            Ok(port) => Ok(port),
        })
        .collect()
}

fn quantity(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 20
        && value.chars().next().is_some_and(|c| c.is_ascii_digit())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is not a Kubernetes quantity"))
    }
}

/// The pod's annotations without the security-relevant ones the operator does not allow; each
/// of those is ignored and reported in `warnings`.
fn permitted<'a>(
    pod_annotations: Option<&'a BTreeMap<String, String>>,
    namespace: &str,
    config: &InjectorConfig,
    warnings: &mut Vec<String>,
) -> BTreeMap<&'a str, &'a str> {
    let mut permitted: BTreeMap<&str, &str> = pod_annotations
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for annotation in SecurityAnnotation::ALL {
        let key = annotation.key();
        let weakens = permitted.get(key).is_some_and(|v| annotation.weakens(v));
        if weakens && !config.allows(annotation, namespace) {
            permitted.remove(key);
            warnings.push(format!(
                "warden: annotation {key} ignored: it weakens enforcement and neither a \
                 MeshPolicy for namespace {namespace} nor the injector's configuration allows \
                 it (an operator can, with a MeshPolicy's allowedAnnotations or the \
                 injector's --{ALLOW_ANNOTATION_FLAG} {key})"
            ));
        }
    }
    permitted
}

impl Overrides {
    fn read(
        pod_annotations: &BTreeMap<&str, &str>,
        config: &InjectorConfig,
        warnings: &mut Vec<String>,
    ) -> Self {
        let mut o = Overrides {
            mode: config.default_mode,
            log_level: config.log_level.clone(),
            resources: config.proxy_resources.clone(),
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            opaque_ports: Vec::new(),
            inbound_mode: None,
        };
        let mut apply = |key: &str, f: &mut dyn FnMut(&str) -> Result<(), String>| {
            if let Some(value) = pod_annotations.get(key) {
                if let Err(e) = f(value) {
                    warnings.push(format!("warden: annotation {key}: {e}; using the default"));
                }
            }
        };
        apply(annotations::SIDECAR_MODE, &mut |v| {
            o.mode =
                SidecarMode::parse(v).ok_or_else(|| format!("{v:?} is not native or regular"))?;
            Ok(())
        });
        apply(annotations::LOG_LEVEL, &mut |v| {
            let ok = !v.is_empty()
                && v.len() <= 200
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_:=,.-".contains(c));
            if !ok {
                return Err(format!("{v:?} is not a log filter"));
            }
            o.log_level = v.to_string();
            Ok(())
        });
        apply(annotations::PROXY_CPU_REQUEST, &mut |v| {
            quantity(v).map(|q| o.resources.cpu_request = q)
        });
        apply(annotations::PROXY_MEMORY_REQUEST, &mut |v| {
            quantity(v).map(|q| o.resources.memory_request = q)
        });
        apply(annotations::PROXY_CPU_LIMIT, &mut |v| {
            quantity(v).map(|q| o.resources.cpu_limit = Some(q))
        });
        apply(annotations::PROXY_MEMORY_LIMIT, &mut |v| {
            quantity(v).map(|q| o.resources.memory_limit = Some(q))
        });
        apply(annotations::SKIP_INBOUND_PORTS, &mut |v| {
            ports(v).map(|p| o.skip_inbound_ports = p)
        });
        apply(annotations::SKIP_OUTBOUND_PORTS, &mut |v| {
            ports(v).map(|p| o.skip_outbound_ports = p)
        });
        apply(annotations::OPAQUE_PORTS, &mut |v| {
            ports(v).map(|p| o.opaque_ports = p)
        });
        apply(annotations::SKIP_OUTBOUND_CIDRS, &mut |v| {
            o.skip_outbound_cidrs = warden_core::cidr::parse_list(v).map_err(|e| e.to_string())?;
            Ok(())
        });
        apply(annotations::INBOUND_MODE, &mut |v| match v {
            "strict" | "permissive" => {
                o.inbound_mode = Some(v.to_string());
                Ok(())
            }
            _ => Err(format!("{v:?} is not strict or permissive")),
        });
        o
    }
}

/// The proxy's worker threads for its CPU limit (a Kubernetes quantity): the limit in cores
/// rounded up, as Linkerd sizes its proxy, from 1 to [`contract::MAX_WORKER_THREADS`]. None
/// without a limit, or for one that is no CPU quantity: the proxy then runs one worker per
/// CPU its container may use, at most two (a limit a LimitRange adds later counts there).
pub fn worker_threads(cpu_limit: Option<&str>) -> Option<usize> {
    let cores = cpu_cores(cpu_limit?)?;
    // In range before the conversion, so it cannot saturate or wrap.
    let max = contract::MAX_WORKER_THREADS as f64;
    Some(cores.ceil().clamp(1.0, max) as usize)
}

/// The cores a CPU quantity stands for: a decimal number, an exponent (`1e3`), or a
/// decimal (`n`, `u`, `m`, `k`, `M`, `G`) or binary (`Ki`, `Mi`, `Gi`) suffix.
fn cpu_cores(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E'])?;
            10f64.powi(digits.parse::<i32>().ok()?.clamp(-30, 30))
        }
    };
    Some(number * scale).filter(|c| c.is_finite() && *c >= 0.0)
}

fn resources(r: &Resources) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_string(), Quantity(r.cpu_request.clone()));
    requests.insert("memory".to_string(), Quantity(r.memory_request.clone()));
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &r.cpu_limit {
        limits.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &r.memory_limit {
        limits.insert("memory".to_string(), Quantity(memory.clone()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn init_container(config: &InjectorConfig, o: &Overrides) -> Container {
    let mut args = vec!["init".to_string()];
    for (flag, value) in [
        ("--skip-inbound-ports", join(&o.skip_inbound_ports)),
        ("--skip-outbound-ports", join(&o.skip_outbound_ports)),
        ("--skip-outbound-cidrs", join(&o.skip_outbound_cidrs)),
    ] {
        if !value.is_empty() {
            args.push(flag.into());
            args.push(value);
        }
    }
    Container {
        name: contract::INIT_CONTAINER.into(),
        image: Some(config.image.clone()),
        args: Some(args),
        resources: Some(resources(&config.init_resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // iptables takes its lock under /run; the root filesystem stays read-only.
        volume_mounts: Some(vec![VolumeMount {
            name: RUN_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(contract::ADMIN_PORT)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn proxy_container(config: &InjectorConfig, o: &Overrides, probes: &AppProbes) -> Container {
    let mut env = vec![
        field_env(env::POD_NAME, "metadata.name"),
        field_env(env::POD_NAMESPACE, "metadata.namespace"),
        field_env(env::POD_IP, "status.podIP"),
        field_env(env::POD_SERVICE_ACCOUNT, "spec.serviceAccountName"),
        value_env(env::TRUST_DOMAIN, config.trust_domain.as_str()),
        value_env(env::IDENTITY_URL, config.identity_url.clone()),
        value_env(
            env::IDENTITY_TOKEN_FILE,
            format!("{}/{}", contract::TOKEN_MOUNT, contract::TOKEN_FILE),
        ),
        value_env(env::TRUST_ANCHORS, config.trust_anchors_pem.clone()),
        value_env(env::TRANSPARENT, "true"),
        value_env(env::CONTROL_PLANE, config.control_plane.clone()),
        value_env(env::LOG, o.log_level.clone()),
    ];
    if let Some(workers) = worker_threads(o.resources.cpu_limit.as_deref()) {
        env.push(value_env(env::WORKER_THREADS, workers.to_string()));
    }
    if !o.opaque_ports.is_empty() {
        env.push(value_env(env::OPAQUE_PORTS, join(&o.opaque_ports)));
    }
    if let Some(mode) = &o.inbound_mode {
        env.push(value_env(env::INBOUND_MODE, mode.clone()));
    }
    if !probes.is_empty() {
        env.push(value_env(
            probe::ENV,
            serde_json::to_string(probes).unwrap_or_default(),
        ));
    }
    if config.interception == Interception::Cni {
        let settings = CniSettings {
            skip_inbound_ports: o.skip_inbound_ports.clone(),
            skip_outbound_ports: o.skip_outbound_ports.clone(),
            skip_outbound_cidrs: o.skip_outbound_cidrs.clone(),
        };
        env.push(value_env(contract::cni::SETTINGS_ENV, settings.to_json()));
    }
    let native = o.mode == SidecarMode::Native;
    Container {
        name: contract::PROXY_CONTAINER.into(),
        image: Some(config.image.clone()),
        args: Some(vec!["proxy".into()]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some(contract::ADMIN_PORT_NAME.into()),
                container_port: i32::from(contract::ADMIN_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("warden-inbound".into()),
                container_port: i32::from(contract::INBOUND_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: Some(resources(&o.resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(contract::PROXY_UID)),
            run_as_group: Some(i64::from(contract::PROXY_GID)),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: contract::TOKEN_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        restart_policy: native.then(|| "Always".to_string()),
        startup_probe: native.then(|| admin_probe("/ready", 1, 120)),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        readiness_probe: Some(admin_probe("/ready", 5, 3)),
        lifecycle: (!native).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "warden-proxy".into(),
                        "proxy".into(),
                        "--wait-ready".into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The volumes the injector adds: the proxy's token, and in init mode the
/// memory-backed `/run` of `warden-init`.
fn volumes(interception: Interception) -> Vec<Volume> {
    let mut volumes = all_volumes();
    if interception == Interception::Cni {
        volumes.retain(|v| v.name != RUN_VOLUME);
    }
    volumes
}

/// Every volume the injector may add (their names are reserved in both modes).
fn all_volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(contract::IDENTITY_TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: contract::TOKEN_FILE.into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// Resolves a probe port (a number, or the name of one of the container's ports).
fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The original probe as the proxy runs it, if it is one the proxy runs (exec is not).
fn app_probe(probe: &Probe, container: &Container) -> Option<AppProbe> {
    if let Some(http) = &probe.http_get {
        return Some(AppProbe::Http {
            scheme: http.scheme.clone().unwrap_or_else(|| "HTTP".into()),
            host: http.host.clone(),
            port: resolve_port(&http.port, container)?,
            path: http.path.clone().unwrap_or_else(|| "/".into()),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Some(AppProbe::Tcp {
            port: resolve_port(&tcp.port, container)?,
        });
    }
    if let Some(grpc) = &probe.grpc {
        return Some(AppProbe::Grpc {
            port: u16::try_from(grpc.port).ok()?,
            service: grpc.service.clone().unwrap_or_default(),
        });
    }
    None
}

/// The probe kubelet runs instead: the same timing, an HTTP GET on the admin port.
fn rewritten(probe: &Probe, container: &str, kind: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(probe::admin_path(container, kind)),
            port: IntOrString::Int(i32::from(contract::ADMIN_PORT)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        exec: None,
        grpc: None,
        tcp_socket: None,
        ..probe.clone()
    }
}

/// Whether a container name is one of Warden's.
fn reserved(name: &str) -> bool {
    name == contract::PROXY_CONTAINER || name == contract::INIT_CONTAINER
}

/// Every container of the pod (init, app and ephemeral): its name and securityContext.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = (&str, Option<&SecurityContext>)> {
    let regular = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.name.as_str(), c.security_context.as_ref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.security_context.as_ref()));
    regular.chain(ephemeral)
}

/// Fields the API server fills in with defaults, found in a reinvoked or copied pod although
/// the injector never sets them; none changes what a container may do.
fn defaulted(key: &str, value: &Value) -> bool {
    match key {
        "imagePullPolicy"
        | "terminationMessagePath"
        | "terminationMessagePolicy"
        | "timeoutSeconds"
        | "successThreshold"
        | "defaultMode" => true,
        "apiVersion" => value == "v1",
        "procMount" => value == "Default",
        _ => false,
    }
}

/// Whether `actual` is `expected` plus, at most, fields the API server defaults.
fn covers(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            e.iter()
                .all(|(k, v)| a.get(k).is_some_and(|w| covers(v, w)))
                && a.iter().all(|(k, v)| e.contains_key(k) || defaulted(k, v))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| covers(e, a))
        }
        _ => expected == actual,
    }
}

/// Where the ServiceAccount admission plugin mounts the API token, into every container.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A Warden container as compared with what the injector adds: without its resources (the
/// API server canonicalizes quantities, and they weaken nothing), its app-probe table
/// (derived from the app's own probes, which the pod controls anyway) and the read-only API
/// token mount of the ServiceAccount admission plugin (which the API server reinvokes after
/// the webhook's patch, so every stored injected pod has it in Warden's containers too; it
/// is the pod's own token, which its app containers get anyway).
fn comparable(container: &Container) -> Value {
    let mut value = to_value(container);
    if let Some(fields) = value.as_object_mut() {
        fields.remove("resources");
    }
    if let Some(env) = value.get_mut("env").and_then(Value::as_array_mut) {
        env.retain(|e| e["name"] != probe::ENV);
    }
    if let Some(mounts) = value.get_mut("volumeMounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| {
            let token = m["mountPath"] == SERVICE_ACCOUNT_MOUNT
                && m["readOnly"] == true
                && m["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kube-api-access-"));
            !token
        });
    }
    value
}

/// The refusal of a pod that uses one of Warden's names for its own `kind` (container, volume).
fn reserved_name(kind: &str, name: &str) -> NotInjected {
    NotInjected::Refused(format!(
        "{kind} name {name} is reserved for Warden's sidecar, and this pod's {name} is not \
         what the injector adds: remove it (the injector adds its own)"
    ))
}

/// Whether the pod already has exactly the containers and volumes the injector adds (a
/// reinvocation, or a copy of an injected pod): `Ok(false)` when it has none of them, refused
/// when anything under Warden's names is not the injector's.
fn already_injected(
    spec: &PodSpec,
    config: &InjectorConfig,
    o: &Overrides,
) -> Result<bool, NotInjected> {
    let init = init_container(config, o);
    let proxy = proxy_container(config, o, &AppProbes::new());
    let init_list = spec.init_containers.as_deref().unwrap_or_default();
    // In CNI mode there is no warden-init: the proxy takes its place.
    let cni = config.interception == Interception::Cni;
    let (proxy_list, proxy_at) = match o.mode {
        SidecarMode::Native => (init_list, usize::from(!cni)),
        SidecarMode::Regular => (spec.containers.as_slice(), 0),
    };
    let mut expected = vec![(proxy_list, proxy_at, &proxy)];
    if !cni {
        expected.insert(0, (init_list, 0, &init));
    }
    let in_place = |name: &str| {
        expected.iter().any(|(list, at, want)| {
            want.name == name
                && list
                    .get(*at)
                    .is_some_and(|c| covers(&comparable(want), &comparable(c)))
        })
    };
    let found: Vec<&str> = all_containers(spec)
        .map(|(name, _)| name)
        .filter(|name| reserved(name))
        .collect();
    let wanted = volumes(config.interception);
    let reserved_volumes = all_volumes();
    let pod_volumes = spec.volumes.as_deref().unwrap_or_default();
    let Some(&first) = found.first() else {
        return match pod_volumes
            .iter()
            .find(|v| reserved_volumes.iter().any(|w| w.name == v.name))
        {
            Some(volume) => Err(reserved_name("volume", &volume.name)),
            None => Ok(false),
        };
    };
    // Both in place and nothing else under their names (e.g. an ephemeral container).
    let complete =
        found.len() == expected.len() && expected.iter().all(|(_, _, want)| in_place(&want.name));
    if !complete {
        let culprit = found
            .iter()
            .copied()
            .find(|name| !in_place(name))
            .unwrap_or(first);
        return Err(reserved_name("container", culprit));
    }
    for want in &wanted {
        let ours = pod_volumes
            .iter()
            .any(|v| v.name == want.name && covers(&to_value(want), &to_value(v)));
        if !ours {
            return Err(reserved_name("volume", &want.name));
        }
    }
    // A reserved volume the injector does not add in this mode (warden-run in CNI mode).
    if let Some(extra) = pod_volumes.iter().find(|v| {
        reserved_volumes.iter().any(|r| r.name == v.name)
            && !wanted.iter().any(|w| w.name == v.name)
    }) {
        return Err(reserved_name("volume", &extra.name));
    }
    Ok(true)
}

/// Why the pod is refused if one of its own containers runs as the proxy's UID (its own
/// `runAsUser`, or the pod's): that container's traffic would never be intercepted.
fn runs_as_proxy_uid(spec: &PodSpec) -> Option<NotInjected> {
    all_containers(spec)
        .filter(|(name, _)| !reserved(name))
        .find_map(|(name, sc)| {
            proxy_uid_refusal("container", name, sc, spec).map(NotInjected::Refused)
        })
}

/// Why a container (`kind` `name`, its securityContext `sc`) of `spec` may not run: it runs
/// as the proxy's UID, by its own `runAsUser` or the pod's.
fn proxy_uid_refusal(
    kind: &str,
    name: &str,
    sc: Option<&SecurityContext>,
    spec: &PodSpec,
) -> Option<String> {
    let proxy_uid = i64::from(contract::PROXY_UID);
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let source = match sc.and_then(|s| s.run_as_user) {
        Some(uid) if uid == proxy_uid => "its securityContext.runAsUser",
        None if pod_uid == Some(proxy_uid) => "the pod's securityContext.runAsUser",
        _ => return None,
    };
    Some(format!(
        "{kind} {name} runs as UID {proxy_uid} ({source}), the proxy's UID, whose traffic is \
         never intercepted: it would bypass the mesh; run it as another UID"
    ))
}

/// Why an ephemeral container may not join `pod` (an update of its `ephemeralcontainers`):
/// in an injected pod, one running as the proxy's UID would bypass the mesh. A pod
/// without Warden's proxy is not the mesh's concern.
pub fn debug_container_refusal(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let injected = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.name == contract::PROXY_CONTAINER);
    if !injected {
        return None;
    }
    // Every ephemeral container, whatever its name: none of them is Warden's.
    spec.ephemeral_containers.iter().flatten().find_map(|c| {
        proxy_uid_refusal(
            "ephemeral container",
            &c.name,
            c.security_context.as_ref(),
            spec,
        )
    })
}

/// The patch for `pod`, or why it gets none.
pub fn inject(pod: &Pod, config: &InjectorConfig) -> Result<Injection, NotInjected> {
    let meta = &pod.metadata;
    let opted_out = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(annotations::INJECT))
            .is_some_and(|v| v == "disabled")
    };
    if opted_out(&meta.labels) || opted_out(&meta.annotations) {
        return Err(NotInjected::Skipped(
            "the pod opted out (warden.dev/inject: disabled)".into(),
        ));
    }
    let Some(spec) = &pod.spec else {
        return Err(NotInjected::Skipped("the pod has no spec".into()));
    };
    if spec.host_network == Some(true) {
        return Err(NotInjected::Skipped(
            "hostNetwork pods share the node's network and are not meshed".into(),
        ));
    }

    let mut warnings = Vec::new();
    // The webhook sets the request's namespace; without one, a name no namespace has (only
    // MeshPolicies for every namespace apply).
    let namespace = meta.namespace.as_deref().unwrap_or("");
    let permitted = permitted(meta.annotations.as_ref(), namespace, config, &mut warnings);
    let overrides = Overrides::read(&permitted, config, &mut warnings);
    // Only the containers are trusted, never the injected-version annotation alone (it is
    // overwritten below).
    let injected = already_injected(spec, config, &overrides)?;
    if let Some(refusal) = runs_as_proxy_uid(spec) {
        return Err(refusal);
    }
    if injected {
        return Err(NotInjected::Skipped("the pod is already injected".into()));
    }
    if spec.containers.is_empty() {
        return Err(NotInjected::Skipped("the pod has no containers".into()));
    }
    let mut ops = Vec::new();

    // Probes: rewrite HTTP, TCP and gRPC probes of the app's containers to the admin port.
    let mut probes = AppProbes::new();
    for (i, container) in spec.containers.iter().enumerate() {
        for (kind, field, probe) in [
            ("liveness", "livenessProbe", &container.liveness_probe),
            ("readiness", "readinessProbe", &container.readiness_probe),
            ("startup", "startupProbe", &container.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let names_host = probe
                .http_get
                .as_ref()
                .and_then(|h| h.host.as_deref())
                .is_some_and(|h| !h.is_empty());
            if names_host {
                // Not this pod's app: the kubelet probes it as before (the proxy would reach
                // it from inside the pod, past the mesh's outbound rules).
                warnings.push(format!(
                    "warden: the {kind} probe of container {} names a host; left to the kubelet unchanged",
                    container.name
                ));
                continue;
            }
            match app_probe(probe, container) {
                Some(original) => {
                    probes.insert(format!("{}/{kind}", container.name), original);
                    let index = match overrides.mode {
                        SidecarMode::Native => i,
                        SidecarMode::Regular => i + 1, // the proxy is inserted first
                    };
                    ops.push(json!({
                        "op": "replace",
                        "path": format!("/spec/containers/{index}/{field}"),
                        "value": to_value(&rewritten(probe, &container.name, kind)),
                    }));
                }
                None if probe.exec.is_none() => warnings.push(format!(
                    "warden: the {kind} probe of container {} names a port it does not declare; left unchanged",
                    container.name
                )),
                None => {}
            }
        }
    }

    let proxy = to_value(&proxy_container(config, &overrides, &probes));
    let mut head = Vec::new();
    if config.interception == Interception::Init {
        head.push(to_value(&init_container(config, &overrides)));
    }
    match overrides.mode {
        SidecarMode::Native => head.push(proxy),
        SidecarMode::Regular => {
            // Containers go first (their probes were indexed for this).
            ops.insert(0, add("/spec/containers/0".into(), proxy));
        }
    }
    let mut front = Vec::new();
    match &spec.init_containers {
        None if head.is_empty() => {}
        None => front.push(add("/spec/initContainers".into(), Value::Array(head))),
        Some(_) => {
            for (i, container) in head.into_iter().enumerate() {
                front.push(add(format!("/spec/initContainers/{i}"), container));
            }
        }
    }
    let volumes = volumes(config.interception);
    match &spec.volumes {
        None => front.push(add("/spec/volumes".into(), to_value(&volumes))),
        Some(_) => front.extend(
            volumes
                .iter()
                .map(|v| add("/spec/volumes/-".into(), to_value(v))),
        ),
    }
    ops.splice(0..0, front);

    let mut new_annotations = BTreeMap::new();
    new_annotations.insert(
        annotations::INJECTED_VERSION.to_string(),
        config.version.clone(),
    );
    if config.interception == Interception::Cni {
        new_annotations.insert(
            contract::cni::INTERCEPTION_ANNOTATION.to_string(),
            contract::cni::INTERCEPTION_CNI.to_string(),
        );
    }
    let has_default = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(annotations::DEFAULT_CONTAINER));
    if !has_default {
        new_annotations.insert(
            annotations::DEFAULT_CONTAINER.to_string(),
            spec.containers[0].name.clone(),
        );
    }
    match &meta.annotations {
        None => ops.push(add(
            "/metadata/annotations".into(),
            to_value(&new_annotations),
        )),
        Some(_) => ops.extend(new_annotations.into_iter().map(|(k, v)| {
            add(
                format!("/metadata/annotations/{}", escape(&k)),
                Value::String(v),
            )
        })),
    }
    // The ServiceAccount as a label, for NetworkPolicies to select (`warden policy
    // netpol`): always the pod's real one, whatever value the pod came with.
    let service_account = spec
        .service_account_name
        .as_deref()
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    let key = format!(
        "/metadata/labels/{}",
        escape(contract::SERVICE_ACCOUNT_LABEL)
    );
    if contract::is_label_value(service_account) {
        let label = Value::String(service_account.to_string());
        ops.push(match &meta.labels {
            None => add(
                "/metadata/labels".into(),
                json!({ contract::SERVICE_ACCOUNT_LABEL: label }),
            ),
            Some(_) => add(key, label),
        });
    } else {
        // Too long for a label value: no NetworkPolicy can select the pod by it, and a
        // value the pod brought must not stand in for the real one.
        if meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(contract::SERVICE_ACCOUNT_LABEL))
        {
            ops.push(json!({"op": "remove", "path": key}));
        }
        warnings.push(format!(
            "warden: the ServiceAccount name {service_account:?} is longer than a label value; the pod gets no {} label",
            contract::SERVICE_ACCOUNT_LABEL
        ));
    }
    Ok(Injection {
        patch: Value::Array(ops),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_follow_the_cpu_limit_rounded_up() {
        let cases = [
            (None, None),
            (Some("1"), Some(1)),
            (Some("2"), Some(2)),
            (Some("1.5"), Some(2)),
            (Some("0.1"), Some(1)),
            (Some("500m"), Some(1)),
            (Some("1000m"), Some(1)),
            (Some("1001m"), Some(2)),
            (Some("2500m"), Some(3)),
            (Some("0.5m"), Some(1)),
            (Some("500000u"), Some(1)),
            (Some("2500000000n"), Some(3)),
            (Some("1e1"), Some(10)),
            (Some("2E0"), Some(2)),
            (Some("0"), Some(1)),
            (Some("8"), Some(8)),
            (Some("64"), Some(64)),
            (Some("65"), Some(64)),
            (Some("1e3"), Some(64)),
            (Some("1k"), Some(64)),
            (Some("2Ki"), Some(64)),
            (Some("99999999999999999999"), Some(64)),
            (Some("1e400"), Some(64)),
            (Some("lots"), None),
            (Some("1x"), None),
            (Some("."), None),
            (Some(""), None),
        ];
        for (limit, want) in cases {
            assert_eq!(worker_threads(limit), want, "{limit:?}");
        }
    }

    #[test]
    fn covers_tolerates_only_api_server_defaults() {
        let want = json!({"name": "warden-proxy", "args": ["proxy"], "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]});
        let cases = [
            (want.clone(), true),
            (
                json!({"name": "warden-proxy", "args": ["proxy"], "imagePullPolicy": "Always", "terminationMessagePolicy": "File",
                    "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x", "apiVersion": "v1"}}}]}),
                true,
            ),
            (
                json!({"name": "warden-proxy", "args": ["proxy"], "command": ["sh"],
                    "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}),
                false,
            ),
            (
                json!({"name": "warden-proxy", "args": ["proxy", "--x"],
                    "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}),
                false,
            ),
            (
                json!({"name": "warden-proxy", "args": ["proxy"],
                    "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x", "apiVersion": "v2"}}}]}),
                false,
            ),
            (
                json!({"name": "warden-proxy", "args": ["proxy"],
                    "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}, {"name": "B", "value": "1"}]}),
                false,
            ),
            (json!({"name": "warden-proxy", "args": ["proxy"]}), false),
        ];
        for (i, (actual, ok)) in cases.into_iter().enumerate() {
            assert_eq!(covers(&want, &actual), ok, "case {i}: {actual}");
        }
    }

    #[test]
    fn only_allowed_security_annotations_are_permitted() {
        let pod: BTreeMap<String, String> = [
            ("warden.dev/skip-inbound-ports", "22"),
            ("warden.dev/inbound-mode", "strict"),
            ("warden.dev/log-level", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut config = InjectorConfig::new("img", "");
        let mut warnings = Vec::new();
        let kept = permitted(Some(&pod), "lab", &config, &mut warnings);
        assert_eq!(
            kept.keys().copied().collect::<Vec<_>>(),
            ["warden.dev/inbound-mode", "warden.dev/log-level"],
            "strict weakens nothing"
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("namespace lab"), "{warnings:?}");
        // A MeshPolicy for the namespace allows it there, and only there.
        let mut grants = crate::grants::NamespaceGrants::default();
        grants.set_namespace("lab", [("env".into(), "lab".into())].into());
        grants.set_mesh_policy(
            "lab",
            crate::grants::MeshGrant {
                match_labels: [("env".into(), "lab".into())].into(),
                allowed: [SecurityAnnotation::SkipInboundPorts].into(),
            },
        );
        config.grants = std::sync::Arc::new(grants);
        let mut warnings = Vec::new();
        assert_eq!(
            permitted(Some(&pod), "lab", &config, &mut warnings).len(),
            3
        );
        assert!(warnings.is_empty());
        assert_eq!(
            permitted(Some(&pod), "prod", &config, &mut warnings).len(),
            2
        );
        // The injector's flag allows it everywhere.
        config.grants = Default::default();
        config
            .allowed_annotations
            .insert(SecurityAnnotation::SkipInboundPorts);
        let mut warnings = Vec::new();
        assert_eq!(
            permitted(Some(&pod), "prod", &config, &mut warnings).len(),
            3
        );
        assert!(warnings.is_empty());
    }
}
