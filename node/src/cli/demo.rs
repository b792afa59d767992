//! `meridian demo`: starts the multi-region demo cluster in this process.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meridian_consensus::{ConfigCommand, Proposal};

use crate::cluster::member::ClusterMember;
use crate::config::validate_definition;
use crate::demo;
use crate::gateway::node::{ConfigSource, Node, wait_for_signal};

pub async fn run(subnet: u8) -> anyhow::Result<ExitCode> {
    let work = tempfile_dir()?;
    let token_file = work.join("admin.token");
    std::fs::write(&token_file, crate::cluster::pki::random_secret()?)?;
    let backend = demo::echo::spawn("127.0.0.1:0".parse()?).await.context("cannot start the echo backend")?;

    let mut nodes: Vec<Node> = Vec::new();
    let mut members: Vec<Arc<ClusterMember>> = Vec::new();
    let mut token = String::new();
    for (i, region) in demo::REGIONS.iter().enumerate() {
        let n = i + 1;
        let config_path = work.join(format!("node-{region}.yaml"));
        let text = demo::node_config(n, subnet, &work.join(format!("data-{region}")), &token_file);
        std::fs::write(&config_path, &text)?;
        let node = Node::start(ConfigSource::File(config_path)).await.with_context(|| {
            format!(
                "cannot start the {region} node on {} (is another demo running? try --subnet)",
                demo::node_ip(n, subnet)
            )
        })?;
        let settings = node.cluster.clone().context("demo node without cluster settings")?;
        let member = if n == 1 {
            let (member, join_token) = ClusterMember::init(&settings, node.advertised(region)).await?;
            token = join_token;
            member
        } else {
            let peer = format!("{}:7001", demo::node_ip(1, subnet));
            ClusterMember::join(&settings, node.advertised(region), &peer, &token).await?
        };
        node.attach_cluster(member.clone());
        nodes.push(node);
        members.push(member);
    }

    let variables = std::collections::BTreeMap::from([("backend".to_string(), backend.to_string())]);
    let definition =
        validate_definition(demo::SAMPLE_API, "sample API", "prod", &variables).map_err(|e| anyhow::anyhow!("{e}"))?;
    members[0]
        .propose(Proposal {
            expected_revision: None,
            command: ConfigCommand::Deploy {
                api: definition.id,
                definition: definition.text,
                description: "the demo's sample API".into(),
                created_at_ms: crate::observe::time::unix_ms(),
                created_by: "meridian demo".into(),
                stage: Some("prod".into()),
                stage_variables: variables,
            },
        })
        .await?;
    for (i, region) in demo::REGIONS.iter().enumerate() {
        let record =
            meridian_consensus::RegionRecord { weight: None, client_cidrs: vec![format!("127.{}.0.0/16", i + 1)] };
        members[0]
            .propose(Proposal {
                expected_revision: None,
                command: ConfigCommand::PutRegion { name: region.to_string(), region: record },
            })
            .await?;
    }
    let deployed = members[0]
        .propose(Proposal {
            expected_revision: None,
            command: ConfigCommand::PutZone {
                name: "meridian.test".into(),
                zone: meridian_consensus::ZoneRecord { definition: demo::SAMPLE_ZONE.into() },
            },
        })
        .await?;
    // Wait until every region serves the deployment before saying so.
    for member in &members {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while member.applied.read().await.config.revision < deployed.revision && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let gateways: Vec<demo::DemoNode> = nodes
        .iter()
        .zip(demo::REGIONS)
        .filter_map(|(n, r)| {
            Some(demo::DemoNode { region: r.to_string(), http: n.http_addr?, admin: n.admin_addr, dns: n.dns_addr? })
        })
        .collect();
    eprintln!("{}", demo::banner(&gateways, &work.join(format!("node-{}.yaml", demo::REGIONS[0]))));

    wait_for_signal().await?;
    eprintln!("stopping the demo");
    for node in nodes {
        node.shutdown().await;
    }
    for member in members {
        let _ = member.raft.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(ExitCode::SUCCESS)
}

/// A fresh folder for the demo's data under the system temp folder.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
