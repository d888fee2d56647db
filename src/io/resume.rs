//! The receiver's side of resuming: at a session's start, the output an
//! interrupted transfer left (checked against its [`journal`]) or a new
//! one; while it fills, the journal kept up to date; at the end, the
//! journal removed once the output is committed.
//!
//! [`journal`]: crate::io::journal

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::journal::{journal_path, tree_journal_path, Identity, Journal, JournalFile};
use super::output::{Destination, Output, OutputPolicy};
use crate::proto::auth::Keys;
use crate::report::human_bytes;
use crate::tree::output::TreeOutput;
use crate::wire::message::{FileAttrs, SessionInfo, SourceId, TreeShape};

/// Everything a receiver knows of a session's output when it opens.
pub struct OutputPlan<'a> {
    /// The file to write, or a tree's directory.
    pub path: &'a Path,
    pub info: SessionInfo,
    pub source: SourceId,
    pub attrs: Option<FileAttrs>,
    pub tree: Option<TreeShape>,
    /// The sender's name for its input (a tree's first path), which names
    /// a tree's journal.
    pub name: Option<&'a str>,
    /// Bytes of a tree's stream held in memory until its manifest is in.
    pub held_len: u64,
    pub policy: OutputPolicy,
    pub max_files: u64,
    pub keys: Option<&'a Keys>,
    /// `recv --no-resume`: an interrupted transfer's output is replaced.
    pub no_resume: bool,
}

impl OutputPlan<'_> {
    fn digest_key(&self) -> Option<[u8; 32]> {
        self.keys.map(Keys::digest_key)
    }

    fn identity(&self) -> Identity {
        Identity { size: self.info.file_size, mtime_ns: self.attrs.map_or(0, |a| a.mtime_ns), tree: self.tree }
    }

    fn journal_path(&self) -> PathBuf {
        match self.tree {
            Some(_) => tree_journal_path(self.path, self.name.unwrap_or_default()),
            None => journal_path(self.path),
        }
    }

    /// A new output, nothing of an earlier one kept.
    pub fn create(&self) -> io::Result<Destination> {
        if let Some(shape) = self.tree {
            let limits = crate::wire::manifest::Limits { max_entries: self.max_files };
            let t = TreeOutput::create(self.path, shape, self.info.file_size, self.held_len, self.policy, limits)?;
            return Ok(Destination::Tree(t.with_digest_key(self.digest_key())));
        }
        let sparse = self.attrs.and_then(|a| a.data_bytes);
        let o = Output::create(self.path, self.info.file_size, sparse, &self.source, self.policy)?;
        Ok(Destination::File(o.with_digest_key(self.digest_key()).with_attrs(self.attrs)))
    }

    /// The output an interrupted transfer left, its first `j.verified`
    /// bytes read back and hashed: `Ok(None)` when they are not what the
    /// journal says.
    fn reopen(&self, j: &Journal) -> io::Result<Option<Destination>> {
        let mut dest = if let Some(shape) = self.tree {
            let limits = crate::wire::manifest::Limits { max_entries: self.max_files };
            let mut t = TreeOutput::create(self.path, shape, self.info.file_size, self.held_len, self.policy, limits)?
                .with_digest_key(self.digest_key());
            t.resume(&j.manifest)?;
            Destination::Tree(t)
        } else {
            let sparse = self.attrs.and_then(|a| a.data_bytes).is_some();
            let o = Output::reopen(self.path, self.info.file_size, sparse, &self.source, self.policy)?;
            Destination::File(o.with_digest_key(self.digest_key()).with_attrs(self.attrs))
        };
        dest.hash_read_back(j.verified)?;
        Ok((dest.prefix_digest() == (j.verified, j.hash)).then_some(dest))
    }
}

/// A session's output as prepared at its start.
pub struct Prepared {
    pub dest: Destination,
    pub journal: Journaling,
    /// The verified prefix to offer the sender: its length and digest.
    pub offer: Option<(u64, [u8; 32])>,
}

/// Prepares a session's output: the one an interrupted transfer of the
/// same source left, when its journal and its bytes agree (then offered
/// to the sender), else a new one, saying why an old one was replaced.
pub fn prepare(plan: &OutputPlan<'_>) -> io::Result<Prepared> {
    let path = plan.journal_path();
    let mut journal =
        Journaling { path: path.clone(), identity: plan.identity(), keys: plan.keys.cloned(), file: None };
    if !plan.no_resume {
        match Journal::load(&path, plan.identity(), plan.keys) {
            Ok(Some(j)) if j.verified > 0 => match plan.reopen(&j) {
                Ok(Some(dest)) => {
                    let offer = Some((j.verified, j.hash));
                    journal.file = Some((JournalFile::create(&path, j, plan.keys.cloned())?, Instant::now()));
                    return Ok(Prepared { dest, journal, offer });
                }
                Ok(None) => starting_over(plan.path, "the partial output no longer holds what its journal says"),
                Err(e) => starting_over(plan.path, &format!("the partial output cannot be resumed ({e})")),
            },
            Ok(_) => {}
            Err(why) => starting_over(plan.path, &why.to_string()),
        }
    }
    let dest = plan.create()?;
    if plan.tree.is_none() {
        journal.start(Vec::new())?;
    }
    Ok(Prepared { dest, journal, offer: None })
}

fn starting_over(path: &Path, why: &str) {
    warn!("{}: {why}; starting over", path.display());
}

/// Says how a resume offer was answered; with `from == 0`, restarts the
/// output's digest, and a tree's output is made anew (the manifest comes
/// again).
pub fn settled(plan: &OutputPlan<'_>, dest: &mut Destination, journal: &mut Journaling, from: u64) -> io::Result<()> {
    if from > 0 {
        let size = plan.info.file_size;
        info!(
            "resuming {}: {} of {} already here and verified; receiving the rest",
            plan.path.display(),
            human_bytes(from),
            human_bytes(size)
        );
        return Ok(());
    }
    starting_over(
        plan.path,
        "the sender's file differs from what the partial output holds (it changed since the interrupted transfer)",
    );
    match dest {
        Destination::File(o) => {
            o.restart_digest();
            journal.start(Vec::new())
        }
        Destination::Tree(_) => {
            *dest = plan.create()?;
            journal.stop()
        }
    }
}

/// Keeps a session's journal: written at its start (a tree's once its
/// manifest is in), brought up to date as the verified prefix grows, and
/// removed with the committed output.
#[derive(Debug)]
pub struct Journaling {
    path: PathBuf,
    identity: Identity,
    keys: Option<Keys>,
    file: Option<(JournalFile, Instant)>,
}

/// A journal is brought up to date at most this often...
const RECORD_EVERY: Duration = Duration::from_millis(250);
/// ...unless the prefix has grown this much since.
const RECORD_BYTES: u64 = 16 << 20;

impl Journaling {
    /// Starts the journal of a new output (a tree's with its manifest).
    pub fn start(&mut self, manifest: Vec<u8>) -> io::Result<()> {
        let hash = *self.keys.as_ref().map_or_else(blake3::Hasher::new, Keys::digest_hasher).finalize().as_bytes();
        let j = Journal { identity: self.identity, verified: 0, hash, manifest };
        self.file = Some((JournalFile::create(&self.path, j, self.keys.clone())?, Instant::now()));
        Ok(())
    }

    /// Records the output's verified prefix, if it grew enough (or `now`).
    pub fn record(&mut self, dest: &Destination, force: bool) {
        let Some((f, at)) = self.file.as_mut() else { return };
        let verified = dest.hashed_bytes();
        let due = force || at.elapsed() >= RECORD_EVERY || verified >= f.verified() + RECORD_BYTES;
        if verified > f.verified() && due {
            // The prefix's digest (a copy of the hasher, finished) only when
            // it is written.
            let (verified, hash) = dest.prefix_digest();
            if let Err(e) = f.record(verified, hash) {
                warn!("updating the journal {}: {e}", f.path().display());
            }
            *at = Instant::now();
        }
    }

    /// The output is committed (or cannot be resumed): no journal stays.
    pub fn stop(&mut self) -> io::Result<()> {
        match self.file.take() {
            Some((f, _)) => f.remove(),
            None => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
