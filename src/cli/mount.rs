//! `strata mount`: the snapshots as a read-only file system, until Ctrl-C or `umount`.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use strata::mount::SnapshotFs;
use strata::repo::Repo;
use strata::snapshots;

#[derive(Args)]
#[command(
    after_help = "Layout:\n  MOUNTPOINT/snapshots/ID/...   every snapshot (ID: 8 or more hex digits)\n  \
                        MOUNTPOINT/by-name/NAME       the newest snapshot of that name\n  \
                        MOUNTPOINT/by-time/TIME       each snapshot by its local time\n  \
                        MOUNTPOINT/latest             the newest snapshot\n\n\
                        Examples:\n  strata mount /mnt/strata &\n  \
                        cp /mnt/strata/latest/app/config.json .\n  umount /mnt/strata"
)]
pub struct MountArgs {
    /// An empty directory to show the snapshots in
    mountpoint: PathBuf,
    /// Let other users read it too (their access still follows each file's mode; needs
    /// `user_allow_other` in /etc/fuse.conf unless run as root)
    #[arg(long)]
    allow_other: bool,
}

pub fn mount(repo: Repo, args: MountArgs) -> Result<ExitCode> {
    if !std::path::Path::new("/dev/fuse").exists() {
        bail!(
            "FUSE is not available here (/dev/fuse is missing): load the fuse module, or install \
             fuse3 (apt-get install fuse3); `strata ls`, `dump` and `restore --path` work without it"
        );
    }
    let meta = std::fs::metadata(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", args.mountpoint.display());
    }
    let snaps = snapshots::list(&repo)?;
    let count = snaps.len();
    let fs = SnapshotFs::new(repo, snaps)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("strata".into()),
        fuser::MountOption::Subtype("strata".into()),
        // Each file's mode and owner decide who may read it, as on the disk it came from.
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, &args.mountpoint, &config).with_context(|| {
        format!(
            "mounting on {} (is fusermount3 installed? apt-get install fuse3)",
            args.mountpoint.display()
        )
    })?;
    eprintln!(
        "{count} snapshots mounted on {} (read-only); Ctrl-C or `umount {}` ends it",
        args.mountpoint.display(),
        args.mountpoint.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    // Until a signal, or an unmount from outside (the session's thread then ends).
    while !stop.load(Ordering::Relaxed) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    match session.guard.is_finished() {
        true => session.join(),
        false => session.umount_and_join(),
    }
    .with_context(|| format!("unmounting {}", args.mountpoint.display()))?;
    eprintln!("unmounted {}", args.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}
