//! The `network:` section of options.yml: which noise-prediction network, with only its own
//! keys (`kind: demo` or `kind: unet`).

use serde::{Deserialize, Serialize};

/// The network, tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NetworkConfig {
    /// The teaching demo's LayerNorm UNet.
    Demo(DemoConfig),
    /// The DDPM paper's GroupNorm/SiLU UNet with self-attention.
    Unet(UnetConfig),
}

/// `kind: demo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Width of each level; each level after the first halves the image.
    pub channels: Vec<i64>,
    /// Width of the sinusoidal time encoding.
    pub pe_dim: i64,
    /// Residual connections inside the blocks.
    pub residual: bool,
    /// Classes for conditional generation (0 = unconditional, the demo's network).
    pub num_classes: i64,
}

/// `kind: unet`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UnetConfig {
    /// Classes for conditional generation (0 = unconditional).
    pub num_classes: i64,
    /// Width of the first level.
    pub base_channels: i64,
    /// Width of each level as a multiple of base_channels.
    pub channel_mults: Vec<i64>,
    /// Residual blocks per level.
    pub num_res_blocks: i64,
    /// Feature-map sizes (e.g. 16) that get self-attention.
    pub attn_resolutions: Vec<i64>,
    /// Dropout inside the residual blocks.
    pub dropout: f64,
    /// GroupNorm groups (every width must be divisible by it).
    pub groups: i64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self::Demo(DemoConfig::default())
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { channels: vec![10, 20, 40, 80], pe_dim: 128, residual: true, num_classes: 0 }
    }
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            num_classes: 0,
            base_channels: 128,
            channel_mults: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            groups: 32,
        }
    }
}

crate::choice! {
    /// `network.kind`: which network a configuration or checkpoint describes.
    pub enum NetworkKind {
        /// The teaching demo's UNet (`DemoConfig`).
        Demo = "demo",
        /// The paper's UNet (`UnetConfig`).
        Unet = "unet",
    }
}

/// The kinds, as written in options.yml.
pub const KINDS: &[&str] = NetworkKind::NAMES;

fn check(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("network.{key} = {value} is not allowed: {allowed}"))
    }
}

impl NetworkConfig {
    /// `demo` or `unet`.
    pub fn kind(&self) -> NetworkKind {
        match self {
            Self::Demo(_) => NetworkKind::Demo,
            Self::Unet(_) => NetworkKind::Unet,
        }
    }

    /// The default settings of a kind.
    pub fn default_of(kind: NetworkKind) -> Self {
        match kind {
            NetworkKind::Demo => Self::Demo(DemoConfig::default()),
            NetworkKind::Unet => Self::Unet(UnetConfig::default()),
        }
    }

    /// Classes for conditional generation (0 = unconditional).
    pub fn num_classes(&self) -> i64 {
        match self {
            Self::Demo(d) => d.num_classes,
            Self::Unet(u) => u.num_classes,
        }
    }

    /// Whether the network draws random numbers while training (dropout).
    pub fn has_dropout(&self) -> bool {
        matches!(self, Self::Unet(u) if u.dropout > 0.0)
    }

    /// Checks the values for images of `[C, H, W]`; the message names the key.
    pub fn validate(&self, image_shape: [i64; 3]) -> Result<(), String> {
        check(self.num_classes() >= 0, "num_classes", self.num_classes(), "num_classes >= 0 (0 = unconditional)")?;
        match self {
            Self::Demo(d) => {
                check(
                    !d.channels.is_empty() && d.channels.iter().all(|&c| c > 0),
                    "channels",
                    format!("{:?}", d.channels),
                    "a non-empty list of positive integers, e.g. [10, 20, 40, 80]",
                )?;
                check(d.pe_dim > 0 && d.pe_dim % 2 == 0, "pe_dim", d.pe_dim, "an even number > 0")?;
                let [_, h, w] = image_shape;
                let levels = d.channels.len() as u32 - 1;
                check(
                    h >> levels >= 1 && w >> levels >= 1,
                    "channels",
                    format!("{:?}", d.channels),
                    &format!("{levels} halvings of a {h}x{w} image leave nothing; use fewer levels"),
                )
            }
            Self::Unet(u) => {
                check(u.base_channels > 0, "base_channels", u.base_channels, "base_channels > 0")?;
                check(
                    !u.channel_mults.is_empty() && u.channel_mults.iter().all(|&m| m > 0),
                    "channel_mults",
                    format!("{:?}", u.channel_mults),
                    "a non-empty list of positive integers, e.g. [1, 2, 2, 2]",
                )?;
                check(u.num_res_blocks >= 1, "num_res_blocks", u.num_res_blocks, "num_res_blocks >= 1")?;
                check(
                    u.attn_resolutions.iter().all(|&r| r > 0),
                    "attn_resolutions",
                    format!("{:?}", u.attn_resolutions),
                    "feature-map sizes > 0, e.g. [16] (or [] for no attention)",
                )?;
                check((0.0..1.0).contains(&u.dropout), "dropout", u.dropout, "0 <= dropout < 1")?;
                let bad_width =
                    u.channel_mults.iter().map(|m| m * u.base_channels).find(|w| u.groups < 1 || w % u.groups != 0);
                check(
                    bad_width.is_none(),
                    "groups",
                    u.groups,
                    &format!(
                        "a divisor of every width (base_channels x channel_mults; {} is not divisible)",
                        bad_width.unwrap_or(0)
                    ),
                )
            }
        }
    }

    /// For a UNet, the entries of `attn_resolutions` that no level has on images of this
    /// shape (attention goes where a level's feature-map height equals an entry), as a warning.
    pub fn unmatched_attention(&self, image_shape: [i64; 3]) -> Option<String> {
        let Self::Unet(u) = self else { return None };
        let [_, h, w] = image_shape;
        let mut levels = vec![h];
        for _ in 1..u.channel_mults.len() {
            levels.push((levels[levels.len() - 1] + 1) / 2);
        }
        let unmatched: Vec<i64> = u.attn_resolutions.iter().copied().filter(|r| !levels.contains(r)).collect();
        (!unmatched.is_empty()).then(|| {
            format!(
                "network.attn_resolutions: {unmatched:?} is no level of this network on {h}x{w} images (its feature \
                 maps are {levels:?} high), so no attention is added there; pick among those, or [] to say so"
            )
        })
    }

    /// A one-line description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Demo(d) => format!("demo (channels {:?}, pe_dim {}, residual {})", d.channels, d.pe_dim, d.residual),
            Self::Unet(u) => format!(
                "unet (base {}, mults {:?}, {} blocks, attention at {:?}, dropout {})",
                u.base_channels, u.channel_mults, u.num_res_blocks, u.attn_resolutions, u.dropout
            ),
        }
    }

    /// Reads the settings a checkpoint's metadata holds. Checkpoints written before the
    /// network section was split by kind hold every key of both kinds (and maybe no `kind`,
    /// meaning demo): only the keys of the checkpoint's kind are taken.
    pub fn from_metadata(v: &serde_json::Value) -> Result<Self, String> {
        let mut map = v.as_object().cloned().ok_or("the network entry is not a JSON object")?;
        let kind = match map.get("kind") {
            None => "demo".to_string(),
            Some(k) => k.as_str().ok_or("network.kind is not a string")?.to_string(),
        };
        let default = KINDS
            .contains(&kind.as_str())
            .then(|| kind.parse::<NetworkKind>().ok())
            .flatten()
            .map(Self::default_of)
            .ok_or_else(|| format!("network.kind {kind:?} is unknown (this build knows {})", KINDS.join(", ")))?;
        let keys = serde_json::to_value(default).map_err(|e| e.to_string())?;
        map.retain(|k, _| keys.get(k).is_some());
        map.insert("kind".into(), kind.into());
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_yaml_round_trip() {
        let n: NetworkConfig = serde_yaml::from_str("kind: unet\nbase_channels: 64\n").unwrap();
        let NetworkConfig::Unet(u) = &n else { panic!("expected unet, got {n:?}") };
        assert_eq!((u.base_channels, u.groups), (64, 32));
        let back: NetworkConfig = serde_yaml::from_str(&serde_yaml::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        let e = serde_yaml::from_str::<NetworkConfig>("kind: unet\nchannels: [1, 2]\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `channels`"), "{e}");
    }

    #[test]
    fn old_flat_metadata_reads_by_kind() {
        // The metadata of a checkpoint written when the section was one flat struct.
        let flat = serde_json::json!({
            "kind": "demo", "channels": [4, 8], "pe_dim": 16, "residual": false, "num_classes": 2,
            "base_channels": 128, "channel_mults": [1, 2], "num_res_blocks": 2, "attn_resolutions": [16],
            "dropout": 0.1, "groups": 32
        });
        let n = NetworkConfig::from_metadata(&flat).unwrap();
        assert_eq!(
            n,
            NetworkConfig::Demo(DemoConfig { channels: vec![4, 8], pe_dim: 16, residual: false, num_classes: 2 })
        );
        let mut unet = flat.clone();
        unet["kind"] = "unet".into();
        assert!(matches!(NetworkConfig::from_metadata(&unet).unwrap(), NetworkConfig::Unet(u) if u.num_classes == 2));
        let mut odd = flat;
        odd["kind"] = "vit".into();
        assert!(NetworkConfig::from_metadata(&odd).unwrap_err().contains("demo, unet"));
    }
}
