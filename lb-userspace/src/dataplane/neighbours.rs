//! Neighbour entries for the next hops of the L4 endpoints XDP sends to. `bpf_fib_lookup` only
//! answers with a resolved neighbour, and XDP never makes the kernel resolve one: a packet it
//! cannot send passes to the stack addressed to the node, which delivers it locally rather
//! than forwarding it. Without other traffic to the endpoint (a UDP service without a probe,
//! an endpoint on a router the checks do not cross) the fast path would never start. So each
//! endpoint's next hop gets a *managed* neighbour entry (`NTF_EXT_MANAGED`, Linux 5.16): the
//! kernel resolves it at once and keeps it resolved, as Cilium does for the same
//! reason. The entries Sluice adds carry its protocol tag (`NDA_PROTOCOL`), so which ones are
//! Sluice's is read back from the kernel on every change, as a reflector would: across restarts
//! and upgrades, those no endpoint needs any more are removed, and entries that existed before
//! (someone else's) are left as they are.

use std::{
    collections::BTreeSet,
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_PROTOCOL: u16 = 12;
const NDA_FLAGS_EXT: u16 = 15;
/// The protocol tag on Sluice's neighbour entries (`ip neigh show` prints `proto 83`): a value
/// iproute2's rt_protos leaves unassigned.
const SLUICE_PROTOCOL: u8 = 83;
const NTF_EXT_MANAGED: u32 = 0x01;
const NUD_NONE: u16 = 0;
const AF_INET: u8 = libc::AF_INET as u8;

/// Makes sure every endpoint's next hop has a neighbour entry the kernel keeps resolved, and
/// removes Sluice's entries that no endpoint needs now. Failures are logged: the fast path then
/// waits for other traffic to resolve the neighbour, as before.
pub fn sync(endpoints: impl IntoIterator<Item = Ipv4Addr>) {
    let netlink = match Netlink::open() {
        Ok(netlink) => netlink,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a netlink socket for the L4 endpoints' neighbours");
            return;
        }
    };
    let mut wanted = BTreeSet::new();
    for endpoint in endpoints {
        match netlink.next_hop(endpoint) {
            Ok(Some(hop)) => {
                wanted.insert(hop);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%endpoint, error = %e, "no route to an L4 endpoint"),
        }
    }
    let ours = match netlink.sluice_entries() {
        Ok(ours) => ours,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the neighbour table");
            return;
        }
    };
    for &(ifindex, addr) in wanted.difference(&ours) {
        if let Err(e) = netlink.add_managed(ifindex, addr) {
            tracing::warn!(next_hop = %addr, ifindex, error = %e, "cannot add a managed neighbour");
        }
    }
    for &(ifindex, addr) in ours.difference(&wanted) {
        if let Err(e) = netlink.delete(ifindex, addr) {
            tracing::debug!(next_hop = %addr, ifindex, error = %e, "removing a managed neighbour");
        }
    }
}

struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned by socket(2), owned by nothing else.
        Ok(Netlink(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The interface and next hop (gateway, or the address itself when on-link) of a unicast
    /// route to `dst`; `None` for a local or otherwise non-unicast destination.
    fn next_hop(&self, dst: Ipv4Addr) -> io::Result<Option<(u32, Ipv4Addr)>> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut body = vec![AF_INET, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        attribute(&mut body, RTA_DST, &dst.octets());
        let reply = self.exchange(RTM_GETROUTE, NLM_F_REQUEST, &body)?;
        let Some((_, route)) = reply.into_iter().find(|(kind, _)| *kind == RTM_NEWROUTE) else {
            return Ok(None);
        };
        if route.len() < 12 || route[7] != RTN_UNICAST {
            return Ok(None);
        }
        let (mut oif, mut gateway) = (None, None);
        for (kind, value) in attributes(&route[12..]) {
            match (kind, value.len()) {
                (RTA_OIF, 4) => oif = Some(u32::from_ne_bytes(value.try_into().expect("4 bytes"))),
                (RTA_GATEWAY, 4) => gateway = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3])),
                _ => {}
            }
        }
        Ok(oif.map(|oif| (oif, gateway.unwrap_or(dst))))
    }

    /// Creates a managed entry tagged as Sluice's; the kernel starts resolving a managed entry
    /// at once (as for `NTF_USE`, which must not be sent after it: an update without the
    /// managed flag clears it). An entry that exists already (someone else's) is left alone.
    fn add_managed(&self, ifindex: u32, addr: Ipv4Addr) -> io::Result<()> {
        let mut body = ndmsg(ifindex);
        attribute(&mut body, NDA_DST, &addr.octets());
        attribute(&mut body, NDA_PROTOCOL, &[SLUICE_PROTOCOL]);
        attribute(&mut body, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        match self.exchange(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// The IPv4 neighbour entries tagged as Sluice's, by (interface index, address).
    fn sluice_entries(&self) -> io::Result<BTreeSet<(u32, Ipv4Addr)>> {
        let messages = self.exchange(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, &ndmsg(0))?;
        let mut ours = BTreeSet::new();
        for (kind, body) in messages {
            if kind != RTM_NEWNEIGH || body.len() < 12 || body[0] != AF_INET {
                continue;
            }
            let ifindex = u32::from_ne_bytes(body[4..8].try_into().expect("4 bytes"));
            let (mut dst, mut protocol) = (None, None);
            for (attr, value) in attributes(&body[12..]) {
                match (attr, value.len()) {
                    (NDA_DST, 4) => dst = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3])),
                    (NDA_PROTOCOL, 1) => protocol = Some(value[0]),
                    _ => {}
                }
            }
            if let (Some(dst), Some(SLUICE_PROTOCOL)) = (dst, protocol) {
                ours.insert((ifindex, dst));
            }
        }
        Ok(ours)
    }

    fn delete(&self, ifindex: u32, addr: Ipv4Addr) -> io::Result<()> {
        let mut body = ndmsg(ifindex);
        attribute(&mut body, NDA_DST, &addr.octets());
        self.exchange(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, &body).map(|_| ())
    }

    /// Sends one request and reads its answer: the messages before the acknowledgement or the
    /// end of a dump, or the one reply of a route lookup; the kernel's error as an `io::Error`.
    fn exchange(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        const SEQ: u32 = 1;
        let mut message = Vec::with_capacity(16 + body.len());
        message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&SEQ.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        let fd = self.0.as_raw_fd();
        // SAFETY: the kernel address (all zero but the family) is a valid sockaddr_nl.
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` and `kernel` outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                fd,
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const kernel).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > rest.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a truncated netlink message"));
                }
                let payload = &rest[16..len];
                if seq == SEQ {
                    match kind {
                        NLMSG_ERROR if payload.len() >= 4 => {
                            let errno = -i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
                            return if errno == 0 {
                                Ok(answer)
                            } else {
                                Err(io::Error::from_raw_os_error(errno))
                            };
                        }
                        NLMSG_DONE => return Ok(answer),
                        RTM_NEWROUTE => return Ok(vec![(kind, payload.to_vec())]),
                        _ => answer.push((kind, payload.to_vec())),
                    }
                }
                rest = &rest[align(len).min(rest.len())..];
            }
        }
    }
}

/// struct ndmsg: family, three pad bytes, the interface index, state, flags, type.
fn ndmsg(ifindex: u32) -> Vec<u8> {
    let mut body = vec![AF_INET, 0, 0, 0];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&NUD_NONE.to_ne_bytes());
    body.extend_from_slice(&[0, 0]);
    body
}

fn attribute(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(value);
    body.resize(align(body.len()), 0);
}

/// The (type, value) attributes of a netlink message body, stopping at a malformed one.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((kind, value))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let mut body = Vec::new();
        attribute(&mut body, RTA_DST, &[10, 0, 0, 1]);
        attribute(&mut body, 7, &[1, 2, 3]);
        attribute(&mut body, RTA_OIF, &5u32.to_ne_bytes());
        assert_eq!(body.len(), 8 + 8 + 8);
        let read: Vec<(u16, Vec<u8>)> = attributes(&body).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            read,
            vec![(RTA_DST, vec![10, 0, 0, 1]), (7, vec![1, 2, 3]), (RTA_OIF, 5u32.to_ne_bytes().to_vec())]
        );
        // A length past the end stops the walk instead of reading out of bounds.
        let mut bad = body.clone();
        bad[8] = 200;
        assert_eq!(attributes(&bad).count(), 1);
    }

    #[test]
    fn the_loopback_address_has_no_unicast_next_hop() {
        // A local destination is no neighbour to manage (route type local, not unicast).
        let netlink = Netlink::open().unwrap();
        assert_eq!(netlink.next_hop(Ipv4Addr::LOCALHOST).unwrap(), None);
    }
}
