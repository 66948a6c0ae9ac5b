// SPDX-License-Identifier: Apache-2.0
//! The shim's Task API over a real ttrpc socket, without a VM: every request
//! that names something wrong fails with the code containerd acts on and one
//! line naming the problem, and changes nothing. (What needs a pod VM is in
//! the workspace's containerd tests.)
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    ResumeRequest, StartRequest, StateRequest, StatsRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::TaskClient;
use containerd_shim::publisher::RemotePublisher;
use ttrpc::asynchronous::transport::Listener;
use ttrpc::asynchronous::{Client, Server};
use ttrpc::context;
use ttrpc::Code;
use vmpod_shim::lifecycle::task_services;
use vmpod_shim::task::TaskService;

/// A served TaskService (config unusable: `config_error`) and a client of it.
struct Served {
    client: TaskClient,
    _server: Server,
    dir: PathBuf,
    _events: std::os::unix::net::UnixListener,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(name: &str, config_error: &str) -> Served {
    let dir = std::env::temp_dir().join(format!("vmpod-shim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // containerd's event socket: the publisher dials it at once.
    let events_path = dir.join("events.sock");
    let events = std::os::unix::net::UnixListener::bind(&events_path).unwrap();
    let publisher = RemotePublisher::new(format!("unix://{}", events_path.display()))
        .await
        .unwrap();
    let service = Arc::new(TaskService::new(
        "default",
        Err(config_error.to_owned()),
        publisher,
        Arc::new(ExitSignal::default()),
    ));
    let socket = dir.join("shim.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut server = Server::new()
        .add_listener(Listener::try_from(listener).unwrap())
        .register_service(task_services(service));
    server.start().await.unwrap();
    let client = Client::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    Served {
        client: TaskClient::new(client),
        _server: server,
        dir,
        _events: events,
    }
}

/// The status code and message of a refused request.
fn refusal<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("not refused: {other:?}"),
    }
}

fn one_line(message: &str) {
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );
}

#[tokio::test]
async fn test_requests_for_unknown_tasks_are_not_found() {
    let served = serve("unknown", "no config").await;
    let c = &served.client;
    let ctx = context::with_timeout(10_000_000_000);
    let id = || "nosuch".to_string();
    let results = [
        refusal(
            c.state(
                ctx.clone(),
                &StateRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.start(
                ctx.clone(),
                &StartRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.kill(
                ctx.clone(),
                &KillRequest {
                    id: id(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.wait(
                ctx.clone(),
                &WaitRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.delete(
                ctx.clone(),
                &DeleteRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.pids(
                ctx.clone(),
                &PidsRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.pause(
                ctx.clone(),
                &PauseRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.resume(
                ctx.clone(),
                &ResumeRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.stats(
                ctx.clone(),
                &StatsRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
        refusal(
            c.update(
                ctx.clone(),
                &UpdateTaskRequest {
                    id: id(),
                    ..Default::default()
                },
            )
            .await,
        ),
    ];
    for (code, message) in results {
        assert_eq!(code, Code::NOT_FOUND, "{message}");
        assert_eq!(message, "container \"nosuch\" not found");
    }
    let (code, message) = refusal(
        c.exec(
            ctx.clone(),
            &ExecProcessRequest {
                id: id(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert_eq!(message, "exec without a process spec");
}

#[tokio::test]
async fn test_bad_creates_name_the_problem_and_leave_nothing() {
    let served = serve(
        "create",
        "config /etc/vmpod/config.toml: memory: 1 MiB is not within 64..=2048",
    )
    .await;
    let c = &served.client;
    let ctx = context::with_timeout(10_000_000_000);
    let bundle = served.dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let create = |id: &str, bundle: &std::path::Path| CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };

    let (code, message) = refusal(c.create(ctx.clone(), &create("a/b", &bundle)).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert_eq!(
        message,
        "container \"a/b\": want 1 to 128 of [A-Za-z0-9_.-], not starting with '.'"
    );

    // No config.json in the bundle.
    let (code, message) = refusal(c.create(ctx.clone(), &create("c1", &bundle)).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        message.starts_with(&format!("bundle {}: config.json:", bundle.display())),
        "{message}"
    );
    one_line(&message);

    std::fs::write(bundle.join("config.json"), "{\"ociVersion\": 7}").unwrap();
    let (code, message) = refusal(c.create(ctx.clone(), &create("c1", &bundle)).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("config.json"), "{message}");
    one_line(&message);

    // A good spec, but the configuration is unusable: its error, unchanged.
    std::fs::write(
        bundle.join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"root\": {\"path\": \"rootfs\"}}",
    )
    .unwrap();
    let (code, message) = refusal(c.create(ctx.clone(), &create("c1", &bundle)).await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert_eq!(
        message,
        "config /etc/vmpod/config.toml: memory: 1 MiB is not within 64..=2048"
    );

    let mut checkpoint = create("c3", &bundle);
    checkpoint.checkpoint = "/tmp/cp".into();
    let (code, message) = refusal(c.create(ctx.clone(), &checkpoint).await);
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert_eq!(message, "checkpoint/restore is not supported");

    // Nothing was made: the bundle holds what the test put there.
    let mut entries: Vec<_> = std::fs::read_dir(&bundle)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["config.json", "rootfs"]);
    let (code, _) = refusal(
        c.state(
            ctx,
            &StateRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code, Code::NOT_FOUND);
}
