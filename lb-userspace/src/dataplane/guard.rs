//! The XDP guard's maps as user space owns them: the deny and allow tries and the settings
//! slot. A new `xdp.guard` is applied as a diff, in an order that never leaves a list empty
//! or half-active: new networks are inserted first, then the settings (which lists are active,
//! the rate limits) are written, then networks no longer listed are removed. While a reload is
//! being applied a source may briefly be judged by the union of the old and new entries of a
//! list, never by an empty one. Established flows are untouched: the kernel only judges
//! connection openings and UDP datagrams.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, GUARD_ALLOW, GUARD_ALLOW_MAP, GUARD_CONFIG_MAP, GUARD_DENY, GUARD_DENY_MAP,
    GuardCidr, GuardConfig, RateLimit,
};

use super::{Result, map_error};
use crate::config::{Cidr, GuardRateLimit, XdpGuardConfig};

/// One list entry as the trie holds it: the prefix length (family word included) and the data.
type Entry = (u32, GuardCidr);

/// What one `apply` changed, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardChanges {
    pub added: usize,
    pub removed: usize,
}

/// The guard maps and what user space last wrote to them.
pub struct Guard {
    config_map: Array<MapData, GuardConfig>,
    deny_map: LpmTrie<MapData, GuardCidr, u32>,
    allow_map: LpmTrie<MapData, GuardCidr, u32>,
    deny: BTreeSet<Entry>,
    allow: BTreeSet<Entry>,
    config: GuardConfig,
}

impl Guard {
    /// A handle on the maps that knows what they hold now, so the next `apply` is a diff
    /// against the kernel's state, whoever wrote it: an upgraded process reuses the pinned
    /// maps (`dataplane::pin`), and its first apply removes what its configuration no longer
    /// lists.
    pub(super) fn new(
        config_map: Array<MapData, GuardConfig>,
        deny_map: LpmTrie<MapData, GuardCidr, u32>,
        allow_map: LpmTrie<MapData, GuardCidr, u32>,
    ) -> Result<Guard> {
        let entries = |map: &LpmTrie<MapData, GuardCidr, u32>, name| -> Result<BTreeSet<Entry>> {
            map.keys().map(|key| key.map(|k| (k.prefix_len(), k.data())).map_err(map_error(name))).collect()
        };
        let deny = entries(&deny_map, GUARD_DENY_MAP)?;
        let allow = entries(&allow_map, GUARD_ALLOW_MAP)?;
        let config = config_map.get(&0, 0).map_err(map_error(GUARD_CONFIG_MAP))?;
        Ok(Guard { config_map, deny_map, allow_map, deny, allow, config })
    }

    /// Makes the kernel enforce `settings`, writing only what changed (see the module comment
    /// for the order). On an error the maps hold a mix of old and new entries and this value
    /// knows which: the next `apply` converges.
    pub fn apply(&mut self, settings: &XdpGuardConfig) -> Result<GuardChanges> {
        let deny: BTreeSet<Entry> = settings.deny.iter().map(entry).collect();
        let allow: BTreeSet<Entry> = settings.allow.iter().map(entry).collect();
        let mut changes = GuardChanges::default();
        for (map, name, installed, wanted) in [
            (&mut self.deny_map, GUARD_DENY_MAP, &mut self.deny, &deny),
            (&mut self.allow_map, GUARD_ALLOW_MAP, &mut self.allow, &allow),
        ] {
            let added: Vec<Entry> = wanted.difference(installed).copied().collect();
            for (prefix_len, data) in added {
                map.insert(&Key::new(prefix_len, data), 1, 0).map_err(map_error(name))?;
                installed.insert((prefix_len, data));
                changes.added += 1;
            }
        }
        let config = GuardConfig {
            flags: if deny.is_empty() { 0 } else { GUARD_DENY }
                | if allow.is_empty() { 0 } else { GUARD_ALLOW },
            _pad: 0,
            syn: rate_limit(settings.syn_rate_limit),
            udp: rate_limit(settings.udp_rate_limit),
        };
        if config != self.config {
            self.config_map.set(0, config, 0).map_err(map_error(GUARD_CONFIG_MAP))?;
            self.config = config;
        }
        for (map, name, installed, wanted) in [
            (&mut self.deny_map, GUARD_DENY_MAP, &mut self.deny, &deny),
            (&mut self.allow_map, GUARD_ALLOW_MAP, &mut self.allow, &allow),
        ] {
            let removed: Vec<Entry> = installed.difference(wanted).copied().collect();
            for (prefix_len, data) in removed {
                map.remove(&Key::new(prefix_len, data)).map_err(map_error(name))?;
                installed.remove(&(prefix_len, data));
                changes.removed += 1;
            }
        }
        Ok(changes)
    }

    /// The settings slot as last written.
    pub fn config(&self) -> GuardConfig {
        self.config
    }
}

/// The trie entry for `cidr`, bits past the prefix cleared so that `10.1.2.3/8` and
/// `10.0.0.0/8` are one entry.
fn entry(cidr: &Cidr) -> Entry {
    let prefix = u32::from(cidr.prefix());
    match cidr.network() {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            let network = (u32::from(v4) & mask).to_be_bytes();
            (
                32 + prefix,
                GuardCidr { family: u32::from(FAMILY_IPV4), addr: super::steering::v4_words(network) },
            )
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            let network = (u128::from(v6) & mask).to_be_bytes();
            (
                32 + prefix,
                GuardCidr { family: u32::from(FAMILY_IPV6), addr: super::steering::v6_words(network) },
            )
        }
    }
}

/// The kernel's form of a rate limit: nanoseconds per packet and the burst's worth of them.
fn rate_limit(limit: Option<GuardRateLimit>) -> RateLimit {
    match limit {
        Some(GuardRateLimit { per_second, burst }) if per_second > 0 => {
            // Rounded up, so the sustained rate never exceeds `per_second`.
            let interval_ns = 1_000_000_000u64.div_ceil(per_second);
            RateLimit { interval_ns, limit_ns: interval_ns.saturating_mul(burst.max(1)) }
        }
        _ => RateLimit::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn list_sizes_agree_with_the_kernel_maps() {
        assert_eq!(crate::config::GUARD_LIST_MAX, lb_common::GUARD_CIDRS as usize);
    }

    #[test]
    fn entries_cover_the_family_word_and_clear_host_bits() {
        assert_eq!(entry(&cidr("10.1.2.3/8")), entry(&cidr("10.0.0.0/8")));
        let (bits, data) = entry(&cidr("10.0.0.0/8"));
        assert_eq!(bits, 40);
        assert_eq!(data, GuardCidr { family: 4, addr: [u32::from_ne_bytes([10, 0, 0, 0]), 0, 0, 0] });
        let (bits, data) = entry(&cidr("2001:db8::1/32"));
        assert_eq!(bits, 64);
        assert_eq!(data.family, 6);
        assert_eq!(data.addr, [u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]), 0, 0, 0]);
        // Everything of one family, and only of that family.
        assert_eq!(entry(&cidr("0.0.0.0/0")), (32, GuardCidr { family: 4, addr: [0; 4] }));
        assert_eq!(entry(&cidr("::/0")), (32, GuardCidr { family: 6, addr: [0; 4] }));
        assert_eq!(entry(&cidr("192.0.2.7")).0, 64);
        assert_eq!(entry(&cidr("2001:db8::7")).0, 160);
    }

    #[test]
    fn rate_limits_become_intervals_and_bursts() {
        assert_eq!(rate_limit(None), RateLimit::default());
        let limit = rate_limit(Some(GuardRateLimit { per_second: 100, burst: 20 }));
        assert_eq!(limit, RateLimit { interval_ns: 10_000_000, limit_ns: 200_000_000 });
        // 3 per second: 333,333,334 ns each, never faster than asked.
        assert_eq!(rate_limit(Some(GuardRateLimit { per_second: 3, burst: 1 })).interval_ns, 333_333_334);
        assert_eq!(rate_limit(Some(GuardRateLimit { per_second: 1_000_000_000, burst: 1 })).interval_ns, 1);
    }
}
