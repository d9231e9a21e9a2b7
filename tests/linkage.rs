//! Which shared libraries the binary needs, as `ldd` (glibc's, always on Debian) reports
//! them. The default build (`vendored-openssl`) compiles OpenSSL and zlib from source and
//! links them statically, so it runs on a machine without them; `system-openssl` links the
//! system's OpenSSL (so that its security updates reach verve), and zlib is static in both.

use std::process::Command;

fn shared_libraries() -> String {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_verve"))
        .output()
        .expect("running ldd (Debian package libc-bin)");
    assert!(out.status.success(), "ldd failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn links(libs: &str, name: &str) -> bool {
    libs.lines()
        .any(|line| line.trim_start().starts_with(&format!("{name}.so")))
}

#[test]
fn zlib_is_linked_statically() {
    let libs = shared_libraries();
    assert!(
        !links(&libs, "libz"),
        "verve links libz dynamically:\n{libs}"
    );
}

#[cfg(feature = "vendored-openssl")]
#[test]
fn the_default_build_needs_no_system_openssl() {
    let libs = shared_libraries();
    for name in ["libssl", "libcrypto"] {
        assert!(
            !links(&libs, name),
            "verve links {name} dynamically:\n{libs}"
        );
    }
}

#[cfg(feature = "system-openssl")]
#[test]
fn system_openssl_links_the_systems_libssl() {
    let libs = shared_libraries();
    for name in ["libssl", "libcrypto"] {
        assert!(links(&libs, name), "verve does not link {name}:\n{libs}");
    }
}
