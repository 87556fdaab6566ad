//! `dataset.background`: the colour a folder picture's transparent pixels are composited onto
//! (and `resize: pad`'s borders are filled with). A transparent pixel still stores a colour
//! under its alpha of 0, often a slab of brown or teal left by the drawing program; reading
//! only the colour channels would train on those. Compositing (straight alpha, in the stored
//! sRGB values, as PIL's `alpha_composite` onto an opaque picture does) gives what a viewer
//! shows on that background instead.

use image::{DynamicImage, Rgb, RgbImage};

/// An opaque sRGB colour, written `white`, `black`, `gray` or `#rrggbb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Background(pub [u8; 3]);

impl Background {
    pub const WHITE: Self = Self([255, 255, 255]);
    pub const BLACK: Self = Self([0, 0, 0]);
    pub const GRAY: Self = Self([128, 128, 128]);

    /// The grey level of this colour for a 1-channel data set, converted as the pictures' own
    /// colours are (the image crate's `0.2126 R + 0.7152 G + 0.0722 B`).
    pub fn luma(self) -> u8 {
        use image::Pixel;
        Rgb(self.0).to_luma().0[0]
    }

    /// `picture` as opaque RGB: each pixel `alpha * colour + (1 - alpha) * background`, rounded;
    /// pictures without an alpha channel are only converted.
    pub fn flatten(self, picture: &DynamicImage) -> RgbImage {
        if !picture.color().has_alpha() {
            return picture.to_rgb8();
        }
        let rgba = picture.to_rgba8();
        let (w, h) = rgba.dimensions();
        RgbImage::from_fn(w, h, |x, y| {
            let p = rgba.get_pixel(x, y).0;
            let a = p[3] as u32;
            Rgb(std::array::from_fn(|k| ((p[k] as u32 * a + self.0[k] as u32 * (255 - a) + 127) / 255) as u8))
        })
    }
}

impl Default for Background {
    fn default() -> Self {
        Self::WHITE
    }
}

impl std::str::FromStr for Background {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let named = match crate::choice::fold(s).as_str() {
            "white" => Some(Self::WHITE),
            "black" => Some(Self::BLACK),
            "gray" | "grey" => Some(Self::GRAY),
            _ => None,
        };
        if let Some(b) = named {
            return Ok(b);
        }
        let hex = s.trim().strip_prefix('#').unwrap_or(s.trim());
        match (hex.len(), u32::from_str_radix(hex, 16)) {
            (6, Ok(v)) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Self([(v >> 16) as u8, (v >> 8) as u8, v as u8]))
            }
            _ => Err(format!(
                "{s:?} is not allowed: use white, black, gray or a colour as \"#rrggbb\" (e.g. \"#ff8800\")"
            )),
        }
    }
}

impl std::fmt::Display for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::WHITE => f.write_str("white"),
            Self::BLACK => f.write_str("black"),
            Self::GRAY => f.write_str("gray"),
            Self([r, g, b]) => write!(f, "#{r:02x}{g:02x}{b:02x}"),
        }
    }
}

impl serde::Serialize for Background {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Background {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(<D::Error as serde::de::Error>::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Background;
    use image::{DynamicImage, Rgba, RgbaImage};

    #[test]
    fn names_and_hex_colours_parse_and_print_back() {
        for (text, want, printed) in [
            ("white", [255, 255, 255], "white"),
            ("Black", [0, 0, 0], "black"),
            ("grey", [128, 128, 128], "gray"),
            ("#FF8800", [255, 136, 0], "#ff8800"),
            ("0a0b0c", [10, 11, 12], "#0a0b0c"),
        ] {
            let b: Background = text.parse().unwrap();
            assert_eq!(b.0, want, "{text}");
            assert_eq!(b.to_string(), printed);
        }
        for bad in ["pink", "#fff", "#12345g", "", "+12345"] {
            let e = bad.parse::<Background>().unwrap_err();
            assert!(e.contains("white, black, gray or a colour as \"#rrggbb\""), "{bad}: {e}");
        }
    }

    #[test]
    fn straight_alpha_over_the_background() {
        // Opaque, half and fully transparent pixels whose stored colour is red.
        let img = RgbaImage::from_fn(3, 1, |x, _| Rgba([255, 0, 0, [255, 128, 0][x as usize]]));
        let out = Background([0, 0, 255]).flatten(&DynamicImage::ImageRgba8(img));
        assert_eq!(out.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(1, 0).0, [128, 0, 127]);
        assert_eq!(out.get_pixel(2, 0).0, [0, 0, 255]);
        assert_eq!(Background::WHITE.luma(), 255);
        assert_eq!(Background([255, 0, 0]).luma(), 54);
    }
}
