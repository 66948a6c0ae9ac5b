// SPDX-License-Identifier: Apache-2.0
//! vmpod-agent on the host, as root, driven through the generated ttrpc
//! client over its Unix socket, building real containers from a busybox
//! root file system. One module per concern; one test binary, so that the
//! agent is built and linked once.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod identity;
mod isolation;
mod lifecycle;
mod network;
mod refusals;
mod shm;

/// The agent's message for a request that must fail.
pub(crate) async fn refused<T: std::fmt::Debug>(
    result: impl std::future::Future<Output = Result<T, vmpod_agent_api::ClientError>>,
) -> String {
    let err = result.await.expect_err("the request should have failed");
    err.agent_message()
        .unwrap_or_else(|| panic!("not an agent status: {err}"))
        .to_owned()
}
