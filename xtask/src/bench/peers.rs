//! The processes of a proxy benchmark: one fast backend (nginx answering `200 ok`) and the
//! proxies under test (Sluice, nginx, HAProxy), each pinned to a core with `taskset`, each in
//! its own process group so that the whole group (nginx's master and worker) is measured and
//! stopped together.

use std::{
    ffi::OsString,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lb_tests::{process::ChildGuard, temp_dir::TempDir};

use super::load::{ACCESS_HTPASSWD, ACCESS_PATH};

/// The core the proxy under test runs on.
pub const PROXY_CORE: u32 = 0;
/// The core the load generator and the backend share.
pub const CLIENT_CORE: u32 = 1;

/// Who answers the load generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// The backend itself, no proxy: the ceiling of the client core.
    Direct,
    Sluice,
    Nginx,
    Haproxy,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Direct, Peer::Sluice, Peer::Nginx, Peer::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Sluice => "sluice",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }

    pub fn parse(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn is_proxy(self) -> bool {
        self != Peer::Direct
    }
}

/// How the load generator talks to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 in clear text.
    H1,
    /// HTTP/2 in clear text with prior knowledge (what h2load sends to an `http://` URL).
    H2c,
    /// HTTP/1.1 over TLS.
    Tls,
}

/// A process group started by the bench: stopped (SIGTERM to the group, SIGKILL after a grace
/// period) when dropped, on success and on error alike.
pub struct Proc {
    name: String,
    pgid: i32,
    guard: Option<ChildGuard>,
}

impl Proc {
    /// Starts `program args` pinned to `core`, as the leader of a new process group.
    pub fn spawn(name: &str, core: u32, program: &str, args: &[OsString]) -> anyhow::Result<Proc> {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(program).args(args).process_group(0);
        let guard = ChildGuard::spawn(command).with_context(|| format!("starting {name}"))?;
        let pgid = guard.pid() as i32;
        Ok(Proc { name: name.to_owned(), pgid, guard: Some(guard) })
    }

    /// The group leader's pid (nginx's master, HAProxy, Sluice).
    pub fn pid(&self) -> u32 {
        self.pgid as u32
    }

    /// Fails with the process's output when it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        // Not reaped here (see `stop`).
        if self.guard.is_none() || exited_unreaped(self.pgid) {
            bail!("{} exited; its output:\n{}", self.name, self.output());
        }
        Ok(())
    }

    pub fn output(&self) -> String {
        self.guard.as_ref().map(|g| g.output()).unwrap_or_default()
    }

    /// User plus system CPU time of every process in the group, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// (user, system) CPU time of every process in the group, in clock ticks.
    pub fn cpu_split(&self) -> (u64, u64) {
        group_processes(self.pgid).iter().fold((0, 0), |(u, s), p| (u + p.user, s + p.system))
    }

    /// The processes of the group (nginx: master and worker).
    pub fn pids(&self) -> Vec<u32> {
        group_processes(self.pgid).into_iter().map(|p| p.pid).collect()
    }

    /// Stops the group, giving it `grace` to exit after SIGTERM.
    pub fn stop_within(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let Some(guard) = self.guard.take() else { return };
        // The leader is reaped only when `guard` drops, at the end: until then its pid, and so
        // the group id, cannot be reused, and signalling the group reaches only this group.
        // SAFETY: kill has no memory-safety preconditions; the group is ours (see above).
        unsafe { libc::kill(-self.pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while !exited_unreaped(self.pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (an nginx worker that outlived its master, or a
        // process that ignored SIGTERM).
        // SAFETY: as above; the leader is still unreaped.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        drop(guard);
    }
}

/// Whether `pid` (our unreaped child) has exited: a zombie, or gone.
fn exited_unreaped(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

struct GroupProcess {
    pid: u32,
    user: u64,
    system: u64,
}

/// The processes of a group with their CPU time (utime and stime, fields 14 and 15 of
/// /proc/PID/stat, in clock ticks).
fn group_processes(pgid: i32) -> Vec<GroupProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may contain spaces and parentheses: the fields start after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
        if fields.len() > 12 && fields[2].parse::<i32>() == Ok(pgid) {
            let user = fields[11].parse::<u64>().unwrap_or(0);
            let system = fields[12].parse::<u64>().unwrap_or(0);
            found.push(GroupProcess { pid, user, system });
        }
    }
    found
}

/// The loopback ports of every listener, picked by the kernel (bind to port 0) so that a
/// bench never collides with whatever else listens on the machine.
struct Ports {
    backend: u16,
    backend_h2: u16,
    sluice: u16,
    sluice_tls: u16,
    nginx: u16,
    nginx_h2: u16,
    nginx_tls: u16,
    haproxy: u16,
    haproxy_h2: u16,
    haproxy_tls: u16,
}

impl Ports {
    fn pick() -> anyhow::Result<Ports> {
        // All held at once so that they differ, released just before the servers bind them.
        let listeners = (0..10)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot pick free loopback ports")?;
        let p = listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?;
        Ok(Ports {
            backend: p[0],
            backend_h2: p[1],
            sluice: p[2],
            sluice_tls: p[3],
            nginx: p[4],
            nginx_h2: p[5],
            nginx_tls: p[6],
            haproxy: p[7],
            haproxy_h2: p[8],
            haproxy_tls: p[9],
        })
    }
}

/// The backend and the proxies, running. Dropping it stops them and removes the files; the
/// fields drop in order, proxies first.
pub struct Lab {
    proxies: Vec<(Peer, Proc)>,
    backend: Proc,
    ports: Ports,
    dir: TempDir,
}

impl Lab {
    /// Starts the backend on the client core, then Sluice, nginx and HAProxy on the proxy
    /// core, each with one worker and keep-alive to the backend; `tls` adds a TLS listener to
    /// each, with a self-signed ECDSA P-256 certificate made by `openssl`. `busy_poll_us`
    /// above 0 turns Sluice's busy polling on.
    pub fn start(sluice: &Path, tls: bool, busy_poll_us: u64) -> anyhow::Result<Lab> {
        let dir = TempDir::new();
        let ports = Ports::pick()?;
        if tls {
            make_certificate(dir.path())?;
        }
        let d = dir.path();
        let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
            let path = d.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };

        write("htpasswd", format!("{ACCESS_HTPASSWD}\n"))?;
        let backend_conf = write("backend.conf", backend_nginx_conf(d, &ports))?;
        let mut backend =
            Proc::spawn("backend nginx", CLIENT_CORE, "nginx", &nginx_args(d, "backend", &backend_conf))?;
        let backend_addr = SocketAddr::from(([127, 0, 0, 1], ports.backend));
        wait_http_ok(&mut backend, backend_addr)?;

        let mut proxies = Vec::new();
        let sluice_conf = write("sluice.yaml", sluice_yaml(d, &ports, tls, busy_poll_us))?;
        let args =
            ["run", "--no-xdp", "--config"].map(OsString::from).into_iter().chain([sluice_conf.into()]);
        let sluice = sluice.to_str().context("the sluice path is not UTF-8")?;
        proxies.push((Peer::Sluice, Proc::spawn("sluice", PROXY_CORE, sluice, &args.collect::<Vec<_>>())?));

        let nginx_conf = write("proxy-nginx.conf", proxy_nginx_conf(d, &ports, tls))?;
        let nginx_args = nginx_args(d, "proxy-nginx", &nginx_conf);
        proxies.push((Peer::Nginx, Proc::spawn("proxy nginx", PROXY_CORE, "nginx", &nginx_args)?));

        if tls {
            // HAProxy wants the certificate and its key in one file.
            let pem =
                std::fs::read_to_string(d.join("cert.pem"))? + &std::fs::read_to_string(d.join("key.pem"))?;
            write("haproxy.pem", pem)?;
        }
        let haproxy_conf = write("haproxy.cfg", haproxy_cfg(d, &ports, tls))?;
        let haproxy_args =
            ["-db", "-f"].map(OsString::from).into_iter().chain([haproxy_conf.into()]).collect::<Vec<_>>();
        proxies.push((Peer::Haproxy, Proc::spawn("haproxy", PROXY_CORE, "haproxy", &haproxy_args)?));

        let mut lab = Lab { proxies, backend, ports, dir };
        for peer in [Peer::Sluice, Peer::Nginx, Peer::Haproxy] {
            let (plain, secure) = (lab.addr(peer, Proto::H1), lab.addr(peer, Proto::Tls));
            let proc = lab.proc_mut(peer);
            wait_http_ok(proc, plain)?;
            if tls {
                wait_listening(proc, secure)?;
            }
        }
        Ok(lab)
    }

    /// The address the load generator uses for `peer` over `proto`.
    pub fn addr(&self, peer: Peer, proto: Proto) -> SocketAddr {
        let p = &self.ports;
        let port = match (peer, proto) {
            (Peer::Direct, Proto::H1 | Proto::Tls) => p.backend,
            (Peer::Direct, Proto::H2c) => p.backend_h2,
            (Peer::Sluice, Proto::H1 | Proto::H2c) => p.sluice,
            (Peer::Sluice, Proto::Tls) => p.sluice_tls,
            (Peer::Nginx, Proto::H1) => p.nginx,
            (Peer::Nginx, Proto::H2c) => p.nginx_h2,
            (Peer::Nginx, Proto::Tls) => p.nginx_tls,
            (Peer::Haproxy, Proto::H1) => p.haproxy,
            (Peer::Haproxy, Proto::H2c) => p.haproxy_h2,
            (Peer::Haproxy, Proto::Tls) => p.haproxy_tls,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The peer's processes: for `Direct`, the backend's.
    pub fn proc(&self, peer: Peer) -> &Proc {
        match peer {
            Peer::Direct => &self.backend,
            _ => &self.proxies.iter().find(|(p, _)| *p == peer).expect("every proxy is started").1,
        }
    }

    pub fn proc_mut(&mut self, peer: Peer) -> &mut Proc {
        match peer {
            Peer::Direct => &mut self.backend,
            _ => &mut self.proxies.iter_mut().find(|(p, _)| *p == peer).expect("every proxy is started").1,
        }
    }

    /// Every process of the lab.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.backend.pids();
        for (_, proc) in &self.proxies {
            pids.extend(proc.pids());
        }
        pids
    }

    /// Fails when any process of the lab has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.backend.check_running()?;
        for (_, proc) in &mut self.proxies {
            proc.check_running()?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A copy of Sluice's configuration whose plain listener is on `port` instead (a second
    /// instance, e.g. under valgrind), without the TLS listener.
    pub fn sluice_config_on_port(&self, port: u16) -> anyhow::Result<PathBuf> {
        let text = sluice_yaml(self.dir(), &self.ports, false, 0)
            .replace(&format!("127.0.0.1:{}", self.ports.sluice), &format!("127.0.0.1:{port}"));
        let path = self.dir().join(format!("sluice-{port}.yaml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

fn nginx_args(dir: &Path, name: &str, conf: &Path) -> Vec<OsString> {
    vec![
        "-e".into(),
        dir.join(format!("{name}-error.log")).into(),
        "-p".into(),
        dir.into(),
        "-c".into(),
        conf.into(),
    ]
}

/// Polls until `GET /` through `addr` answers `200` with the backend's body.
fn wait_http_ok(proc: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_running()?;
        match lb_tests::http::http_get(addr, "/") {
            Ok(r) if r.status == 200 && r.body == "ok" => return Ok(()),
            Ok(r) => last = format!("status {} body {:?}", r.status, r.body),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not answer 200 \"ok\" on {addr} within 20s (last: {last}); its output:\n{}",
        proc.name,
        proc.output()
    )
}

/// Polls until `addr` accepts TCP connections.
fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        proc.check_running()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not listen on {addr} within 20s; its output:\n{}", proc.name, proc.output())
}

/// A self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1: cert.pem, key.pem.
fn make_certificate(dir: &Path) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .output()
        .context("cannot run openssl")?;
    if !output.status.success() {
        bail!("openssl req failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// nginx's temp paths and pid file inside the bench directory, so nothing is written elsewhere.
fn nginx_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\nuser root;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}-error.log warn;\nworker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n"
    )
}

fn nginx_http_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    let mut s =
        String::from("  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 120s;\n");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(s, "  {t}_temp_path {d}/{name}-{t}-temp;");
    }
    s
}

fn backend_nginx_conf(dir: &Path, p: &Ports) -> String {
    format!(
        "{}http {{\n{}  default_type text/plain;\n\
         \x20 server {{ listen 127.0.0.1:{} backlog=4096; location / {{ return 200 \"ok\"; }} }}\n\
         \x20 server {{ listen 127.0.0.1:{} http2 backlog=4096; location / {{ return 200 \"ok\"; }} }}\n}}\n",
        nginx_common(dir, "backend"),
        nginx_http_common(dir, "backend"),
        p.backend,
        p.backend_h2,
    )
}

// The peers do an ingress's job per request, as Sluice does by default: a request id sent to the
// backend and returned to the client, and the forwarding headers (X-Forwarded-For set to the
// client address, as ingress-nginx's default, X-Real-IP, X-Forwarded-Proto, -Port and -Host) with the client's Host passed on. ingress-nginx's
// own template sets these request headers; a peer proxying bare would skip work Sluice does on
// every request.
const NGINX_INGRESS_HEADERS: &str = "      proxy_set_header Host $host;\n      \
    proxy_set_header X-Request-ID $request_id;\n      \
    proxy_set_header X-Forwarded-For $remote_addr;\n      \
    proxy_set_header X-Real-IP $remote_addr;\n      \
    proxy_set_header X-Forwarded-Proto $scheme;\n      \
    proxy_set_header X-Forwarded-Port $server_port;\n      \
    proxy_set_header X-Forwarded-Host $host;\n      \
    add_header X-Request-ID $request_id always;\n";

const HAPROXY_INGRESS_HEADERS: &str = "    unique-id-format %[uuid()]\n    \
    unique-id-header X-Request-ID\n    \
    http-request set-header X-Forwarded-For %[src]\n    \
    http-request set-header X-Real-IP %[src]\n    \
    http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]\n    \
    http-request set-header X-Forwarded-Port %[dst_port]\n    \
    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n    \
    http-after-response set-header X-Request-ID %[unique-id]\n";

fn proxy_nginx_conf(dir: &Path, p: &Ports, tls: bool) -> String {
    let d = dir.display();
    let tls_listen = if tls {
        format!(
            "    listen 127.0.0.1:{} ssl http2 backlog=4096 deferred;\n    ssl_certificate {d}/cert.pem;\n    \
             ssl_certificate_key {d}/key.pem;\n    ssl_protocols TLSv1.2 TLSv1.3;\n",
            p.nginx_tls
        )
    } else {
        String::new()
    };
    format!(
        "{}http {{\n{}\
         \x20 upstream backend {{\n    server 127.0.0.1:{};\n    keepalive 1024;\n    \
         keepalive_requests 10000000;\n    keepalive_timeout 120s;\n  }}\n\
         \x20 server {{\n    listen 127.0.0.1:{} backlog=4096 deferred;\n    listen 127.0.0.1:{} http2 backlog=4096 deferred;\n{tls_listen}\
         \x20   location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n{NGINX_INGRESS_HEADERS}    }}\n\
         \x20   location {ACCESS_PATH} {{\n      deny 10.0.0.0/8;\n      allow 127.0.0.0/8;\n      deny all;\n      \
         auth_basic \"bench\";\n      auth_basic_user_file {d}/htpasswd;\n      proxy_pass http://backend;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n{NGINX_INGRESS_HEADERS}    }}\n  }}\n}}\n",
        nginx_common(dir, "proxy-nginx"),
        nginx_http_common(dir, "proxy-nginx"),
        p.backend,
        p.nginx,
        p.nginx_h2,
    )
}

fn haproxy_cfg(dir: &Path, p: &Ports, tls: bool) -> String {
    let tls_bind = if tls {
        // ALPN h2 as nginx's `http2` and Sluice offer it; wrk sends no ALPN and gets HTTP/1.1.
        format!(
            "    bind 127.0.0.1:{} ssl crt {}/haproxy.pem alpn h2,http/1.1 defer-accept\n",
            p.haproxy_tls,
            dir.display()
        )
    } else {
        String::new()
    };
    format!(
        "global\n    nbthread 1\n    maxconn 8000\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    \
         timeout server 120s\n    timeout http-keep-alive 120s\n    http-reuse always\n\n\
         frontend bench\n    bind 127.0.0.1:{} defer-accept\n    bind 127.0.0.1:{} proto h2 defer-accept\n{tls_bind}{HAPROXY_INGRESS_HEADERS}    \
         default_backend backend\n\n\
         backend backend\n    server s1 127.0.0.1:{}\n",
        p.haproxy, p.haproxy_h2, p.backend,
    )
}

fn sluice_yaml(dir: &Path, p: &Ports, tls: bool, busy_poll_us: u64) -> String {
    let d = dir.display();
    let (tls_listener, certificates, host_tls) = if tls {
        (
            format!(
                "  - name: https\n    address: \"127.0.0.1:{}\"\n    tls: {{default_certificate: bench}}\n",
                p.sluice_tls
            ),
            format!(
                "certificates:\n  - name: bench\n    cert_path: {d}/cert.pem\n    key_path: {d}/key.pem\n"
            ),
            "    tls: {certificate: bench, redirect_http: false}\n",
        )
    } else {
        (String::new(), String::new(), "")
    };
    format!(
        "workers: 1\nbusy_poll_us: {busy_poll_us}\naccess_log: {{enabled: false}}\n\
         listeners:\n  - name: http\n    address: \"127.0.0.1:{}\"\n{tls_listener}{certificates}\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n{host_tls}    routes:\n      - backend: backend\n\
         \x20     - name: access\n        match: {{path: {{prefix: {ACCESS_PATH}}}}}\n        backend: backend\n        \
         source_ranges: {{allow: [\"127.0.0.0/8\"], deny: [\"10.0.0.0/8\"]}}\n        \
         basic_auth: {{realm: bench, htpasswd: \"{ACCESS_HTPASSWD}\"}}\n\
         backends:\n  - name: backend\n    endpoints:\n      - address: \"127.0.0.1:{}\"\n",
        p.sluice, p.backend,
    )
}
