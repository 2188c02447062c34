//! The L4 services' maps as user space owns them: each service's settings, its endpoints, its
//! Maglev table over the healthy ones, and its entry in the services map (mode `MODE_L4`).
//! Writes come in an order the kernel can always use: endpoints, then table slots (only those
//! that changed), then settings, then the service entry; a service leaving loses its entry
//! first. Flows already placed keep their endpoint (it is in their conntrack entry) unless the
//! service says `reset`, in which case the flows of an endpoint that left are deleted and their
//! next packet is placed again.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, FlowKey, L4_ACTIVE, L4Backend, L4Flow, L4Service, MAGLEV_TABLE_SIZE,
    MAX_L4_BACKENDS, MAX_L4_SERVICES, MODE_L4, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceValue,
};

use super::{Error, Result, map_error, steering::v4_words};
use crate::{config::L4Protocol, maglev};

/// One L4 service as the kernel balances it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Spec {
    pub address: SocketAddr,
    pub protocol: L4Protocol,
    /// Index = the endpoint's slot in the kernel's endpoint table.
    pub endpoints: Vec<SocketAddr>,
    pub idle_timeout: Duration,
    /// Delete the flows of an endpoint that leaves (else they drain).
    pub reset_on_removal: bool,
    /// The node address endpoints see as the source.
    pub snat: Ipv4Addr,
}

impl L4Spec {
    fn key(&self) -> Result<ServiceKey> {
        let IpAddr::V4(v4) = self.address.ip() else {
            return Err(Error::Steering(format!(
                "L4 service {}: the XDP fast path is IPv4 only for now; IPv6 services are proxied by the workers",
                self.address
            )));
        };
        Ok(ServiceKey {
            addr: v4_words(v4.octets()),
            port: self.address.port().to_be(),
            proto: proto(self.protocol),
            family: FAMILY_IPV4,
        })
    }
}

fn proto(protocol: L4Protocol) -> u8 {
    match protocol {
        L4Protocol::Tcp => PROTO_TCP,
        L4Protocol::Udp => PROTO_UDP,
    }
}

/// What is installed for one service id.
struct Installed {
    spec: L4Spec,
    healthy: BTreeSet<SocketAddr>,
    table: Vec<u32>,
}

/// The L4 maps and what user space last wrote to them.
pub struct L4Maps {
    services_map: HashMap<MapData, ServiceKey, ServiceValue>,
    settings_map: Array<MapData, L4Service>,
    backends_map: Array<MapData, L4Backend>,
    maglev_map: Array<MapData, u32>,
    flows_map: HashMap<MapData, FlowKey, L4Flow>,
    installed: Vec<Option<Installed>>,
    /// Endpoints (service id, endpoint) that left a `reset` service and whose flows are still
    /// to be forgotten (`reset_flows`).
    resets: Vec<(u32, SocketAddr)>,
}

impl L4Maps {
    pub(super) fn new(
        services_map: HashMap<MapData, ServiceKey, ServiceValue>,
        settings_map: Array<MapData, L4Service>,
        backends_map: Array<MapData, L4Backend>,
        maglev_map: Array<MapData, u32>,
        flows_map: HashMap<MapData, FlowKey, L4Flow>,
    ) -> L4Maps {
        L4Maps {
            services_map,
            settings_map,
            backends_map,
            maglev_map,
            flows_map,
            installed: (0..MAX_L4_SERVICES).map(|_| None).collect(),
            resets: Vec::new(),
        }
    }

    /// Makes the kernel balance `services[i]` (id `i`) over `healthy[i]`, writing only what
    /// changed; ids past the list are removed. The flows of endpoints that left a `reset`
    /// service are forgotten by `reset_flows`, after.
    pub fn apply(&mut self, services: &[(L4Spec, BTreeSet<SocketAddr>)]) -> Result<()> {
        if services.len() > MAX_L4_SERVICES as usize {
            return Err(Error::Steering(format!(
                "{} L4 services; at most {MAX_L4_SERVICES}",
                services.len()
            )));
        }
        for id in services.len()..MAX_L4_SERVICES as usize {
            self.remove(id)?;
        }
        for (id, (spec, healthy)) in services.iter().enumerate() {
            self.set(id, spec, healthy)?;
        }
        Ok(())
    }

    /// Forgets what was written, so that the next `apply` writes every service whole: another
    /// process (a failed upgrade's) may have changed the maps meanwhile.
    pub fn forget_written(&mut self) {
        self.installed.iter_mut().for_each(|i| *i = None);
    }

    /// The Maglev table last written for service `id`.
    pub fn table(&self, id: usize) -> Option<&[u32]> {
        self.installed.get(id)?.as_ref().map(|i| i.table.as_slice())
    }

    fn set(&mut self, id: usize, spec: &L4Spec, healthy: &BTreeSet<SocketAddr>) -> Result<()> {
        if spec.endpoints.len() > MAX_L4_BACKENDS as usize {
            return Err(Error::Steering(format!(
                "L4 service {}: {} endpoints; at most {MAX_L4_BACKENDS}",
                spec.address,
                spec.endpoints.len()
            )));
        }
        if self.installed[id].as_ref().is_some_and(|i| i.spec == *spec && i.healthy == *healthy) {
            // Unchanged: one endpoint's health change rewrites only its own service (building a
            // Maglev table is the costly part of a write).
            return Ok(());
        }
        let key = spec.key()?;
        let id32 = id as u32;
        let previous = self.installed[id].take();
        if let Some(old) = &previous
            && old.spec.key()? != key
        {
            // Another service now: the old one's entry goes before anything is rewritten.
            self.remove_entry(&old.spec)?;
            self.resets.retain(|(service, _)| *service != id32);
        }
        let old_endpoints = previous.as_ref().map(|p| p.spec.endpoints.clone()).unwrap_or_default();
        for (index, endpoint) in spec.endpoints.iter().enumerate() {
            if old_endpoints.get(index) != Some(endpoint) {
                let value = backend(endpoint)?;
                self.backends_map
                    .set(id32 * MAX_L4_BACKENDS + index as u32, value, 0)
                    .map_err(map_error(lb_common::L4_BACKENDS_MAP))?;
            }
        }
        let table = table_for(spec, healthy);
        let old_table = previous.as_ref().map(|p| p.table.clone()).unwrap_or_else(|| vec![0; table.len()]);
        let base = id32 * MAGLEV_TABLE_SIZE;
        for (slot, value) in maglev::changed_slots(&old_table, &table) {
            self.maglev_map.set(base + slot, value, 0).map_err(map_error(lb_common::L4_MAGLEV_MAP))?;
        }
        // Endpoint slots past the new list are cleared once no table slot names them.
        for index in spec.endpoints.len()..old_endpoints.len() {
            self.backends_map
                .set(id32 * MAX_L4_BACKENDS + index as u32, L4Backend::default(), 0)
                .map_err(map_error(lb_common::L4_BACKENDS_MAP))?;
        }
        let settings = L4Service {
            snat: v4_words(spec.snat.octets()),
            idle_ns: u64::try_from(spec.idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            flags: L4_ACTIVE,
            _pad: 0,
        };
        self.settings_map.set(id32, settings, 0).map_err(map_error(lb_common::L4_SERVICES_MAP))?;
        self.services_map
            .insert(key, ServiceValue { id: id32, mode: MODE_L4 }, 0)
            .map_err(map_error(lb_common::SERVICES_MAP))?;
        // An endpoint back before its flows were forgotten keeps them (and those placed on it
        // since).
        self.resets.retain(|(service, endpoint)| *service != id32 || !healthy.contains(endpoint));
        if spec.reset_on_removal
            && let Some(old) = &previous
        {
            for &endpoint in old.healthy.difference(healthy) {
                if !self.resets.contains(&(id32, endpoint)) {
                    self.resets.push((id32, endpoint));
                }
            }
        }
        self.installed[id] = Some(Installed { spec: spec.clone(), healthy: healthy.clone(), table });
        Ok(())
    }

    fn remove(&mut self, id: usize) -> Result<()> {
        let Some(old) = self.installed[id].take() else { return Ok(()) };
        self.resets.retain(|(service, _)| *service != id as u32);
        self.remove_entry(&old.spec)?;
        self.settings_map
            .set(id as u32, L4Service::default(), 0)
            .map_err(map_error(lb_common::L4_SERVICES_MAP))?;
        let base = id as u32 * MAGLEV_TABLE_SIZE;
        for (slot, value) in maglev::changed_slots(&old.table, &vec![0; old.table.len()]) {
            self.maglev_map.set(base + slot, value, 0).map_err(map_error(lb_common::L4_MAGLEV_MAP))?;
        }
        Ok(())
    }

    fn remove_entry(&mut self, spec: &L4Spec) -> Result<()> {
        match self.services_map.remove(&spec.key()?) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error(lb_common::SERVICES_MAP)(e)),
        }
    }

    /// Whether flows of removed endpoints are still to be forgotten.
    pub fn resets_pending(&self) -> bool {
        !self.resets.is_empty()
    }

    /// Deletes the flows placed on the endpoints that left `reset` services: their next packet
    /// is placed again (a TCP endpoint that never saw the flow answers it with a reset). This
    /// walks the whole flows table (two system calls a flow, ~10 ms per 1,000 flows in a debug
    /// build), so it runs after the Maglev tables are written and stops, leaving the resets
    /// pending, as soon as `give_way` (asked every 256 flows) says something more urgent came:
    /// another endpoint's removal is not held behind it. Whether it finished.
    pub fn reset_flows(&mut self, mut give_way: impl FnMut() -> bool) -> Result<bool> {
        if self.resets.is_empty() {
            return Ok(true);
        }
        let mut targets: Vec<(u32, [u32; 4], u16)> = Vec::with_capacity(self.resets.len());
        for (service, endpoint) in &self.resets {
            let backend = backend(endpoint)?;
            targets.push((*service, backend.addr, backend.port));
        }
        let mut doomed = Vec::new();
        for (seen, entry) in self.flows_map.iter().enumerate() {
            if seen % 256 == 255 && give_way() {
                return Ok(false);
            }
            let Ok((key, flow)) = entry else { continue };
            if targets.contains(&(flow.service, flow.backend, flow.backend_port)) {
                doomed.push(key);
            }
        }
        for key in &doomed {
            let _ = self.flows_map.remove(key);
        }
        let endpoints: Vec<SocketAddr> = self.resets.drain(..).map(|(_, endpoint)| endpoint).collect();
        tracing::info!(flows = doomed.len(), ?endpoints, "l4: flows of removed endpoints reset");
        Ok(true)
    }
}

/// The kernel's form of an endpoint.
fn backend(endpoint: &SocketAddr) -> Result<L4Backend> {
    match endpoint.ip() {
        IpAddr::V4(v4) => Ok(L4Backend {
            addr: v4_words(v4.octets()),
            port: endpoint.port().to_be(),
            family: FAMILY_IPV4,
            _pad: 0,
        }),
        IpAddr::V6(_) => Err(Error::Steering(format!(
            "L4 endpoint {endpoint}: IPv6 endpoints are not balanced in XDP yet (family {FAMILY_IPV6})"
        ))),
    }
}

/// The Maglev table over the healthy endpoints; slot value = endpoint index + 1 (0 = empty).
/// An endpoint's identity is its address, so it keeps its permutation whatever its position.
fn table_for(spec: &L4Spec, healthy: &BTreeSet<SocketAddr>) -> Vec<u32> {
    let entries: Vec<maglev::MaglevEntry> = spec
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, endpoint)| healthy.contains(endpoint))
        .map(|(index, endpoint)| maglev::MaglevEntry {
            key: endpoint_key(endpoint),
            value: index as u32 + 1,
            weight: 1,
        })
        .collect();
    maglev::build_table(&entries, MAGLEV_TABLE_SIZE)
}

/// A stable 64-bit identity of an endpoint address (FNV-1a over its text).
fn endpoint_key(endpoint: &SocketAddr) -> u64 {
    endpoint
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The first IPv4 address of `interface`, for the default SNAT address.
pub fn interface_v4(interface: &str) -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string; ifa_addr points at a sockaddr whose
        // family says its real type.
        let (name, family) =
            unsafe { (std::ffi::CStr::from_ptr(entry.ifa_name), i32::from((*entry.ifa_addr).sa_family)) };
        if family == libc::AF_INET && name.to_bytes() == interface.as_bytes() {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let addr = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
            found = Some(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_agree_with_the_kernel_maps() {
        assert_eq!(crate::config::L4_ENDPOINTS_MAX, MAX_L4_BACKENDS as usize);
        assert_eq!(crate::config::L4_SERVICES_MAX, MAX_L4_SERVICES as usize);
        assert_eq!(crate::config::L4_SNAT_PORTS, lb_common::L4_SNAT_PORT_MIN..=lb_common::L4_SNAT_PORT_MAX);
    }

    fn spec(endpoints: &[&str]) -> L4Spec {
        L4Spec {
            address: "198.18.0.2:5432".parse().unwrap(),
            protocol: L4Protocol::Tcp,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            idle_timeout: Duration::from_secs(60),
            reset_on_removal: false,
            snat: Ipv4Addr::new(198, 18, 0, 2),
        }
    }

    #[test]
    fn tables_hold_only_healthy_endpoints_and_an_endpoint_keeps_its_slots_when_others_move() {
        let all = spec(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
        let healthy: BTreeSet<SocketAddr> = all.endpoints.iter().copied().collect();
        let table = table_for(&all, &healthy);
        let mut shares = [0usize; 4];
        for &slot in &table {
            shares[slot as usize] += 1;
        }
        assert_eq!(shares[0], 0, "no empty slot");
        for share in &shares[1..] {
            let fraction = *share as f64 / table.len() as f64;
            assert!((0.32..=0.35).contains(&fraction), "{shares:?}");
        }
        // The second endpoint fails: its slots move, and (Maglev's promise) almost no other.
        let fewer: BTreeSet<SocketAddr> =
            healthy.iter().copied().filter(|e| e.ip() != all.endpoints[1].ip()).collect();
        let after = table_for(&all, &fewer);
        assert!(after.iter().all(|&v| v != 2));
        let moved = table.iter().zip(&after).filter(|(a, b)| a != b && **a != 2).count();
        assert!(moved < table.len() / 1000, "{moved} slots of the endpoints that stayed moved");
        // The same endpoints listed in another order keep their slots (values follow the index).
        let reordered = spec(&["10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1"]);
        let again = table_for(&reordered, &healthy);
        let name = |spec: &L4Spec, v: u32| spec.endpoints[v as usize - 1];
        assert!(table.iter().zip(&again).all(|(&a, &b)| name(&all, a) == name(&reordered, b)));
        assert!(table_for(&all, &BTreeSet::new()).iter().all(|&v| v == 0));
    }

    #[test]
    fn ipv6_services_are_refused_with_a_reason() {
        let mut v6 = spec(&["[2001:db8::1]:1"]);
        v6.address = "[2001:db8::2]:5432".parse().unwrap();
        assert!(v6.key().unwrap_err().to_string().contains("IPv4 only"));
        assert!(backend(&"[2001:db8::1]:1".parse().unwrap()).is_err());
    }
}
