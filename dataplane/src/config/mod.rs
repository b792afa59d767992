//! The gateway configuration: the file format, its validation and its compilation.
//!
//! ```yaml
//! listen: { http: 127.0.0.1:8080 }
//! apis:
//!   - id: pets
//!     routes:
//!       - route: GET /pets/{id}
//!         integration: { type: http_proxy, uri: "http://${stageVariables.backend}/pets/{id}" }
//!     stages:
//!       - name: prod
//!         variables: { backend: 127.0.0.1:9000 }
//! ```
//!
//! [`load_file`] turns such a file into a [`GatewayConfig`] or a [`ConfigErrors`] listing
//! every problem with its line. `docs/CONFIG.md` documents every field.

mod compile;
mod duration;
mod errors;
pub mod model;
pub mod table;

pub use compile::{
    ApiDefinition, base_path, compile_stage, load_file, parse_str, same_definition, valid_host, validate_definition,
};
pub use duration::parse_duration;
pub use errors::{ConfigError, ConfigErrors};
pub use table::{
    CanaryRoutes, ClusterSettings, DnsSettings, GatewayConfig, Limits, RoutingTable, StageRoutes, StageTarget,
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse_str(text, "test.yaml", Path::new("/nonexistent")) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.errors,
        }
    }

    #[test]
    fn a_wrong_type_names_its_field_and_says_where_once() {
        let e = errors("listen: { http: 127.0.0.1:0 }\nlimits: { max_connections: abc }\n");
        assert_eq!((e[0].line, e[0].field.as_str()), (2, "limits.max_connections"), "{e:?}");
        assert!(!e[0].message.contains("line"), "the location is printed once: {}", e[0].message);
        let e = errors(
            "listen:\n  http: 127.0.0.1:0\napis:\n  - id: pets\n    routes:\n      - route: GET /\n        integration: [1]\n",
        );
        assert_eq!(e[0].field, "apis[].routes[].integration", "{e:?}");
        let shown = ConfigErrors { source_name: "f.yaml".into(), errors: e }.to_string();
        assert_eq!(shown.matches("line 7").count(), 1, "{shown}");
    }

    proptest! {
        /// A route's compiled chain holds exactly the stages its definition asks for, in the
        /// order the request path runs them: the throttle (every route counts against the
        /// cluster's limit) and the API-key check only where the route or its stage requires
        /// a key.
        #[test]
        fn a_chain_holds_exactly_the_configured_stages(
            routes in proptest::collection::vec((any::<bool>(), proptest::option::of(1u64..1000)), 1..6),
            stage_key: bool,
        ) {
            let mut text = String::from("listen: { http: 127.0.0.1:0 }\napis:\n  - id: a\n    routes:\n");
            for (i, (key, throttle)) in routes.iter().enumerate() {
                text.push_str(&format!("      - route: GET /r{i}\n        integration: {{ type: mock }}\n        api_key_required: {key}\n"));
                if let Some(rate) = throttle {
                    text.push_str(&format!("        throttle: {{ rate: {rate}, burst: {rate} }}\n"));
                }
            }
            text.push_str(&format!("    stages:\n      - name: s\n        api_key_required: {stage_key}\n"));
            let config = parse_str(&text, "chain.yaml", Path::new(".")).unwrap();
            let stage = &config.table.apis["a"]["s"].primary;
            for (i, (key, _)) in routes.iter().enumerate() {
                let none = http::HeaderMap::new();
                let found = stage
                    .router
                    .find(&http::Method::GET, &format!("/r{i}"), &crate::router::RequestFacts::of(&none, None))
                    .unwrap();
                let expected: Vec<&str> = if *key || stage_key { vec!["throttle", "api_key"] } else { vec!["throttle"] };
                prop_assert_eq!(found.value.chain.names(), expected);
            }
        }
    }

    #[test]
    fn advertised_addresses_take_names_and_a_wildcard_needs_one() {
        let node = |cluster: &str| {
            format!(
                "listen: {{ http: \"0.0.0.0:8080\" }}\ncluster: {{ data_dir: d, rpc: \"0.0.0.0:7001\", {cluster} }}\n"
            )
        };
        let ok = |cluster: &str| parse_str(&node(cluster), "t.yaml", Path::new(".")).map(|c| c.cluster.unwrap());
        let settings =
            ok("advertise_rpc: meridian-r1-0.meridian.svc.cluster.local:7001, advertise_address: 10.0.0.5").unwrap();
        assert_eq!(settings.advertise_rpc, "meridian-r1-0.meridian.svc.cluster.local:7001");
        assert_eq!(settings.advertise_address, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            ok("advertise_rpc: \"10.0.0.5:7001\", advertise_address: 10.0.0.5").unwrap().advertise_rpc,
            "10.0.0.5:7001"
        );
        for (cluster, field) in [
            ("advertise_rpc: \"no port\", advertise_address: 10.0.0.5", "cluster.advertise_rpc"),
            ("advertise_rpc: \"*.wild:7001\", advertise_address: 10.0.0.5", "cluster.advertise_rpc"),
            ("advertise_rpc: \"host:0\", advertise_address: 10.0.0.5", "cluster.advertise_rpc"),
            ("advertise_rpc: \"host:7001\", advertise_address: 0.0.0.0", "cluster.advertise_address"),
            // The gateway binds 0.0.0.0: peers and DNS answers need the node's address.
            ("advertise_rpc: \"host:7001\"", "cluster.advertise_address"),
        ] {
            let e = errors(&node(cluster));
            assert!(e.iter().any(|e| e.field == field), "{cluster}: {e:?}");
        }
    }

    #[test]
    fn websocket_apis_compile_their_routes_and_refuse_what_does_not_apply() {
        let chat = r#"listen: { http: 127.0.0.1:0 }
apis:
  - id: chat
    type: websocket
    route_selection: $request.body.action
    websocket: { max_message_kib: 64, messages_per_second: 5, idle_timeout: 30s }
    routes:
      - { route: $connect, api_key_required: true, integration: { type: http_proxy, uri: "http://127.0.0.1:9/connect" } }
      - { route: sendmessage, reply: true, integration: { type: http_proxy, uri: "http://127.0.0.1:9/send" } }
      - { route: $default, integration: { type: http_proxy, uri: "http://127.0.0.1:9/default" } }
    stages: [{ name: prod }]
"#;
        let config = parse_str(chat, "t.yaml", Path::new(".")).unwrap();
        let routes = &config.table.apis["chat"]["prod"].primary;
        let keys: Vec<&str> = routes.router.values().iter().map(|t| &*t.observer.route).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&"$connect") && keys.contains(&"@connections"), "{keys:?}");
        let stage = routes.router.values().iter().find_map(|t| match &t.integration {
            crate::integration::Integration::WebSocket(crate::integration::websocket::WebSocketEndpoint::Connect(
                s,
            )) => Some(s.clone()),
            _ => None,
        });
        let stage = stage.expect("the handshake route serves the stage");
        assert!(stage.connect.is_some() && stage.default.is_some() && stage.disconnect.is_none());
        assert!(stage.routes["sendmessage"].reply);
        assert_eq!(stage.limits.max_message_bytes, 64 * 1024);
        assert_eq!(stage.limits.messages_per_second, 5);
        assert_eq!(stage.limits.idle_timeout, std::time::Duration::from_secs(30));
        // The handshake's chain has the API key check; the callback API's is signed.
        let chain =
            |key: &str| routes.router.values().iter().find(|t| &*t.observer.route == key).unwrap().chain.names();
        assert!(chain("$connect").contains(&"api_key"), "{:?}", chain("$connect"));
        assert!(chain("@connections").contains(&"signed_request"), "{:?}", chain("@connections"));
        assert!(!chain("@connections").contains(&"api_key"));

        for (original, changed, field) in [
            ("route_selection: $request.body.action", "route_selection: $context.x", "apis[0].route_selection"),
            ("{ route: sendmessage, reply: true,", "{ route: send message, reply: true,", "apis[0].routes[1].route"),
            ("{ route: $default,", "{ route: $default, throttle: { rate: 1, burst: 1 },", "apis[0].routes[2].throttle"),
            ("{ route: $connect,", "{ route: $connect, reply: true,", "apis[0].routes[0].reply"),
            ("max_message_kib: 64", "max_message_kib: 4096", "apis[0].websocket.max_message_kib"),
            ("idle_timeout: 30s", "idle_timeout: 3h", "apis[0].websocket.idle_timeout"),
            (
                "type: http_proxy, uri: \"http://127.0.0.1:9/default\"",
                "type: mock",
                "apis[0].routes[2].integration.type",
            ),
        ] {
            let e = errors(&chat.replace(original, changed));
            assert!(e.iter().any(|e| e.field == field && e.line > 0), "{changed}: {e:?}");
        }
        let e = errors("listen: { http: 127.0.0.1:0 }\napis:\n  - id: a\n    route_selection: $request.body.action\n");
        assert_eq!((e[0].line, e[0].field.as_str()), (4, "apis[0].route_selection"), "{e:?}");
        let ok = "listen: { http: 127.0.0.1:0 }\napis:\n  - id: a\n    type: rest\n  - id: b\n    type: http\n";
        assert!(parse_str(ok, "t.yaml", Path::new(".")).is_ok());
    }

    #[test]
    fn idempotency_settings_are_checked_with_their_lines() {
        let http = "listen: { http: 127.0.0.1:0 }\napis:\n  - id: pay\n    routes:\n      - { route: POST /a, idempotency: {}, integration: { type: mock } }\n";
        let e = errors(http);
        assert_eq!((e[0].line, e[0].field.as_str()), (5, "apis[0].routes[0].idempotency"), "{e:?}");
        let e = errors(&http.replace("id: pay\n", "id: pay\n    type: rest\n").replace("{}", "{ in_flight: queue }"));
        assert!(e[0].line == 6 && e[0].message.contains("`queue`"), "{e:?}");
        let e = errors(
            r#"listen: { http: 127.0.0.1:0 }
apis:
  - id: rest
    type: rest
    routes:
      - route: POST /b
        idempotency: { ttl: 8d, max_response_kib: 0, commit_timeout: 10ms }
        integration: { type: mock }
      - route: POST /c
        idempotency: { ttl: soon, max_records: 2000000 }
        integration: { type: mock }
"#,
        );
        let found: Vec<(u64, &str)> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
        for expected in [
            (7, "apis[0].routes[0].idempotency.ttl"),
            (7, "apis[0].routes[0].idempotency.max_response_kib"),
            (7, "apis[0].routes[0].idempotency.commit_timeout"),
            (10, "apis[0].routes[1].idempotency.ttl"),
            (10, "apis[0].routes[1].idempotency.max_records"),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
    }

    const GOOD: &str = r#"
listen: { http: 127.0.0.1:0 }
apis:
  - id: pets
    routes:
      - route: GET /pets/{id}
        integration: { type: http_proxy, uri: "http://${stageVariables.backend}/pets/{id}", timeout: 2s }
      - route: ANY /{proxy+}
        integration: { type: mock, status: 200, body: hello }
    stages:
      - name: prod
        variables: { backend: "127.0.0.1:9000" }
domains:
  - name: api.example.com
    mappings:
      - { base_path: /v1, api: pets, stage: prod }
"#;

    #[test]
    fn a_good_file_compiles() {
        let config = parse_str(GOOD, "good.yaml", Path::new(".")).unwrap();
        let stage = &config.table.apis["pets"]["prod"];
        assert_eq!(stage.primary.router.values().len(), 2);
        assert_eq!(config.table.domains["api.example.com"][0].base_path, "/v1");
        assert_eq!(config.limits.max_body_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../deploy/gateway.example.yaml");
        let config = parse_str(text, "gateway.example.yaml", Path::new(".")).unwrap();
        assert_eq!(config.table.apis["pets"].len(), 2);
    }

    #[test]
    fn unknown_field_names_the_field_and_line() {
        let e = errors("listen: { http: 127.0.0.1:0 }\napis:\n  - id: pets\n    rouets: []\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 4, "{e:?}");
        assert!(e[0].message.contains("rouets"), "{e:?}");
    }

    #[test]
    fn every_semantic_error_is_listed_with_its_line() {
        let text = r#"
listen: { http: "not-an-address" }
apis:
  - id: pets
    routes:
      - route: GET /pets/{id
        integration: { type: mock }
      - route: GET /ok
        integration: { type: http_proxy, uri: "http://${stageVariables.nope}/x", status: 201 }
    stages:
      - name: prod
domains:
  - name: api.example.com
    certificate: missing.pem
    key: missing.key
    mappings:
      - { api: pets, stage: staging }
"#;
        let e = errors(text);
        let lines: Vec<u64> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 6, 9, 9, 14, 17], "{e:#?}");
        assert!(e[0].field == "listen.http");
        assert!(e[1].message.contains("without closing"));
        assert!(e.iter().any(|x| x.message.contains("stage variable `nope`")));
        assert!(e.iter().any(|x| x.field.ends_with("integration.status")));
        assert!(e[4].message.contains("missing.pem"));
        assert!(e[5].message.contains("no stage `staging`"));
    }

    #[test]
    fn duplicate_routes_and_ids_are_refused() {
        let text = r#"
apis:
  - id: a
    routes:
      - { route: "GET /x/{a}", integration: { type: mock } }
      - { route: "GET /x/{b}", integration: { type: mock } }
  - id: a
"#;
        let e = errors(text);
        assert!(e.iter().any(|x| x.message.contains("declared twice") && x.line == 6), "{e:#?}");
        assert!(e.iter().any(|x| x.message.contains("used twice") && x.line == 7), "{e:#?}");
    }

    #[test]
    fn bad_authorizers_are_refused_with_their_lines() {
        let text = r#"
apis:
  - id: pets
    authorizers:
      - name: users
        type: jwt
        algorithms: [RS256, none]
        jwks_uri: http://idp.test/jwks
        ttl: 5s
      - name: shared
        type: jwt
        algorithms: [HS256]
        keys: [{ secret_env: MERIDIAN_TEST_UNSET_SECRET }]
      - name: partners
        type: custom
        uri: "ftp://authz.test/"
        identity_sources: [$request.body.token]
      - name: users
        type: custom
        uri: http://authz.test/
        identity_sources: [$request.header.authorization]
        context_to_headers: { tenant: "x-forwarded-for" }
    routes:
      - route: GET /a
        authorizer: nobody
        integration: { type: mock }
      - route: GET /b
        scopes: [read]
        integration: { type: mock }
    stages:
      - name: prod
"#;
        let e = errors(text);
        let has = |line: u64, field: &str, words: &str| {
            assert!(
                e.iter().any(|x| x.line == line && x.field == field && x.message.contains(words)),
                "no `{words}` at line {line} ({field}) in {e:#?}"
            )
        };
        has(7, "apis[0].authorizers[0].algorithms", "`none` is not an algorithm");
        has(9, "apis[0].authorizers[0].ttl", "does not apply to a `jwt` authorizer");
        has(13, "apis[0].authorizers[1].keys[0]", "`MERIDIAN_TEST_UNSET_SECRET` is not set");
        has(16, "apis[0].authorizers[2].uri", "not an http(s) URL");
        has(17, "apis[0].authorizers[2].identity_sources[0]", "not an identity source");
        has(18, "apis[0].authorizers[3].name", "declared twice");
        has(22, "apis[0].authorizers[3].context_to_headers.tenant", "not a header name the gateway may set");
        has(25, "apis[0].routes[0].authorizer", "no authorizer is named `nobody`");
        has(28, "apis[0].routes[1].scopes", "scopes need a `jwt` authorizer");
    }

    #[test]
    fn signed_routes_are_checked_with_their_lines() {
        let text = r#"
apis:
  - id: pets
    signing: { region: "EU/1" }
    authorizers:
      - { name: users, type: jwt, algorithms: [RS256], jwks_uri: "http://idp.test/jwks" }
    routes:
      - route: GET /a
        authorizer: users
        authorization: signed
        integration: { type: mock }
      - route: GET /b
        authorization: sigv2
        integration: { type: mock }
"#;
        let e = errors(text);
        assert!(e.iter().any(|x| x.line == 10 || x.message.contains("sigv2")), "{e:#?}");
        let text = text.replace("        authorization: sigv2\n", "");
        let e = errors(&text);
        assert!(e.iter().any(|x| x.line == 4 && x.field == "apis[0].signing"), "{e:#?}");
        assert!(e.iter().any(|x| x.line == 10 && x.message.contains("not both")), "{e:#?}");
    }

    #[test]
    fn cors_settings_are_checked_with_their_lines() {
        let text = r#"
apis:
  - id: pets
    cors:
      allow_origins: ["*", "app.example.test"]
      allow_credentials: true
      max_age: 1d
    routes:
      - route: GET /a
        cors: { allow_origins: ["https://*.com"], allow_methods: [get] }
        integration: { type: mock }
"#;
        let e = errors(text);
        let has = |line: u64, field: &str| {
            assert!(e.iter().any(|x| x.line == line && x.field == field), "no error at {line} ({field}) in {e:#?}")
        };
        has(5, "apis[0].cors.allow_origins[1]");
        has(5, "apis[0].cors.allow_credentials");
        has(5, "apis[0].cors.max_age");
        has(10, "apis[0].routes[0].cors.allow_origins[0]");
        has(10, "apis[0].routes[0].cors.allow_methods");
    }

    #[test]
    fn firewall_rules_are_checked_with_their_lines() {
        let text = r#"
apis:
  - id: pets
    waf:
      trusted_proxies: [10.0.0.0/33]
      rules:
        - { name: two, action: block, ip_in: [10.0.0.0/8], size_over: { part: uri, bytes: 10 } }
        - { name: re, action: block, pattern: { part: path, regex: "(" } }
        - { name: body, action: count, pattern: { part: bodies, contains: x } }
        - { name: hdr, action: allow, pattern: { part: header, contains: x } }
        - { name: "bad name", action: block, ip_in: [10.0.0.0/8] }
        - { name: allows, action: allow, rate_over: { count: 5, window: 10s, block_for: 1m } }
        - { name: window, action: block, rate_over: { count: 5, window: 2h, block_for: 1m } }
        - { name: forever, action: block, failed_auth_over: { count: 5, window: 10s, block_for: 48h } }
        - { name: key, action: count, failed_auth_over: { count: 5, window: 10s, block_for: 1m, key: cookie } }
        - { name: big, action: block, size_over: { part: body, bytes: 2000000 } }
    routes:
      - { route: GET /a, integration: { type: mock } }
    stages: [{ name: prod }]
"#;
        let e = errors(text);
        for field in [
            ("apis[0].waf.trusted_proxies[0]", 5),
            ("apis[0].waf.rules[0]", 7),
            ("apis[0].waf.rules[1].pattern.regex", 8),
            ("apis[0].waf.rules[2].pattern.part", 9),
            ("apis[0].waf.rules[3].pattern.name", 10),
            ("apis[0].waf.rules[4].name", 11),
            ("apis[0].waf.rules[5].action", 12),
            ("apis[0].waf.rules[6].rate_over.window", 13),
            ("apis[0].waf.rules[7].failed_auth_over.block_for", 14),
            ("apis[0].waf.rules[8].failed_auth_over.key", 15),
            ("apis[0].waf.rules[9].size_over.bytes", 16),
        ] {
            assert!(e.iter().any(|x| x.field == field.0 && x.line == field.1), "no error for {field:?} in {e:#?}");
        }
    }

    #[test]
    fn request_validation_is_checked_with_its_lines() {
        let text = r#"
apis:
  - id: lean
    models: { Pet: { type: object } }
    routes:
      - { route: POST /a, request_models: { application/json: Pet }, integration: { type: mock } }
    stages: [{ name: prod }]
  - id: pets
    type: rest
    models:
      Pet: { type: object, properties: { price: { type: number, minimum: "cheap" } } }
      Odd: { $schema: "http://example.com/schema", type: object }
      Good: { type: object }
    request_validators:
      all: { body: true, parameters: true }
    request_validator: missing
    routes:
      - { route: POST /a, request_validator: none, integration: { type: mock } }
      - { route: POST /b, request_models: { json: Good, application/json: Nope }, integration: { type: mock } }
      - { route: POST /c, required_parameters: [query.q, "header.bad name"], integration: { type: mock } }
    stages: [{ name: prod }]
"#;
        let e = errors(text);
        for field in [
            ("apis[0].models", 4),
            ("apis[0].routes[0].request_models", 6),
            ("apis[1].models.Pet", 11),
            ("apis[1].models.Odd", 12),
            ("apis[1].request_validator", 16),
            ("apis[1].routes[0].request_validator", 18),
            ("apis[1].routes[1].request_models.json", 19),
            ("apis[1].routes[1].request_models.application/json", 19),
            ("apis[1].routes[2].required_parameters[0]", 20),
            ("apis[1].routes[2].required_parameters[1]", 20),
        ] {
            assert!(e.iter().any(|x| x.field == field.0 && x.line == field.1), "no error for {field:?} in {e:#?}");
        }
    }

    #[test]
    fn a_key_of_another_kind_than_the_algorithms_is_refused() {
        // An HMAC key beside RS256 is the material of an algorithm confusion.
        let text = r#"
apis:
  - id: pets
    authorizers:
      - name: users
        type: jwt
        algorithms: [RS256]
        keys: [{ jwk: { kty: oct, k: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA" } }]
"#;
        let e = errors(text);
        assert!(
            e.iter().any(|x| x.field == "apis[0].authorizers[0].keys[0]" && x.message.contains("verifies none")),
            "{e:#?}"
        );
        assert!(e.iter().any(|x| x.message.contains("no key here can verify RS256")), "{e:#?}");
    }

    #[test]
    fn https_needs_certificates() {
        let text = "listen: { https: 127.0.0.1:0 }\ndomains:\n  - name: a.example\n";
        let e = errors(text);
        assert!(e[0].message.contains("needs `certificate`"), "{e:#?}");
    }

    #[test]
    fn small_header_buffers_are_refused() {
        let e = errors("limits: { max_header_bytes: 100 }\n");
        assert_eq!(e[0].field, "limits.max_header_bytes");
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,200}") {
            let _ = parse_str(&text, "fuzz.yaml", Path::new("/nonexistent"));
        }

        #[test]
        fn parser_never_panics_on_yaml_shaped_input(
            keys in proptest::collection::vec("(listen|apis|id|routes|route|integration|type|uri|stages|name|domains|mappings|limits|http)", 1..8),
            values in proptest::collection::vec("[-a-z0-9:/{}.$ ]{0,12}", 1..8),
            indents in proptest::collection::vec(0usize..4, 1..8),
        ) {
            let mut text = String::new();
            for ((k, v), i) in keys.iter().zip(values.iter().cycle()).zip(indents.iter().cycle()) {
                text.push_str(&"  ".repeat(*i));
                text.push_str(&format!("{k}: {v}\n"));
            }
            let _ = parse_str(&text, "fuzz.yaml", Path::new("/nonexistent"));
        }
    }
}
