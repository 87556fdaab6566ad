//! The numbers of `ddpm eval`, computed in f64: a Fréchet distance between Gaussian fits of
//! two feature sets, a classifier score in the spirit of the Inception Score, the entropy of the
//! predicted-class histogram, and label fidelity.

use tch::{Kind, Tensor};

/// Mean `[D]` and covariance `[D, D]` (unbiased) of `feats: [N, D]`, in f64.
pub fn gaussian_stats(feats: &Tensor) -> (Tensor, Tensor) {
    let f = feats.to_kind(Kind::Double);
    let n = f.size()[0];
    let mu = f.mean_dim(0, false, Kind::Double);
    let centred = &f - &mu;
    let cov = centred.transpose(0, 1).matmul(&centred) / ((n - 1).max(1) as f64);
    (mu, cov)
}

/// Symmetric square root of a symmetric positive semi-definite matrix (eigendecomposition,
/// negative eigenvalues from round-off clamped to 0).
fn sqrtm_psd(m: &Tensor) -> Tensor {
    let sym = (m + m.transpose(0, 1)) / 2.0;
    let (vals, vecs) = sym.linalg_eigh("L");
    let root = vals.clamp_min(0.0).sqrt();
    (&vecs * root.unsqueeze(0)).matmul(&vecs.transpose(0, 1))
}

/// `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)`.
pub fn frechet_distance(mu1: &Tensor, s1: &Tensor, mu2: &Tensor, s2: &Tensor) -> f64 {
    let d = mu1 - mu2;
    let r1 = sqrtm_psd(s1);
    let inner = r1.matmul(s2).matmul(&r1);
    let inner = (&inner + inner.transpose(0, 1)) / 2.0;
    let tr_sqrt = inner.linalg_eigvalsh("L").clamp_min(0.0).sqrt().sum(Kind::Double);
    let v = d.dot(&d) + s1.trace() + s2.trace() - tr_sqrt * 2.0;
    v.double_value(&[]).max(0.0)
}

/// Fréchet distance between two feature sets `[N, D]`.
pub fn frechet_distance_of(a: &Tensor, b: &Tensor) -> f64 {
    let (m1, s1) = gaussian_stats(a);
    let (m2, s2) = gaussian_stats(b);
    frechet_distance(&m1, &s1, &m2, &s2)
}

/// `exp(mean_i KL(p_i || p_marginal))` for class probabilities `[N, K]`: k for confident
/// predictions spread evenly over k classes, 1 for a single class.
pub fn classifier_score(probs: &Tensor) -> f64 {
    let p = probs.to_kind(Kind::Double).clamp_min(1e-12);
    let marginal = p.mean_dim(0, true, Kind::Double);
    let kl = (&p * (p.log() - marginal.log())).sum_dim_intlist(1, false, Kind::Double);
    kl.mean(Kind::Double).exp().double_value(&[])
}

/// Entropy (nats) of the histogram of predicted classes; ln(K) when every class is equally
/// frequent, 0 when all samples are one class (mode collapse).
pub fn class_histogram_entropy(probs: &Tensor) -> f64 {
    let k = probs.size()[1];
    let hist = probs.argmax(-1, false).bincount::<Tensor>(None, k).to_kind(Kind::Double);
    let p = &hist / hist.sum(Kind::Double);
    let nz = p.masked_select(&p.gt(0.0));
    (-(&nz * nz.log()).sum(Kind::Double)).double_value(&[])
}

/// Share of samples made for label y that the classifier calls y.
pub fn label_fidelity(probs: &Tensor, labels: &Tensor) -> f64 {
    probs
        .argmax(-1, false)
        .eq_tensor(&labels.to_device(probs.device()))
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}
