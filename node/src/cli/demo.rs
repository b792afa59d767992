//! `meridian demo`: a local cluster of one node per region, each a `meridian` process of its
//! own (`cluster init`, then `cluster join`), configured through the admin API like any
//! cluster. The nodes log to files in the demo's folder (`node-<region>.log`), so the
//! terminal shows only the banner; Ctrl-C stops them and removes the folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;

use crate::admin::client;
use crate::demo;
use crate::node::wait_for_signal;

/// The demo's node processes; dropping them stops them (they also stop if the demo dies).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &self.0 {
            // SAFETY: kill(2) on a child this process started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.0 {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts one node: `meridian cluster <args>` in `work`, its output in `node-<region>.log`;
/// waits for its ready file.
fn start_node(work: &Path, region: &str, args: &[&str]) -> anyhow::Result<(Child, String)> {
    let log = work.join(format!("node-{region}.log"));
    let ready = work.join(format!("node-{region}.ready"));
    let out = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(std::env::current_exe().context("cannot find the meridian binary")?);
    command
        .arg("cluster")
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl in the child before exec only asks the kernel to send SIGTERM when the
    // demo process dies, so no node outlives it.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start a node process")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && !text.is_empty()
        {
            return Ok((child, text));
        }
        if let Some(status) = child.try_wait()? {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            bail!(
                "the {region} node stopped ({status}); is another demo running? try --subnet\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the {region} node did not start within 30 s (see {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn address(ready: &str, key: &str) -> anyhow::Result<std::net::SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(ready)?;
    value[key].as_str().and_then(|a| a.parse().ok()).with_context(|| format!("the ready file has no `{key}`"))
}

/// One admin call that must succeed; returns the revision it reports.
async fn write(
    admin: std::net::SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: String,
) -> anyhow::Result<u64> {
    let (status, text) = client::call(admin, method, path, Some(token), Bytes::from(body), &[]).await?;
    if !(200..300).contains(&status) {
        bail!("setting up the demo: {path} answered {status}: {text}");
    }
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(value["revision"].as_u64().unwrap_or(0))
}

pub async fn run(subnet: u8) -> anyhow::Result<ExitCode> {
    let work = tempfile_dir()?;
    let token = crate::cluster::pki::random_secret()?;
    let token_file = work.join("admin.token");
    std::fs::write(&token_file, &token)?;
    let backend = demo::echo::spawn("127.0.0.1:0".parse()?).await.context("cannot start the echo backend")?;
    let callback = std::sync::Arc::new(std::sync::OnceLock::new());
    let chat =
        demo::chat::spawn("127.0.0.1:0".parse()?, callback.clone()).await.context("cannot start the chat backend")?;

    let mut nodes = Nodes(Vec::new());
    let mut gateways: Vec<demo::DemoNode> = Vec::new();
    let mut join_token = String::new();
    for (i, region) in demo::REGIONS.iter().enumerate() {
        let n = i + 1;
        let config = work.join(format!("node-{region}.yaml"));
        std::fs::write(&config, demo::node_config(n, subnet, &work.join(format!("data-{region}")), &token_file))?;
        let config = config.to_string_lossy().into_owned();
        let (child, ready) = if n == 1 {
            let started = start_node(&work, region, &["init", "--config", &config, "--region", region])?;
            join_token = std::fs::read_to_string(work.join(format!("node-{region}.token")))?;
            started
        } else {
            let peer = format!("{}:7001", demo::node_ip(1, subnet));
            let args = ["join", "--config", &config, "--region", region, "--peer", &peer, "--token", &join_token];
            start_node(&work, region, &args)?
        };
        nodes.0.push(child);
        gateways.push(demo::DemoNode {
            region: region.to_string(),
            http: address(&ready, "http")?,
            admin: address(&ready, "admin")?,
            dns: address(&ready, "dns")?,
        });
    }

    // The sample API, the regions' client networks and the zone, through the admin API.
    let admin = gateways[0].admin;
    let definition =
        format!("{}    stages:\n      - {{ name: prod, variables: {{ backend: \"{backend}\" }} }}\n", demo::SAMPLE_API);
    let path = "/v1/apis/pets/deployments?stage=prod&description=the%20demo%27s%20sample%20API";
    write(admin, &token, Method::POST, path, definition).await?;
    let chat_api =
        format!("{}    stages:\n      - {{ name: live, variables: {{ chat: \"{chat}\" }} }}\n", demo::CHAT_API);
    let path = "/v1/apis/chat/deployments?stage=live&description=the%20demo%27s%20chat";
    write(admin, &token, Method::POST, path, chat_api).await?;
    let _ = callback.set(demo::chat::CallbackApi { admin, token: token.clone() });
    for (i, region) in demo::REGIONS.iter().enumerate() {
        let body = serde_json::json!({ "client_cidrs": [format!("127.{}.0.0/16", i + 1)] }).to_string();
        write(admin, &token, Method::PUT, &format!("/v1/regions/{region}"), body).await?;
    }
    let revision =
        write(admin, &token, Method::PUT, "/v1/dns/zones/meridian.test", demo::SAMPLE_ZONE.to_string()).await?;
    // Every node serves that revision before the banner says so.
    for node in &gateways {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = client::call(node.admin, Method::GET, "/readyz", None, Bytes::new(), &[]).await;
            let served = ready
                .ok()
                .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| v["revision"].as_u64());
            if served.is_some_and(|r| r >= revision) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("{}", demo::banner(&gateways, Path::new(&work.join(format!("node-{}.yaml", demo::REGIONS[0])))));
    println!(
        "Node logs: {}\n",
        demo::REGIONS
            .iter()
            .map(|r| work.join(format!("node-{r}.log")).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    wait_for_signal().await?;
    println!("stopping the demo");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);
    Ok(ExitCode::SUCCESS)
}

/// A fresh folder for the demo's data under the system temp folder.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-demo-{}", std::process::id()));
    crate::cluster::data_dir::create_private(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
