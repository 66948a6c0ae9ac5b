// SPDX-License-Identifier: Apache-2.0
//! A blocking CRI v1 client over containerd's Unix socket, as the kubelet
//! is one: `k8s-cri`'s tonic clients on a runtime of the client's own,
//! each call bounded by a deadline.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take: RunPodSandbox boots the pod's VM
/// (about a minute on the emulating hosts; over six when two pods boot at
/// once on a loaded 2-core host).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(900);

/// The runtime and image services of one containerd's CRI plugin.
#[derive(Debug)]
pub struct CriClient {
    tokio: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the gRPC socket `socket`.
    ///
    /// # Errors
    /// A message if the runtime cannot be built or the socket not reached.
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the client's runtime: {e}"))?;
        let path = socket.to_path_buf();
        // The URI is required but unused: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://localhost");
        let channel = tokio
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                })),
            )
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        Ok(CriClient {
            tokio,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Makes a RuntimeService call: `call` gets a client and returns the
    /// call's future, e.g. `|mut c| async move { c.version(req).await }`.
    ///
    /// # Errors
    /// The call's status, or `DeadlineExceeded` after [`CALL_TIMEOUT`].
    pub fn runtime<T, F>(
        &self,
        call: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.block_on(call(self.runtime.clone()))
    }

    /// Makes an ImageService call, as [`CriClient::runtime`] does.
    ///
    /// # Errors
    /// The call's status, or `DeadlineExceeded` after [`CALL_TIMEOUT`].
    pub fn images<T, F>(
        &self,
        call: impl FnOnce(ImageServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.block_on(call(self.images.clone()))
    }

    fn block_on<T, F>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self
            .tokio
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, call).await })
        {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }
}
