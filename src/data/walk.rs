//! Walking a folder of pictures without following it into loops, special files or a run's own
//! output.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// File extensions that are decoded (case-insensitive).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// Picture files under `dir` (relative paths with `/`, sorted) and the count of other files.
/// Only regular files are read (a FIFO or device named `*.png` would block or never end);
/// symbolic links are followed, but a folder already visited (a link loop, a link to a
/// parent) is not walked again; a ddpm run directory inside (its `config.yml` beside its
/// `train.log`) is left out, so a run's own grids never become its data. Hidden files and
/// folders are skipped; so are a dangling link, an unreadable subfolder and a name that is not
/// UTF-8, with one warning for all.
pub fn list(dir: &Path) -> Result<(Vec<String>, usize)> {
    let mut walk = Walk { root: dir, files: Vec::new(), ignored: 0, skipped: Vec::new(), seen: Default::default() };
    let root = std::fs::canonicalize(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    walk.seen.insert(root);
    std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        walk.folder(&d, &mut stack);
    }
    if !walk.skipped.is_empty() {
        let first: Vec<&str> = walk.skipped.iter().take(10).map(String::as_str).collect();
        let more = if walk.skipped.len() > 10 { "; ..." } else { "" };
        tracing::warn!("{}: skipped {} entries: {}{more}", dir.display(), walk.skipped.len(), first.join("; "));
    }
    walk.files.sort();
    Ok((walk.files, walk.ignored))
}

/// A file name's extension, lowercased ("" without one).
fn extension(name: &str) -> String {
    Path::new(name).extension().and_then(|x| x.to_str()).unwrap_or("").to_lowercase()
}

/// The state of [`list`]'s walk.
struct Walk<'a> {
    root: &'a Path,
    files: Vec<String>,
    ignored: usize,
    /// What was skipped, with why.
    skipped: Vec<String>,
    /// Canonical paths of the folders walked.
    seen: std::collections::HashSet<PathBuf>,
}

impl Walk<'_> {
    /// The entries of one folder: pictures kept, subfolders pushed onto `stack`.
    fn folder(&mut self, d: &Path, stack: &mut Vec<PathBuf>) {
        let entries = match std::fs::read_dir(d) {
            Ok(e) => e,
            Err(e) => return self.skipped.push(format!("{} ({e})", d.display())),
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    self.skipped.push(format!("an entry of {} ({err})", d.display()));
                    continue;
                }
            };
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(String::from) else {
                self.skipped.push(format!("{} (the name is not UTF-8)", path.display()));
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            // Follows a link; a dangling one has no metadata.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(err) => {
                    self.skipped.push(format!("{} ({err})", path.display()));
                    continue;
                }
            };
            if meta.is_dir() {
                self.subfolder(path, stack);
            } else if !meta.is_file() {
                self.skipped.push(format!("{} (not a regular file)", path.display()));
            } else if EXTENSIONS.contains(&extension(&name).as_str()) {
                let rel = path.strip_prefix(self.root).unwrap_or(&path);
                self.files
                    .push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
            } else {
                self.ignored += 1;
            }
        }
    }

    /// A subfolder to walk, unless it was walked already or is a ddpm run directory.
    fn subfolder(&mut self, path: PathBuf, stack: &mut Vec<PathBuf>) {
        if path.join("config.yml").is_file() && path.join("train.log").is_file() {
            self.skipped.push(format!("{} (a ddpm run directory)", path.display()));
            return;
        }
        match std::fs::canonicalize(&path) {
            Ok(c) => match self.seen.insert(c) {
                true => stack.push(path),
                false => self.skipped.push(format!("{} (a folder already walked: a link loop?)", path.display())),
            },
            Err(err) => self.skipped.push(format!("{} ({err})", path.display())),
        }
    }
}
