//! Pinning the kernel side under bpffs so a new binary can take it over: every map of the
//! object and the XDP and TC links of each interface live in one directory per instance
//! (`<bpffs>/sluice/<instance>/`). A process started as an upgrade loads its own object with
//! those maps reused (conntrack, counters and tables carry over) and swaps its programs into
//! the pinned links with `bpf_link_update`, so the interfaces never go without a program. The
//! process that owns the pins removes them when it stops for good; one that handed over leaves
//! them to its successor.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use lb_common::{CONNTRACK_MAP, FlowKey, FlowValue};

use super::{Attachment, Error, Result};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where an instance keeps its pins, and whether this process takes them over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinOptions {
    /// `<bpffs>/sluice/<instance>`.
    pub dir: PathBuf,
    /// Reuse what is pinned there (an upgrade); otherwise stale pins are removed first.
    pub inherit: bool,
}

impl PinOptions {
    pub fn new(bpffs: &Path, instance: &str, inherit: bool) -> PinOptions {
        PinOptions { dir: instance_dir(bpffs, instance), inherit }
    }
}

/// The pin directory of `instance` under the bpffs mount `bpffs`.
pub fn instance_dir(bpffs: &Path, instance: &str) -> PathBuf {
    bpffs.join("sluice").join(instance)
}

/// Mounts bpffs on `bpffs` when something else is there (as Cilium does), so pins survive the
/// process; in a container, mount the host's `/sys/fs/bpf` instead so they survive the pod.
pub fn ensure_bpffs(bpffs: &Path) -> Result<()> {
    let pin_error = |what: String| Error::Pin(what);
    std::fs::create_dir_all(bpffs)
        .map_err(|e| pin_error(format!("cannot create {}: {e}", bpffs.display())))?;
    let path = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes())
        .map_err(|_| pin_error(format!("{} is not a path", bpffs.display())))?;
    // SAFETY: a zeroed statfs is a valid value for the kernel to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the struct we own; the path is NUL-terminated.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(pin_error(format!("statfs {}: {}", bpffs.display(), io::Error::last_os_error())));
    }
    if stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = c"bpf";
    // SAFETY: every argument is a NUL-terminated string that outlives the call.
    if unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(pin_error(format!(
            "{} is not bpffs and mounting it failed: {}; mount it (`mount -t bpf bpf {}`) or pass --bpffs",
            bpffs.display(),
            io::Error::last_os_error(),
            bpffs.display()
        )));
    }
    Ok(())
}

/// Removes every pin in `dir` and the directory: unpinning a link nobody else holds detaches
/// its program. Returns how many pins there were (0 when the directory does not exist).
pub fn clear(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        std::fs::remove_file(entry?.path())?;
        removed += 1;
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}

/// The names of the object's maps (not its `.data`-style sections), each pinned by that name.
pub(super) fn map_names(object: &[u8]) -> Result<Vec<String>> {
    let object =
        aya_obj::Object::parse(object).map_err(|e| Error::Pin(format!("parsing the object: {e}")))?;
    let mut names: Vec<String> = object.maps.into_keys().filter(|name| !name.starts_with('.')).collect();
    names.sort();
    Ok(names)
}

/// Refuses to reuse pinned maps whose shape differs from this object's map of the same name:
/// aya reuses a pin by its path without looking, and a program whose map changed its key or
/// value would read and write another layout. Such an upgrade fails before anything is
/// touched, the old process keeps serving, and a restart (which creates the maps afresh) is
/// the way to that binary. One growth is let through: a stats array with fewer counters than
/// this binary's (a release that added counters). Its program finds no slot for the new ones
/// (an array lookup past the end gives nothing, which every counter update checks), so they
/// read 0 until a restart, and the upgrade keeps every connection.
pub(super) fn check_pins_match(dir: &Path, object: &[u8]) -> Result<()> {
    let object =
        aya_obj::Object::parse(object).map_err(|e| Error::Pin(format!("parsing the object: {e}")))?;
    for (name, map) in object.maps.iter().filter(|(name, _)| !name.starts_with('.')) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| Error::Pin(format!("reading the pinned map {}: {e}", path.display())))?;
        let shapes = [
            MapShape { key: pinned.key_size(), value: pinned.value_size(), entries: pinned.max_entries() },
            MapShape { key: map.key_size(), value: map.value_size(), entries: map.max_entries() },
        ];
        if let Some(why) = shape_mismatch(name, shapes) {
            return Err(Error::Pin(why));
        }
        if shapes[0] != shapes[1] {
            tracing::warn!(
                map = %name,
                pinned = shapes[0].entries,
                ours = shapes[1].entries,
                "the pinned stats array has fewer counters than this binary's: the new ones read 0 until a restart"
            );
        }
    }
    Ok(())
}

/// A map's key and value sizes in bytes and its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MapShape {
    key: u32,
    value: u32,
    entries: u32,
}

/// Why the pinned map (first) cannot serve as this object's (second), if it cannot.
fn shape_mismatch(name: &str, [pinned, ours]: [MapShape; 2]) -> Option<String> {
    let fewer_counters = name == lb_common::STATS_MAP
        && (pinned.key, pinned.value) == (ours.key, ours.value)
        && pinned.entries < ours.entries;
    (pinned != ours && !fewer_counters).then(|| {
        format!(
            "the pinned map {name} (key {} B, value {} B, {} entries) differs from this binary's (key {} B, value {} B, {} entries); an upgrade cannot carry it over: restart the instance to run this binary",
            pinned.key, pinned.value, pinned.entries, ours.key, ours.value, ours.entries
        )
    })
}

/// Pin file names: bpffs refuses dots, which interface names may hold (VLANs).
fn link_pin(dir: &Path, kind: &str, interface: &str, mode: aya::programs::XdpMode) -> PathBuf {
    let mode = match mode {
        aya::programs::XdpMode::Driver => "drv",
        aya::programs::XdpMode::Hardware => "hw",
        _ => "skb",
    };
    dir.join(format!("link_{kind}_{}_{mode}", interface.replace('.', "_")))
}

/// The XDP and TC links of one interface, pinned.
pub(super) struct PinnedPair {
    pub attachment: Attachment,
    xdp: FdLink,
    tc: FdLink,
    paths: [PathBuf; 2],
}

impl PinnedPair {
    /// Pins freshly made links.
    pub fn pin(
        dir: &Path,
        attachment: Attachment,
        xdp: XdpLink,
        tc: SchedClassifierLink,
    ) -> Result<PinnedPair> {
        let PinnedPair { attachment, xdp, tc, paths } = PinnedPair::adopted(dir, attachment, xdp, tc)?;
        let pin_error =
            |e: aya::pin::PinError| Error::Pin(format!("pinning the links of {}: {e}", attachment.interface));
        let xdp: FdLink = xdp.pin(&paths[0]).map_err(pin_error)?.into();
        let tc: FdLink = tc.pin(&paths[1]).map_err(pin_error)?.into();
        Ok(PinnedPair { attachment, xdp, tc, paths })
    }

    /// The links an earlier process pinned for `interface`, if any: `(xdp, tc, mode)`.
    pub fn find(
        dir: &Path,
        interface: &str,
    ) -> Option<(XdpLink, SchedClassifierLink, aya::programs::XdpMode)> {
        use aya::programs::XdpMode;
        [XdpMode::Driver, XdpMode::Skb, XdpMode::Hardware].into_iter().find_map(|mode| {
            let xdp: FdLink = PinnedLink::from_pin(link_pin(dir, "xdp", interface, mode)).ok()?.into();
            let tc: FdLink = PinnedLink::from_pin(link_pin(dir, "tc", interface, mode)).ok()?.into();
            Some((XdpLink::try_from(xdp).ok()?, SchedClassifierLink::try_from(tc).ok()?, mode))
        })
    }

    /// Wraps links adopted from pins (already pinned at their paths); `pin` starts from it.
    pub fn adopted(
        dir: &Path,
        attachment: Attachment,
        xdp: XdpLink,
        tc: SchedClassifierLink,
    ) -> Result<PinnedPair> {
        let xdp = FdLink::try_from(xdp).map_err(|e| not_a_bpf_link("XDP", &attachment.interface, e))?;
        let tc = FdLink::try_from(tc).map_err(|e| not_a_bpf_link("TC", &attachment.interface, e))?;
        let paths = [
            link_pin(dir, "xdp", &attachment.interface, attachment.mode),
            link_pin(dir, "tc", &attachment.interface, attachment.mode),
        ];
        Ok(PinnedPair { attachment, xdp, tc, paths })
    }

    /// Unpins and closes: the programs detach (unless another process still holds the links).
    pub fn detach(self) -> io::Result<()> {
        for path in &self.paths {
            std::fs::remove_file(path)?;
        }
        drop((self.xdp, self.tc));
        Ok(())
    }
}

fn not_a_bpf_link(kind: &str, interface: &str, e: aya::programs::links::LinkError) -> Error {
    Error::Pin(format!(
        "the {kind} attachment on {interface} is not a bpf_link ({e}); upgrades need a kernel with XDP links (5.9) and TCX (6.6)"
    ))
}

/// Every conntrack entry in an instance's pinned map: for operators and the upgrade test.
pub fn pinned_flows(dir: &Path) -> Result<Vec<(FlowKey, FlowValue)>> {
    let map_error = |source| Error::Map { name: CONNTRACK_MAP, source };
    let data = MapData::from_pin(dir.join(CONNTRACK_MAP)).map_err(map_error)?;
    let conntrack = HashMap::<_, FlowKey, FlowValue>::try_from(Map::LruHashMap(data)).map_err(map_error)?;
    conntrack.iter().map(|entry| entry.map_err(map_error)).collect()
}

/// The kernel id of a pinned map (the same id before and after an upgrade means it was reused).
pub fn pinned_map_id(dir: &Path, name: &'static str) -> Result<u32> {
    let map_error = |source| Error::Map { name, source };
    let data = MapData::from_pin(dir.join(name)).map_err(map_error)?;
    Ok(data.info().map_err(map_error)?.id())
}

#[cfg(test)]
mod tests {
    use super::{MapShape, shape_mismatch};

    #[test]
    fn a_pinned_map_of_another_shape_is_refused_by_name() {
        let stats = |entries| MapShape { key: 4, value: 8, entries };
        assert_eq!(shape_mismatch("SLUICE_STATS", [stats(22), stats(22)]), None);
        // A release that added counters (the guard's took the array from 18 to 22) upgrades.
        assert_eq!(shape_mismatch("SLUICE_STATS", [stats(18), stats(22)]), None);
        // One that removed some would count into slots that no longer exist.
        let why = shape_mismatch("SLUICE_STATS", [stats(29), stats(22)]).unwrap();
        assert!(
            why.contains("SLUICE_STATS") && why.contains("29 entries") && why.contains("22 entries"),
            "{why}"
        );
        assert!(why.contains("restart the instance"), "{why}");
        let wider = MapShape { key: 4, value: 16, entries: 29 };
        assert!(shape_mismatch("SLUICE_STATS", [stats(22), wider]).is_some(), "another counter size");
        let table = |entries| MapShape { key: 4, value: 4, entries };
        assert!(
            shape_mismatch("SLUICE_MAGLEV", [table(100), table(200)]).is_some(),
            "only the stats may grow"
        );
        let flow = |value| MapShape { key: 16, value, entries: 65536 };
        assert!(shape_mismatch("SLUICE_CONNTRACK", [flow(8), flow(12)]).is_some(), "a value layout change");
    }
}
