// SPDX-License-Identifier: Apache-2.0
//! The two-way join of an interface and its tap: an ingress qdisc on each,
//! and on each a u32 match-all filter whose mirred action redirects every
//! frame out of the other (`tc filter add dev A parent ffff: protocol all
//! u32 match u8 0 0 action mirred egress redirect dev B`). Deleting a qdisc
//! deletes its filter.

use rtnetlink::Handle;

/// The ingress qdisc's handle, `ffff:`: the filters' parent.
const INGRESS_HANDLE: u32 = 0xffff_0000;
/// ETH_P_ALL in network byte order, as the kernel reads a filter's
/// protocol: the filter sees every frame.
const ALL_PROTOCOLS: u16 = 0x0003_u16.to_be();

/// Adds the ingress qdisc and its redirecting filter to `from`, so that
/// frames arriving on it leave through `to`. If the filter is refused, the
/// qdisc goes again.
///
/// # Errors
/// The kernel's refusal (an ingress qdisc already on `from` is one).
pub async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<(), rtnetlink::Error> {
    let index = i32::try_from(from).unwrap_or(i32::MAX);
    handle.qdisc().add(index).ingress().execute().await?;
    let filter = handle
        .traffic_filter(index)
        .add()
        .parent(INGRESS_HANDLE)
        .protocol(ALL_PROTOCOLS)
        .redirect(to);
    let added = match filter {
        Ok(request) => request.execute().await,
        Err(err) => Err(err),
    };
    if added.is_err() {
        let _ = remove_redirect(handle, from).await;
    }
    added
}

/// Removes the ingress qdisc of `index` and with it the redirect.
///
/// # Errors
/// The kernel's refusal (none there is `ENOENT`/`EINVAL`).
pub async fn remove_redirect(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let index = i32::try_from(index).unwrap_or(i32::MAX);
    let mut request = handle.qdisc().del(index);
    let message = request.message_mut();
    message.header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
    message.header.handle = rtnetlink::packet_route::tc::TcHandle::from(INGRESS_HANDLE);
    request.execute().await
}
