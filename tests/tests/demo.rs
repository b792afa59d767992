//! `meridian demo` works as README promises: it starts a multi-region cluster with no files,
//! serves the sample API at the URLs it prints (from every region), answers the `dig`
//! commands it prints with each client network's region, and stops cleanly on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo process, killed if the test ends early (a failed assertion must not leave a
/// cluster holding the demo's addresses for the next run).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_the_urls_it_prints_and_stops_on_ctrl_c() {
    if !meridian_tests::tools(&["curl", "dig"]) {
        return;
    }
    let mut demo = Demo(
        Command::new(meridian_chaos::launcher::meridian_binary())
            .args(["demo", "--subnet", "77"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meridian demo starts"),
    );
    let child = &mut demo.0;
    // The banner is the demo's standard output; the nodes log to files.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut urls = Vec::new();
    let mut digs = Vec::new();
    let mut chats = Vec::new();
    let mut logs = String::new();
    // The banner ends with where the nodes log.
    while !logs.starts_with("Node logs:") {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the demo prints its banner");
        if let Some(start) = line.find("curl ") {
            urls.push(line[start..].split('#').next().unwrap().trim().to_string());
        }
        if let Some(start) = line.find("websocat ") {
            chats.push(line[start + "websocat ".len()..].split_whitespace().next().unwrap().to_string());
        }
        if let Some(start) = line.find("dig @") {
            digs.push(line[start..].split('#').next().unwrap().trim().to_string());
        }
        if line.starts_with("Node logs:") {
            logs = line.clone();
        }
    }
    assert!(urls.len() >= 3, "{urls:?}");
    assert!(logs.contains("node-eu-west.log") && logs.contains("node-ap-south.log"), "{logs}");
    // Each printed dig (a client network of region R) is answered with region R's gateway,
    // also once the gateways have probed each other for a while (probes used to count as
    // client round trips and sent a region's clients elsewhere).
    assert_eq!(digs.len(), 3, "the demo prints a dig command per region");
    std::thread::sleep(Duration::from_secs(3));
    for (r, dig) in digs.iter().enumerate() {
        let out = Command::new("sh").arg("-c").arg(dig).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("127.{}.77.1", r + 1), "{dig}");
        // The gateways' own /24 is where their probes come from: with the default subnet it
        // is the very network the printed dig asks about.
        let own = dig.replace(&format!("+subnet=127.{}.0.0/24", r + 1), &format!("+subnet=127.{}.77.0/24", r + 1));
        assert_ne!(&own, dig);
        let out = Command::new("sh").arg("-c").arg(&own).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("127.{}.77.1", r + 1), "{own}");
    }
    // Run the printed commands as a user would paste them.
    let pets = Command::new("sh").arg("-c").arg(format!("{} -s", urls[0])).output().unwrap();
    let text = String::from_utf8_lossy(&pets.stdout);
    assert!(text.contains("\"path\":\"/pets/42\""), "{text}");
    let health = Command::new("sh").arg("-c").arg(format!("{} -s", urls[1])).output().unwrap();
    assert!(String::from_utf8_lossy(&health.stdout).contains("{\"status\":\"ok\"}"));
    let orders = Command::new("sh").arg("-c").arg(format!("{} -s", urls[2])).output().unwrap();
    assert!(String::from_utf8_lossy(&orders.stdout).contains("\"method\":\"POST\""));

    // The chat: clients of two regions; a message sent by one reaches both, through the
    // callback API; a message without an action gets the `$default` route's reply.
    assert_eq!(chats.len(), 2, "the demo prints a chat command per client: {chats:?}");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut first, _) = tokio_tungstenite::connect_async(chats[0].as_str()).await.expect("chat in region 1");
        let (mut second, _) = tokio_tungstenite::connect_async(chats[1].as_str()).await.expect("chat in region 2");
        first.send(Message::text(r#"{"action":"sendmessage","text":"hello regions"}"#)).await.unwrap();
        for client in [&mut first, &mut second] {
            let got = tokio::time::timeout(Duration::from_secs(5), client.next()).await.unwrap().unwrap().unwrap();
            let got: serde_json::Value = serde_json::from_str(got.to_text().unwrap()).unwrap();
            assert_eq!(got["text"], "hello regions", "{got}");
        }
        second.send(Message::text("what now?")).await.unwrap();
        let help = tokio::time::timeout(Duration::from_secs(5), second.next()).await.unwrap().unwrap().unwrap();
        assert!(help.to_text().unwrap().contains("sendmessage"), "{help:?}");
    });

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "demo exited with {status}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The nodes logged to their files, not to the terminal, and stopped with the demo.
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.trim().is_empty(), "the terminal got more than the banner: {stderr}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::net::TcpListener::bind("127.1.77.1:8080").is_ok(), "a demo node outlived the demo");
}
