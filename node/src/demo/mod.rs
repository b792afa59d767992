//! `meridian demo`: a local multi-region cluster with a sample API, no files needed.
//!
//! The demo starts the built-in [`echo`] backend, then one node per region on loopback
//! (region R at `127.R.<subnet>.1`), founds a cluster with the first, joins the others, and
//! deploys the [`SAMPLE_API`] to stage `prod` with the backend's address as a stage
//! variable. Every part of the request path (stage resolution, route match, stage
//! variables, proxying, mocks, access log, metrics) and of the control plane (Raft
//! replication, forwarding, status) is exercised by the commands it prints.

pub mod chat;
pub mod echo;

use std::net::SocketAddr;

/// The regions of the demo cluster, in order.
pub const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// The sample API `meridian demo` deploys (`${stageVariables.backend}` is the echo backend).
pub const SAMPLE_API: &str = r#"# The sample API of `meridian demo`.
apis:
  - id: pets
    name: Pet store (demo)
    routes:
      - route: GET /pets/{id}
        integration: { type: http_proxy, uri: "http://${stageVariables.backend}/pets/{id}", timeout: 5s }
      - route: GET /health
        integration:
          type: mock
          status: 200
          headers: { content-type: application/json }
          body: '{"status":"ok"}'
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://${stageVariables.backend}/{proxy}" }
"#;

/// The chat API `meridian demo` deploys to stage `live` (`${stageVariables.chat}` is the
/// [`chat`] backend): clients hold WebSocket connections on any region's gateway, and a
/// `sendmessage` is broadcast to all of them through the callback API.
pub const CHAT_API: &str = r#"# The chat API of `meridian demo`.
apis:
  - id: chat
    name: Chat (demo)
    type: websocket
    route_selection: $request.body.action
    routes:
      - { route: $connect, integration: { type: http_proxy, uri: "http://${stageVariables.chat}/connect" } }
      - { route: $disconnect, integration: { type: http_proxy, uri: "http://${stageVariables.chat}/disconnect" } }
      - { route: sendmessage, integration: { type: http_proxy, uri: "http://${stageVariables.chat}/sendmessage" } }
      - { route: $default, reply: true, integration: { type: http_proxy, uri: "http://${stageVariables.chat}/help" } }
"#;

/// The demo's DNS zone: `api.meridian.test` goes to the region nearest the client.
pub const SAMPLE_ZONE: &str = r#"# The DNS zone of `meridian demo`.
zone: meridian.test
routed: [api]
ttl: 5
records:
  - { name: www, type: CNAME, value: api.meridian.test. }
  - { name: "@", type: TXT, value: "served by Meridian" }
"#;

/// The node configuration of region number `region` (1-based).
pub fn node_config(region: usize, subnet: u8, data_dir: &std::path::Path, token_file: &std::path::Path) -> String {
    let ip = node_ip(region, subnet);
    format!(
        r#"listen: {{ http: "{ip}:8080" }}
admin: {{ listen: "{ip}:9901", token_file: "{token}" }}
access_log: {{ enabled: false }}
cluster: {{ data_dir: "{data}", rpc: "{ip}:7001", dns: {{ listen: "{ip}:8053" }} }}
"#,
        token = token_file.display(),
        data = data_dir.display(),
    )
}

/// One node of the demo, as the banner lists it.
pub struct DemoNode {
    pub region: String,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dns: SocketAddr,
}

/// `127.R.<subnet>.1`.
pub fn node_ip(region: usize, subnet: u8) -> String {
    format!("127.{region}.{subnet}.1")
}

/// What `meridian demo` prints once the cluster serves the sample API.
pub fn banner(gateways: &[DemoNode], node_config: &std::path::Path) -> String {
    let mut text =
        String::from("Meridian demo: a cluster of one node per region, serving the sample API `pets` and a chat.\n\n");
    for DemoNode { region, http, admin, dns } in gateways {
        text.push_str(&format!("  {region:<9} gateway http://{http}   admin http://{admin}   dns {dns} (UDP+TCP)\n"));
    }
    text.push_str("\nDNS: every node answers api.meridian.test with the nearest healthy region's gateways.\n");
    text.push_str("Region R's clients are 127.R.0.0/16 (configured client networks):\n");
    for DemoNode { region, dns, .. } in gateways {
        let subnet = match dns.ip() {
            std::net::IpAddr::V4(a) => format!("127.{}.0.0/24", a.octets()[1]),
            std::net::IpAddr::V6(_) => "::/0".to_string(),
        };
        let first_dns = gateways[0].dns;
        text.push_str(&format!(
            "  dig @{} -p {} api.meridian.test +subnet={subnet} +short   # a client of {region}\n",
            first_dns.ip(),
            first_dns.port()
        ));
    }
    let first = &gateways[0].http;
    let second = &gateways[1 % gateways.len()].http;
    text.push_str(&format!(
        "\nTry:\n\
         \x20 curl -i http://{first}/prod/pets/42          # proxied to the echo backend (path parameter)\n\
         \x20 curl -i http://{second}/prod/health           # mock integration, served by another region\n\
         \x20 curl -i -X POST http://{first}/prod/orders -d '{{\"pet\":42}}'   # greedy route\n\
         \x20 curl -i http://{first}/qa/pets/42            # unknown stage: a JSON 404\n\
         \x20 meridian cluster status --config {cfg}\n\
         \x20 meridian dns explain api.meridian.test --client 127.3.0.9 --config {cfg}\n\
         \x20 meridian deployments list pets --config {cfg}\n\
         \n\
         Chat (a WebSocket API; what one client sends with sendmessage reaches every region's clients):\n\
         \x20 websocat ws://{first}/live        # or: pip install websockets; python3 -m websockets ws://{first}/live\n\
         \x20 websocat ws://{second}/live       # then type {{\"action\":\"sendmessage\",\"text\":\"hi\"}}\n\
         \n\
         Ctrl-C stops the demo and removes its data.\n",
        cfg = node_config.display(),
    ));
    text
}
