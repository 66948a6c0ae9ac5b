// SPDX-License-Identifier: Apache-2.0
//! PC legacy devices a Linux guest expects: COM1 and the i8042 reset line.

pub mod console_file;
pub mod i8042;
pub mod serial;
