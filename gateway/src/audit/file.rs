//! The audit file: JSON lines appended to `telemetry.audit_log`, rotated by
//! size and age, rotated files kept by count and age. Without a path the
//! lines go to stderr (no rotation).
//!
//! A rotated file is named `<name>.<UTC time of rotation>` (e.g.
//! `audit.jsonl.20261125T010203.042Z`), so names sort by age and the time in
//! the name is when its newest record was written. Lines reach the OS after
//! every batch and the disk (fsync) at least every [`SYNC_EVERY`], at every
//! rotation and at shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::record::utc_date;

/// How often written lines are forced to disk.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// When to rotate and what to keep.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub keep_files: usize,
    pub retention: Duration,
}

/// Whether a file of `size` bytes opened at `opened` is due for rotation at `now`.
pub fn rotation_due(r: &Rotation, size: u64, opened: SystemTime, now: SystemTime) -> bool {
    size > 0 && (size >= r.max_bytes || now.duration_since(opened).unwrap_or_default() >= r.max_age)
}

/// Which rotated files to delete: beyond the newest `keep_files`, or rotated
/// longer ago than `retention`. `rotated` holds (name, rotation time).
pub fn expired(
    r: &Rotation,
    mut rotated: Vec<(String, SystemTime)>,
    now: SystemTime,
) -> Vec<String> {
    rotated.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    rotated
        .into_iter()
        .enumerate()
        .filter(|(i, (_, at))| {
            *i >= r.keep_files || now.duration_since(*at).unwrap_or_default() > r.retention
        })
        .map(|(_, (name, _))| name)
        .collect()
}

/// `20261125T010203.042Z` for a time.
fn stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let rem = secs % 86_400;
    format!(
        "{}T{:02}{:02}{:02}.{:03}Z",
        utc_date(secs / 86_400).replace('-', ""),
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The rotation time in a rotated file's name (`<base>.<stamp>[.<n>]`).
fn parse_stamp(base: &str, name: &str) -> Option<SystemTime> {
    let s = name.strip_prefix(base)?.strip_prefix('.')?;
    let s = s.get(..20)?;
    let date = format!("{}-{}-{}", s.get(..4)?, s.get(4..6)?, s.get(6..8)?);
    let ms = super::record::parse_rfc3339_ms(&format!(
        "{date}T{}:{}:{}Z",
        s.get(9..11)?,
        s.get(11..13)?,
        s.get(13..19)?
    ))?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Where lines are written.
pub enum Output {
    Stderr,
    File(Box<RotatingFile>),
}

impl Output {
    pub fn open(path: Option<&Path>, rotation: Rotation) -> io::Result<Output> {
        Ok(match path {
            Some(p) => Output::File(Box::new(RotatingFile::open(p, rotation)?)),
            None => Output::Stderr,
        })
    }

    /// Writes the lines (each without its newline) and hands them to the OS.
    pub fn write(&mut self, lines: &[&str], now: SystemTime) -> io::Result<()> {
        match self {
            Output::Stderr => {
                let mut err = io::stderr().lock();
                for l in lines {
                    writeln!(err, "{l}")?;
                }
                err.flush()
            }
            Output::File(f) => f.write(lines, now),
        }
    }

    /// Forces what was written to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        match self {
            Output::Stderr => Ok(()),
            Output::File(f) => f.sync(),
        }
    }
}

pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    /// `None` after a failed reopen: the next write tries again.
    out: Option<BufWriter<File>>,
    size: u64,
    opened: SystemTime,
    synced: Instant,
}

impl RotatingFile {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<RotatingFile> {
        let mut f = RotatingFile {
            path: path.to_owned(),
            rotation,
            out: None,
            size: 0,
            opened: SystemTime::now(),
            synced: Instant::now(),
        };
        f.reopen()?;
        // An existing file's age counts from its creation, where the platform knows it.
        if f.size > 0
            && let Ok(created) = std::fs::metadata(path).and_then(|m| m.created())
        {
            f.opened = created;
        }
        Ok(f)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.opened = SystemTime::now();
        self.out = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    fn write(&mut self, lines: &[&str], now: SystemTime) -> io::Result<()> {
        if rotation_due(&self.rotation, self.size, self.opened, now) {
            self.rotate(now)?;
        }
        if self.out.is_none() {
            self.reopen()?;
        }
        let Some(out) = self.out.as_mut() else {
            return Err(io::Error::other("the audit file is not open"));
        };
        let before = self.size;
        let written = lines
            .iter()
            .try_for_each(|l| {
                out.write_all(l.as_bytes())?;
                out.write_all(b"\n")
            })
            .and_then(|()| out.flush());
        if let Err(e) = written {
            // A failed batch leaves nothing behind (the writer counts all of
            // it as dropped): what reached the file is cut off, what is still
            // buffered is thrown away, and the next write reopens the file.
            // Otherwise part of a dropped batch, or half a line, could reach
            // the file later.
            if let Some(out) = self.out.take() {
                let (file, _unwritten) = out.into_parts();
                let _ = file.set_len(before);
            }
            self.size = before;
            return Err(e);
        }
        self.size += lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        if self.synced.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.synced = Instant::now();
        match self.out.as_mut() {
            Some(out) => {
                out.flush()?;
                out.get_ref().sync_data()
            }
            None => Ok(()),
        }
    }

    /// Closes the current file under its rotated name, starts a new one and
    /// deletes what retention no longer keeps.
    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        self.sync()?;
        self.out = None;
        let base = self.base_name();
        let mut target = self.path.with_file_name(format!("{base}.{}", stamp(now)));
        let mut n = 1;
        while target.exists() {
            target = self
                .path
                .with_file_name(format!("{base}.{}.{n}", stamp(now)));
            n += 1;
        }
        std::fs::rename(&self.path, &target)?;
        self.reopen()?;
        if let Err(e) = self.prune(now) {
            tracing::warn!(error = %e, "could not delete old audit files");
        }
        Ok(())
    }

    fn base_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit.jsonl".into())
    }

    fn prune(&self, now: SystemTime) -> io::Result<()> {
        let base = self.base_name();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut rotated = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(at) = parse_stamp(&base, &name) {
                rotated.push((name, at));
            }
        }
        for name in expired(&self.rotation, rotated, now) {
            std::fs::remove_file(dir.join(&name))?;
            tracing::info!(file = %name, "old audit file deleted (retention)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn rotation() -> Rotation {
        Rotation {
            max_bytes: 100,
            max_age: DAY,
            keep_files: 2,
            retention: 7 * DAY,
        }
    }

    #[test]
    fn rotation_by_size_and_age() {
        let t0 = UNIX_EPOCH + 1000 * DAY;
        let r = rotation();
        assert!(
            !rotation_due(&r, 0, t0, t0 + 2 * DAY),
            "an empty file never rotates"
        );
        assert!(!rotation_due(&r, 99, t0, t0 + DAY / 2));
        assert!(rotation_due(&r, 100, t0, t0));
        assert!(rotation_due(&r, 1, t0, t0 + DAY));
    }

    #[test]
    fn retention_keeps_the_newest_and_the_recent() {
        let now = UNIX_EPOCH + 1000 * DAY;
        let files = vec![
            ("a.4".to_owned(), now - DAY),
            ("a.1".to_owned(), now - 30 * DAY),
            ("a.3".to_owned(), now - 2 * DAY),
            ("a.2".to_owned(), now - 3 * DAY),
        ];
        let mut gone = expired(&rotation(), files.clone(), now);
        gone.sort();
        assert_eq!(gone, ["a.1", "a.2"]);
        let generous = Rotation {
            keep_files: 10,
            ..rotation()
        };
        assert_eq!(expired(&generous, files, now), ["a.1"]);
    }

    #[test]
    fn stamps_sort_and_parse_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_564_800_000 + 3_723_042);
        assert_eq!(stamp(t), "20261125T010203.042Z");
        assert_eq!(
            parse_stamp("audit.jsonl", "audit.jsonl.20261125T010203.042Z"),
            Some(t)
        );
        assert_eq!(
            parse_stamp("audit.jsonl", "audit.jsonl.20261125T010203.042Z.2"),
            Some(t)
        );
        assert_eq!(parse_stamp("audit.jsonl", "audit.jsonl"), None);
        assert_eq!(
            parse_stamp("audit.jsonl", "other.20261125T010203.042Z"),
            None
        );
    }

    #[test]
    fn a_full_file_is_rotated_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut f = RotatingFile::open(&path, rotation()).unwrap();
        let line = "x".repeat(60);
        let t0 = SystemTime::now();
        for i in 0..8u64 {
            f.write(&[&line], t0 + Duration::from_millis(i)).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Two lines a file; the current one plus the two newest rotated ones kept.
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "audit.jsonl");
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(current.lines().count(), 2);
    }
}
