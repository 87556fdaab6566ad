//! Two jobs:
//! 1. Make the `ddpm` binary and the test binaries find libtorch at run time, with no
//!    LD_LIBRARY_PATH: torch-sys hands its lib dir to direct dependents as
//!    DEP_TCH_LIBTORCH_LIB, and `--no-as-needed -ltorch` keeps libtorch_cuda loaded so that
//!    CUDA is seen on machines that have it.
//! 2. Compile `csrc/ops.cpp` (autocast dtypes, dropping gradients, oneDNN's bf16 check, fused
//!    Adam) against libtorch's headers, always, and `csrc/cuda_graph.cpp` (CUDA graphs) where
//!    the CUDA runtime headers are found as for NCCL below (else cfg `ddpm_no_cuda_graphs`).
//! 3. Compile `csrc/dist.cpp`, the C interface to libtorch's distributed engine (c10d), against
//!    libtorch's headers. gloo's own headers are not in the PyPI wheel: they come from
//!    libgloo-dev (`GLOO_INCLUDE_DIR` overrides where to look). Without them ddpm is built
//!    without distributed training (cfg `ddpm_no_dist`) and says so when asked for it. The NCCL
//!    backend is compiled in when the CUDA runtime headers (with crt/ and nv/target, from
//!    nvidia-cuda-crt and nvidia-cuda-cccl) and NCCL headers of the wheel's nvidia-* packages
//!    are found beside torch (`DDPM_NO_NCCL=1` skips it).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=DDPM_NO_NCCL");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rustc-check-cfg=cfg(ddpm_no_dist)");
    println!("cargo:rustc-check-cfg=cfg(ddpm_no_cuda_graphs)");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=libtorch not found through torch-sys: run scripts/setup.sh first");
        println!("cargo:rustc-cfg=ddpm_no_dist");
        println!("cargo:rustc-cfg=ddpm_no_cuda_graphs");
        return;
    };
    let lib = PathBuf::from(lib);
    let gloo = std::env::var("GLOO_INCLUDE_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/include"));
    println!("cargo:rerun-if-changed={}", gloo.join("gloo/algorithm.h").display());
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    compile_ops(&lib, &include);
    if gloo.join("gloo/algorithm.h").exists() && include.join("torch/csrc/distributed/c10d/TCPStore.hpp").exists() {
        compile_shim(&lib, &include, &gloo);
    } else {
        println!(
            "cargo:warning=gloo headers not found in {} (apt-get install libgloo-dev): building without distributed training",
            gloo.display()
        );
        println!("cargo:rustc-cfg=ddpm_no_dist");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

/// The CUDA runtime and NCCL headers shipped in the nvidia-* wheels beside torch, if any.
fn cuda_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    if std::env::var("DDPM_NO_NCCL").is_ok_and(|v| v == "1") {
        return None;
    }
    // lib = .../site-packages/torch/lib
    let site = lib.canonicalize().ok()?.parent()?.parent()?.to_path_buf();
    let nvidia = site.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    if !nccl.join("nccl.h").exists() || !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let runtime = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("include"))
        .find(|p| ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"].iter().all(|f| p.join(f).exists()))?;
    Some(vec![runtime, nccl])
}

fn compile_ops(lib: &Path, include: &Path) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("csrc/ops.cpp")
        .file("csrc/fused_conv.cpp")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    // CUDA graphs need the CUDA runtime headers (the first of cuda_includes).
    let cuda = cuda_includes(lib);
    match &cuda {
        Some(dirs) => {
            build.file("csrc/cuda_graph.cpp").define("USE_CUDA", None).include(&dirs[0]);
        }
        None => println!("cargo:rustc-cfg=ddpm_no_cuda_graphs"),
    }
    build.compile("ddpm_ops");
    println!("cargo:rustc-link-search=native={}", lib.display());
    if cuda.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

fn compile_shim(lib: &Path, include: &Path, gloo: &Path) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("csrc/dist.cpp")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(gloo)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false);
    let nccl = cuda_includes(lib);
    if let Some(dirs) = &nccl {
        build
            .file("csrc/dist_nccl.cpp")
            .define("DDPM_WITH_NCCL", None)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for d in dirs {
            build.include(d);
        }
    }
    build.compile("ddpm_dist");
    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
