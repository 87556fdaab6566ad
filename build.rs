//! Makes the `ddpm` binary and the test binaries find libtorch at run time, with no
//! LD_LIBRARY_PATH: torch-sys hands its lib dir to direct dependents as
//! DEP_TCH_LIBTORCH_LIB, and `--no-as-needed -ltorch` keeps libtorch_cuda loaded so that
//! CUDA is seen on machines that have it.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
        }
        Err(_) => println!("cargo:warning=libtorch not found through torch-sys: run scripts/setup.sh first"),
    }
}
