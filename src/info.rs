//! `ddpm info PATH`: what a checkpoint holds, or a run directory and its latest checkpoint,
//! without Python: the network and its size, the images, dataset and classes, the schedule,
//! epoch and step, whether EMA weights and the training state are beside it, the last logged
//! loss and evaluation, and the run's files with their sizes.

use crate::checkpoint::{self, Checkpoint};
use crate::error::UsageError;
use anyhow::Result;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The checkpoint `path` names (a file, or a run directory's latest) and its run directory.
fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if path.is_dir() {
        let latest = checkpoint::latest_path(path);
        if !latest.exists() {
            return Err(UsageError(format!(
                "{}: no checkpoints/latest.safetensors in this folder; pass a run directory or a .safetensors file",
                path.display()
            ))
            .into());
        }
        return Ok((latest, Some(path.to_path_buf())));
    }
    if !path.exists() {
        return Err(UsageError(format!("{}: no such file or run directory", path.display())).into());
    }
    let dir = path.parent().filter(|d| d.file_name().is_some_and(|n| n == "checkpoints"));
    Ok((path.to_path_buf(), dir.and_then(Path::parent).map(Path::to_path_buf)))
}

/// The last JSON line of a run's log file, if any.
fn last_row(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| serde_json::from_str(l).ok())
}

/// Every file under `dir` with its size, relative paths in order.
fn files(dir: &Path) -> Vec<(String, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(root, &p, out),
                Ok(m) => out.push((p.strip_prefix(root).unwrap_or(&p).display().to_string(), m.len())),
                Err(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Everything `ddpm info` reports, as JSON.
pub fn info(path: &Path) -> Result<Value> {
    let (ck_path, run_dir) = locate(path)?;
    let ck = Checkpoint::read(&ck_path)?;
    let shapes = ck.shapes()?;
    let values: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let mut out = json!({
        "checkpoint": ck_path.display().to_string(),
        "tensors": shapes.len(),
        "values": values,
        "ema": checkpoint::companion(&ck_path, "ema").exists(),
        "training_state": checkpoint::companion(&ck_path, "state").exists(),
    });
    match &ck.info {
        Some(i) => {
            let model = i.spec.build(tch::Device::Cpu, false);
            out["network"] = serde_json::to_value(&i.spec.network)?;
            out["network_description"] = i.spec.network.describe().into();
            out["trainable_parameters"] = crate::model::trainable_parameters(&model.vs).into();
            out["image_shape"] = json!(i.spec.image_shape);
            out["dataset"] = i.dataset.clone().into();
            out["class_names"] = json!(i.spec.class_names);
            out["schedule"] = serde_json::to_value(&i.spec.schedule)?;
            out["schedule_description"] = i.spec.schedule.describe().into();
            out["prediction"] = i.spec.prediction.to_string().into();
            out["cond_drop_prob"] = json!(i.cond_drop_prob);
            out["epoch"] = i.epoch.into();
            out["step"] = i.step.into();
        }
        None => out["network"] = Value::Null,
    }
    if let Some(dir) = &run_dir {
        out["run_dir"] = dir.display().to_string().into();
        out["last_loss"] = last_row(&dir.join(crate::run_dir::files::METRICS)).unwrap_or(Value::Null);
        out["last_eval"] = last_row(&dir.join(crate::run_dir::files::EVALS)).unwrap_or(Value::Null);
        out["files"] = files(dir).into_iter().map(|(name, bytes)| json!({"path": name, "bytes": bytes})).collect();
    }
    Ok(out)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The report as text.
pub fn table(v: &Value) -> String {
    let yes = |b: &Value| if b.as_bool() == Some(true) { "yes" } else { "no" };
    let mut s = format!("checkpoint      {}\n", v["checkpoint"].as_str().unwrap_or(""));
    if v["network"].is_null() {
        s += &format!(
            "network         unknown: no ddpm metadata (a plain state_dict of {} tensors, {} values)\n",
            v["tensors"], v["values"]
        );
    } else {
        s += &format!("network         {}\n", v["network_description"].as_str().unwrap_or(""));
        s += &format!("parameters      {} trainable\n", v["trainable_parameters"]);
        s += &format!("images          {} ({})\n", v["image_shape"], v["dataset"].as_str().unwrap_or(""));
        let names: Vec<&str> =
            v["class_names"].as_array().map_or(vec![], |a| a.iter().filter_map(Value::as_str).collect());
        let classes = v["network"]["num_classes"].as_i64().unwrap_or(0);
        s += &format!(
            "classes         {} ({})\n",
            if classes > 0 { format!("conditional on {classes}") } else { "unconditional".to_string() },
            names.join(", ")
        );
        s += &format!("schedule        {}\n", v["schedule_description"].as_str().unwrap_or(""));
        s += &format!("predicts        {}\n", v["prediction"].as_str().unwrap_or("eps"));
        s += &format!("trained         epoch {}, step {}\n", v["epoch"], v["step"]);
    }
    s += &format!("EMA weights     {}\n", yes(&v["ema"]));
    s += &format!("training state  {} (needed by --resume)\n", yes(&v["training_state"]));
    if let Some(dir) = v["run_dir"].as_str() {
        s += &format!("run directory   {dir}\n");
        let l = &v["last_loss"];
        if !l.is_null() {
            s += &format!(
                "last loss       {:.5} at step {} (epoch {})\n",
                l["loss"].as_f64().unwrap_or(f64::NAN),
                l["step"],
                l["epoch"]
            );
        }
        let e = &v["last_eval"];
        if !e.is_null() {
            s += &format!(
                "last eval       Frechet distance {:.3} (real vs real {:.3}) at epoch {}\n",
                e["frechet_distance"].as_f64().unwrap_or(f64::NAN),
                e["frechet_distance_real"].as_f64().unwrap_or(f64::NAN),
                e["epoch"]
            );
        }
        s += "files\n";
        for f in v["files"].as_array().into_iter().flatten() {
            s += &format!("  {:>10}  {}\n", size(f["bytes"].as_u64().unwrap_or(0)), f["path"].as_str().unwrap_or(""));
        }
    }
    s
}
