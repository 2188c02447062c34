//! Builds the kernel programs (`lb-ebpf`) with the nightly toolchain into `OUT_DIR`, so the
//! `sluice` binary embeds its own eBPF object and one binary ships.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../lb-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("lb-ebpf not found at {}: {e}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("lb-ebpf path is not UTF-8"))?;
    // lb-common is a dependency of lb-ebpf; a change there must rebuild the object too.
    println!("cargo:rerun-if-changed={manifest_dir}/../lb-common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
}
