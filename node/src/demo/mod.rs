//! `meridian demo`: a working gateway on loopback with a sample API, no files needed.
//!
//! The demo starts the built-in [`echo`] backend, then a node whose configuration is the
//! sample below with the backend's address as a stage variable, so every part of the
//! request path (stage resolution, route match, stage variables, proxying, mocks, access
//! log, metrics) is exercised by the URLs it prints.

pub mod echo;

use std::net::SocketAddr;

/// The sample API's configuration for a backend at `backend`.
pub fn sample_config(http: SocketAddr, admin: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"# The sample API of `meridian demo`.
listen: {{ http: "{http}" }}
admin: {{ listen: "{admin}" }}
apis:
  - id: pets
    name: Pet store (demo)
    routes:
      - route: GET /pets/{{id}}
        integration: {{ type: http_proxy, uri: "http://${{stageVariables.backend}}/pets/{{id}}", timeout: 5s }}
      - route: GET /health
        integration:
          type: mock
          status: 200
          headers: {{ content-type: application/json }}
          body: '{{"status":"ok"}}'
      - route: ANY /{{proxy+}}
        integration: {{ type: http_proxy, uri: "http://${{stageVariables.backend}}/{{proxy}}" }}
    stages:
      - name: prod
        variables: {{ backend: "{backend}" }}
      - name: dev
        variables: {{ backend: "{backend}" }}
        access_log_format: "$time $request_id $method $path $status $latency_ms"
"#
    )
}

/// The lines `meridian demo` prints once it is serving.
pub fn banner(http: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "Meridian demo is serving the sample API `pets` on http://{http}\n\
         \n\
         Try:\n\
         \x20 curl -i http://{http}/prod/pets/42          # proxied to the echo backend (path parameter)\n\
         \x20 curl -i http://{http}/prod/health           # mock integration\n\
         \x20 curl -i -X POST http://{http}/dev/orders -d '{{\"pet\":42}}'   # greedy route, dev stage\n\
         \x20 curl -i http://{http}/qa/pets/42            # unknown stage: a JSON 404\n\
         \x20 curl -s http://{admin}/metrics | grep meridian_requests_total\n\
         \n\
         Access-log lines follow below. Ctrl-C stops the demo.\n"
    )
}
