//! Meridian's node-to-node RPC: the generated tonic client and server for `proto/node.proto`.
//!
//! ```no_run
//! use meridian_proto::node_client::NodeClient;
//! # async fn demo(channel: tonic::transport::Channel) {
//! let mut client = NodeClient::new(channel);
//! let _status = client.status(meridian_proto::StatusRequest {}).await;
//! # }
//! ```

#![allow(clippy::all)]

tonic::include_proto!("meridian.node.v1");
