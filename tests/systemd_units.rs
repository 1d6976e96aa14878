//! The systemd units pass `systemd-analyze verify`, carry the settings the router relies on,
//! and the sysctl file names settings this kernel has.
//!
//! `systemd-analyze verify` runs here without a booted systemd (a container), with
//! `--man=no --generators=no` and `--root` set to a scratch tree holding the units, the host's
//! own standard units (sysinit.target & co., pulled in by default dependencies) and a stub
//! executable at each `Exec*=` path (verify refuses a command that is not there). It exits 0
//! on mere warnings (an unknown key, a bad value), so any output fails the test; a broken
//! copy of the unit proves that the check does catch mistakes here.

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["switchboard-router.service", "switchboard-journal.service"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

/// systemd-analyze, installed from Debian's `systemd` package when missing.
fn systemd_analyze() -> PathBuf {
    if let Some(p) = which("systemd-analyze") {
        return p;
    }
    let ok =
        Command::new(root().join("scripts/services.sh")).arg("systemd-analyze").status().is_ok_and(|s| s.success());
    assert!(ok, "systemd-analyze is missing and scripts/services.sh could not install it (apt-get install systemd)");
    which("systemd-analyze").expect("systemd-analyze after install")
}

fn stub(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let Ok(meta) = std::fs::symlink_metadata(&src) else { continue };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(&src) {
                let _ = std::os::unix::fs::symlink(target, &dst);
            }
        } else if meta.is_dir() {
            copy_dir(&src, &dst);
        } else {
            let _ = std::fs::copy(&src, &dst);
        }
    }
}

/// A scratch root with the host's standard units and stubs for every Exec path of `units`.
fn scratch_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").exists())
        .expect("the host has systemd's standard units (Debian package systemd)");
    copy_dir(host_units, &dir.path().join("usr/lib/systemd/system"));
    for (name, text) in units {
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('=')
                && key.starts_with("Exec")
                && let Some(cmd) = value.trim_start_matches(['-', '@', '+', '!', ':']).split_whitespace().next()
            {
                stub(&dir.path().join(cmd.trim_start_matches('/')));
            }
        }
        let dst = dir.path().join("etc/systemd/system").join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(dst, text).unwrap();
    }
    dir
}

fn verify(root_dir: &Path, names: &[&str]) -> (bool, String) {
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=no", "--generators=no"])
        .arg(format!("--root={}", root_dir.display()))
        .args(names.iter().map(|n| format!("/etc/systemd/system/{n}")))
        .output()
        .expect("run systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(root().join("systemd").join(name)).unwrap()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let units: Vec<_> = UNITS.iter().map(|n| (*n, unit_text(n))).collect();
    let dir = scratch_root(&units);
    let (ok, text) = verify(dir.path(), &UNITS);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify:\n{text}");

    // The check is meaningful here: a broken copy is reported.
    let broken = unit_text(UNITS[0]).replace("Type=notify", "Typ=notify").replace("KillMode=mixed", "KillMode=mixd");
    let dir = scratch_root(&[("broken.service", broken)]);
    let (_, text) = verify(dir.path(), &["broken.service"]);
    assert!(text.contains("Unknown key") && text.contains("mixd"), "a broken unit went unnoticed:\n{text}");
}

/// `Key=value` settings of a unit (a key given twice keeps every value).
fn settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with('[')) {
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k.to_owned()).or_default().push(v.trim().to_owned());
        }
    }
    map
}

#[test]
fn router_unit_has_what_the_supervisor_relies_on() {
    let s = settings(&unit_text("switchboard-router.service"));
    let one = |k: &str| s.get(k).and_then(|v| v.last()).unwrap_or_else(|| panic!("{k}= missing")).as_str();
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillMode", "mixed"),
        ("LimitNOFILE", "1048576"),
        ("Restart", "on-failure"),
        ("User", "switchboard"),
        ("RuntimeDirectory", "switchboard"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(k), v, "{k}=");
    }
    assert!(s.contains_key("TasksMax"));
    let cfg = "--config /etc/switchboard/switchboard.toml";
    assert_eq!(one("ExecStartPre"), format!("/usr/local/bin/switchboard check-config {cfg}"));
    assert_eq!(
        s["ExecReload"],
        [format!("/usr/local/bin/switchboard check-config {cfg}"), "/bin/kill -HUP $MAINPID".into()]
    );
    // The runtime dir the example config uses is the one systemd creates and allows writes to.
    let example = std::fs::read_to_string(root().join("config/switchboard.example.toml")).unwrap();
    let example = switchboard::config::Config::parse(&example).unwrap();
    assert_eq!(example.router.runtime_dir, Path::new("/run/switchboard"));
    assert!(one("ReadWritePaths").split_whitespace().any(|p| p == "/run/switchboard"));
    // systemd's SIGKILL comes after the supervisor's own grace, not before.
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    let default_grace = switchboard::config::Config::default().router.shutdown_grace_secs;
    assert!(stop > default_grace && stop > example.router.shutdown_grace_secs, "TimeoutStopSec={stop}");
}

#[test]
fn sysctl_file_names_settings_this_kernel_has() {
    let text = std::fs::read_to_string(root().join("systemd/60-switchboard.conf")).unwrap();
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').expect(l).0.trim())
        .collect();
    for want in
        ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_migrate_req", "fs.nr_open", "fs.file-max"]
    {
        assert!(keys.contains(&want), "{want} missing");
    }
    for k in keys {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        assert!(path.exists(), "{k} is not a sysctl on this kernel ({} missing)", path.display());
    }
}
