//! The workload's DNS client: asks a node (through a client link) for the API name's
//! addresses, as a stub resolver would, with hickory-proto messages.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use crate::cluster::API_NAME;

/// An answer: the addresses and their TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<Ipv4Addr>,
    pub ttl: u32,
}

/// Resolves the API name at `server`, optionally with an EDNS Client Subnet.
pub async fn resolve(server: SocketAddr, subnet: Option<(Ipv4Addr, u8)>, timeout: Duration) -> Result<Answer, String> {
    let name = Name::from_ascii(format!("{API_NAME}.")).map_err(|e| e.to_string())?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, RecordType::A));
    let mut edns = Edns::new();
    if let Some((address, prefix)) = subnet {
        edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(IpAddr::V4(address), prefix, 0)));
    }
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    socket.send_to(&bytes, server).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = loop {
        let (n, _) = tokio::time::timeout(timeout, socket.recv_from(&mut buf))
            .await
            .map_err(|_| format!("no answer from {server} within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        if n >= 2 && buf[..2] == bytes[..2] {
            break n;
        }
    };
    let response = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    if response.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{server} answered {}", response.metadata.response_code));
    }
    let mut answer = Answer { addresses: Vec::new(), ttl: u32::MAX };
    for record in &response.answers {
        if let RData::A(a) = &record.data {
            answer.addresses.push(a.0);
            answer.ttl = answer.ttl.min(record.ttl);
        }
    }
    if answer.addresses.is_empty() {
        return Err(format!("{server} answered no address"));
    }
    Ok(answer)
}
