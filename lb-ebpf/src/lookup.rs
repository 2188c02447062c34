//! Choosing the worker for a service packet: conntrack first, the Maglev table for new flows.

use lb_common::{
    FlowKey, FlowValue, MAGLEV_TABLE_SIZE, MAX_SERVICES, MAX_WORKERS, ServiceKey, ServiceValue, Stat,
};

use crate::{
    maps::{SLUICE_CONNTRACK, SLUICE_MAGLEV, SLUICE_SERVICES, SLUICE_WORKERS},
    parse::Flow,
    stats,
};

/// The service a flow is addressed to, if any: an exact address match first, then the
/// family's wildcard (a service on `0.0.0.0` or `::`, all-zero address in the key).
#[inline(always)]
pub fn service(flow: &Flow) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr: flow.key.dst,
        port: flow.key.dport,
        proto: flow.key.proto,
        family: flow.key.family,
    };
    let value = match SLUICE_SERVICES.get_ptr(&key) {
        Some(value) => value,
        None => {
            key.addr = [0; 4];
            SLUICE_SERVICES.get_ptr(&key)?
        }
    };
    // SAFETY: the value is copied out at once; user space replaces entries whole.
    Some(unsafe { *value })
}

/// The worker listener port (wire bytes) for this flow, or the drop reason.
///
/// A TCP SYN is always placed through the Maglev table, even when a conntrack entry exists: a
/// new connection that reuses an old 5-tuple must not follow it to a worker that has since been
/// taken out. Every other packet follows its conntrack entry, so established connections stay
/// where they are whatever the table says now.
#[inline(always)]
pub fn worker_port(flow: &Flow, service: &ServiceValue) -> Result<u16, Stat> {
    if !flow.syn {
        if let Some(entry) = SLUICE_CONNTRACK.get_ptr(&flow.key) {
            stats::count(Stat::ConntrackHits);
            // SAFETY: copied out at once; an LRU entry may be recycled concurrently, and a
            // torn read could at worst pick another worker's port, never an invalid address.
            return Ok(unsafe { (*entry).worker_port });
        }
    }
    if service.id >= MAX_SERVICES {
        return Err(Stat::DropBadWorker);
    }
    let slot = flow_hash(&flow.key) % MAGLEV_TABLE_SIZE;
    let chosen = match SLUICE_MAGLEV.get(service.id * MAGLEV_TABLE_SIZE + slot) {
        Some(&value) if value != 0 => value - 1,
        _ => return Err(Stat::DropNoWorker),
    };
    if chosen >= MAX_WORKERS {
        return Err(Stat::DropBadWorker);
    }
    let port = match SLUICE_WORKERS.get(service.id * MAX_WORKERS + chosen) {
        Some(worker) if worker.port != 0 => worker.port,
        _ => return Err(Stat::DropBadWorker),
    };
    stats::count(Stat::NewFlows);
    let entry = FlowValue { service: service.id, worker: chosen, worker_port: port, _pad: 0 };
    if SLUICE_CONNTRACK.insert(&flow.key, &entry, 0).is_err() {
        stats::count(Stat::ConntrackInsertFailed);
    }
    Ok(port)
}

/// Murmur3-style mix of the client address, both ports and the protocol. The service address
/// is the same for every flow of a service, so it adds nothing.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h: u32 = 0x5eed_1ce5;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
    h = mix(h, u32::from(key.proto));
    // Final avalanche so that neighbouring source ports land far apart.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}
