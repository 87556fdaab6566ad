//! Every random draw of a run comes from the run's seed through one derivation, one stream per
//! purpose and index, so that training, sampling and the bench draw the same numbers for the
//! same seed and a resumed run continues the same sequence.

/// Seeds derived from the run's seed, one stream per purpose (splitmix64; positive).
pub fn derived_seed(seed: u64, purpose: u64, index: i64) -> i64 {
    let mut z = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}
/// The purpose of the seed of an epoch's permutation.
pub const SEED_EPOCH: u64 = 1;
/// The purpose of the seed of a step's random draws.
pub const SEED_STEP: u64 = 2;
/// The purpose of the noise of a numbered batch of samples (`draw::draw_batch`).
pub const SEED_BATCH: u64 = 3;

/// The order in which epoch `epoch` visits `n` images: a permutation drawn from the run's seed
/// for that epoch alone, so that a resumed run, the bench and a second process see the same
/// order. Reseeds libtorch's global generator.
pub fn epoch_order(seed: u64, epoch: i64, n: i64) -> tch::Tensor {
    tch::manual_seed(derived_seed(seed, SEED_EPOCH, epoch));
    tch::Tensor::randperm(n, (tch::Kind::Int64, tch::Device::Cpu))
}
