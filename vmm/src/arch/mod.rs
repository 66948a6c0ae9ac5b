// SPDX-License-Identifier: Apache-2.0
//! Architecture-specific boot and layout code; callers never name the arch.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("vmpod supports x86_64 hosts only");
