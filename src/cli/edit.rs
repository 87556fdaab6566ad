//! `ddpm edit`'s flags.

use super::ReverseArgs;
pub use crate::edit::Mode as EditMode;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  ddpm edit inpaint --input dataset:test -n 16 --mask bottom-half --out inpainted.png
  ddpm edit img2img --input sketch.png --strength 0.3,0.5,0.7
  ddpm edit invert --input dataset:test -n 8 --steps 100
  ddpm edit interpolate --seeds 3,7 --frames 10
  ddpm edit interpolate --input a.png --to b.png --steps 100")]
pub struct EditArgs {
    /// img2img, inpaint, invert or interpolate.
    #[arg(value_enum)]
    pub mode: EditMode,
    /// The pictures: a PNG (or JPEG, ...) file, a folder of them, an .npz (arr_0 uint8
    /// [N, H, W, C]), or dataset:test / dataset:train for the configured data set's pictures.
    /// Brought to the model's size and channels as the folder data set does.
    #[arg(long, short, value_name = "PATH|dataset:test")]
    pub input: Option<String>,
    /// At most this many pictures of --input (default: 16 from a data set, else all, at most
    /// 256).
    #[arg(short, long = "n", value_name = "N")]
    pub n: Option<i64>,
    /// inpaint: the region to regenerate: a PNG of the model's size (white = regenerate), or
    /// top-half, bottom-half, left-half, right-half, center, border.
    #[arg(long, value_name = "PNG|REGION")]
    pub mask: Option<String>,
    /// img2img: how far to noise, in [0, 1] (0 = unchanged, 1 = a fresh sample); a comma list
    /// (0.3,0.5,0.7) gives one row per strength.
    #[arg(long, value_name = "S[,S..]", value_delimiter = ',', allow_negative_numbers = true)]
    pub strength: Vec<f64>,
    /// inpaint: take every step this many times, noising back in between (RePaint's r; 1 =
    /// replace the known region only).
    #[arg(long, default_value_t = 1)]
    pub resample: usize,
    /// interpolate: the picture to go to from --input's first.
    #[arg(long, value_name = "PATH")]
    pub to: Option<String>,
    /// interpolate: two seeds whose noises are interpolated (instead of --input and --to).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// interpolate: pictures in the sequence, both ends included.
    #[arg(long, default_value_t = 8)]
    pub frames: i64,
    /// Where to write the PNG (default <run_dir>/edit-<mode>.png); interpolate writes a GIF
    /// beside it.
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Also write the results (float [-1, 1], [N, C, H, W]) as safetensors ("samples", as
    /// `ddpm sample --save-tensor` does; `ddpm eval --samples` reads it).
    #[arg(long, value_name = "PATH")]
    pub save_tensor: Option<PathBuf>,
    #[command(flatten)]
    pub reverse: ReverseArgs,
}
