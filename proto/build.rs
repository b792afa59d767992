//! Compiles `proto/*.proto` with the vendored `protoc`, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; this only tells prost-build where protoc is.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto/node.proto");
    tonic_prost_build::configure().compile_protos(&["proto/node.proto"], &["proto"])?;
    Ok(())
}
