//! The curve cache (`.zo/state/curves/`): curves live outside the projection checkpoint, in
//! shards read and written only for the experiments a refresh touches. A shard that cannot be
//! trusted makes the refresh fold the whole log (never a silently wrong plot), a shard newer
//! than the checkpoint (a crash between the two writes) is not folded twice, and commands that
//! only read never open a shard.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use zolog::event::{EpochEnded, ExpId, Metrics, NoteAdded, NoteSection, Payload};
use zolog::project::{self, checkpoint, shard};

use crate::projections::{Fixture, id, mint, snapshot};

const BIN: &str = env!("CARGO_BIN_EXE_zolog");

fn epoch(exp: &str, e: u64) -> Payload {
    let v = match e {
        13 => f64::NAN,
        29 => f64::INFINITY,
        _ => 1.0 / (e as f64 + 1.0),
    };
    Payload::EpochEnded(EpochEnded {
        experiment_id: id(exp),
        epoch: e,
        step: None,
        metrics: Metrics(vec![
            ("train_loss".into(), v),
            ("val_acc".into(), 0.5 + e as f64 / 1000.0),
        ]),
        learning_rate: Some(0.01 / (e as f64 + 1.0)),
        wall_time_seconds: Some(e as f64),
        gpu_memory_mb: None,
    })
}

/// Append epochs `range` of `exp`, one event per batch.
fn epochs(f: &Fixture, exp: &str, range: std::ops::Range<u64>) {
    let events: Vec<(i64, Payload)> = range.map(|e| (100 + e as i64, epoch(exp, e))).collect();
    f.append_all(&events);
}

/// Three experiments in different shards, two with runs longer than a curve keeps unmerged.
fn fixture() -> Fixture {
    let f = Fixture::new("curves");
    for n in ["exp-001", "exp-002", "exp-003"] {
        f.append(1, mint(n, None, "h"));
    }
    epochs(&f, "exp-001", 0..40);
    epochs(&f, "exp-002", 0..3);
    epochs(&f, "exp-003", 0..70);
    project::refresh(&f.store).unwrap();
    f
}

/// Every experiment's curves, as loaded from the cache, printed (NaN prints as NaN).
fn curves(f: &Fixture) -> BTreeMap<String, String> {
    let ids: Vec<ExpId> = project::current(&f.store)
        .unwrap()
        .experiments
        .iter()
        .map(|e| e.id.clone())
        .collect();
    let state = project::current_with_curves(&f.store, &ids).unwrap();
    state
        .experiments
        .iter()
        .map(|e| {
            let c = e.curves().expect("loaded");
            (e.id.to_string(), format!("{c:?}"))
        })
        .collect()
}

/// The files and curves equal those of a rebuild from the log alone, after deleting every file.
fn assert_equals_rebuild(f: &Fixture) {
    let files = snapshot(&f.exp_dir());
    let curves_before = curves(f);
    std::fs::remove_dir_all(f.exp_dir()).unwrap();
    std::fs::remove_dir_all(f.store.state_dir()).unwrap();
    project::rebuild(&f.store).unwrap();
    let rebuilt = snapshot(&f.exp_dir());
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        rebuilt.keys().collect::<Vec<_>>()
    );
    for (k, v) in &files {
        assert!(rebuilt[k] == *v, "{} differs from a rebuild's", k.display());
    }
    assert_eq!(curves_before, curves(f), "curves differ from a rebuild's");
}

fn shard_path(f: &Fixture, exp: &str) -> PathBuf {
    shard::path(&f.store.state_dir(), shard::of(&id(exp)))
}

/// Plant `bytes` as exp-001's shard (or remove it), make a refresh need it (a new epoch, or a
/// note that redraws curves.svg) and check that it fell back to a full fold, saying why, and that
/// everything then equals a rebuild.
fn assert_falls_back(f: &Fixture, bytes: Option<&[u8]>, why: &str, next_epoch: &mut u64) {
    let p = shard_path(f, "exp-001");
    match bytes {
        Some(b) => std::fs::write(&p, b).unwrap(),
        None => std::fs::remove_file(&p).unwrap(),
    }
    if next_epoch.is_multiple_of(2) {
        epochs(f, "exp-001", *next_epoch..*next_epoch + 1);
    } else {
        f.append(
            500,
            Payload::NoteAdded(NoteAdded {
                experiment_id: id("exp-001"),
                section: NoteSection::Mechanism,
                text: format!("note {next_epoch}"),
            }),
        );
    }
    *next_epoch += 1;
    let r = project::refresh_report(&f.store).unwrap();
    assert!(
        r.checkpoint.starts_with("discarded: curve shard") && r.checkpoint.contains(why),
        "{why}: {}",
        r.checkpoint
    );
    assert_eq!(r.from_seq, 1, "{why}: folded from the start");
    // The shards it wrote instead are trusted next time.
    epochs(f, "exp-001", *next_epoch..*next_epoch + 1);
    *next_epoch += 1;
    let r = project::refresh_report(&f.store).unwrap();
    assert_eq!(r.checkpoint, "used", "{why}");
    assert_equals_rebuild(f);
}

#[test]
fn damaged_missing_stale_and_foreign_curve_shards_make_the_refresh_fold_the_whole_log() {
    let f = fixture();
    let p = shard_path(&f, "exp-001");
    let good = std::fs::read(&p).unwrap();
    let mut next = 40;

    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 0x08;
    assert_falls_back(&f, Some(&flipped), "checksum", &mut next);
    let good = std::fs::read(&p).unwrap();
    assert_falls_back(&f, Some(&good[..good.len() - 5]), "corrupt", &mut next);
    assert_falls_back(&f, None, "missing", &mut next);
    assert_falls_back(&f, Some(b"garbage"), "magic", &mut next);
    let mut version = std::fs::read(&p).unwrap();
    version[8..12].copy_from_slice(&(shard::VERSION + 1).to_le_bytes());
    assert_falls_back(&f, Some(&version), "version", &mut next);
    // Another shard's file under this shard's name.
    let other = std::fs::read(shard_path(&f, "exp-003")).unwrap();
    assert_ne!(shard::of(&id("exp-001")), shard::of(&id("exp-003")));
    assert_falls_back(&f, Some(&other), "holds shard", &mut next);

    // Stale: a copy of the shard from before the last refresh that wrote it (as if its rename
    // had not reached the disk while the checkpoint's had).
    // Enough epochs that this refresh saves the checkpoint (which then records the new shard).
    let old = std::fs::read(&p).unwrap();
    epochs(&f, "exp-001", next..next + project::SAVE_EVERY_EVENTS);
    next += project::SAVE_EVERY_EVENTS;
    let r = project::refresh_report(&f.store).unwrap();
    let ckpt = std::fs::read(checkpoint::path(&f.store.state_dir())).unwrap();
    assert_eq!(checkpoint::decode(&ckpt).unwrap().1.seq, r.seq, "saved");
    assert_falls_back(&f, Some(&old), "stale", &mut next);

    // Foreign: the same shard of another store whose log has the same shape.
    let g = Fixture::new("another store");
    for n in ["exp-001", "exp-002", "exp-003"] {
        g.append(1, mint(n, None, "h"));
    }
    epochs(&g, "exp-001", 0..next + 5);
    project::refresh(&g.store).unwrap();
    let foreign = std::fs::read(shard_path(&g, "exp-001")).unwrap();
    assert_falls_back(&f, Some(&foreign), "foreign", &mut next);

    // Cut: the log was cut below the shard's record and grew again.
    let h = fixture();
    let before_cut = std::fs::read(shard_path(&h, "exp-001")).unwrap();
    let ckpt = std::fs::read(checkpoint::path(&h.store.state_dir())).unwrap();
    let (_, covers, _) = checkpoint::decode(&ckpt).unwrap();
    epochs(&h, "exp-001", 40..45);
    project::refresh(&h.store).unwrap();
    let pos = covers.pos.unwrap();
    let hdr = h.store.log().frame_header_at(&pos).unwrap().unwrap();
    let after_cut = std::fs::read(shard_path(&h, "exp-001")).unwrap();
    h.store
        .log()
        .cut_at(pos.segment_first_seq, pos.offset + hdr.frame_len() as u64)
        .unwrap();
    // Refold from scratch without the planted checkpoint's help, then plant the shard written
    // before the cut: it covers records the log no longer has.
    project::rebuild(&h.store).unwrap();
    assert_ne!(before_cut, after_cut);
    let mut n = 40;
    assert_falls_back(&h, Some(&after_cut), "stale", &mut n);
}

/// A crash between writing the shards and saving the checkpoint leaves shards newer than the
/// checkpoint: the samples they already hold must not be added again when the refresh folds from
/// the older checkpoint.
#[test]
fn curve_shards_newer_than_the_checkpoint_are_not_folded_twice() {
    // An experiment minted after the old checkpoint, in a shard no other experiment uses, so
    // that the old checkpoint records that shard as never written.
    let fresh = (4..100)
        .map(ExpId::from_number)
        .find(|x| {
            !["exp-001", "exp-002", "exp-003"]
                .iter()
                .any(|o| shard::of(&id(o)) == shard::of(x))
        })
        .unwrap();
    for then_append in [false, true] {
        let f = fixture();
        let ckpt = checkpoint::path(&f.store.state_dir());
        let old = std::fs::read(&ckpt).unwrap();
        let (_, old_covers, old_shards) = checkpoint::decode(&old).unwrap();
        assert_eq!(old_shards[shard::of(&fresh)], 0);
        assert!(old_shards[shard::of(&id("exp-001"))] > 0);
        // Across a merge of exp-001's buckets (32 → 64 samples).
        epochs(&f, "exp-001", 40..75);
        f.append(200, mint(fresh.as_str(), None, "late"));
        epochs(&f, fresh.as_str(), 0..5);
        project::refresh(&f.store).unwrap();
        let shard_covers = shard::decode(&std::fs::read(shard_path(&f, "exp-001")).unwrap())
            .unwrap()
            .covers;
        assert!(shard_covers.seq > old_covers.seq);
        // The crash: the old checkpoint is what survived.
        std::fs::write(&ckpt, &old).unwrap();
        if then_append {
            epochs(&f, "exp-001", 75..77);
            epochs(&f, fresh.as_str(), 5..6);
        }
        let r = project::refresh_report(&f.store).unwrap();
        assert_eq!(r.checkpoint, "used");
        assert_eq!(r.from_seq, old_covers.seq + 1);
        assert_equals_rebuild(&f);
    }
}

/// `refresh_from` (what the `exp` commands do) with a state loaded before shards were written by
/// another refresh: the shards it then loads are newer than the state it loaded, and are used.
#[test]
fn refresh_from_a_state_loaded_before_another_refresh_equals_a_rebuild() {
    let f = fixture();
    let cur = project::load(&f.store).unwrap();
    epochs(&f, "exp-001", 40..50);
    epochs(&f, "exp-003", 70..72);
    project::refresh(&f.store).unwrap();
    epochs(&f, "exp-001", 50..52);
    let (r, cur) = project::refresh_from(&f.store, cur).unwrap();
    assert_eq!(r.checkpoint, "used");
    drop(cur);
    assert_equals_rebuild(&f);
}

/// `exp list` and `exp show` read the checkpoint only; `plot` reads the shard it needs, and when
/// that shard cannot be trusted, folds the whole log and still draws the right curves.
#[test]
fn commands_that_only_read_never_open_a_curve_shard() {
    let f = fixture();
    let svg = std::fs::read(f.exp_dir().join("exp-001/curves.svg")).unwrap();
    let dir = f.store.state_dir().join(shard::DIR);
    for e in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(e.unwrap().path(), b"not a shard").unwrap();
    }
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--store")
            .arg(f.store.root())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        (out.stdout, String::from_utf8(out.stderr).unwrap())
    };
    for args in [
        &["exp", "list"][..],
        &["exp", "show", "exp-001"],
        &["exp", "show", "exp-001", "--json"],
    ] {
        let (_, err) = run(args);
        assert!(err.is_empty(), "{args:?} warned: {err}");
    }
    let (out, err) = run(&["plot", "exp-001"]);
    assert!(err.contains("curve shard"), "{err}");
    assert!(
        out == svg,
        "the plot drawn from the log differs from curves.svg"
    );
}
