//! Using a trained model on pictures one has: image-to-image (SDEdit, Meng et al. 2022: noise a
//! picture to a level and denoise it back), inpainting (the known region replaced by the
//! picture noised to each step's level, with RePaint's resampling, Lugmayr et al. 2022), DDIM
//! inversion (a picture back to the noise the deterministic sampler maps to it) and spherical
//! interpolation of noise. All run under no_grad over a [`Stepper`] or the network itself.

use super::reverse::{predict_eps, Stepper};
use super::Schedule;
use crate::model::Denoiser;
use tch::{Kind, Tensor};

/// `x0` noised to timestep `t` with `z`: `sqrt(abar_t) x0 + sqrt(1 - abar_t) z` (`x0` itself
/// for `None`, the level past t = 0).
pub fn noised(s: &Schedule, x0: &Tensor, t: Option<usize>, z: &Tensor) -> Tensor {
    match t {
        None => x0.shallow_clone(),
        Some(t) => {
            let abar = s.alphas_cumprod[t];
            x0 * abar.sqrt() + z * (1.0 - abar).sqrt()
        }
    }
}

/// The timestep image-to-image starts from at `strength` (0 = none, 1 = the top of the
/// schedule): `round(strength (n_steps - 1))`.
pub fn strength_step(s: &Schedule, strength: f64) -> Option<usize> {
    (strength > 0.0).then(|| (strength.min(1.0) * (s.n_steps() - 1) as f64).round() as usize)
}

/// Image-to-image: `x0` noised with `noise` to the highest visited timestep at or below
/// [`strength_step`], then denoised by the rest of the sampler's steps. Strength 0 returns
/// `x0` unchanged (no step runs); strength 1 starts from `noise` alone, a fresh sample.
pub fn img2img(stepper: &mut Stepper, s: &Schedule, x0: &Tensor, strength: f64, noise: &Tensor) -> Tensor {
    let Some(top) = strength_step(s, strength) else { return x0.copy() };
    let Some(first) = stepper.ts.iter().position(|&t| t <= top) else { return x0.copy() };
    let mut x = match strength >= 1.0 {
        true => noise.shallow_clone(),
        false => noised(s, x0, Some(stepper.ts[first]), noise),
    };
    for i in first..stepper.ts.len() {
        x = stepper.step(i, &x);
    }
    x
}

/// Inpainting from `noise`: after every step the pixels where `keep` is 1 are those of `x0`
/// noised to the step's level (so the result equals `x0` there exactly), the others the
/// sampler's. With `resample` r > 1 every step is taken r times, the merged picture noised
/// back up one step in between (RePaint with jump length 1), so the two regions agree.
pub fn inpaint(
    stepper: &mut Stepper,
    s: &Schedule,
    x0: &Tensor,
    keep: &Tensor,
    noise: &Tensor,
    resample: usize,
) -> Tensor {
    let keep = keep.to_kind(Kind::Bool).expand_as(x0);
    let mut x = noise.shallow_clone();
    for i in 0..stepper.ts.len() {
        let (t, prev) = (stepper.ts[i], stepper.prev(i));
        for u in 0..resample.max(1) {
            let down = stepper.step(i, &x);
            let known = noised(s, x0, prev, &x0.randn_like());
            let merged = known.where_self(&keep, &down);
            x = match (prev, u + 1 < resample) {
                (Some(p), true) => {
                    let a = s.alphas_cumprod[t] / s.alphas_cumprod[p];
                    &merged * a.sqrt() + merged.randn_like() * (1.0 - a).sqrt()
                }
                _ => merged,
            };
            if prev.is_none() {
                break;
            }
        }
    }
    x
}

/// DDIM inversion (eta 0) of `x0` up the timesteps `ts_desc` (a sampler's, descending): at
/// each level the network's noise estimate at the current point carries the picture's
/// predicted x0 to the next level. Returns the noise at `ts_desc[0]`, from which the
/// deterministic DDIM sampler over the same timesteps draws about `x0` back.
pub fn invert(
    net: &dyn Denoiser,
    s: &Schedule,
    x0: &Tensor,
    ts_desc: &[usize],
    labels: Option<&Tensor>,
    guidance: f64,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let up: Vec<usize> = ts_desc.iter().rev().copied().collect();
    let (mut x, mut level) = (x0.shallow_clone(), None::<usize>);
    for &next in &up {
        // The clean picture is read at the lowest visited step, as the sampler's last step is.
        let at = level.unwrap_or(up[0]);
        let tt = Tensor::full([x.size()[0]], at as i64, (Kind::Int64, x.device()));
        let eps = predict_eps(net, &x, &tt, labels, guidance);
        let abar = level.map_or(1.0, |l| s.alphas_cumprod[l]);
        let abar_next = s.alphas_cumprod[next];
        let x0_hat = (&x - &eps * (1.0 - abar).sqrt()) / abar.sqrt();
        x = x0_hat * abar_next.sqrt() + eps * (1.0 - abar_next).sqrt();
        level = Some(next);
    }
    x
}

/// Spherical interpolation between `a` and `b` (`[N, ...]`, per sample) at `alpha` in [0, 1];
/// `a` and `b` themselves at 0 and 1, linear where the two are (nearly) parallel.
pub fn slerp(a: &Tensor, b: &Tensor, alpha: f64) -> Tensor {
    if alpha <= 0.0 {
        return a.copy();
    }
    if alpha >= 1.0 {
        return b.copy();
    }
    let n = a.size()[0];
    let (fa, fb) = (a.reshape([n, -1]), b.reshape([n, -1]));
    let dot = (&fa * &fb).sum_dim_intlist(1, true, Kind::Float);
    let norms = fa.norm_scalaropt_dim(2.0, [1], true) * fb.norm_scalaropt_dim(2.0, [1], true);
    let cos = (dot / norms.clamp_min(1e-12)).clamp(-1.0, 1.0);
    let theta = cos.acos();
    let sin = theta.sin();
    let parallel = sin.abs().lt(1e-6);
    let wa = ((&theta * (1.0 - alpha)).sin() / &sin).where_self(&parallel.logical_not(), &sin.full_like(1.0 - alpha));
    let wb = ((&theta * alpha).sin() / &sin).where_self(&parallel.logical_not(), &sin.full_like(alpha));
    (fa * wa + fb * wb).reshape(a.size())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden: two orthogonal unit vectors at 1/3 give (cos 30°, sin 30°); the ends are exact;
    /// parallel vectors interpolate linearly.
    #[test]
    fn slerp_golden() {
        let a = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let b = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        let m = slerp(&a, &b, 1.0 / 3.0);
        let want = [30f64.to_radians().cos(), 30f64.to_radians().sin()];
        for (i, w) in want.iter().enumerate() {
            assert!((m.double_value(&[0, i as i64]) - w).abs() < 1e-6, "{m}");
        }
        assert_eq!(slerp(&a, &b, 0.0), a);
        assert_eq!(slerp(&a, &b, 1.0), b);
        let c = &a * 3.0;
        let l = slerp(&a, &c, 0.5);
        assert!((l.double_value(&[0, 0]) - 2.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn strength_maps_onto_the_schedule() {
        let s = Schedule::linear(1000, 1e-4, 0.02);
        assert_eq!(strength_step(&s, 0.0), None);
        assert_eq!(strength_step(&s, 0.5), Some(500));
        assert_eq!(strength_step(&s, 1.0), Some(999));
        let x0 = Tensor::ones([1, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
        let z = x0.zeros_like();
        let want = s.alphas_cumprod[500].sqrt();
        assert!((noised(&s, &x0, Some(500), &z).double_value(&[0, 0, 0, 0]) - want).abs() < 1e-6);
        assert_eq!(noised(&s, &x0, None, &z), x0);
    }
}
