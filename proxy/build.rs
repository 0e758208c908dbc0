//! Links the code a sidecar runs (start-up and every request) together at the start of
//! warden-proxy's text, in the order of `symbol-order.txt` (written by
//! `benches/mesh/symbol_order.py`). The kernel maps code 64 KiB around each touched page, so
//! the same code spread over the whole binary kept most of it resident in every sidecar.

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // lld reads the order; it is Rust's default linker for this target since 1.90. A name
    // not in the binary (renamed since the list was made) is skipped, not an error.
    // Release builds only: the order is made from, and matters for, the sidecar image's build.
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    if release && std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu") {
        let bin = "cargo:rustc-link-arg-bin=warden-proxy";
        println!("{bin}=-Wl,--symbol-ordering-file={manifest_dir}/symbol-order.txt");
        println!("{bin}=-Wl,--no-warn-symbol-ordering");
        // Relative relocations packed (DT_RELR, glibc 2.36+: the image's Debian 12): the
        // loader reads ~4 KiB instead of ~300 KiB of them at start.
        println!("{bin}=-Wl,-z,pack-relative-relocs");
    }
}
