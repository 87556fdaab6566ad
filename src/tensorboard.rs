//! TensorBoard scalars and images without TensorFlow: an `events.out.tfevents.*` file of TFRecords, each
//! an `Event` protobuf (wall_time = 1, step = 2, file_version = 3, summary = 5) framed as
//! `len u64 | masked crc32c(len) | data | masked crc32c(data)`.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Appends scalar events to one file.
pub struct EventWriter {
    file: File,
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    varint(1 << 3 | 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<time>.ddpm` and writes the version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("events.out.tfevents.{}.ddpm", now() as u64));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = Self { file };
        w.record(&event(now(), 0, |e| bytes_field(3, b"brain.Event:2", e)))?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&rec).context("writing TensorBoard events")
    }

    /// One scalar: `Summary { value { tag = 1, simple_value = 2 } }`.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        varint(2 << 3 | 5, &mut v);
        v.extend_from_slice(&(value as f32).to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(1, &v, &mut summary);
        self.record(&event(now(), step, |e| bytes_field(5, &summary, e)))
    }

    /// One PNG-encoded image: `Summary { value { tag = 1, image = 4 { height = 1, width = 2,
    /// colorspace = 3, encoded_image_string = 4 } } }` (colorspace 1 = gray, 3 = RGB).
    pub fn image(&mut self, tag: &str, step: i64, png: &[u8], height: u32, width: u32, channels: u32) -> Result<()> {
        let mut img = Vec::new();
        for (field, v) in [(1u64, height as u64), (2, width as u64), (3, channels as u64)] {
            varint(field << 3, &mut img);
            varint(v, &mut img);
        }
        bytes_field(4, png, &mut img);
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        bytes_field(4, &img, &mut v);
        let mut summary = Vec::new();
        bytes_field(1, &v, &mut summary);
        self.record(&event(now(), step, |e| bytes_field(5, &summary, e)))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().context("flushing TensorBoard events")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_known_value() {
        // RFC 3720 B.4: crc32c("123456789") = 0xE3069283.
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
