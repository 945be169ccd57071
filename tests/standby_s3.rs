//! A standby following a volume's backups in moto S3, two daemons on two
//! roots: three incremental backups, each apply fetching only the chunks
//! that changed, data checked through NBD byte for byte, read-only until
//! activated; then activated mid-apply (slowed by
//! `BALLAST_STANDBY_DELAY_MS`), holding exactly the previous backup.

mod backup_common;
mod common;
mod moto;
mod standby_common;

use backup_common::{assert_same, image, read_export, unix_uri, MIB};
use common::TempDir;
use moto::{moto_binary, Moto, DAEMON_ENV};
use standby_common::{
    activate, backed_up_volume, backup, fill_chunk, follow, id_of, standby_daemon, wait_applied,
    wait_for, write_fails,
};

#[test]
fn a_standby_follows_backups_in_s3_and_activates_mid_apply() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    moto.create_bucket("standby");
    let a = TempDir::create();
    let b = TempDir::create();
    let src = backup_common::start_with_env(&a, &DAEMON_ENV);
    let mut sb = standby_daemon(&b, 0, &DAEMON_ENV);
    let (ssock, bsock) = (src.socket.clone(), sb.socket.clone());
    let dest = format!("s3://standby/site?endpoint=http://127.0.0.1:{}", moto.port);

    let mut expected = image(10, 6, 41);
    let b1 = backed_up_volume(&src, &a, ("db", "16M"), &expected, &dest);
    let src_uri = unix_uri(&src, "db");
    follow(&bsock, "db2", &dest, "db");
    let s = wait_applied(&bsock, "db2", &id_of(&b1));
    assert_eq!(s["last_apply"]["chunks_fetched"], 10, "{s}");
    let uri = unix_uri(&sb, "db2");
    assert_same(&read_export(&uri, &b, "1.img"), &expected, "first backup");
    write_fails(&uri);

    for (round, chunks) in [[1usize, 12], [3, 7]].iter().enumerate() {
        for &i in chunks {
            fill_chunk(
                &src_uri,
                &mut expected,
                i,
                0x10 * (round as u8 + 1) + i as u8,
            );
        }
        let url = backup(&ssock, "db", &dest);
        let s = wait_applied(&bsock, "db2", &id_of(&url));
        assert_eq!(s["last_apply"]["chunks_fetched"], 2, "{s}");
        assert_eq!(s["last_apply"]["bytes_fetched"], 2 * MIB as u64, "{s}");
        assert_same(
            &read_export(&uri, &b, "n.img"),
            &expected,
            &format!("incremental backup {}", round + 2),
        );
    }

    // Slow applies from now on; the fourth backup is caught mid-apply.
    drop(sb);
    sb = standby_daemon(&b, 3000, &DAEMON_ENV);
    let complete = expected.clone();
    for i in 0..8 {
        fill_chunk(&src_uri, &mut expected, i, 0xa0 + i as u8);
    }
    let b4 = backup(&ssock, "db", &dest);
    wait_for(&bsock, "db2", "started applying", |s| {
        s["applying_backup"] == id_of(&b4).as_str()
    });
    activate(&bsock, "db2");
    let uri = unix_uri(&sb, "db2");
    assert_same(
        &read_export(&uri, &b, "a.img"),
        &complete,
        "activated mid-apply",
    );
    backup_common::qemu_io(&uri, &["write -P 1 0 4k", "flush"]);
}
