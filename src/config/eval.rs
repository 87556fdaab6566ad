//! The `eval:` section of options.yml: what `ddpm eval` needs beyond the samples.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name pytorch-fid gives the FID Inception weights.
pub const INCEPTION_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// `--metric fid`: the FID Inception weights (pytorch-fid's
    /// `pt_inception-2015-12-05-6726825d.pth` or its safetensors conversion); empty =
    /// `<dataset.root>/pt_inception-2015-12-05-6726825d.pth`. `--inception PATH` overrides it.
    pub inception_weights: PathBuf,
}

impl EvalConfig {
    /// The weights file to use, `root` being `dataset.root`.
    pub fn inception_weights_path(&self, root: &Path) -> PathBuf {
        match self.inception_weights.as_os_str().is_empty() {
            true => root.join(INCEPTION_FILE),
            false => self.inception_weights.clone(),
        }
    }
}
