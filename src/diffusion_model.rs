//! What a model is apart from its weights: the network, the noise schedule, the image shape
//! and the class names. Checkpoints store it, and every command builds its model from it
//! here, the one place where networks are constructed.

use crate::config::Config;
use crate::diffusion::prediction::Prediction;
use crate::diffusion::{DdpmScheduler, ScheduleConfig};
use crate::model::{self, Denoiser, NetworkConfig};
use tch::{nn, Device, Tensor};

/// The model's description.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub network: NetworkConfig,
    pub schedule: ScheduleConfig,
    /// `[C, H, W]`.
    pub image_shape: [i64; 3],
    /// In label order (empty when unknown).
    pub class_names: Vec<String>,
    /// What the network predicts.
    pub prediction: Prediction,
}

/// A model ready to run: weights, network and schedule on one device.
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Box<dyn Denoiser>,
    /// The schedule's tensors on the model's device.
    pub scheduler: DdpmScheduler,
    /// `[C, H, W]`.
    pub image_shape: [i64; 3],
    /// Convolution weights, and the inputs [`Model::layout`] gives, are channels-last.
    pub channels_last: bool,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl ModelSpec {
    /// The model a configuration describes.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            network: cfg.network.clone(),
            schedule: cfg.ddpm.clone(),
            image_shape: cfg.image_shape(),
            class_names: crate::data::class_names(cfg.dataset.name),
            prediction: cfg.train.prediction,
        }
    }

    /// The network, its variables created under the root of `vs`.
    pub fn network(&self, vs: &nn::VarStore) -> Box<dyn Denoiser> {
        model::build(vs, &self.network, self.image_shape, self.schedule.n_steps)
    }

    /// A freshly initialised model on `device` (seed libtorch first for reproducible weights).
    pub fn build(&self, device: Device, channels_last: bool) -> Model {
        let vs = nn::VarStore::new(device);
        let net = self.network(&vs);
        if channels_last {
            model::vs_to_channels_last(&vs);
        }
        Model {
            vs,
            net,
            scheduler: DdpmScheduler::new(self.schedule.build(), device),
            image_shape: self.image_shape,
            channels_last,
            prediction: self.prediction,
        }
    }

    /// Whether a checkpoint of `other` can continue as this model (same network, schedule,
    /// image shape and prediction target).
    pub fn same_architecture(&self, other: &ModelSpec) -> bool {
        self.network == other.network
            && self.schedule == other.schedule
            && self.image_shape == other.image_shape
            && self.prediction == other.prediction
    }
}

impl Model {
    /// Whether every sampler must clamp its x0 estimate to [-1, 1] (`sample.clip_x0` forced on):
    /// an eps-predicting model on a schedule whose last beta is large (the cosine schedule clips
    /// it at 0.999). There the first reverse step divides the noise estimate by
    /// sqrt(alpha_bar_T) ~ 3e-3 (DDIM, DPM-Solver++) or sqrt(alpha_T) ~ 0.03 (DDPM), and the
    /// samples blow up, as improved-diffusion and diffusers avoid by clipping by default.
    pub fn needs_x0_clipping(&self) -> bool {
        self.prediction == Prediction::Eps && self.scheduler.schedule.betas.last().is_some_and(|&b| b > 0.5)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Classes of a conditional model (0 = unconditional).
    pub fn num_classes(&self) -> i64 {
        self.net.num_classes()
    }

    /// `x` in the model's memory format (channels-last or not).
    pub fn layout(&self, x: Tensor) -> Tensor {
        if self.channels_last {
            model::channels_last(&x)
        } else {
            x
        }
    }

    /// Standard-normal noise of `n` images in the model's memory format.
    pub fn noise(&self, n: i64) -> Tensor {
        let [c, h, w] = self.image_shape;
        self.layout(Tensor::randn([n, c, h, w], (tch::Kind::Float, self.device())))
    }
}
