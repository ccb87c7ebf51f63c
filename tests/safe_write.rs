//! The safe-write helper: refusals (symlink, hard link, symlinked component), mode and owner,
//! backups, crash safety, validation, and revert.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use common::TempRoot;
use notebook_agent::control::revert::revert;
use notebook_agent::host::safe_write::{BackupEntry, Fault};
use notebook_agent::host::{Backups, FileSpec, Owner, Root, SafeWriter, WriteError, WriteOutcome};

fn spec(text: &str, mode: u32, owner: Owner) -> FileSpec {
    FileSpec {
        contents: text.as_bytes().to_vec(),
        mode,
        owner,
    }
}

fn me() -> Owner {
    Owner {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

fn temps_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".nbagent-tmp."))
        .collect()
}

#[test]
fn symlink_at_target_is_refused_and_its_target_untouched() {
    let t = TempRoot::amazon_linux();
    t.write("secret", "do not touch\n", 0o600);
    symlink(t.join("secret"), t.join("etc/pip.conf")).expect("symlink");
    let root = Root::new(t.path()).expect("root");
    let w = SafeWriter::new(&root, None);
    let err = w
        .write(Path::new("/etc/pip.conf"), &spec("x", 0o644, me()))
        .expect_err("refused");
    assert!(matches!(err, WriteError::Symlink(_)), "{err}");
    assert!(err.to_string().contains("/etc/pip.conf"), "{err}");
    assert_eq!(t.read("secret"), "do not touch\n");
    assert!(fs::symlink_metadata(t.join("etc/pip.conf"))
        .expect("lstat")
        .file_type()
        .is_symlink());
}

#[test]
fn hard_linked_target_is_refused() {
    let t = TempRoot::amazon_linux();
    t.write("etc/pip.conf", "old\n", 0o644);
    fs::hard_link(t.join("etc/pip.conf"), t.join("home/ec2-user/link")).expect("link");
    let root = Root::new(t.path()).expect("root");
    let err = SafeWriter::new(&root, None)
        .write(Path::new("/etc/pip.conf"), &spec("new\n", 0o644, me()))
        .expect_err("refused");
    assert!(matches!(err, WriteError::HardLink(_, 2)), "{err}");
    assert_eq!(t.read("home/ec2-user/link"), "old\n");
}

#[test]
fn symlinked_directory_component_is_never_followed() {
    // The notebook user owns their home and could plant ~/.config -> /etc/sudoers.d.
    let t = TempRoot::amazon_linux();
    t.mkdir("etc/sudoers.d");
    symlink(t.join("etc/sudoers.d"), t.join("home/ec2-user/.config")).expect("symlink");
    let root = Root::new(t.path()).expect("root");
    let w = SafeWriter::new(&root, None);
    let target = Path::new("/home/ec2-user/.config/pip.conf");
    let err = w
        .write(target, &spec("x", 0o644, me()))
        .expect_err("refused");
    assert!(
        matches!(err, WriteError::UnsafeComponent(_, ref c) if c == ".config"),
        "{err}"
    );
    let err = w
        .ensure_dir(Path::new("/home/ec2-user/.config/pip"), 0o755, me())
        .expect_err("refused");
    assert!(matches!(err, WriteError::UnsafeComponent(..)), "{err}");
    assert!(!t.join("etc/sudoers.d/pip.conf").exists());
    assert!(!t.join("etc/sudoers.d/pip").exists());
}

#[test]
fn mode_and_owner_are_as_requested() {
    common::require_root("chown to another user");
    let t = TempRoot::amazon_linux();
    let root = Root::new(t.path()).expect("root");
    let w = SafeWriter::new(&root, None);
    let owner = Owner {
        uid: 1000,
        gid: 1000,
    };
    let p = Path::new("/home/ec2-user/.pip.conf");
    assert_eq!(
        w.write(p, &spec("a\n", 0o640, owner)).expect("write"),
        WriteOutcome::Created
    );
    let md = fs::metadata(t.join("home/ec2-user/.pip.conf")).expect("stat");
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o640, 1000, 1000)
    );
    // Same bytes, other mode: replaced, and the new mode sticks.
    assert_eq!(
        w.write(p, &spec("a\n", 0o600, Owner::ROOT)).expect("write"),
        WriteOutcome::Replaced
    );
    let md = fs::metadata(t.join("home/ec2-user/.pip.conf")).expect("stat");
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o600, 0, 0));
    // Identical: nothing happens.
    assert_eq!(
        w.write(p, &spec("a\n", 0o600, Owner::ROOT)).expect("write"),
        WriteOutcome::Unchanged
    );
    // A set-id bit requested is kept (owner is set before mode).
    w.write(p, &spec("a\n", 0o2750, owner)).expect("write");
    let md = fs::metadata(t.join("home/ec2-user/.pip.conf")).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o2750);
}

#[test]
fn original_is_kept_as_backup_once() {
    let t = TempRoot::amazon_linux();
    t.write("etc/pip.conf", "original\n", 0o640);
    let root = Root::new(t.path()).expect("root");
    let backups = Backups::open(&root).expect("backups");
    let w = SafeWriter::new(&root, Some(&backups));
    let p = Path::new("/etc/pip.conf");
    w.write(p, &spec("first\n", 0o644, me())).expect("write");
    w.write(p, &spec("second\n", 0o644, me())).expect("write");
    assert_eq!(t.read("etc/pip.conf"), "second\n");
    assert_eq!(backups.original(p).expect("backup"), b"original\n");
    assert_eq!(
        backups.manifest().entries.get(p),
        Some(&BackupEntry::File {
            mode: 0o640,
            owner: me()
        })
    );
    // The store survives a restart of the agent.
    let reopened = Backups::open(&root).expect("reopen");
    assert_eq!(reopened.original(p).expect("backup"), b"original\n");
    let backup_file = t.join("var/lib/notebook-agent/backup/files/etc/pip.conf");
    assert_eq!(
        fs::metadata(&backup_file)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "backups may hold sudoers: root-only"
    );
}

#[test]
fn failed_write_leaves_the_old_content_and_no_temp_file() {
    let t = TempRoot::amazon_linux();
    t.write("etc/pip.conf", "old content\n", 0o644);
    let root = Root::new(t.path()).expect("root");
    let w = SafeWriter::new(&root, None).with_fault(Fault::FailAfter(5));
    let err = w
        .write(
            Path::new("/etc/pip.conf"),
            &spec("new content that is longer\n", 0o644, me()),
        )
        .expect_err("fault");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_eq!(t.read("etc/pip.conf"), "old content\n");
    assert!(temps_in(&t.join("etc")).is_empty());
}

#[test]
fn crash_midway_never_truncates_and_the_next_write_cleans_up() {
    let t = TempRoot::amazon_linux();
    t.write("etc/pip.conf", "old content\n", 0o644);
    let root = Root::new(t.path()).expect("root");
    let p = Path::new("/etc/pip.conf");
    let crashed = SafeWriter::new(&root, None).with_fault(Fault::CrashAfter(3));
    let _ = crashed.write(p, &spec("new content\n", 0o644, me()));
    // As after a power cut: the target is whole and old; a partial temp file is beside it.
    assert_eq!(t.read("etc/pip.conf"), "old content\n");
    assert_eq!(temps_in(&t.join("etc")).len(), 1);
    SafeWriter::new(&root, None)
        .write(p, &spec("new content\n", 0o644, me()))
        .expect("write");
    assert_eq!(t.read("etc/pip.conf"), "new content\n");
    assert!(temps_in(&t.join("etc")).is_empty(), "stale temp removed");
}

#[test]
fn refused_validation_installs_nothing() {
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/sudoers.d/90-cloud-init-users",
        "ec2-user ALL=(ALL) NOPASSWD:ALL\n",
        0o440,
    );
    let root = Root::new(t.path()).expect("root");
    let w = SafeWriter::new(&root, None);
    let seen = std::cell::RefCell::new(String::new());
    let validate = |p: &Path| {
        *seen.borrow_mut() = fs::read_to_string(root.path(p)).unwrap_or_default();
        Err("syntax error near line 1".to_string())
    };
    let err = w
        .write_validated(
            Path::new("/etc/sudoers.d/90-cloud-init-users"),
            &spec("broken (\n", 0o440, me()),
            Some(&validate),
        )
        .expect_err("refused");
    assert!(err.to_string().contains("syntax error"), "{err}");
    assert_eq!(
        *seen.borrow(),
        "broken (\n",
        "validator saw the complete new file"
    );
    assert_eq!(
        t.read("etc/sudoers.d/90-cloud-init-users"),
        "ec2-user ALL=(ALL) NOPASSWD:ALL\n"
    );
    assert!(temps_in(&t.join("etc/sudoers.d")).is_empty());
}

#[test]
fn revert_restores_replaced_removes_created_and_leaves_the_tree_as_it_was() {
    let t = TempRoot::amazon_linux();
    t.write("etc/pip.conf", "original\n", 0o640);
    let before = t.snapshot();
    let root = Root::new(t.path()).expect("root");
    {
        let backups = Backups::open(&root).expect("backups");
        let w = SafeWriter::new(&root, Some(&backups));
        w.write(Path::new("/etc/pip.conf"), &spec("managed\n", 0o644, me()))
            .expect("write");
        w.ensure_dir(Path::new("/home/ec2-user/.config/pip"), 0o755, me())
            .expect("mkdir");
        w.write(
            Path::new("/home/ec2-user/.config/pip/pip.conf"),
            &spec("user\n", 0o644, me()),
        )
        .expect("write");
        w.remove(Path::new("/etc/sudoers.d/90-cloud-init-users"))
            .expect("remove");
    }
    assert!(!t.join("etc/sudoers.d/90-cloud-init-users").exists());
    let restored = revert(&root).expect("revert");
    assert_eq!(restored.len(), 5, "{restored:?}");
    assert_eq!(before, t.snapshot_without(&["var"]));
}
