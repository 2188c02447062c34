//! `sluice check`: a configuration file, or Ingress manifests translated offline by the
//! controller's own translation (`provider::kube::translate`), so a CI job can see what Sluice
//! would serve, refuse and warn about before anything reaches a cluster.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use serde_json::Value;

use crate::{
    config::Config,
    provider::kube::translate::{self, ClusterState, IngressId, Settings, Translation, Translator},
    proxy::{snapshot::Snapshot, upstream::endpoint::EndpointRegistry},
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The YAML configuration file to validate. With --ingress: the base configuration the
    /// Ingresses are translated on top of (default: listeners on ports 80 and 443 with TLS,
    /// as deploy/ ships them).
    pub file: Option<PathBuf>,
    /// Ingress manifests (YAML or JSON, several documents or `kind: List` per file) to
    /// translate as the controller would; the Services, EndpointSlices, Secrets, ConfigMaps and
    /// IngressClasses in them are used too. Exits 0 when every Ingress of the class is served,
    /// 1 when one is refused or set aside (or, with --strict, on any warning), 2 when a file
    /// cannot be read.
    #[arg(long = "ingress", value_name = "FILE", num_args = 1..)]
    pub ingress: Vec<PathBuf>,
    /// The IngressClass name served, as `sluice run --ingress-class`.
    #[arg(long, default_value = "sluice", requires = "ingress")]
    pub ingress_class: String,
    /// With --ingress: warnings (ignored annotations, missing Services, other classes' Ingresses,
    /// documents not read) fail the check too.
    #[arg(long, requires = "ingress")]
    pub strict: bool,
    /// With --ingress: ingress-nginx's controller ConfigMap, `NAMESPACE/NAME`, as
    /// `sluice run --nginx-configmap` (it and the ConfigMaps it names come from the manifests).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "ingress")]
    pub nginx_configmap: Option<String>,
    /// With --ingress: the default backend Service, `NAMESPACE/NAME`, as
    /// `sluice run --default-backend-service` (it comes from the manifests).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "ingress")]
    pub default_backend_service: Option<String>,
    /// With --ingress: the default certificate's TLS Secret, `NAMESPACE/NAME`, as
    /// `sluice run --default-ssl-certificate` (it comes from the manifests).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "ingress")]
    pub default_ssl_certificate: Option<String>,
    /// With --ingress: ingress-nginx's tcp-services ConfigMap, `NAMESPACE/NAME`, as
    /// `sluice run --tcp-services-configmap` (it and its Services come from the manifests).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "ingress")]
    pub tcp_services_configmap: Option<String>,
    /// With --ingress: the udp-services ConfigMap, as `sluice run --udp-services-configmap`.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "ingress")]
    pub udp_services_configmap: Option<String>,
}

/// Refused or set-aside Ingresses, a configuration that does not validate, or (with
/// `--strict`) warnings.
const EXIT_REFUSED: u8 = 1;
/// A file that cannot be read or parsed.
const EXIT_UNREADABLE: u8 = 2;

/// The listeners `--ingress` translates onto without a base file: deploy/'s ConfigMap's.
pub(super) const KUBERNETES_BASE: &str = "listeners:\n  - name: http\n    address: \"0.0.0.0:80\"\n  - name: https\n    address: \"0.0.0.0:443\"\n    tls: {}\n";

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.ingress.is_empty() {
        let file = args.file.ok_or_else(|| {
            anyhow::anyhow!("name a configuration file, or Ingress manifests with --ingress FILE...")
        })?;
        return Ok(check_config(&file));
    }
    let base = match &args.file {
        Some(file) => Config::from_file(file),
        None => Config::from_yaml(KUBERNETES_BASE, "the default base"),
    };
    let base = match base {
        Ok(base) => base,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_UNREADABLE));
        }
    };
    let manifests = match Manifests::read(&args.ingress) {
        Ok(manifests) => manifests,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_UNREADABLE));
        }
    };
    let translator = Translator::new(Settings {
        ingress_class: args.ingress_class.clone(),
        controller_configmap: args.nginx_configmap.clone(),
        default_backend_service: args.default_backend_service.clone(),
        default_ssl_certificate: args.default_ssl_certificate.clone(),
        tcp_services_configmap: args.tcp_services_configmap.clone(),
        udp_services_configmap: args.udp_services_configmap.clone(),
        ..Settings::default()
    });
    let translation = match translator.build(&base, &manifests.state) {
        Ok(translation) => translation,
        Err(e) => {
            println!("the translated configuration does not validate:\n{e}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    let report = Report::new(&manifests, &translation, &args.ingress_class);
    print!("{}", report.render(&translation));
    let failed = !report.refused.is_empty() || (args.strict && !report.warnings.is_empty());
    Ok(if failed { ExitCode::from(EXIT_REFUSED) } else { ExitCode::SUCCESS })
}

/// `sluice check FILE`: parses, validates and compiles (certificates, keys and CA bundles are
/// loaded) a configuration file.
fn check_config(file: &Path) -> ExitCode {
    match Config::from_file(file) {
        Ok(config) => match Snapshot::build(&config, &EndpointRegistry::default(), 1) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The objects of the manifest files, as the provider's stores would hold them.
#[derive(Default)]
struct Manifests {
    state: ClusterState,
    /// Where each Ingress was read (`file document N`).
    origins: BTreeMap<IngressId, String>,
    /// Documents of kinds the translation does not read.
    skipped: Vec<String>,
}

impl Manifests {
    fn read(files: &[PathBuf]) -> Result<Manifests, String> {
        let mut manifests = Manifests::default();
        for file in files {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
            // YAML 1.2 booleans only, as Kubernetes reads manifests (`yes` stays a string).
            let options = serde_saphyr::options! { strict_booleans: true };
            let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(&text, options)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for (i, document) in documents.into_iter().enumerate() {
                manifests.add(document, &format!("{} document {}", file.display(), i + 1))?;
            }
        }
        Ok(manifests)
    }

    fn add(&mut self, mut object: Value, at: &str) -> Result<(), String> {
        if object.is_null() {
            return Ok(());
        }
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        if kind.ends_with("List") && object["items"].is_array() {
            for item in object["items"].as_array_mut().map(std::mem::take).unwrap_or_default() {
                self.add(item, at)?;
            }
            return Ok(());
        }
        let expected = match kind.as_str() {
            "Ingress" | "IngressClass" => "networking.k8s.io/v1",
            "Service" | "Secret" | "ConfigMap" => "v1",
            "EndpointSlice" => "discovery.k8s.io/v1",
            _ => {
                self.skipped.push(format!("{at}: {kind} {name} is not read"));
                return Ok(());
            }
        };
        if api_version != expected {
            self.skipped.push(format!(
                "{at}: {kind} {name}: apiVersion {api_version:?} is not read, only {expected}"
            ));
            return Ok(());
        }
        // Objects without a namespace land in `default`, as `kubectl apply` puts them there
        // when the context names none.
        if kind != "IngressClass" && object["metadata"]["namespace"].is_null() {
            object["metadata"]["namespace"] = Value::String("default".into());
        }
        // The field path of a value of the wrong shape (`spec.rules`): the document has no
        // positions any more once it is a JSON value.
        fn typed<T: serde::de::DeserializeOwned>(object: Value, at: &str) -> Result<T, String> {
            serde_path_to_error::deserialize(object).map_err(|e| format!("{at}: {}: {}", e.path(), e.inner()))
        }
        let at = format!("{at}: {kind} {name}");
        match kind.as_str() {
            "Ingress" => {
                let ingress: k8s_openapi::api::networking::v1::Ingress = typed(object, &at)?;
                self.origins.insert(translate::id_of(&ingress), at);
                self.state.ingresses.push(Arc::new(ingress));
            }
            "IngressClass" => self.state.classes.push(Arc::new(typed(object, &at)?)),
            "Service" => self.state.services.push(Arc::new(typed(object, &at)?)),
            "EndpointSlice" => self.state.slices.push(Arc::new(typed(object, &at)?)),
            "ConfigMap" => self.state.configmaps.push(Arc::new(typed(object, &at)?)),
            _ => {
                let mut secret: k8s_openapi::api::core::v1::Secret = typed(object, &at)?;
                // The API server folds stringData into data when it stores a Secret.
                for (key, value) in secret.string_data.take().unwrap_or_default() {
                    secret
                        .data
                        .get_or_insert_with(Default::default)
                        .insert(key, k8s_openapi::ByteString(value.into_bytes()));
                }
                self.state.secrets.push(Arc::new(secret));
            }
        }
        Ok(())
    }
}

/// What the check found, apart from the configuration itself.
struct Report {
    /// Ingresses of the class that are not served, with why.
    refused: Vec<(IngressId, String)>,
    /// Everything else an operator should read: notes about served Ingresses, other classes'
    /// Ingresses, documents not read.
    warnings: Vec<String>,
    served: Vec<IngressId>,
}

impl Report {
    fn new(manifests: &Manifests, translation: &Translation, class: &str) -> Report {
        let mut refused = Vec::new();
        let mut warnings = manifests.skipped.clone();
        for id in translation.considered.iter().filter(|id| !translation.served.contains(id)) {
            let why: Vec<&str> = translation
                .notes
                .iter()
                .filter(|n| n.ingress.as_ref() == Some(id))
                .map(|n| n.message.as_str())
                .collect();
            // Every refusal note starts so in the controller's log; here the REFUSED column says it.
            let why: Vec<&str> = why.iter().map(|w| w.strip_prefix("not served: ").unwrap_or(w)).collect();
            refused.push((id.clone(), why.join("; ")));
        }
        for note in &translation.notes {
            match &note.ingress {
                Some(id) if refused.iter().any(|(r, _)| r == id) => {}
                Some(id) => warnings.push(format!("{id}: {}", note.message)),
                None => warnings.push(note.message.clone()),
            }
        }
        for (id, at) in &manifests.origins {
            if !translation.considered.contains(id) {
                warnings.push(format!(
                    "{at}: not of class {class:?} (nor of an IngressClass of sluice.dev/ingress-controller); --ingress-class NAME checks another class as Sluice's"
                ));
            }
        }
        Report { refused, warnings, served: translation.served.clone() }
    }

    fn render(&self, translation: &Translation) -> String {
        let config = &translation.config;
        let mut out = String::new();
        for id in &self.served {
            let _ = writeln!(out, "served   {id}");
        }
        for (id, why) in &self.refused {
            let _ = writeln!(out, "REFUSED  {id}: {why}");
        }
        let _ = writeln!(out, "\nroutes:");
        for (h, host) in config.virtual_hosts.iter().enumerate() {
            let scheme =
                if host.tls.as_ref().is_some_and(|t| t.passthrough.is_none()) { "https" } else { "http" };
            for domain in &host.domains {
                for (r, route) in host.routes.iter().enumerate() {
                    let target = match (&route.backend, &route.redirect) {
                        (Some(backend), _) => format!("backend {backend}"),
                        (None, Some(redirect)) => format!("redirect {}", redirect.code),
                        (None, None) => "nothing".into(),
                    };
                    let owner = translation
                        .owner_of(&format!("virtual_hosts[{h}].routes[{r}]"))
                        .map(|id| format!("  [{id}]"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "  {scheme}://{domain} {} -> {target}{owner}",
                        translate::describe(&route.matcher)
                    );
                }
            }
        }
        let _ = writeln!(out, "\nbackends:");
        for backend in &config.backends {
            let endpoints: Vec<String> = backend
                .endpoints
                .iter()
                .map(|e| if e.ready { e.address.to_string() } else { format!("{} (not ready)", e.address) })
                .collect();
            let endpoints =
                if endpoints.is_empty() { "no endpoints (503)".to_owned() } else { endpoints.join(", ") };
            let _ = writeln!(out, "  {}: {endpoints}", backend.name);
        }
        if !config.l4_services.is_empty() {
            let _ = writeln!(out, "\nl4 services:");
            for service in &config.l4_services {
                let endpoints: Vec<String> = service.endpoints.iter().map(ToString::to_string).collect();
                let _ = writeln!(out, "  {} {} -> {}", service.name, service.address, endpoints.join(", "));
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "\nwarnings:");
            for warning in &self.warnings {
                let _ = writeln!(out, "  {warning}");
            }
        }
        let _ = writeln!(
            out,
            "\n{} served, {} refused, {} warnings",
            self.served.len(),
            self.refused.len(),
            self.warnings.len()
        );
        out
    }
}
