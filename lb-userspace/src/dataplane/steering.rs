//! The steering tables as user space owns them: services, the workers of each service, the
//! Maglev lookup tables and the reverse (worker port -> service port) table. Every write to
//! those maps happens here, from one owner, with only changed Maglev slots written.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, MAGLEV_TABLE_SIZE, MAX_SERVICES, MAX_WORKERS, MODE_STEER, PROTO_TCP, PROTO_UDP,
    ReverseKey, ReverseValue, ServiceKey, ServiceValue, WORKER_DOWN, WORKER_UP, WorkerValue,
};

use super::{Error, Result, map_error};
use crate::maglev;

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

/// A service XDP steers: packets to `addr:port` over `protocol` are spread over the workers.
/// An unspecified address (`0.0.0.0` or `::`) matches every local address of that family, as a
/// listener bound to it would; `::` also covers IPv4, like a dual-stack socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Listener port of each worker for this service, indexed by worker id.
    pub worker_ports: Vec<u16>,
}

impl Service {
    /// The map keys this service occupies (two for a dual-stack wildcard).
    fn keys(&self) -> Vec<ServiceKey> {
        let key = |addr: [u32; 4], family| ServiceKey {
            addr,
            port: self.port.to_be(),
            proto: self.protocol.number(),
            family,
        };
        match self.addr {
            IpAddr::V4(v4) => vec![key(v4_words(v4.octets()), FAMILY_IPV4)],
            IpAddr::V6(v6) if v6.is_unspecified() => {
                vec![key([0; 4], FAMILY_IPV6), key([0; 4], FAMILY_IPV4)]
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => vec![key(v4_words(v4.octets()), FAMILY_IPV4)],
                None => vec![key(v6_words(v6.octets()), FAMILY_IPV6)],
            },
        }
    }
}

/// An IPv4 address as the kernel compares it: wire bytes in the first word.
pub fn v4_words(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// An IPv6 address as the kernel compares it: wire bytes, four words.
pub fn v6_words(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The steering maps and what user space last wrote to them.
pub struct Steering {
    services_map: HashMap<MapData, ServiceKey, ServiceValue>,
    workers_map: Array<MapData, WorkerValue>,
    maglev_map: Array<MapData, u32>,
    reverse_map: HashMap<MapData, ReverseKey, ReverseValue>,
    services: Vec<Service>,
    /// The Maglev table last written for each service, by service id.
    tables: Vec<Vec<u32>>,
    healthy: BTreeSet<u32>,
}

impl Steering {
    pub(super) fn new(
        services_map: HashMap<MapData, ServiceKey, ServiceValue>,
        workers_map: Array<MapData, WorkerValue>,
        maglev_map: Array<MapData, u32>,
        reverse_map: HashMap<MapData, ReverseKey, ReverseValue>,
    ) -> Steering {
        Steering {
            services_map,
            workers_map,
            maglev_map,
            reverse_map,
            services: Vec::new(),
            tables: Vec::new(),
            healthy: BTreeSet::new(),
        }
    }

    /// Installs `services`, each steered across its workers, with every worker healthy. Tables
    /// are written before the service entry, so the kernel never sees a service without one.
    /// Replacing an installed set is not supported yet: configuration reload comes with the
    /// standalone provider.
    pub fn install(&mut self, services: Vec<Service>) -> Result<()> {
        if !self.services.is_empty() {
            return Err(Error::Steering("services are already installed".into()));
        }
        if services.len() > MAX_SERVICES as usize {
            return Err(Error::Steering(format!("{} services; at most {MAX_SERVICES}", services.len())));
        }
        let workers = services.iter().map(|s| s.worker_ports.len()).max().unwrap_or(0);
        if workers > MAX_WORKERS as usize {
            return Err(Error::Steering(format!("{workers} workers; at most {MAX_WORKERS}")));
        }
        let mut reverse_seen = BTreeSet::new();
        for service in &services {
            for &port in &service.worker_ports {
                if port == 0 || !reverse_seen.insert((port, service.protocol)) {
                    return Err(Error::Steering(format!(
                        "worker port {port} is zero or used twice; every worker of every service needs its own port"
                    )));
                }
            }
        }
        self.healthy = (0..workers as u32).collect();
        for (id, service) in services.iter().enumerate() {
            let id = id as u32;
            for (worker, &port) in service.worker_ports.iter().enumerate() {
                let value = WorkerValue { port: port.to_be(), _pad: 0, state: WORKER_UP };
                self.workers_map
                    .set(id * MAX_WORKERS + worker as u32, value, 0)
                    .map_err(map_error(lb_common::WORKERS_MAP))?;
                let key = ReverseKey { worker_port: port.to_be(), proto: service.protocol.number(), _pad: 0 };
                let value = ReverseValue { service_port: service.port.to_be(), _pad: 0, service: id };
                self.reverse_map.insert(key, value, 0).map_err(map_error(lb_common::REVERSE_MAP))?;
            }
            let table = table_for(service, &self.healthy);
            write_slots(&mut self.maglev_map, id, &vec![0; table.len()], &table)?;
            self.tables.push(table);
            for key in service.keys() {
                self.services_map
                    .insert(key, ServiceValue { id, mode: MODE_STEER }, 0)
                    .map_err(map_error(lb_common::SERVICES_MAP))?;
            }
        }
        self.services = services;
        Ok(())
    }

    /// The workers currently in the Maglev tables.
    pub fn healthy(&self) -> &BTreeSet<u32> {
        &self.healthy
    }

    /// Rebuilds every service's table from `healthy` and writes only the slots that changed.
    /// Flows already in conntrack keep their worker; only new flows see the new table.
    pub fn set_healthy(&mut self, healthy: BTreeSet<u32>) -> Result<()> {
        if healthy == self.healthy {
            return Ok(());
        }
        for (id, service) in self.services.iter().enumerate() {
            let id = id as u32;
            for worker in 0..service.worker_ports.len() as u32 {
                let state = if healthy.contains(&worker) { WORKER_UP } else { WORKER_DOWN };
                let port = service.worker_ports[worker as usize].to_be();
                self.workers_map
                    .set(id * MAX_WORKERS + worker, WorkerValue { port, _pad: 0, state }, 0)
                    .map_err(map_error(lb_common::WORKERS_MAP))?;
            }
            let table = table_for(service, &healthy);
            write_slots(&mut self.maglev_map, id, &self.tables[id as usize], &table)?;
            self.tables[id as usize] = table;
        }
        self.healthy = healthy;
        Ok(())
    }

    /// Writes the worker states and every Maglev slot again, whatever was written last: after
    /// a failed upgrade, the process that failed may have written tables of its own.
    pub fn rewrite(&mut self) -> Result<()> {
        let healthy = std::mem::take(&mut self.healthy);
        // No real slot holds u32::MAX and no real set holds worker u32::MAX: every slot and
        // every worker entry differs from what "was written", so all of them are written.
        for table in &mut self.tables {
            table.fill(u32::MAX);
        }
        self.healthy = BTreeSet::from([u32::MAX]);
        self.set_healthy(healthy)
    }

    /// The Maglev table last written for service `id`.
    pub fn table(&self, id: usize) -> Option<&[u32]> {
        self.tables.get(id).map(Vec::as_slice)
    }
}

/// The table for `service` over its healthy workers; slot value = worker id + 1 (0 = empty).
fn table_for(service: &Service, healthy: &BTreeSet<u32>) -> Vec<u32> {
    let entries: Vec<maglev::MaglevEntry> = (0..service.worker_ports.len() as u32)
        .filter(|worker| healthy.contains(worker))
        // The worker id is its identity: it keeps its permutation across rebuilds.
        .map(|worker| maglev::MaglevEntry { key: u64::from(worker), value: worker + 1, weight: 1 })
        .collect();
    maglev::build_table(&entries, MAGLEV_TABLE_SIZE)
}

fn write_slots(map: &mut Array<MapData, u32>, service: u32, old: &[u32], new: &[u32]) -> Result<()> {
    let base = service * MAGLEV_TABLE_SIZE;
    for (slot, value) in maglev::changed_slots(old, new) {
        map.set(base + slot, value, 0).map_err(map_error(lb_common::MAGLEV_MAP))?;
    }
    Ok(())
}
