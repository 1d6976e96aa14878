//! `scripts/install.sh`: `--dry-run` changes nothing, a staged install (DESTDIR) puts every
//! file in place and is idempotent, and the operator's config is never overwritten. Also: the
//! example config it installs is valid and names every field of `src/config.rs`.

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs install.sh with a stub binary; returns (success, stdout+stderr).
fn install(destdir: Option<&Path>, args: &[&str]) -> (bool, String) {
    let bin = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bin.path(), "#!/bin/sh\necho switchboard\n").unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(root().join("scripts/install.sh"));
    cmd.args(args).arg("--bin").arg(bin.path());
    match destdir {
        Some(d) => cmd.env("DESTDIR", d),
        None => cmd.env_remove("DESTDIR"),
    };
    let out = cmd.output().expect("run install.sh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

const FILES: [&str; 7] = [
    "/usr/local/bin/switchboard",
    "/etc/systemd/system/switchboard-router.service",
    "/etc/systemd/system/switchboard-journal.service",
    "/etc/sysctl.d/60-switchboard.conf",
    "/usr/local/share/doc/switchboard/metrics.md",
    "/usr/local/share/switchboard/grafana/switchboard.json",
    "/etc/switchboard/switchboard.toml",
];

#[test]
fn dry_run_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (ok, out) = install(Some(d.path()), &["--dry-run"]);
    assert!(ok, "{out}");
    for f in FILES {
        assert!(out.lines().any(|l| l.starts_with("would:") && l.contains(f)), "{f} not in:\n{out}");
    }
    assert!(out.contains("would: create directory /etc/switchboard/keys"), "{out}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "dry run wrote files");
    // On the real system too, a dry run only reports (user, groups, sysctl, daemon-reload).
    let (ok, out) = install(None, &["--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("user switchboard"), "{out}");
    assert!(out.ends_with("dry run: nothing was changed\n"), "{out}");
}

#[test]
fn staged_install_is_complete_idempotent_and_keeps_the_config() {
    let d = tempfile::tempdir().unwrap();
    let (ok, out) = install(Some(d.path()), &[]);
    assert!(ok, "{out}");
    let mode =
        |p: &str| std::fs::metadata(d.path().join(p.trim_start_matches('/'))).unwrap().permissions().mode() & 0o777;
    for f in FILES {
        assert!(d.path().join(f.trim_start_matches('/')).is_file(), "{f} not installed:\n{out}");
    }
    assert_eq!(mode("/usr/local/bin/switchboard"), 0o755);
    assert_eq!(mode("/etc/switchboard/switchboard.toml"), 0o640);
    assert_eq!(mode("/etc/switchboard/keys"), 0o750);
    assert_eq!(mode("/etc/systemd/system/switchboard-router.service"), 0o644);

    // Again: nothing to do.
    let (ok, out) = install(Some(d.path()), &[]);
    assert!(ok, "{out}");
    let actions: Vec<_> = out.lines().filter(|l| l.starts_with("install:") && *l != "install: done").collect();
    assert!(actions.is_empty(), "second run changed things: {actions:?}");

    // The operator's config is kept; a changed unit is updated.
    let cfg = d.path().join("etc/switchboard/switchboard.toml");
    std::fs::write(&cfg, "# mine\n").unwrap();
    std::fs::write(d.path().join("etc/systemd/system/switchboard-router.service"), "old").unwrap();
    let (ok, out) = install(Some(d.path()), &[]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "# mine\n");
    assert!(out.contains("install: systemd/switchboard-router.service -> /etc/systemd/system/"), "{out}");
}

/// `pub field:` names of each `[section]` struct in src/config.rs.
fn config_fields() -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(root().join("src/config.rs")).unwrap();
    let sections = [
        ("RouterConfig", "router"),
        ("TokensConfig", "tokens"),
        ("BusConfig", "bus"),
        ("AdminConfig", "admin"),
        ("TlsConfig", "tls"),
        ("JournalConfig", "journal"),
    ];
    let mut out = vec![];
    for (strukt, section) in sections {
        let start = text.find(&format!("pub struct {strukt} {{")).unwrap_or_else(|| panic!("{strukt} not found"));
        let body = &text[start..];
        let body = &body[..body.find("\n}").unwrap()];
        for line in body.lines().skip(1).map(str::trim) {
            if let Some(rest) = line.strip_prefix("pub ")
                && let Some((name, _)) = rest.split_once(':')
            {
                out.push((section, name.to_owned()));
            }
        }
    }
    out
}

#[test]
fn example_config_is_valid_and_names_every_field() {
    let text = std::fs::read_to_string(root().join("config/switchboard.example.toml")).unwrap();
    switchboard::config::Config::parse(&text).expect("the example parses and validates");
    // Keys per section, commented-out ones included (the optional [tls] is commented).
    let mut section = String::new();
    let mut present = std::collections::BTreeSet::new();
    for line in text.lines() {
        let l = line.trim().trim_start_matches('#').trim();
        if l.starts_with('[') && l.ends_with(']') {
            section = l.trim_matches(['[', ']']).to_owned();
        } else if let Some((k, _)) = l.split_once(" = ")
            && !k.contains(' ')
        {
            present.insert((section.clone(), k.to_owned()));
        }
    }
    let fields = config_fields();
    assert!(fields.len() > 40, "{fields:?}");
    let missing: Vec<_> = fields.iter().filter(|(s, f)| !present.contains(&(s.to_string(), f.clone()))).collect();
    assert!(missing.is_empty(), "config/switchboard.example.toml lacks {missing:?}");
}
