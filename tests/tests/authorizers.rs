//! Authorizers end to end: a real `meridian serve` in front of the echo backend, with a
//! JWKS served (and rotated, and taken down) by a local identity provider, and a custom
//! authorizer service that counts its calls. Tokens are real: RSA keys from openssl, EC
//! keys from rcgen, signed with the `jsonwebtoken` crate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meridian_tests::*;
use serde_json::{Value, json};

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "api://pets";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    public_pem: String,
}

impl SigningKey {
    fn rsa(kid: &str) -> SigningKey {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
        let mut public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        public.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        let public_pem = String::from_utf8(public.wait_with_output().unwrap().stdout).unwrap();
        let encoding = EncodingKey::from_rsa_pem(&out.stdout).unwrap();
        SigningKey::new(kid, Algorithm::RS256, encoding, public_pem)
    }

    fn ec(kid: &str) -> SigningKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        SigningKey::new(kid, Algorithm::ES256, encoding, key.public_key_pem())
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey, public_pem: String) -> SigningKey {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        SigningKey { kid: kid.to_string(), alg, encoding, jwk, public_pem }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now() + 600, "scope": "pets:read"});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A local identity provider: serves the current JWKS, counts fetches, and can go down.
struct IdentityProvider {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Jwk>>>,
    hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl IdentityProvider {
    async fn start(keys: Vec<Jwk>) -> IdentityProvider {
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (k, h, d) = (keys.clone(), hits.clone(), down.clone());
        let addr = http_service(move |_req| {
            h.fetch_add(1, Ordering::SeqCst);
            let (status, body) = if d.load(Ordering::SeqCst) {
                (503, "down".to_string())
            } else {
                (200, serde_json::to_string(&JwkSet { keys: k.lock().unwrap().clone() }).unwrap())
            };
            async move { hyper::Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap() }
        })
        .await;
        IdentityProvider { addr, keys, hits, down }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn call(gateway: SocketAddr, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
    let mut request = hyper::Request::get(path).header("host", "pets");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    send(gateway, request.body(Full::new(Bytes::new())).unwrap()).await
}

fn jwt_config(backend: SocketAddr, idp: SocketAddr) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    authorizers:
      - name: users
        type: jwt
        algorithms: [RS256, ES256]
        jwks_uri: http://{idp}/.well-known/jwks.json
        jwks_refetch_interval: 1s
        issuer: {ISSUER}
        audience: [{AUDIENCE}, api://other]
        clock_skew: 5s
        required_claims: [sub]
        claims_to_headers: {{ sub: x-user, scope: x-scopes }}
      - name: mixed
        type: jwt
        algorithms: [RS256, HS256]
        jwks_uri: http://{idp}/.well-known/jwks.json
        jwks_refetch_interval: 1s
    routes:
      - route: GET /me
        authorizer: users
        integration: {{ type: http_proxy, uri: "http://{backend}/me" }}
      - route: GET /admin
        authorizer: users
        scopes: [pets:admin]
        integration: {{ type: mock, body: admin }}
      - route: GET /mixed
        authorizer: mixed
        integration: {{ type: mock, body: mixed }}
      - route: GET /open
        integration: {{ type: mock, body: open }}
    stages:
      - name: prod
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_authorizer_checks_tokens_against_a_rotating_jwks() {
    if !tools(&["openssl"]) {
        return;
    }
    let rsa = SigningKey::rsa("a");
    let ec = SigningKey::ec("e");
    let idp = IdentityProvider::start(vec![rsa.jwk.clone(), ec.jwk.clone()]).await;
    let backend = echo_backend().await;
    let node = start_node(jwt_config(backend, idp.addr)).await;
    let gw = node.http.expect("http listener");

    // No token: 401 with a bare challenge; a route without an authorizer is open.
    let r = call(gw, "/prod/me", None, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    assert_eq!(call(gw, "/prod/open", None, &[]).await.status, 200);

    // A good token: the claims reach the upstream as headers, replacing what the client sent.
    let good = rsa.sign(&claims(json!({})));
    let r = call(gw, "/prod/me", Some(&good), &[("x-user", "mallory")]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = r.json();
    assert_eq!(echoed["headers"]["x-user"], "alice");
    assert_eq!(echoed["headers"]["x-scopes"], "pets:read");
    assert_eq!(idp.hits(), 1, "the first request fetched the JWKS once");
    // The other audience of the list, and an EC key, are fine too.
    let r = call(gw, "/prod/me", Some(&ec.sign(&claims(json!({"aud": "api://other"})))), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Each bad token is 401 invalid_token with its reason.
    let public_as_secret = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("a".into());
        jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap())
            .unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"a"}"#),
        b64(claims(json!({})).to_string().as_bytes())
    );
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[1] = b64(claims(json!({"sub": "root"})).to_string().as_bytes());
        parts.join(".")
    };
    let cases = [
        ("/prod/me", rsa.sign(&claims(json!({"exp": now() - 60}))), "the token has expired"),
        ("/prod/me", rsa.sign(&claims(json!({"nbf": now() + 120}))), "the token is not valid yet"),
        ("/prod/me", rsa.sign(&claims(json!({"aud": "api://elsewhere"}))), "the token is not meant for this API"),
        ("/prod/me", rsa.sign(&claims(json!({"iss": "https://evil.test"}))), "the token's issuer is not trusted"),
        (
            "/prod/me",
            rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60})),
            "the token lacks a required claim",
        ),
        ("/prod/me", alg_none, "the token's algorithm is not allowed"),
        ("/prod/me", public_as_secret.clone(), "the token's algorithm is not allowed"),
        // HS256 is allowed on `mixed`, but never with the RSA public key as its secret.
        ("/prod/mixed", public_as_secret, "no key matches the token's key id"),
        ("/prod/me", tampered, "the token's signature is not valid"),
        ("/prod/me", "not.a-token".to_string(), "the token is not a JWS compact token"),
    ];
    for (path, token, reason) in &cases {
        let r = call(gw, path, Some(token), &[]).await;
        assert_eq!(r.status, 401, "{reason}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["message"], *reason);
        assert_eq!(
            r.header("www-authenticate"),
            format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"")
        );
    }
    // Within the clock skew, an expired token still passes.
    let r = call(gw, "/prod/me", Some(&rsa.sign(&claims(json!({"exp": now() - 2})))), &[]).await;
    assert_eq!(r.status, 200);

    // Scopes: the route needs pets:admin (403 names it); `scp` as a list counts too.
    let r = call(gw, "/prod/admin", Some(&good), &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.header("www-authenticate").contains("insufficient_scope"), "{r:?}");
    let admin = rsa.sign(&claims(json!({"scope": null, "scp": ["pets:read", "pets:admin"]})));
    assert_eq!(call(gw, "/prod/admin", Some(&admin), &[]).await.status, 200);

    // A burst of tokens with an unknown key id makes one refetch, not one per request.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.hits();
    let stranger = SigningKey::ec("zzz");
    let token = stranger.sign(&claims(json!({})));
    let burst: Vec<_> = (0..20).map(|_| call(gw, "/prod/me", Some(&token), &[])).collect();
    for r in futures_util::future::join_all(burst).await {
        assert_eq!(r.status, 401);
    }
    assert_eq!(idp.hits(), before + 1, "one refetch for the whole burst");
    assert_eq!(call(gw, "/prod/me", Some(&token), &[]).await.status, 401);
    assert_eq!(idp.hits(), before + 1, "no second refetch within the interval");

    // The provider rotates in a new key: after the interval, its tokens pass.
    let rotated = SigningKey::rsa("b");
    idp.keys.lock().unwrap().push(rotated.jwk.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = call(gw, "/prod/me", Some(&rotated.sign(&claims(json!({})))), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The provider goes down: the last good keys stay in use.
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetches = idp.hits();
    assert_eq!(call(gw, "/prod/me", Some(&token), &[]).await.status, 401);
    assert_eq!(idp.hits(), fetches + 1, "the unknown key was looked for");
    assert_eq!(call(gw, "/prod/me", Some(&good), &[]).await.status, 200);
    assert_eq!(call(gw, "/prod/me", Some(&rotated.sign(&claims(json!({})))), &[]).await.status, 200);

    // Tokens never reach the logs.
    let logs = format!("{}{}", node.stdout(), node.stderr());
    assert!(!logs.contains(&good), "a token is in the logs");
    assert!(logs.contains("the token has expired"), "the access log keeps the reason");
}

/// A custom authorizer service: `allow-*` tokens pass with a tenant in the context, `deny`
/// does not, `slow` outlasts the gateway's timeout and `garbage` gets a malformed answer.
/// It counts its calls and keeps the last request document.
async fn authorizer_service() -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Value>>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(Value::Null));
    let (c, l) = (calls.clone(), last.clone());
    let addr = http_service(move |req| {
        c.fetch_add(1, Ordering::SeqCst);
        let document: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
        let token = document["identitySource"][0].as_str().unwrap_or("").to_string();
        *l.lock().unwrap() = document;
        async move {
            let body = match token.as_str() {
                t if t.starts_with("allow-") => {
                    json!({"isAuthorized": true, "context": {"tenant": t, "plan": 7}}).to_string()
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    json!({"isAuthorized": true}).to_string()
                }
                "garbage" => "<html>oops</html>".to_string(),
                _ => json!({"isAuthorized": false}).to_string(),
            };
            hyper::Response::new(Full::new(Bytes::from(body)))
        }
    })
    .await;
    (addr, calls, last)
}

fn custom_api(authorizer: SocketAddr, backend: SocketAddr, ttl: &str) -> String {
    format!(
        r#"
apis:
  - id: pets
    authorizers:
      - name: partners
        type: custom
        uri: http://{authorizer}/authorize
        identity_sources: [$request.header.x-token, $stageVariables.tier]
        ttl: {ttl}
        timeout: 1s
        context_to_headers: {{ tenant: x-tenant, plan: x-plan }}
    routes:
      - route: GET /pets
        integration: {{ type: http_proxy, uri: "http://{backend}/pets" }}
      - route: GET /open
        authorizer: partners
        integration: {{ type: mock, body: open }}
    stages:
      - name: prod
        authorizer: partners
        variables: {{ tier: gold }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_authorizer_allows_denies_caches_and_fails_closed() {
    let (authz, calls, last) = authorizer_service().await;
    let backend = echo_backend().await;
    let config = format!(
        "listen: {{ http: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\n{}",
        custom_api(authz, backend, "300s")
    );
    let node = start_node(config).await;
    let gw = node.http.expect("http listener");
    let count = || calls.load(Ordering::SeqCst);

    // A missing identity source is 401 without a call.
    let r = call(gw, "/prod/pets", None, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(count(), 0);

    // Allowed: the context reaches the upstream (replacing a client's own header), and the
    // answer is cached: five more requests, no more calls.
    let r = call(gw, "/prod/pets?limit=2", None, &[("x-token", "allow-acme"), ("x-tenant", "spoofed")]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["headers"]["x-tenant"], "allow-acme");
    assert_eq!(r.json()["headers"]["x-plan"], "7");
    let document = last.lock().unwrap().clone();
    assert_eq!(document["version"], "2.0");
    assert_eq!(document["identitySource"], json!(["allow-acme", "gold"]));
    assert_eq!(document["routeKey"], "GET /pets");
    assert_eq!(document["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(document["queryStringParameters"]["limit"], "2");
    assert_eq!(document["stageVariables"]["tier"], "gold");
    for _ in 0..5 {
        assert_eq!(call(gw, "/prod/pets", None, &[("x-token", "allow-acme")]).await.status, 200);
    }
    assert_eq!(count(), 1, "cache hits make no call");

    // Denied: 403, and the denial is cached too.
    assert_eq!(call(gw, "/prod/pets", None, &[("x-token", "deny")]).await.status, 403);
    assert_eq!(call(gw, "/prod/pets", None, &[("x-token", "deny")]).await.status, 403);
    assert_eq!(count(), 2);

    // Failures never let a request through: a timeout is 503, a malformed answer 500.
    let r = call(gw, "/prod/pets", None, &[("x-token", "slow")]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let r = call(gw, "/prod/pets", None, &[("x-token", "garbage")]).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    // ... and are not cached.
    let before = count();
    assert_eq!(call(gw, "/prod/pets", None, &[("x-token", "garbage")]).await.status, 500);
    assert_eq!(count(), before + 1);

    // The metrics count hits, misses, denials and errors per authorizer.
    let metrics = get(node.admin, "admin", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for (result, at_least) in [("hit", 6), ("miss", 5), ("deny", 2), ("error", 3)] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("meridian_authorizer_decisions_total")
                    && l.contains("authorizer=\"pets/partners\"")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .unwrap_or_else(|| panic!("no {result} series in\n{text}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= at_least as f64, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_authorizer_with_a_ttl_of_zero_is_asked_every_time() {
    let (authz, calls, _) = authorizer_service().await;
    let backend = echo_backend().await;
    let config = format!(
        "listen: {{ http: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\n{}",
        custom_api(authz, backend, "0s")
    );
    let node = start_node(config).await;
    let gw = node.http.expect("http listener");
    for _ in 0..3 {
        assert_eq!(call(gw, "/prod/open", None, &[("x-token", "allow-x")]).await.status, 200);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
