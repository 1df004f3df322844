//! Compiles `proto/` with the protoc shipped by `protoc-bin-vendored`, so a
//! fresh machine needs no system `protoc`. Also writes the file descriptor set
//! that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the env concurrently.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tally_descriptor.bin"))
        .compile_protos(&["proto/tally/counter/v1/counter.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
