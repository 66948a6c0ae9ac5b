// SPDX-License-Identifier: Apache-2.0
//! Generates the protobuf messages and the async ttrpc client and server
//! of `protos/agent.proto` into OUT_DIR (pure Rust: no protoc).

use std::path::Path;

/// The generated files, each included into a module of `src/lib.rs`.
const GENERATED: [&str; 2] = ["agent.rs", "agent_ttrpc.rs"];

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=protos/agent.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input("protos/agent.proto")
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()?;
    // `include!` cannot carry inner attributes (`#![allow(...)]`) or inner
    // doc comments, which the generators put at the top; lib.rs sets its
    // own on the modules.
    for name in GENERATED {
        let path = Path::new(&out_dir).join(name);
        let text = std::fs::read_to_string(&path)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !line.starts_with("#![") && !line.starts_with("//!")
            })
            .collect();
        std::fs::write(&path, kept.join("\n"))?;
    }
    Ok(())
}
