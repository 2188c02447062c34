//! The Kubernetes manifests in `deploy/` and the image that runs them.
//!
//! - Every manifest parses into its typed k8s-openapi object, and serializes back to what the
//!   file says (a misspelt or misplaced field fails); an unknown kind fails.
//! - RBAC grants exactly `lb_userspace::provider::kube::rbac::PERMISSIONS`, the one list in the
//!   code, and the real binary, started with the DaemonSet's own arguments against the fake API
//!   server, requests nothing outside that list and uses all of it.
//! - The DaemonSet's arguments parse with `sluice run`'s own command line, its configuration (the
//!   ConfigMap) validates, its probes hit paths the admin server serves on the admin address of
//!   that configuration, BTF is mounted (bpffs is not: nothing is pinned), and the grace period
//!   covers the shutdown delay and the drain.
//! - `kubectl kustomize` renders the base and the least-privilege overlay (the test fails, saying
//!   what to install, when kubectl is missing), and the rendered objects pass the same checks.
//! - The Dockerfile builds the binary the DaemonSet runs, with the toolchain `cargo xtask setup`
//!   installs, and pins what it builds with: base images by digest, the stable and the dated
//!   nightly toolchain (which the build script reads), bpf-linker by version.
//!
//! Nothing here needs root or a network; the checks that can fail are shown failing on mutated
//! copies of the real manifests.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use k8s_openapi::{
    api::{
        admissionregistration::v1::ValidatingWebhookConfiguration,
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Probe, Service, ServiceAccount, VolumeMount},
        networking::v1::IngressClass,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_tests::{
    fake_kube::{
        FakeKube,
        objects::{
            GATEWAY_V1, GATEWAY_V1ALPHA2, SliceEndpoint, endpoint_slice, gateway, gateway_class, grpc_route,
            http_route, ingress, ingress_class, service, tcp_route, tls_route, udp_route,
        },
    },
    free_port,
    kustomize::Renderer,
    process::ChildGuard,
    sluice_binary,
    temp_dir::TempDir,
    wait_for,
};
use lb_userspace::{
    cli::{Cli, Command as SluiceCommand, LogFormat, RunArgs},
    config::Config,
    provider::kube::{
        CONTROLLER,
        rbac::{PERMISSIONS, Permission, Scope, Verb, WEBHOOK_PERMISSIONS},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

// ------------------------------------------------------------------------------------------------
// The manifests as files

#[test]
fn every_manifest_parses_into_its_typed_object_and_every_file_is_installed() {
    let deploy = deploy_dir();
    let mut installed = BTreeSet::new();
    let mut manifests = BTreeSet::new();
    for file in yaml_files(&deploy) {
        if file.file_name().is_some_and(|n| n == "kustomization.yaml") {
            let resources =
                kustomization_resources(&file).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
            installed.extend(resources);
        } else {
            manifests.insert(file.canonicalize().unwrap());
        }
    }
    // Every YAML file under deploy/, installed or not, parses into its typed object.
    let bundle = Bundle::from_files(&manifests.iter().cloned().collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(deploy.join("kustomization.yaml").is_file(), "deploy/kustomization.yaml ties it together");
    assert_eq!(installed, manifests, "every manifest is in a kustomization, and only manifests are");
    let kinds: BTreeSet<&str> = bundle.objects.iter().map(|(_, v, _)| v["kind"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "IngressClass",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "Deployment",
        "ValidatingWebhookConfiguration",
        "Issuer",
        "Certificate",
    ]
    .into();
    assert_eq!(kinds, expected);
    // No two objects of the same kind and name.
    assert_eq!(bundle.by_key().len(), bundle.objects.len(), "duplicate objects");
}

#[test]
fn unknown_kinds_misspelt_fields_and_wrong_versions_are_refused() {
    let err = Bundle::from_text("apiVersion: v1\nkind: Frobnicator\nmetadata: {name: x}\n", "t").unwrap_err();
    assert!(format!("{err:#}").contains("unknown kind \"Frobnicator\""), "{err:#}");
    // A real kind this suite does not check is refused too.
    let err =
        Bundle::from_text("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\n", "t").unwrap_err();
    assert!(format!("{err:#}").contains("unknown kind \"StatefulSet\""), "{err:#}");
    let daemonset = std::fs::read_to_string(deploy_dir().join("base/daemonset.yaml")).unwrap();
    Bundle::from_text(&daemonset, "daemonset.yaml").unwrap();
    let misspelt = daemonset.replace("serviceAccountName:", "serviceAcountName:");
    let err = Bundle::from_text(&misspelt, "t").unwrap_err();
    assert!(format!("{err:#}").contains("serviceAcountName"), "{err:#}");
    let misplaced =
        daemonset.replace("      hostNetwork: true", "      hostNetwork: true\n      readOnly: true");
    assert!(Bundle::from_text(&misplaced, "t").is_err());
    let old = daemonset.replace("apiVersion: apps/v1", "apiVersion: extensions/v1beta1");
    assert!(Bundle::from_text(&old, "t").is_err());
}

#[test]
fn rbac_grants_exactly_the_permissions_listed_in_the_code() {
    check_rbac(&base_bundle()).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The RBAC check fails on one verb too many, one too few, a wildcard, or the Role elsewhere.
#[test]
fn the_rbac_check_refuses_an_extra_verb_a_missing_one_and_wildcards() {
    fn with_cluster_role(change: impl Fn(&mut ClusterRole)) -> anyhow::Result<()> {
        let mut bundle = base_bundle();
        for (_, _, object) in &mut bundle.objects {
            if let Object::ClusterRole(role) = object {
                change(role);
            }
        }
        check_rbac(&bundle)
    }
    let err = with_cluster_role(|r| r.rules.as_mut().unwrap()[0].verbs.push("delete".into())).unwrap_err();
    assert!(err.to_string().contains("Cluster: delete networking.k8s.io/ingressclasses"), "{err}");
    let err = with_cluster_role(|r| {
        for rule in r.rules.as_mut().unwrap() {
            rule.verbs.retain(|v| v != "patch");
        }
        r.rules.as_mut().unwrap().retain(|rule| !rule.verbs.is_empty());
    })
    .unwrap_err();
    assert!(err.to_string().contains("Cluster: patch networking.k8s.io/ingresses/status"), "{err}");
    let err =
        with_cluster_role(|r| r.rules.as_mut().unwrap()[0].resources = Some(vec!["*".into()])).unwrap_err();
    assert!(err.to_string().contains("wildcard"), "{err}");
    // The Lease rules granted cluster-wide instead of in the Lease namespace.
    let mut bundle = base_bundle();
    let lease_rules = bundle.role().unwrap().rules.clone().unwrap();
    for (_, _, object) in &mut bundle.objects {
        if let Object::ClusterRole(role) = object {
            role.rules.as_mut().unwrap().extend(lease_rules.clone());
        }
    }
    assert!(check_rbac(&bundle).is_err());
}

#[test]
fn the_daemonset_runs_sluice_as_the_manifests_assume() {
    let bundle = base_bundle();
    check_daemonset(&bundle).unwrap_or_else(|e| panic!("{e:#}"));
    check_privileged(&bundle).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The DaemonSet check fails on a probe on another port or path, an argument `sluice run` does
/// not know, a grace period shorter than the drain, or the host's bpffs mounted for nothing.
#[test]
fn the_daemonset_check_refuses_what_would_break_on_a_node() {
    fn with_daemonset(change: impl Fn(&mut DaemonSet)) -> String {
        let mut bundle = base_bundle();
        for (_, _, object) in &mut bundle.objects {
            if let Object::DaemonSet(daemonset) = object {
                change(daemonset);
            }
        }
        format!("{:#}", check_daemonset(&bundle).unwrap_err())
    }
    fn first(daemonset: &mut DaemonSet) -> &mut Container {
        &mut daemonset.spec.template.spec.as_mut().unwrap().containers[0]
    }
    let err = with_daemonset(|d| {
        first(d).readiness_probe.as_mut().unwrap().http_get.as_mut().unwrap().port = IntOrString::Int(9902)
    });
    assert!(err.contains("not the admin port"), "{err}");
    let err = with_daemonset(|d| {
        first(d).liveness_probe.as_mut().unwrap().http_get.as_mut().unwrap().path = Some("/health".into())
    });
    assert!(err.contains("/health"), "{err}");
    let err = with_daemonset(|d| first(d).args.as_mut().unwrap().push("--turbo".into()));
    assert!(err.contains("--turbo"), "{err}");
    let err = with_daemonset(|d| {
        d.spec.template.spec.as_mut().unwrap().termination_grace_period_seconds = Some(30)
    });
    assert!(err.contains("terminationGracePeriodSeconds"), "{err}");
    let err = with_daemonset(|d| {
        first(d).readiness_probe.as_mut().unwrap().period_seconds = Some(30);
    });
    assert!(err.contains("must outlast the readiness probe"), "{err}");
    let err = with_daemonset(|d| d.spec.template.spec.as_mut().unwrap().priority_class_name = None);
    assert!(err.contains("system-node-critical"), "{err}");
    let err = with_daemonset(|d| {
        first(d).volume_mounts.as_mut().unwrap().push(VolumeMount {
            name: "bpffs".into(),
            mount_path: "/sys/fs/bpf".into(),
            ..VolumeMount::default()
        })
    });
    assert!(err.contains("/sys/fs/bpf"), "{err}");
}

/// The ConfigMap's configuration is what `sluice check` would accept, and keeps the admin server
/// (which exposes the configuration) on loopback.
#[test]
fn the_configmap_holds_a_valid_base_configuration() {
    let bundle = base_bundle();
    let daemonset = bundle.daemonset().unwrap();
    let env = container_env(daemonset, "p", "n").unwrap();
    let args = run_args(&command_line(daemonset, &env).unwrap()).unwrap();
    let (yaml, config) = mounted_config(&bundle, &args).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(config.admin.as_ref().unwrap().address.ip().is_loopback(), "admin on loopback");
    assert!(config.affinity_key.is_none() && !yaml.contains("affinity_key:"), "no secret in a ConfigMap");
    assert!(config.virtual_hosts.is_empty() && config.backends.is_empty(), "routes come from Ingresses");
    let ports: BTreeSet<u16> = config.listeners.iter().map(|l| l.address.port()).collect();
    assert_eq!(ports, BTreeSet::from([80, 443]));
    assert!(config.listeners.iter().any(|l| l.tls.is_some()), "a TLS listener for Ingress TLS");
    let metrics = config.metrics.as_ref().expect("a metrics listener for Prometheus");
    assert!(metrics.address.ip().is_unspecified(), "metrics reachable from the cluster: {}", metrics.address);
    let ports: BTreeSet<u16> = ports.into_iter().chain([metrics.address.port()]).collect();
    // The declared container ports are the listeners' and the metrics listener's.
    let declared: BTreeSet<u16> = container(daemonset)
        .unwrap()
        .ports
        .iter()
        .flatten()
        .map(|p| u16::try_from(p.container_port).unwrap())
        .collect();
    assert_eq!(declared, ports);
}

// ------------------------------------------------------------------------------------------------
// The real binary, with the DaemonSet's command line, against the fake API server

/// The status code of `GET path` (HTTP/1.1, one connection).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    lb_tests::http::request(addr, "GET", "probe", path, &[]).ok().map(|response| response.status)
}

/// A request to the API server as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// Reads method, path and query the way the API server's authorizer does.
fn access_of(method: &str, path: &str, query: &str) -> anyhow::Result<Access> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => bail!("not a resource request: {method} {path}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [plural] => ((*plural).to_owned(), None),
        [plural, name] => ((*plural).to_owned(), Some((*name).to_owned())),
        [plural, name, sub] => (format!("{plural}/{sub}"), Some((*name).to_owned())),
        _ => bail!("unexpected path {path}"),
    };
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method, &name) {
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) if watch => "watch",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => bail!("unexpected method {method} {path}"),
    };
    Ok(Access { group, resource, verb: verb.to_owned(), namespace, name })
}

/// The entry of `PERMISSIONS` that allows a request, if any.
fn permission_for(access: &Access, lease_namespace: &str) -> Option<&'static Permission> {
    PERMISSIONS.iter().find(|p| {
        p.group == access.group
            && p.resource() == access.resource
            && Verb::parse(&access.verb) == Some(p.verb)
            && (p.names.is_empty() || access.name.as_deref().is_some_and(|n| p.names.contains(&n)))
            && match p.scope {
                Scope::Cluster => true,
                Scope::LeaseNamespace => access.namespace.as_deref() == Some(lease_namespace),
            }
    })
}

#[test]
fn access_is_read_as_the_authorizer_reads_it() {
    let access = |m, p, q| access_of(m, p, q).unwrap();
    let watch = access("GET", "/apis/networking.k8s.io/v1/ingresses", "allowWatchBookmarks=true&watch=true");
    assert_eq!((watch.resource.as_str(), watch.verb.as_str(), watch.namespace), ("ingresses", "watch", None));
    assert_eq!(
        access("GET", "/api/v1/secrets", "fieldSelector=type%21%3Dhelm.sh%2Frelease.v1&limit=500").verb,
        "list"
    );
    let status = access("PATCH", "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web/status", "");
    assert_eq!((status.resource.as_str(), status.verb.as_str()), ("ingresses/status", "patch"));
    let node = access("GET", "/api/v1/nodes/node-a", "");
    assert_eq!((node.group.as_str(), node.resource.as_str(), node.verb.as_str()), ("", "nodes", "get"));
    let lease = access("PUT", "/apis/coordination.k8s.io/v1/namespaces/sluice/leases/sluice-leader", "");
    assert!(permission_for(&lease, "sluice").is_some());
    assert!(permission_for(&lease, "default").is_none(), "the Role is in the Lease namespace only");
    let other = access("PUT", "/apis/coordination.k8s.io/v1/namespaces/sluice/leases/other", "");
    assert!(permission_for(&other, "sluice").is_none(), "get and update only on sluice-leader");
    assert!(permission_for(&access("DELETE", "/api/v1/namespaces/a/secrets/b", ""), "sluice").is_none());
    assert!(access_of("GET", "/version", "").is_err());
}

/// `sluice` started with the DaemonSet's own command line and environment (only the
/// configuration's addresses moved to free loopback ports, XDP off and a kubeconfig for the
/// fake API server) answers its probes, elects itself, writes the Ingress status from its
/// node's addresses, renews and releases its Lease, and in all that requests only what
/// `PERMISSIONS` lists, using every entry of it.
#[test]
fn sluice_with_the_daemonset_command_line_requests_exactly_the_listed_permissions() {
    let bundle = base_bundle();
    let daemonset = bundle.daemonset().unwrap();
    let pod_name = "sluice-x7k2p";
    let node_name = "node-a";
    let env = container_env(daemonset, pod_name, node_name).unwrap();
    let argv = command_line(daemonset, &env).unwrap();
    let args = run_args(&argv).unwrap();
    let lease_namespace = lease_namespace(&args, &env);
    let (yaml, _) = mounted_config(&bundle, &args).unwrap();

    // The ConfigMap's configuration, on free loopback ports.
    let temp = TempDir::new();
    let dir = temp.0.as_path();
    let mut config: Value = serde_saphyr::from_str_with_options(&yaml, yaml_options()).unwrap();
    for listener in config["listeners"].as_array_mut().unwrap() {
        listener["address"] = format!("127.0.0.1:{}", free_port()).into();
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config["admin"]["address"] = admin.to_string().into();
    config["metrics"]["address"] = format!("127.0.0.1:{}", free_port()).into();
    let config_path = dir.join("base.yaml");
    std::fs::write(&config_path, serde_saphyr::to_string(&config).unwrap()).unwrap();

    let kube = FakeKube::start().unwrap();
    let class = bundle.ingress_class().unwrap().metadata.name.clone().unwrap();
    kube.apply(ingress_class(&class, CONTROLLER, false));
    kube.apply(service("default", "web", 80, 8080));
    kube.apply(endpoint_slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        8080,
        &[SliceEndpoint::ready("192.0.2.50")],
    ));
    kube.apply(ingress("default", "web", &class, "app.example.com", "/", "web", 80));
    // A Gateway on the listeners' ports and a route of each kind, so that every status is written.
    let plain_port = config["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l.get("tls").is_none_or(Value::is_null))
        .and_then(|l| l["address"].as_str()?.rsplit(':').next()?.parse::<u16>().ok())
        .expect("a plain listener");
    let tls_port = config["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l.get("tls").is_some_and(|t| !t.is_null()))
        .and_then(|l| l["address"].as_str()?.rsplit(':').next()?.parse::<u16>().ok())
        .expect("a TLS listener");
    kube.apply(gateway_class("sluice", "sluice.dev/gateway-controller"));
    kube.apply(gateway(
        "default",
        "gw",
        "sluice",
        json!([{"name": "http", "port": plain_port, "protocol": "HTTP"},
               {"name": "tls", "port": tls_port, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
               {"name": "tcp", "port": free_port(), "protocol": "TCP"},
               {"name": "udp", "port": free_port(), "protocol": "UDP"}]),
    ));
    // One route of each kind.
    kube.apply(http_route(
        "default",
        "route",
        json!({"parentRefs": [{"name": "gw", "sectionName": "http"}], "hostnames": ["route.example.com"],
               "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    ));
    kube.apply(grpc_route(
        "default",
        "grpc",
        json!({"parentRefs": [{"name": "gw", "sectionName": "http"}], "hostnames": ["grpc.example.com"],
               "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    ));
    kube.apply(tls_route(
        "default",
        "passthrough",
        json!({"parentRefs": [{"name": "gw", "sectionName": "tls"}], "hostnames": ["tls.example.com"],
               "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    ));
    kube.apply(tcp_route(
        "default",
        "stream",
        json!({"parentRefs": [{"name": "gw", "sectionName": "tcp"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    ));
    kube.apply(udp_route(
        "default",
        "datagrams",
        json!({"parentRefs": [{"name": "gw", "sectionName": "udp"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    ));
    kube.apply(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name},
        "status": {"addresses": [
            {"type": "Hostname", "address": node_name},
            {"type": "InternalIP", "address": "192.0.2.10"},
        ]},
    }));
    let kubeconfig = kube.write_kubeconfig(dir).unwrap();

    let binary = sluice_binary().unwrap();
    let mut command = Command::new(&binary);
    for arg in &argv[1..] {
        if arg.starts_with("--config=") {
            command.arg(format!("--config={}", config_path.display()));
        } else {
            command.arg(arg);
        }
    }
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--no-xdp")
        // Renewals every second instead of every five.
        .arg("--lease-duration-seconds=3")
        .env_clear()
        .envs(&env);
    let mut child = ChildGuard::spawn(command).unwrap();

    // The probes, on the paths and port the DaemonSet declares (moved to the test's admin port).
    let container = container(daemonset).unwrap();
    let (_, liveness, _) = http_get_probe(container.liveness_probe.as_ref(), "liveness").unwrap();
    let (_, readiness, _) = http_get_probe(container.readiness_probe.as_ref(), "readiness").unwrap();
    wait_for(Duration::from_secs(20), "the readiness probe to pass", || {
        assert!(child.try_status().is_none(), "sluice exited:\n{}", child.output());
        (http_status(admin, &readiness) == Some(200)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    assert_eq!(http_status(admin, &liveness), Some(200), "the liveness probe");
    assert_eq!(http_status(admin, "/no-such-path"), Some(404), "the admin server tells paths apart");

    // Leader: status from the node's address, then at least one renewal.
    wait_for(Duration::from_secs(20), "the Ingress status", || {
        let ingress = kube.get("networking.k8s.io/v1", "Ingress", "default", "web")?;
        (ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.10").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    let routes = [
        (GATEWAY_V1, "HTTPRoute", "route"),
        (GATEWAY_V1, "GRPCRoute", "grpc"),
        (GATEWAY_V1, "TLSRoute", "passthrough"),
        (GATEWAY_V1ALPHA2, "TCPRoute", "stream"),
        (GATEWAY_V1ALPHA2, "UDPRoute", "datagrams"),
    ];
    for (api_version, kind, name) in routes {
        wait_for(Duration::from_secs(20), &format!("the {kind} status"), || {
            let route = kube.get(api_version, kind, "default", name)?;
            (route["status"]["parents"][0]["conditions"][0]["status"] == "True").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    }
    wait_for(Duration::from_secs(10), "a Lease renewal", || {
        (kube.count_requests("PUT", "/leases/sluice-leader") > 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    let lease = kube.get("coordination.k8s.io/v1", "Lease", &lease_namespace, "sluice-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], pod_name, "the pod name is the identity");
    // Events: a warning created, gone, then back (patched: counted twice).
    let annotated = |annotation: &str| {
        let mut web = ingress("default", "web", &class, "app.example.com", "/", "web", 80);
        web["metadata"]["annotations"] = json!({ format!("nginx.ingress.kubernetes.io/{annotation}"): "x" });
        web
    };
    let count_of = |part: &str| {
        kube.list("events.k8s.io/v1", "Event")
            .into_iter()
            .find(|e| e["note"].as_str().is_some_and(|n| n.contains(part)))
            .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
    };
    for (annotation, count) in [("no-such-a", 1), ("no-such-b", 1), ("no-such-a", 2)] {
        kube.apply(annotated(annotation));
        wait_for(Duration::from_secs(20), &format!("the Event about {annotation}"), || {
            (count_of(annotation) == Some(count)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    }
    let (status, output) = child.terminate(Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status}\n{output}");
    assert!(output.contains("leadership released"), "{output}");

    let mut unlisted = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for request in kube.requests() {
        // Discovery documents are readable by every authenticated user (the default
        // `system:discovery` ClusterRole); nothing in deploy/ grants them.
        if request.path.starts_with("/apis/") && request.path.trim_matches('/').split('/').count() == 3 {
            continue;
        }
        let access = access_of(&request.method, &request.path, &request.query)
            .unwrap_or_else(|e| panic!("{e}\n{request:?}"));
        let group = if access.group.is_empty() { "core" } else { access.group.as_str() };
        *seen.entry(format!("{} {group}/{}", access.verb, access.resource)).or_default() += 1;
        match permission_for(&access, &lease_namespace) {
            Some(permission) => {
                used.insert(*permission);
            }
            None => {
                unlisted.insert(access);
            }
        }
    }
    eprintln!("requests made, by verb and resource: {seen:#?}");
    assert!(unlisted.is_empty(), "requests outside rbac::PERMISSIONS:\n{unlisted:#?}");
    let unused: Vec<&Permission> = PERMISSIONS.iter().filter(|p| !used.contains(*p)).collect();
    assert!(unused.is_empty(), "listed (and granted) but never requested:\n{unused:#?}");
}

// ------------------------------------------------------------------------------------------------
// kustomize

fn kustomize(renderer: &Renderer, dir: &Path) -> Bundle {
    let output = renderer.command(dir).output().unwrap();
    assert!(
        output.status.success(),
        "{renderer:?} failed on {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr),
    );
    let origin = format!("kustomize {}", dir.strip_prefix(root()).unwrap_or(dir).display());
    Bundle::from_text(&String::from_utf8(output.stdout).unwrap(), &origin).unwrap_or_else(|e| panic!("{e:#}"))
}

fn without_security_context(
    objects: &BTreeMap<(String, String, String), Value>,
) -> BTreeMap<(String, String, String), Value> {
    let mut objects = objects.clone();
    for value in objects.values_mut() {
        if value["kind"] == "DaemonSet" {
            for container in value["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap() {
                container.as_object_mut().unwrap().remove("securityContext");
            }
        }
    }
    objects
}

#[test]
fn kustomize_renders_the_base_and_the_least_privilege_overlay() {
    let renderer = lb_tests::kustomize::find().expect(
        "no kustomize that renders deploy/: kubectl 1.21 or later, or kustomize v4 or later \
         (`sudo -E cargo xtask setup` installs one)",
    );
    let files = base_bundle();
    let base = kustomize(&renderer, &deploy_dir());
    assert_eq!(base.by_key(), files.by_key(), "deploy/ renders the manifests unchanged");
    check_rbac(&base).unwrap_or_else(|e| panic!("{e:#}"));
    check_daemonset(&base).unwrap_or_else(|e| panic!("{e:#}"));
    check_privileged(&base).unwrap_or_else(|e| panic!("{e:#}"));

    let overlay = kustomize(&renderer, &deploy_dir().join("overlays/least-privilege"));
    check_rbac(&overlay).unwrap_or_else(|e| panic!("{e:#}"));
    check_daemonset(&overlay).unwrap_or_else(|e| panic!("{e:#}"));
    check_least_privilege(&overlay).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(check_privileged(&overlay).is_err());
    assert!(check_least_privilege(&base).is_err());
    assert_eq!(
        without_security_context(&overlay.by_key()),
        without_security_context(&base.by_key()),
        "the overlay changes only the container's security context"
    );
}

// ------------------------------------------------------------------------------------------------
// The image and the docs

/// Dockerfile instructions, continuation lines joined, comments dropped.
/// The Dockerfile's `ARG NAME=default` values.
fn dockerfile_args(steps: &[String]) -> BTreeMap<String, String> {
    steps
        .iter()
        .filter_map(|s| s.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_the_binary_the_daemonset_runs() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let steps = instructions(&dockerfile);
    let stages: Vec<&String> = steps.iter().filter(|s| s.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a builder and a runtime: {stages:?}");
    let args = dockerfile_args(&steps);
    let resolve =
        |text: &str| args.iter().fold(text.to_owned(), |t, (k, v)| t.replace(&format!("${{{k}}}"), v));
    let builder_image =
        resolve(stages[0].strip_prefix("FROM ").unwrap().strip_suffix(" AS builder").unwrap());
    let runtime_image = resolve(stages[1].strip_prefix("FROM ").unwrap());
    // Base images by digest, the same Debian release in both.
    for image in [&builder_image, &runtime_image] {
        let (name, digest) =
            image.split_once("@sha256:").unwrap_or_else(|| panic!("{image} is pinned by digest"));
        assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{image}");
        assert!(name.starts_with("debian:"), "{image}");
    }
    let release = |image: &str| image.split(['@', ':']).nth(1).unwrap().trim_end_matches("-slim").to_owned();
    assert_eq!(release(&builder_image), release(&runtime_image), "one Debian release");
    assert!(runtime_image.contains("-slim@"), "{runtime_image}");
    // The toolchains: stable as the workspace's rust-version, a dated nightly that the build
    // script is told to use.
    let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let rust_version =
        workspace.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    assert!(
        args["RUST_STABLE"].starts_with(rust_version),
        "RUST_STABLE {} is rust-version {rust_version}",
        args["RUST_STABLE"]
    );
    let nightly = &args["RUST_NIGHTLY"];
    let date = nightly
        .strip_prefix("nightly-")
        .unwrap_or_else(|| panic!("RUST_NIGHTLY {nightly} is a dated nightly"));
    assert!(date.len() == 10 && date.split('-').all(|p| p.parse::<u32>().is_ok()), "{nightly}");
    let build_script = std::fs::read_to_string(root().join("lb-userspace/build.rs")).unwrap();
    let toolchain_env = build_script
        .lines()
        .find_map(|l| l.strip_prefix("const TOOLCHAIN_ENV: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("the build script's toolchain variable");
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("ENV ") && s.contains(&format!("{toolchain_env}=${{RUST_NIGHTLY}}"))),
        "the builder sets {toolchain_env} to the pinned nightly"
    );
    let runtime_at = steps.iter().position(|s| s == stages[1]).unwrap();
    let (builder, runtime) = steps.split_at(runtime_at);
    let builder = builder.join("\n");
    for needed in
        ["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev", "rust-src", "rustup", "nightly"]
    {
        assert!(builder.contains(needed), "the builder installs {needed}");
    }
    assert!(builder.contains("cargo build --release --locked -p lb-userspace"), "builds the sluice binary");
    // bpf-linker exactly as the project's installer builds it (against LLVM 22).
    let installer = std::fs::read_to_string(root().join("xtask/src/prereqs.rs")).unwrap();
    let (_, args) =
        installer.split_once("const BPF_LINKER_ARGS").expect("the installer's bpf-linker arguments");
    let args = &args[..args.find("];").unwrap()];
    let words: Vec<&str> = args.split('"').skip(1).step_by(2).collect();
    assert!(words.starts_with(&["install", "bpf-linker"]), "{words:?}");
    let docker_install = resolve(builder.lines().find(|l| l.contains("cargo install bpf-linker")).unwrap());
    assert!(words.contains(&"--version"), "bpf-linker by version: {words:?}");
    for word in words.into_iter().filter(|w| *w != "--force") {
        assert!(
            docker_install.contains(word),
            "{word:?} of the installer's bpf-linker install is missing: {docker_install}"
        );
    }
    // The runtime: the binary where the DaemonSet's command expects it.
    let bundle = base_bundle();
    let command = container(bundle.daemonset().unwrap()).unwrap().command.clone().unwrap();
    let runtime = runtime.join("\n");
    assert!(runtime.contains(&format!("COPY --from=builder /out/sluice {}", command[0])), "{runtime}");
    assert!(runtime.contains(&format!("ENTRYPOINT [\"{}\"]", command[0])), "{runtime}");
    assert!(!runtime.contains("RUN "), "nothing is built or installed in the runtime image");
    // The build command in its header tags the image the DaemonSet names.
    let image = container(bundle.daemonset().unwrap()).unwrap().image.clone().unwrap();
    assert!(dockerfile.contains(&format!("docker build -f deploy/Dockerfile -t {image} .")), "{image}");
    assert!(deploy_dir().join("Dockerfile.dockerignore").is_file(), "the build context leaves target/ out");
}

/// docs/INSTALL.md covers install, upgrade, uninstall and the migration from ingress-nginx, and
/// names every annotation docs/KUBERNETES.md documents.
#[test]
fn the_install_guide_covers_the_lifecycle_and_every_documented_annotation() {
    let install = std::fs::read_to_string(root().join("docs/INSTALL.md")).unwrap();
    for heading in [
        "## Install",
        "## Upgrade",
        "## Uninstall",
        "## Migrating from ingress-nginx",
        "## Building the image",
    ] {
        assert!(install.contains(heading), "docs/INSTALL.md has {heading:?}");
    }
    let kubernetes = std::fs::read_to_string(root().join("docs/KUBERNETES.md")).unwrap();
    let section = kubernetes.split("## Annotations").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut annotations = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = without_values(row.split(" | ").next().unwrap());
        let mut last = String::new();
        for name in first.split('`').skip(1).step_by(2) {
            // `affinity: cookie` is the annotation `affinity`.
            let name = name.split(':').next().unwrap().trim();
            let name = match name.strip_prefix('-') {
                // `session-cookie-name`, `-path`: another `session-cookie-` name.
                Some(suffix) if last.starts_with("session-cookie-") => format!("session-cookie-{suffix}"),
                // `permanent-redirect` (+ `-code`): the name with a suffix.
                Some(_) => format!("{last}{name}"),
                None => {
                    last = name.to_owned();
                    name.to_owned()
                }
            };
            annotations.insert(name);
        }
    }
    assert!(annotations.len() > 40, "{annotations:?}");
    let missing: Vec<&String> = annotations.iter().filter(|a| !install.contains(&format!("`{a}`"))).collect();
    assert!(missing.is_empty(), "docs/INSTALL.md does not mention {missing:?}");
}

/// A table cell without its parenthesized values (`canary-by-header` (`always`/`never`)), but
/// with its additions (`permanent-redirect` (+ `-code`)).
fn without_values(cell: &str) -> String {
    let mut out = String::new();
    let mut rest = cell;
    while let Some(open) = rest.find('(') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c);
        let inner = &rest[open + 1..close];
        if inner.starts_with('+') {
            out.push_str(inner);
        }
        rest = rest.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------------------------------------
// The admission webhook (deploy/webhook)

/// The Deployment runs `sluice webhook` with its certificate from the Secret cert-manager
/// writes; the Service reaches its port; the ValidatingWebhookConfiguration calls that Service
/// for Ingress creations and updates, fails closed and gets its CA from the Certificate; the
/// ClusterRole grants exactly `WEBHOOK_PERMISSIONS` to the Deployment's ServiceAccount.
#[test]
fn the_webhook_manifests_run_sluice_webhook_with_least_privilege() {
    let bundle = webhook_bundle();
    let deployment = webhook_deployment(&bundle);
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let args = webhook_args(container);
    // Both files come from the one Secret volume that the serving Certificate writes.
    let certificate = bundle
        .objects
        .iter()
        .find_map(|(_, v, _)| (v["kind"] == "Certificate" && v["spec"]["isCA"] != true).then_some(v))
        .unwrap();
    let secret = certificate["spec"]["secretName"].as_str().unwrap();
    for file in [&args.tls_cert_file, &args.tls_key_file] {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| file.starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("{} is on no volume", file.display()));
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some(secret),
            "{}",
            file.display()
        );
    }
    let port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("webhook")).unwrap();
    assert_eq!(port.container_port, i32::from(args.listen.port()), "the named port is the listener");
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), get.scheme.as_deref(), &get.port),
            (Some("/healthz"), Some("HTTPS"), &IntOrString::String("webhook".into()))
        );
    }
    let security = container.security_context.as_ref().unwrap();
    assert_eq!((security.privileged, security.run_as_non_root), (None, Some(true)), "no privileges");

    let service =
        bundle.one("Service", |o| if let Object::Service(x) = o { Some(x.as_ref()) } else { None }).unwrap();
    let labels = deployment.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let spec = service.spec.as_ref().unwrap();
    assert!(
        spec.selector.as_ref().unwrap().iter().all(|(k, v)| labels.get(k) == Some(v)),
        "selects the pods"
    );
    let service_port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(service_port.target_port, Some(IntOrString::String("webhook".into())));
    let dns =
        format!("{}.{}.svc", service.metadata.name.as_deref().unwrap(), namespace_of_meta(&service.metadata));
    assert!(certificate["spec"]["dnsNames"].as_array().unwrap().iter().any(|n| n == dns.as_str()), "{dns}");

    let configuration = bundle
        .one("ValidatingWebhookConfiguration", |o| {
            if let Object::ValidatingWebhookConfiguration(x) = o { Some(x) } else { None }
        })
        .unwrap();
    let injected =
        configuration.metadata.annotations.as_ref().unwrap()["cert-manager.io/inject-ca-from"].clone();
    assert_eq!(
        injected,
        format!(
            "{}/{}",
            certificate["metadata"]["namespace"].as_str().unwrap(),
            certificate["metadata"]["name"].as_str().unwrap()
        )
    );
    let webhook = &configuration.webhooks.as_ref().unwrap()[0];
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"), "documented in docs/KUBERNETES.md");
    assert_eq!(webhook.side_effects, "None");
    assert_eq!(webhook.admission_review_versions, ["v1"]);
    let target = webhook.client_config.service.as_ref().unwrap();
    assert_eq!(
        (Some(&target.name), target.namespace.as_str()),
        (service.metadata.name.as_ref(), namespace_of_meta(&service.metadata))
    );
    assert_eq!(target.port, Some(service_port.port));
    let rule = &webhook.rules.as_ref().unwrap()[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&["networking.k8s.io".to_owned()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["ingresses".to_owned()][..]));
    assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned(), "UPDATE".to_owned()][..]));

    let account = bundle.service_account().unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
    let role = bundle.cluster_role().unwrap();
    let mut granted = BTreeSet::new();
    expand_rules(Scope::Cluster, role.rules.as_deref().unwrap_or_default(), &mut granted).unwrap();
    assert_eq!(granted, grants_of(WEBHOOK_PERMISSIONS), "the ClusterRole grants exactly WEBHOOK_PERMISSIONS");
    let binding = bundle.cluster_role_binding().unwrap();
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    subject_is(binding.subjects.as_ref(), account).unwrap();
}

/// `sluice webhook` with the Deployment's arguments (the listener and the certificate files
/// moved into the test's reach) answers its probe and a review, requesting only what
/// `WEBHOOK_PERMISSIONS` lists and all of it.
#[test]
fn sluice_webhook_with_the_deployment_arguments_requests_exactly_its_permissions() {
    let bundle = webhook_bundle();
    let container = &webhook_deployment(&bundle).spec.template.spec.as_ref().unwrap().containers[0];
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress("default", "web", "sluice", "web.example", "/", "web", 80));
    let dir = TempDir::new();
    let ca = lb_tests::tls::Ca::new("webhook CA");
    let leaf = ca.leaf(&["sluice-webhook.sluice.svc"]);
    std::fs::write(dir.0.join("tls.crt"), &leaf.cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &leaf.key).unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args: Vec<String> = container.args.clone().unwrap();
    for arg in &mut args {
        if arg.starts_with("--listen=") {
            *arg = format!("--listen={listen}");
        } else if let Some((flag, path)) = arg.split_once('=')
            && flag.ends_with("-file")
        {
            let name = Path::new(path).file_name().unwrap().to_str().unwrap();
            *arg = format!("{flag}={}", dir.0.join(name).display());
        }
    }
    let mut command = Command::new(sluice_binary().unwrap());
    command
        .args(&args)
        .arg("--kubeconfig")
        .arg(kube.write_kubeconfig(&dir.0).unwrap())
        .env_remove("KUBECONFIG");
    let child = ChildGuard::spawn(command).unwrap();
    let client =
        lb_tests::tls::client_config(lb_tests::tls::ClientOptions { trust: Some(&ca), ..Default::default() });
    let post = |body: &str| -> Option<lb_tests::http::HttpResponse> {
        let stream = lb_tests::tls::connect(listen, Some("sluice-webhook.sluice.svc"), &client).ok()?;
        let mut http = lb_tests::http::Client::new(stream);
        http.send(
            format!("POST /networking/v1/ingresses HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        lb_tests::http::HttpResponse::try_from(http.read_response(false)).ok()
    };
    let object = ingress("default", "copy", "sluice", "web.example", "/", "web", 80);
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "1", "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
        "namespace": "default", "name": "copy", "operation": "CREATE", "object": object}});
    let answer = wait_for(Duration::from_secs(20), "the webhook to answer", || post(&review.to_string()))
        .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    let answer: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "the path web.example/ is taken: {answer}");
    drop(child);
    let mut used = BTreeSet::new();
    for request in kube.requests() {
        let access = access_of(&request.method, &request.path, &request.query).unwrap();
        let permission = WEBHOOK_PERMISSIONS
            .iter()
            .find(|p| {
                p.group == access.group
                    && p.resource() == access.resource
                    && Verb::parse(&access.verb) == Some(p.verb)
            })
            .unwrap_or_else(|| panic!("a request outside WEBHOOK_PERMISSIONS: {access:?}"));
        used.insert(*permission);
    }
    let unused: Vec<&Permission> = WEBHOOK_PERMISSIONS.iter().filter(|p| !used.contains(*p)).collect();
    assert!(unused.is_empty(), "listed but never requested: {unused:#?}");
}

fn webhook_bundle() -> Bundle {
    Bundle::from_files(&kustomization_resources(&deploy_dir().join("webhook/kustomization.yaml")).unwrap())
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn webhook_deployment(bundle: &Bundle) -> &Deployment {
    bundle.one("Deployment", |o| if let Object::Deployment(x) = o { Some(x.as_ref()) } else { None }).unwrap()
}

/// The container's arguments, parsed by `sluice webhook`'s own command line.
fn webhook_args(container: &Container) -> lb_userspace::cli::WebhookArgs {
    let mut line = vec!["sluice".to_owned()];
    line.extend(container.args.clone().unwrap());
    match Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{e}")).command {
        SluiceCommand::Webhook(args) => args,
        other => panic!("not sluice webhook: {other:?}"),
    }
}

fn namespace_of_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn grants_of(permissions: &[Permission]) -> BTreeSet<Grant> {
    permissions
        .iter()
        .map(|p| {
            let mut names: Vec<String> = p.names.iter().map(|n| (*n).to_owned()).collect();
            names.sort();
            (p.scope, p.group.to_owned(), p.resource(), p.verb.as_str().to_owned(), names)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The capabilities the least-privilege overlay grants instead of a privileged container.
const LEAST_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE", "NET_BIND_SERVICE"];
/// The leader gives the status writer this long to release its Lease before the node drains
/// (`KubeProvider::run`).
const STATUS_RELEASE_MS: u64 = 5_000;
const IMAGE_REPOSITORY: &str = "ghcr.io/sluice-dev/sluice";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

// ------------------------------------------------------------------------------------------------
// Typed parsing

/// Every kind deploy/ may contain, typed.
#[derive(Debug, Clone)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    IngressClass(IngressClass),
    ConfigMap(ConfigMap),
    // Boxed: by far the largest.
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    /// Prometheus Operator's kind (no typed form here): `check_monitoring` reads its fields.
    ServiceMonitor(Value),
    /// The admission webhook's (deploy/webhook).
    Deployment(Box<Deployment>),
    ValidatingWebhookConfiguration(ValidatingWebhookConfiguration),
    /// cert-manager's `Issuer` and `Certificate` (no typed form here; read from the documents).
    CertManager,
}

/// Deserializes into `T` and checks that serializing gives the document back: k8s-openapi
/// ignores fields it does not know, so a misspelt field would otherwise vanish silently.
fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> anyhow::Result<T> {
    let object: T = serde_json::from_value(value.clone()).context("does not deserialize")?;
    let back = serde_json::to_value(&object)?;
    let mut differences = Vec::new();
    differences_between(value, &back, "", &mut differences);
    ensure!(
        differences.is_empty(),
        "not part of the typed object (misspelt, misplaced or mistyped): {}",
        differences.join("; ")
    );
    Ok(object)
}

fn differences_between(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => differences_between(value, other, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key} (added)"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences_between(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} read as {b}")),
    }
}

fn parse_object(value: &Value) -> anyhow::Result<Object> {
    let api_version = value["apiVersion"].as_str().unwrap_or("");
    let kind = value["kind"].as_str().unwrap_or("");
    let object = match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(typed(value)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(typed(value)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(value)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(value)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Object::ClusterRoleBinding(typed(value)?),
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(value)?),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(typed(value)?),
        ("networking.k8s.io/v1", "IngressClass") => Object::IngressClass(typed(value)?),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(typed(value)?)),
        ("v1", "Service") => Object::Service(Box::new(typed(value)?)),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => Object::ServiceMonitor(value.clone()),
        ("apps/v1", "Deployment") => Object::Deployment(Box::new(typed(value)?)),
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            Object::ValidatingWebhookConfiguration(typed(value)?)
        }
        ("cert-manager.io/v1", "Issuer" | "Certificate") => Object::CertManager,
        _ => bail!(
            "unknown kind {kind:?} (apiVersion {api_version:?}): add it to this suite's typed kinds, and to \
             what it checks, before shipping it"
        ),
    };
    Ok(object)
}

/// How manifests are read: YAML 1.2 booleans only (`yes` stays a string, as Kubernetes reads it).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// The YAML documents of a text, as JSON values (empty documents skipped).
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    Ok(serde_saphyr::from_multiple_with_options(text, yaml_options())?)
}

/// Parsed objects, each with where it came from.
#[derive(Debug, Clone)]
struct Bundle {
    objects: Vec<(String, Value, Object)>,
}

impl Bundle {
    fn from_text(text: &str, origin: &str) -> anyhow::Result<Bundle> {
        let mut objects = Vec::new();
        for (i, value) in documents(text)?.into_iter().enumerate() {
            let name = value["metadata"]["name"].as_str().unwrap_or("?").to_owned();
            let at =
                format!("{origin} (document {}, {} {name})", i + 1, value["kind"].as_str().unwrap_or("?"));
            let object = parse_object(&value).with_context(|| at.clone())?;
            objects.push((at, value, object));
        }
        Ok(Bundle { objects })
    }

    fn from_files(files: &[PathBuf]) -> anyhow::Result<Bundle> {
        let mut objects = Vec::new();
        for file in files {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let origin = file.strip_prefix(root()).unwrap_or(file).display().to_string();
            objects.extend(Bundle::from_text(&text, &origin)?.objects);
        }
        Ok(Bundle { objects })
    }

    /// The one object a function picks out; none or several is an error.
    fn one<'a, T>(&'a self, what: &str, pick: impl Fn(&'a Object) -> Option<&'a T>) -> anyhow::Result<&'a T> {
        let found: Vec<&T> = self.objects.iter().filter_map(|(_, _, o)| pick(o)).collect();
        ensure!(found.len() == 1, "expected exactly one {what}, found {}", found.len());
        Ok(found[0])
    }

    fn daemonset(&self) -> anyhow::Result<&DaemonSet> {
        self.one("DaemonSet", |o| if let Object::DaemonSet(x) = o { Some(x.as_ref()) } else { None })
    }

    fn config_map(&self) -> anyhow::Result<&ConfigMap> {
        self.one("ConfigMap", |o| if let Object::ConfigMap(x) = o { Some(x) } else { None })
    }

    fn ingress_class(&self) -> anyhow::Result<&IngressClass> {
        self.one("IngressClass", |o| if let Object::IngressClass(x) = o { Some(x) } else { None })
    }

    fn service_account(&self) -> anyhow::Result<&ServiceAccount> {
        self.one("ServiceAccount", |o| if let Object::ServiceAccount(x) = o { Some(x) } else { None })
    }

    fn cluster_role(&self) -> anyhow::Result<&ClusterRole> {
        self.one("ClusterRole", |o| if let Object::ClusterRole(x) = o { Some(x) } else { None })
    }

    fn role(&self) -> anyhow::Result<&Role> {
        self.one("Role", |o| if let Object::Role(x) = o { Some(x) } else { None })
    }

    fn cluster_role_binding(&self) -> anyhow::Result<&ClusterRoleBinding> {
        self.one("ClusterRoleBinding", |o| if let Object::ClusterRoleBinding(x) = o { Some(x) } else { None })
    }

    fn role_binding(&self) -> anyhow::Result<&RoleBinding> {
        self.one("RoleBinding", |o| if let Object::RoleBinding(x) = o { Some(x) } else { None })
    }

    /// (kind, namespace, name) → document, for comparing renderings.
    fn by_key(&self) -> BTreeMap<(String, String, String), Value> {
        self.objects
            .iter()
            .map(|(_, value, _)| {
                let key = (
                    value["kind"].as_str().unwrap_or("").to_owned(),
                    value["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                    value["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                );
                (key, value.clone())
            })
            .collect()
    }
}

// ------------------------------------------------------------------------------------------------
// Kustomizations and files

/// The YAML files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// deploy/monitoring: the Service selects the DaemonSet's pods on the metrics listener's port,
/// and the ServiceMonitor scrapes that Service's port at `/metrics`.
#[test]
fn the_service_monitor_scrapes_the_metrics_listener() {
    let bundle = base_bundle();
    let daemonset = bundle.daemonset().unwrap();
    let env = container_env(daemonset, "p", "n").unwrap();
    let args = run_args(&command_line(daemonset, &env).unwrap()).unwrap();
    let (_, config) = mounted_config(&bundle, &args).unwrap();
    let metrics_port = i32::from(config.metrics.as_ref().unwrap().address.port());
    let kustomization = deploy_dir().join("monitoring/kustomization.yaml");
    let monitoring = Bundle::from_files(&kustomization_resources(&kustomization).unwrap()).unwrap();
    let service = monitoring
        .one("Service", |o| if let Object::Service(x) = o { Some(x.as_ref()) } else { None })
        .unwrap();
    let monitor = monitoring
        .one("ServiceMonitor", |o| if let Object::ServiceMonitor(x) = o { Some(x) } else { None })
        .unwrap();
    let pod_labels = daemonset.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless: the targets are the pods");
    let selector = spec.selector.as_ref().unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service selects the pods");
    let port =
        spec.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).expect("a metrics port");
    assert_eq!(port.target_port, Some(IntOrString::Int(metrics_port)), "the metrics listener's port");
    let service_labels = service.metadata.labels.clone().unwrap();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            service_labels.get(key).map(String::as_str),
            value.as_str(),
            "the ServiceMonitor selects {key}"
        );
    }
    assert_eq!(monitor["metadata"]["namespace"], service.metadata.namespace.as_deref().unwrap());
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
}

/// Checks a kustomization.yaml (only the fields used here, so a typo fails) and returns the
/// manifest files its `resources` name directly (directories are other kustomizations).
fn kustomization_resources(file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(file)?;
    let value: Value = serde_saphyr::from_str_with_options(&text, yaml_options())?;
    ensure!(value["apiVersion"] == "kustomize.config.k8s.io/v1beta1", "apiVersion");
    ensure!(value["kind"] == "Kustomization", "kind");
    let known = ["apiVersion", "kind", "resources", "patches"];
    for key in value.as_object().context("a mapping")?.keys() {
        ensure!(known.contains(&key.as_str()), "unexpected field {key:?} (this suite checks only {known:?})");
    }
    for patch in value["patches"].as_array().into_iter().flatten() {
        for key in patch.as_object().context("a patch is a mapping")?.keys() {
            ensure!(["target", "patch"].contains(&key.as_str()), "unexpected patch field {key:?}");
        }
    }
    let dir = file.parent().unwrap();
    let mut files = Vec::new();
    for resource in value["resources"].as_array().context("resources")? {
        let resource = dir.join(resource.as_str().context("a resource is a path")?);
        if resource.is_dir() {
            ensure!(
                resource.join("kustomization.yaml").is_file(),
                "{} has no kustomization.yaml",
                resource.display()
            );
        } else {
            ensure!(resource.is_file(), "{} does not exist", resource.display());
            files.push(resource.canonicalize()?);
        }
    }
    Ok(files)
}

/// The base's manifest files, in its kustomization's order.
fn base_files() -> Vec<PathBuf> {
    kustomization_resources(&deploy_dir().join("base/kustomization.yaml")).unwrap()
}

fn base_bundle() -> Bundle {
    Bundle::from_files(&base_files()).unwrap_or_else(|e| panic!("{e:#}"))
}

// ------------------------------------------------------------------------------------------------
// The DaemonSet's container and command line

fn pod_spec(daemonset: &DaemonSet) -> anyhow::Result<&PodSpec> {
    daemonset.spec.template.spec.as_ref().context("the DaemonSet has no pod spec")
}

fn container(daemonset: &DaemonSet) -> anyhow::Result<&Container> {
    let containers = &pod_spec(daemonset)?.containers;
    // The overlay patches containers/0: one container, so that is Sluice.
    ensure!(containers.len() == 1, "expected one container, found {}", containers.len());
    ensure!(pod_spec(daemonset)?.init_containers.is_none(), "no init containers expected");
    Ok(&containers[0])
}

fn namespace_of(daemonset: &DaemonSet) -> String {
    daemonset.metadata.namespace.clone().unwrap_or_else(|| "default".into())
}

/// The environment the kubelet gives the container: literal values and the downward API for a
/// pod `pod_name` on `node_name`.
fn container_env(
    daemonset: &DaemonSet,
    pod_name: &str,
    node_name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for var in container(daemonset)?.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => {
                let field = from.field_ref.as_ref().context("only fieldRef sources are expected")?;
                match field.field_path.as_str() {
                    "metadata.namespace" => namespace_of(daemonset),
                    "metadata.name" => pod_name.to_owned(),
                    "spec.nodeName" => node_name.to_owned(),
                    other => bail!("unexpected downward API field {other}"),
                }
            }
            _ => bail!("env {} has neither a value nor a source", var.name),
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// `$(NAME)` references expanded as the kubelet does (unknown ones stay as written).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// The container's command line, expanded, as `sluice` receives it.
fn command_line(daemonset: &DaemonSet, env: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
    let container = container(daemonset)?;
    let command = container.command.clone().context("the command (the binary's path) is set")?;
    ensure!(command.len() == 1, "the command is only the binary: {command:?}");
    Ok(command.iter().chain(container.args.iter().flatten()).map(|a| expand(a, env)).collect())
}

fn run_args(argv: &[String]) -> anyhow::Result<RunArgs> {
    let cli =
        Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("`sluice run` refuses {argv:?}:\n{e}"))?;
    match cli.command {
        SluiceCommand::Run(args) => Ok(*args),
        other => bail!("not `sluice run`: {other:?}"),
    }
}

/// Where Sluice puts its Lease: `--lease-namespace`, else POD_NAMESPACE, else `default`
/// (cli.rs and `StatusOptions::default`).
fn lease_namespace(args: &RunArgs, env: &BTreeMap<String, String>) -> String {
    args.kubernetes
        .lease_namespace
        .clone()
        .or_else(|| env.get("POD_NAMESPACE").cloned())
        .unwrap_or_else(|| "default".into())
}

/// The configuration file the DaemonSet runs with: the ConfigMap key mounted at `--config`.
fn mounted_config(bundle: &Bundle, args: &RunArgs) -> anyhow::Result<(String, Config)> {
    let daemonset = bundle.daemonset()?;
    let path = args.config.clone().context("--config is given")?;
    let dir = path.parent().context("--config has a directory")?;
    let file = path.file_name().and_then(|f| f.to_str()).context("--config names a file")?;
    let mount = container(daemonset)?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == dir)
        .with_context(|| format!("nothing is mounted at {}", dir.display()))?;
    // A subPath mount is never updated by the kubelet: the file would not reload.
    ensure!(mount.sub_path.is_none(), "the configuration is mounted whole, not with subPath");
    let volume = pod_spec(daemonset)?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .with_context(|| format!("no volume {}", mount.name))?;
    let source = volume.config_map.as_ref().context("the configuration volume is a ConfigMap")?;
    ensure!(source.items.is_none(), "every key of the ConfigMap is mounted");
    let config_map = bundle.config_map()?;
    ensure!(
        source.name == config_map.metadata.name.clone().unwrap_or_default(),
        "the volume names the ConfigMap"
    );
    ensure!(
        config_map.metadata.namespace == daemonset.metadata.namespace,
        "ConfigMap and DaemonSet share a namespace"
    );
    let yaml = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .with_context(|| format!("the ConfigMap has no key {file}"))?
        .clone();
    let config =
        Config::from_yaml(&yaml, file).map_err(|e| anyhow::anyhow!("the ConfigMap's {file}:\n{e}"))?;
    Ok((yaml, config))
}

fn http_get_probe(probe: Option<&Probe>, what: &str) -> anyhow::Result<(Option<String>, String, u16)> {
    let get = probe.and_then(|p| p.http_get.as_ref()).with_context(|| format!("an httpGet {what} probe"))?;
    let port = match &get.port {
        IntOrString::Int(port) => u16::try_from(*port)?,
        IntOrString::String(name) => {
            bail!("{what} probe: port {name:?} by name; the admin port is not a named port")
        }
    };
    Ok((get.host.clone(), get.path.clone().context("a probe path")?, port))
}

// ------------------------------------------------------------------------------------------------
// Checks shared by the files and the renderings

/// One granted (or needed) permission: scope, group, resource, verb, object names.
type Grant = (Scope, String, String, String, Vec<String>);

fn needed() -> BTreeSet<Grant> {
    grants_of(PERMISSIONS)
}

fn expand_rules(scope: Scope, rules: &[PolicyRule], out: &mut BTreeSet<Grant>) -> anyhow::Result<()> {
    for rule in rules {
        ensure!(rule.non_resource_urls.is_none(), "no nonResourceURLs are needed");
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        ensure!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "an empty rule: {rule:?}"
        );
        let mut names = rule.resource_names.clone().unwrap_or_default();
        names.sort();
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    for field in [group, resource, verb] {
                        ensure!(!field.contains('*'), "wildcard {field:?} in {rule:?}");
                    }
                    out.insert((scope, group.clone(), resource.clone(), verb.clone(), names.clone()));
                }
            }
        }
    }
    Ok(())
}

fn show(grants: &BTreeSet<Grant>) -> String {
    let lines: Vec<String> = grants
        .iter()
        .map(|(scope, group, resource, verb, names)| {
            let group = if group.is_empty() { "core" } else { group };
            let names = if names.is_empty() { String::new() } else { format!(" {names:?}") };
            format!("  {scope:?}: {verb} {group}/{resource}{names}")
        })
        .collect();
    lines.join("\n")
}

fn subject_is(subjects: Option<&Vec<Subject>>, account: &ServiceAccount) -> anyhow::Result<()> {
    let subjects = subjects.context("the binding has subjects")?;
    ensure!(subjects.len() == 1, "one subject, the ServiceAccount: {subjects:?}");
    let subject = &subjects[0];
    ensure!(subject.kind == "ServiceAccount", "the subject is a ServiceAccount: {subject:?}");
    ensure!(
        Some(&subject.name) == account.metadata.name.as_ref()
            && subject.namespace == account.metadata.namespace,
        "the subject is the DaemonSet's ServiceAccount: {subject:?}"
    );
    Ok(())
}

/// RBAC grants exactly `PERMISSIONS`, to the DaemonSet's ServiceAccount, the namespaced part in
/// the Lease's namespace; nothing else grants anything.
fn check_rbac(bundle: &Bundle) -> anyhow::Result<()> {
    let daemonset = bundle.daemonset()?;
    let account = bundle.service_account()?;
    ensure!(
        pod_spec(daemonset)?.service_account_name == account.metadata.name,
        "the DaemonSet runs as the ServiceAccount"
    );
    ensure!(
        account.metadata.namespace == daemonset.metadata.namespace,
        "ServiceAccount and DaemonSet share a namespace"
    );
    let env = container_env(daemonset, "sluice-test", "node-test")?;
    let args = run_args(&command_line(daemonset, &env)?)?;
    let lease_namespace = lease_namespace(&args, &env);

    let cluster_role = bundle.cluster_role()?;
    let role = bundle.role()?;
    ensure!(
        role.metadata.namespace.as_deref() == Some(lease_namespace.as_str()),
        "the Role is in the Lease's namespace {lease_namespace}, not {:?}",
        role.metadata.namespace
    );
    let mut granted = BTreeSet::new();
    expand_rules(Scope::Cluster, cluster_role.rules.as_deref().unwrap_or_default(), &mut granted)?;
    ensure!(cluster_role.aggregation_rule.is_none(), "the ClusterRole aggregates nothing");
    expand_rules(Scope::LeaseNamespace, role.rules.as_deref().unwrap_or_default(), &mut granted)?;
    let needed = needed();
    let extra: BTreeSet<Grant> = granted.difference(&needed).cloned().collect();
    let missing: BTreeSet<Grant> = needed.difference(&granted).cloned().collect();
    ensure!(
        extra.is_empty() && missing.is_empty(),
        "RBAC differs from lb-userspace/src/provider/kube/rbac.rs PERMISSIONS\ngranted, not in the list:\n{}\n\
         in the list, not granted:\n{}",
        show(&extra),
        show(&missing)
    );

    let cluster_binding = bundle.cluster_role_binding()?;
    ensure!(
        cluster_binding.role_ref.kind == "ClusterRole"
            && Some(&cluster_binding.role_ref.name) == cluster_role.metadata.name.as_ref(),
        "the ClusterRoleBinding binds the ClusterRole"
    );
    subject_is(cluster_binding.subjects.as_ref(), account)?;
    let binding = bundle.role_binding()?;
    ensure!(
        binding.role_ref.kind == "Role"
            && Some(&binding.role_ref.name) == role.metadata.name.as_ref()
            && binding.metadata.namespace == role.metadata.namespace,
        "the RoleBinding binds the Role, in its namespace"
    );
    subject_is(binding.subjects.as_ref(), account)?;
    Ok(())
}

/// Everything about the DaemonSet but its security context, which the variants differ in.
fn check_daemonset(bundle: &Bundle) -> anyhow::Result<()> {
    let daemonset = bundle.daemonset()?;
    let pod = pod_spec(daemonset)?;
    let container = container(daemonset)?;
    let namespace = namespace_of(daemonset);
    let ns = bundle.one("Namespace", |o| if let Object::Namespace(x) = o { Some(x) } else { None })?;
    ensure!(ns.metadata.name.as_deref() == Some(namespace.as_str()), "the Namespace is the DaemonSet's");
    ensure!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce"))
            .map(String::as_str)
            == Some("privileged"),
        "the namespace admits privileged pods (Pod Security)"
    );

    // Host network, cluster DNS.
    ensure!(pod.host_network == Some(true), "hostNetwork");
    ensure!(
        pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
        "dnsPolicy ClusterFirstWithHostNet"
    );

    // Downward API.
    let env = container_env(daemonset, "sluice-abcde", "node-a")?;
    ensure!(env.get("NODE_NAME").map(String::as_str) == Some("node-a"), "NODE_NAME from spec.nodeName");
    ensure!(env.get("POD_NAMESPACE") == Some(&namespace), "POD_NAMESPACE from metadata.namespace");
    ensure!(env.get("POD_NAME").map(String::as_str) == Some("sluice-abcde"), "POD_NAME from metadata.name");

    // The command line parses with the real definition and says what the manifests assume.
    let argv = command_line(daemonset, &env)?;
    let args = run_args(&argv)?;
    ensure!(args.kubernetes.kubernetes, "--kubernetes");
    ensure!(args.kubernetes.kubeconfig.is_none(), "in-cluster credentials, no --kubeconfig");
    ensure!(!args.kubernetes.no_status, "status and leader election on");
    ensure!(!args.no_xdp, "XDP on");
    ensure!(matches!(args.log_format, LogFormat::Json), "JSON logs");
    ensure!(
        args.kubernetes.identity.as_deref() == Some("sluice-abcde"),
        "the pod name is the Lease identity"
    );
    let class = bundle.ingress_class()?;
    let class_spec = class.spec.as_ref().context("IngressClass spec")?;
    ensure!(class_spec.controller.as_deref() == Some(CONTROLLER), "the IngressClass names {CONTROLLER}");
    ensure!(
        class.metadata.name.as_deref() == Some(args.kubernetes.ingress_class.as_str()),
        "--ingress-class names the IngressClass"
    );

    // The configuration: validates; XDP wanted on some interface; the probes on its admin address.
    let (_, config) = mounted_config(bundle, &args)?;
    ensure!(config.xdp.enabled && !config.xdp.interfaces.is_empty(), "XDP enabled with an interface");
    let admin = config.admin.as_ref().context("the configuration has an admin server")?.address;
    for (probe, what, path) in [
        (&container.liveness_probe, "liveness", "/healthz"),
        (&container.readiness_probe, "readiness", "/readyz"),
    ] {
        let (host, probe_path, port) = http_get_probe(probe.as_ref(), what)?;
        ensure!(probe_path == path, "the {what} probe asks {probe_path}, the admin server's is {path}");
        ensure!(
            port == admin.port(),
            "the {what} probe's port {port} is not the admin port {}",
            admin.port()
        );
        let host: Option<IpAddr> = host.map(|h| h.parse()).transpose().context("the probe host is an IP")?;
        if admin.ip().is_unspecified() {
            // Any address of the node reaches it.
        } else {
            // The kubelet probes the pod IP (the node's) unless told: a specific admin address
            // (loopback) must be named, which works because the pod shares the host network.
            ensure!(host == Some(admin.ip()), "the {what} probe must name host {}, not {host:?}", admin.ip());
        }
    }

    // The kernel's side: BTF from the host. Not bpffs: Sluice pins nothing (its attachments are
    // bpf_link descriptors that end with the process), so the host's BPF filesystem stays out.
    ensure!(
        !container.volume_mounts.iter().flatten().any(|m| m.mount_path.starts_with("/sys/fs/bpf")),
        "nothing is pinned: /sys/fs/bpf is not mounted"
    );
    let host_mount = |host_path: &str| -> anyhow::Result<(String, bool)> {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .with_context(|| format!("a hostPath volume for {host_path}"))?;
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .with_context(|| format!("{host_path} is mounted"))?;
        Ok((mount.mount_path.clone(), mount.read_only.unwrap_or(false)))
    };
    let (btf, _) = host_mount("/sys/kernel/btf")?;
    ensure!(btf == "/sys/kernel/btf", "BTF mounted at /sys/kernel/btf");

    // Rolling, one node at a time, and a grace period that covers the drain.
    let spec = &daemonset.spec;
    let strategy = spec.update_strategy.as_ref().context("an update strategy")?;
    ensure!(strategy.type_.as_deref() == Some("RollingUpdate"), "RollingUpdate");
    let rolling = strategy.rolling_update.as_ref().context("rollingUpdate")?;
    ensure!(rolling.max_unavailable.is_some(), "maxUnavailable set");
    // Host ports and the XDP attachment: two instances on a node cannot both serve.
    ensure!(
        matches!(rolling.max_surge, None | Some(IntOrString::Int(0))),
        "no surge on the host network: {:?}",
        rolling.max_surge
    );
    check_graceful_stop(pod, container, &config)?;

    // Resources, tolerations, image.
    let resources = container.resources.as_ref().context("resources")?;
    let requests = resources.requests.as_ref().context("resource requests")?;
    ensure!(requests.contains_key("cpu") && requests.contains_key("memory"), "cpu and memory requests");
    ensure!(resources.limits.as_ref().is_some_and(|l| l.contains_key("memory")), "a memory limit");
    ensure!(pod.tolerations.as_ref().is_some_and(|t| !t.is_empty()), "tolerations");
    let image = container.image.as_deref().context("an image")?;
    ensure!(
        image == format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
        "the image is {IMAGE_REPOSITORY} tagged with the workspace version, not {image}"
    );
    let security = container.security_context.as_ref().context("a security context")?;
    ensure!(security.read_only_root_filesystem == Some(true), "a read-only root filesystem");
    Ok(())
}

/// A rollout drops no connection: on SIGTERM (no preStop hook: Sluice itself does what
/// ingress-nginx's `/wait-shutdown` hook starts) `/readyz` fails, and the kubelet sees it within
/// the shutdown delay; the grace period covers the delay, the drain and the Lease release; the
/// pod is node-critical, so it is not evicted under pressure before the node's workloads.
fn check_graceful_stop(pod: &PodSpec, container: &Container, config: &Config) -> anyhow::Result<()> {
    let grace_ms =
        pod.termination_grace_period_seconds.context("terminationGracePeriodSeconds")? as u64 * 1000;
    let limits = &config.limits;
    let drain_ms = limits.shutdown_delay_ms + limits.shutdown_grace_ms + STATUS_RELEASE_MS;
    ensure!(
        grace_ms >= drain_ms,
        "terminationGracePeriodSeconds ({} s) must cover limits.shutdown_delay_ms, limits.shutdown_grace_ms and the Lease release ({drain_ms} ms)",
        grace_ms / 1000
    );
    ensure!(
        container.lifecycle.as_ref().is_none_or(|l| l.pre_stop.is_none()),
        "no preStop hook: SIGTERM starts the shutdown delay, a hook would only postpone it"
    );
    let readiness = container.readiness_probe.as_ref().context("a readiness probe")?;
    let noticed_ms =
        (readiness.period_seconds.unwrap_or(10) * readiness.failure_threshold.unwrap_or(3)) as u64 * 1000
            + readiness.timeout_seconds.unwrap_or(1) as u64 * 1000;
    ensure!(
        limits.shutdown_delay_ms >= noticed_ms,
        "limits.shutdown_delay_ms ({} ms) must outlast the readiness probe's failures ({noticed_ms} ms)",
        limits.shutdown_delay_ms
    );
    ensure!(
        pod.priority_class_name.as_deref() == Some("system-node-critical"),
        "priorityClassName system-node-critical"
    );
    Ok(())
}

fn check_privileged(bundle: &Bundle) -> anyhow::Result<()> {
    let security = container(bundle.daemonset()?)?.security_context.clone().context("a security context")?;
    ensure!(security.privileged == Some(true), "the base runs a privileged container");
    Ok(())
}

fn check_least_privilege(bundle: &Bundle) -> anyhow::Result<()> {
    let security = container(bundle.daemonset()?)?.security_context.clone().context("a security context")?;
    ensure!(security.privileged != Some(true), "not privileged");
    ensure!(security.allow_privilege_escalation == Some(false), "no privilege escalation");
    // Kubernetes adds capabilities to root's sets only; a non-root user would not have them.
    ensure!(security.run_as_user == Some(0), "root, for the added capabilities to be effective");
    let capabilities = security.capabilities.context("capabilities")?;
    ensure!(capabilities.drop == Some(vec!["ALL".to_owned()]), "drop ALL");
    let added: BTreeSet<String> = capabilities.add.unwrap_or_default().into_iter().collect();
    let wanted: BTreeSet<String> = LEAST_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    ensure!(added == wanted, "capabilities {added:?}, expected {wanted:?}");
    Ok(())
}
