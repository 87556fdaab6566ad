//! Dataset readers: IDX (gzipped and raw, torchvision layout), CIFAR-10 binary, every format
//! error with the file named, and the real MNIST / Fashion-MNIST in ../shared/datasets.

use crate::common::*;
use ddpm::data::DatasetConfig;
use ddpm::data::{self, cifar, idx, Split};
use std::path::Path;
use tch::Kind;

fn labels_vec(t: &tch::Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

fn cfg(root: &Path, name: &str) -> DatasetConfig {
    DatasetConfig { name: name.parse().unwrap(), root: root.to_path_buf(), download: false, ..Default::default() }
}

#[test]
fn idx_raw_and_gzipped_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = idx_images(5, 28, 28, |i, y, x| ((i * 31 + y * 7 + x) % 256) as u8);
    let lbls = idx_labels(&[3, 1, 4, 1, 5]);
    let raw = dir.path().join("raw");
    let gz = dir.path().join("gz");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::create_dir_all(&gz).unwrap();
    std::fs::write(raw.join("t10k-images-idx3-ubyte"), &imgs).unwrap();
    std::fs::write(raw.join("t10k-labels-idx1-ubyte"), &lbls).unwrap();
    std::fs::write(gz.join("t10k-images-idx3-ubyte.gz"), gzip(&imgs)).unwrap();
    std::fs::write(gz.join("t10k-labels-idx1-ubyte.gz"), gzip(&lbls)).unwrap();
    let a = idx::read_pair(&raw.join("t10k-images-idx3-ubyte"), &raw.join("t10k-labels-idx1-ubyte")).unwrap();
    let b = idx::read_pair(&gz.join("t10k-images-idx3-ubyte"), &gz.join("t10k-labels-idx1-ubyte")).unwrap();
    assert_eq!(a.images.size(), vec![5, 1, 28, 28]);
    assert_eq!(a.images.kind(), Kind::Uint8);
    assert_eq!(labels_vec(&a.labels), vec![3, 1, 4, 1, 5]);
    assert!(a.images.equal(&b.images));
    // Pixel (i=2, y=3, x=4) is (2*31 + 3*7 + 4) % 256 = 87.
    assert_eq!(a.images.int64_value(&[2, 0, 3, 4]), 87);
}

#[test]
fn batches_are_float_in_minus_one_one() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 6);
    let ds = data::load(&cfg(dir.path(), "MNIST"), Split::Train).unwrap();
    let xs = ds.batch(&tch::Tensor::from_slice(&[0i64, 1]), tch::Device::Cpu);
    assert_eq!(xs.kind(), Kind::Float);
    assert_eq!(xs.min().double_value(&[]), -1.0);
    assert_eq!(xs.max().double_value(&[]), 1.0);
    assert_eq!(ds.class_names.len(), 10);
}

#[test]
fn torchvision_layout_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("FashionMNIST/raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(raw.join("train-images-idx3-ubyte.gz"), gzip(&idx_images(3, 28, 28, |_, _, _| 9))).unwrap();
    std::fs::write(raw.join("train-labels-idx1-ubyte.gz"), gzip(&idx_labels(&[0, 9, 8]))).unwrap();
    let ds = data::load(&cfg(dir.path(), "FashionMNIST"), Split::Train).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.class_names[9], "Ankle boot");
}

fn idx_error(images: Vec<u8>, labels: Vec<u8>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = (dir.path().join("imgs"), dir.path().join("lbls"));
    std::fs::write(&i, images).unwrap();
    std::fs::write(&l, labels).unwrap();
    format!("{:#}", idx::read_pair(&i, &l).unwrap_err())
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    let good = idx_images(4, 28, 28, |_, _, _| 0);
    let mut bad_magic = good.clone();
    bad_magic[3] = 0x01;
    let e = idx_error(bad_magic, idx_labels(&[0; 4]));
    assert!(e.contains("imgs") && e.contains("bad magic number 0x00000801") && e.contains("0x00000803"), "{e}");

    let e = idx_error(good[..good.len() - 100].to_vec(), idx_labels(&[0; 4]));
    assert!(e.contains("imgs") && e.contains("truncated") && e.contains("4 images of 28x28"), "{e}");

    let e = idx_error(good.clone(), idx_labels(&[0; 3]));
    assert!(e.contains("4 images") && e.contains("3 labels"), "{e}");

    let e = idx_error(good[..10].to_vec(), idx_labels(&[0; 4]));
    assert!(e.contains("too short"), "{e}");

    let mut lbl = idx_labels(&[0; 4]);
    lbl[3] = 0x03;
    let e = idx_error(good.clone(), lbl);
    assert!(e.contains("lbls") && e.contains("bad magic"), "{e}");

    let mut corrupt_gz = gzip(&good);
    corrupt_gz.truncate(40);
    let e = idx_error(corrupt_gz, idx_labels(&[0; 4]));
    assert!(e.contains("imgs") && e.contains("gzip"), "{e}");
}

#[test]
fn missing_files_say_what_is_needed_and_how() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!("{:#}", data::load(&cfg(dir.path(), "mnist"), Split::Train).unwrap_err());
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("train-labels-idx1-ubyte"), "{e}");
    assert!(e.contains(&dir.path().join("mnist").display().to_string()), "{e}");
    assert!(e.contains("download") && e.contains("scripts/setup.sh --data mnist"), "{e}");
    let e = format!("{:#}", data::load(&cfg(dir.path(), "cifar10"), Split::Train).unwrap_err());
    assert!(e.contains("cifar-10-batches-bin") && e.contains("data_batch_1.bin"), "{e}");
}

/// A CIFAR-10 record: label, then the red plane, green plane, blue plane.
fn cifar_record(label: u8, rgb: impl Fn(usize, usize, usize) -> u8) -> Vec<u8> {
    let mut r = vec![label];
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                r.push(rgb(c, y, x));
            }
        }
    }
    r
}

pub fn write_cifar(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> =
        (1..=5).map(|i| format!("data_batch_{i}.bin")).chain(["test_batch.bin".to_string()]).collect();
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = ((f * per_file + i) % 10) as u8;
            bytes.extend(cifar_record(label, |c, y, x| (c * 100 + y + x + f) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(
        dir.join("batches.meta.txt"),
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n",
    )
    .unwrap();
}

#[test]
fn cifar10_binary_format_reads_planes_in_rgb_order() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(&dir.path().join("cifar-10-batches-bin"), 3);
    let train = data::load(&cfg(dir.path(), "CIFAR-10"), Split::Train).unwrap();
    assert_eq!(train.images.size(), vec![15, 3, 32, 32]);
    assert_eq!(labels_vec(&train.labels), (0..15).map(|i| i % 10).collect::<Vec<i64>>());
    // Record 4 is in data_batch_2.bin (f = 1): pixel (c, y, x) = c*100 + y + x + 1.
    assert_eq!(train.images.int64_value(&[4, 0, 2, 3]), 6);
    assert_eq!(train.images.int64_value(&[4, 1, 2, 3]), 106);
    assert_eq!(train.images.int64_value(&[4, 2, 31, 0]), 232);
    assert_eq!(train.class_names[1], "automobile");
    let test = data::load(&cfg(dir.path(), "cifar10"), Split::Test).unwrap();
    assert_eq!(test.len(), 3);
}

#[test]
fn cifar10_record_length_and_label_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data_batch_1.bin");
    let rec = cifar_record(1, |_, _, _| 0);
    let e = format!("{:#}", cifar::parse_batch(&p, &rec[..3000]).unwrap_err());
    assert!(e.contains("data_batch_1.bin") && e.contains("3000 bytes") && e.contains("3073"), "{e}");
    let mut two = rec.clone();
    two.extend(&rec[..100]);
    let e = format!("{:#}", cifar::parse_batch(&p, &two).unwrap_err());
    assert!(e.contains("3173 bytes") && e.contains("truncated"), "{e}");
    let e = format!("{:#}", cifar::parse_batch(&p, &cifar_record(12, |_, _, _| 0)).unwrap_err());
    assert!(e.contains("label 12"), "{e}");
    let e = format!("{:#}", cifar::parse_batch(&p, &[]).unwrap_err());
    assert!(e.contains("0 bytes"), "{e}");
}

#[test]
fn real_mnist_and_fashion_mnist() {
    let Some(root) = real_datasets() else { return };
    let train = data::load(&cfg(&root, "mnist"), Split::Train).unwrap();
    let test = data::load(&cfg(&root, "mnist"), Split::Test).unwrap();
    assert_eq!(train.images.size(), vec![60000, 1, 28, 28]);
    assert_eq!(test.len(), 10000);
    let counts = Vec::<i64>::try_from(&train.labels.bincount::<tch::Tensor>(None, 10)).unwrap();
    assert_eq!(counts, vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    // Official md5 of the uncompressed bytes, as listed in MD5SUMS.uncompressed.
    let (_, bytes) = idx::read_maybe_gz(&root.join("mnist/train-labels-idx1-ubyte")).unwrap();
    assert_eq!(data::download::md5_hex(&bytes), "a25bea736e30d166cdddb491f175f624");

    let ftrain = data::load(&cfg(&root, "fashion-mnist"), Split::Train).unwrap();
    let ftest = data::load(&cfg(&root, "fashion-mnist"), Split::Test).unwrap();
    assert_eq!((ftrain.len(), ftest.len()), (60000, 10000));
    let fcounts = Vec::<i64>::try_from(&ftrain.labels.bincount::<tch::Tensor>(None, 10)).unwrap();
    assert_eq!(fcounts, vec![6000; 10]);
}
